import math

import numpy as np
import pytest
from scipy import optimize, stats

from art_backdoor_ext.exceptions import DataError
from art_backdoor_ext.functional.bootstrap_calibration import calibrated_max_statistic_pvalue
from art_backdoor_ext.functional.cepa_math import max_statistic_pvalue, max_statistic_pvalues
from art_backdoor_ext.functional.gamma_fit import fit_truncated_gamma_many
from art_backdoor_ext.functional.robust import fit_truncated_gamma


def _nll(x, truncation, shape, scale):
    """Negative log-likelihood of the right-truncated Gamma, straight from scipy.stats."""
    ll = stats.gamma.logpdf(x, shape, scale=scale).sum()
    if math.isfinite(truncation):
        ll -= x.size * stats.gamma.logcdf(truncation, shape, scale=scale)
    return -ll


def _truncated_sets(rng, n_sets, n_total, n_exclude):
    shapes = rng.uniform(1.0, 100.0, n_sets)
    sets = np.sort(np.stack([rng.gamma(s, 1.0 / s, size=n_total) for s in shapes]), axis=1)
    return sets[:, : n_total - n_exclude], sets[:, n_total - n_exclude]


def test_a_sample_gets_the_same_fit_alone_as_in_a_batch():
    fit, truncation = _truncated_sets(np.random.default_rng(0), 40, 10, 1)
    shapes, scales = fit_truncated_gamma_many(fit, truncation)
    for i in range(0, 40, 7):
        alone = fit_truncated_gamma_many(fit[i][None], [truncation[i]])
        assert (alone[0][0], alone[1][0]) == (shapes[i], scales[i])
        single = fit_truncated_gamma(fit[i], truncation[i])
        assert (single.shape, single.scale) == (shapes[i], scales[i])


@pytest.mark.parametrize("n_total, n_exclude", [(10, 1), (30, 3), (90, 9)])
def test_likelihood_is_never_worse_than_a_general_optimiser(n_total, n_exclude):
    """Against SciPy's L-BFGS-B from several starts on the same objective (the solver used before)."""
    fit, truncation = _truncated_sets(np.random.default_rng(n_total), 25, n_total, n_exclude)
    shapes, scales = fit_truncated_gamma_many(fit, truncation)
    for x, c, k, theta in zip(fit, truncation, shapes, scales):
        def objective(p, x=x, c=c):
            value = _nll(x, c, math.exp(p[0]), math.exp(p[1]))
            return value if np.isfinite(value) else 1e300

        best = min((optimize.minimize(objective, np.array([math.log(k0), math.log(x.mean() / k0)]),
                                      method="L-BFGS-B") for k0 in (1.0, 10.0, 100.0)), key=lambda r: r.fun)
        assert _nll(x, c, k, theta) <= best.fun + 1e-6


def test_recovers_known_parameters_with_and_without_truncation():
    rng = np.random.default_rng(1)
    d = rng.gamma(5.0, 2.0, size=40000)
    kept = d[d <= 12.0]
    shapes, scales = fit_truncated_gamma_many(np.stack([kept[:20000], d[:20000]]), [12.0, np.inf])
    np.testing.assert_allclose(shapes, [5.0, 5.0], rtol=0.06)
    np.testing.assert_allclose(scales, [2.0, 2.0], rtol=0.06)
    # untruncated MLE: the mean is matched exactly and log k - digamma(k) = log(mean) - mean(log)
    x = d[:20000]
    assert shapes[1] * scales[1] == pytest.approx(x.mean(), rel=1e-6)
    from scipy import special

    assert math.log(shapes[1]) - special.digamma(shapes[1]) == pytest.approx(
        math.log(x.mean()) - np.log(x).mean(), rel=1e-5)


def test_the_fit_is_a_stationary_point():
    fit, truncation = _truncated_sets(np.random.default_rng(2), 10, 30, 3)
    shapes, scales = fit_truncated_gamma_many(fit, truncation)
    h = 1e-5
    for x, c, k, theta in zip(fit, truncation, shapes, scales):
        def f(log_k, log_mean, x=x, c=c):
            return _nll(x, c, math.exp(log_k), math.exp(log_mean - log_k)) / x.size

        a, b = math.log(k), math.log(k * theta)
        grad = [(f(a + h, b) - f(a - h, b)) / (2 * h), (f(a, b + h) - f(a, b - h)) / (2 * h)]
        assert max(abs(g) for g in grad) < 1e-5


def test_invalid_rows_get_nan_and_leave_the_others_alone():
    fit, truncation = _truncated_sets(np.random.default_rng(3), 3, 10, 1)
    bad = fit.copy()
    bad[0] = 0.5  # all equal
    bad[1, 2] = -1.0  # not positive
    shapes, scales = fit_truncated_gamma_many(bad, truncation)
    assert np.isnan(shapes[:2]).all() and np.isnan(scales[:2]).all()
    alone = fit_truncated_gamma_many(fit[2][None], [truncation[2]])
    assert (shapes[2], scales[2]) == (alone[0][0], alone[1][0])


def test_batched_max_statistic_pvalues_match_one_set_at_a_time():
    rng = np.random.default_rng(4)
    rows = rng.gamma(8.0, 1.0, size=(30, 10))
    rows[5, 3] *= 4.0
    rows[7] = 2.0  # degenerate: the one-set function raises, the batch gives NaN
    p, index = max_statistic_pvalues(rows, n_exclude=1)
    for i, row in enumerate(rows):
        if i == 7:
            with pytest.raises(DataError):
                max_statistic_pvalue(row, n_exclude=1)
            assert np.isnan(p[i])
            continue
        assert (p[i], index[i]) == max_statistic_pvalue(row, n_exclude=1)
    assert index[5] == 3 and p[5] < 0.01


def test_calibrated_pvalue_counts_the_simulated_sets_one_at_a_time():
    values = np.random.default_rng(5).gamma(10.0, 1.0, size=10)
    values[2] *= 2.0
    p, index, raw = calibrated_max_statistic_pvalue(values, n_bootstrap=99, random_state=7)
    from art_backdoor_ext.functional.cepa_math import max_statistic_null

    null = max_statistic_null(values)
    simulated = np.random.default_rng(7).gamma(null.shape, null.scale, size=(99, 10))
    count = sum(max_statistic_pvalue(row)[0] <= raw for row in simulated)
    assert index == 2 and p == (1 + count) / 100
