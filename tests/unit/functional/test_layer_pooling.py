"""The joint all-to-one test over several layers (CEPA's ``layer_pooling="joint"``)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import art_backdoor_ext.functional.layer_pooling as pooling
from art_backdoor_ext.exceptions import DataError, InvalidParameterError
from art_backdoor_ext.functional.bootstrap_calibration import calibrated_max_statistic_pvalue
from art_backdoor_ext.functional.cepa_math import sidak_correction
from art_backdoor_ext.functional.layer_pooling import joint_layer_pvalue, joint_layer_statistic, layer_correlation


def _correlated_clean_sets(n: int, rho: float, seed: int) -> list[np.ndarray]:
    """n clean models: 3 layers x 10 classes of Gamma(10) statistics, the layers correlated (Gaussian copula)."""
    rng = np.random.default_rng(seed)
    cov = np.full((3, 3), rho) + (1 - rho) * np.eye(3)
    return [stats.gamma.ppf(stats.norm.cdf(rng.multivariate_normal(np.zeros(3), cov, size=10).T), 10.0)
            for _ in range(n)]


def test_a_target_high_at_every_layer_is_found_where_single_layers_are_not_enough():
    rng = np.random.default_rng(0)
    values = rng.gamma(10.0, 1.0, size=(3, 10))
    values[:, 4] *= 2.2  # class 4 moderately high at all three layers
    p, target, pooled = joint_layer_pvalue(values, n_bootstrap=99)
    assert target == 4 and p < 0.05 and pooled < 0
    per_layer = [calibrated_max_statistic_pvalue(row, n_bootstrap=99)[0] for row in values]
    assert sidak_correction(min(per_layer), 3) >= 0.05  # the per-layer decision (Sidak over 3) misses it
    without = values.copy()
    without[:, 4] /= 2.2
    assert joint_layer_pvalue(without, n_bootstrap=99)[0] > 0.05


def test_calibrated_on_correlated_clean_layers_where_independence_over_flags(monkeypatch):
    sets = _correlated_clean_sets(24, rho=0.6, seed=1)
    with_copula = np.array([joint_layer_pvalue(v, n_bootstrap=29, random_state=i)[0] for i, v in enumerate(sets)])
    monkeypatch.setattr(pooling, "layer_correlation", lambda v, leave_out=None: np.eye(len(v)))
    independent = np.array([joint_layer_pvalue(v, n_bootstrap=29, random_state=i)[0] for i, v in enumerate(sets)])
    assert np.mean(with_copula < 0.05) <= 1 / 12  # near the nominal 0.05 (0 of 24 here)
    # a null with independent layers makes the same clean sets look more extreme, set by set
    assert np.mean(independent <= with_copula) > 0.75
    assert np.mean(independent) < np.mean(with_copula) - 0.05
    # (tools/scratch/cepa_joint_null.py 60 0.6, 99 draws: 11.7% below 0.05 assuming independence, 1.7% with the copula)


def test_layer_correlation_leaves_the_target_out_and_stays_a_correlation():
    rng = np.random.default_rng(2)
    base = rng.gamma(10.0, 1.0, size=10)
    values = np.stack([base, base * 1.1 + 0.01, rng.gamma(10.0, 1.0, size=10)])
    values[1, 3] = 100.0  # class 3 disagrees between layers 0 and 1
    corr = layer_correlation(values, leave_out=3)
    assert corr.shape == (3, 3) and np.allclose(np.diag(corr), 1.0) and np.allclose(corr, corr.T)
    assert corr[0, 1] > 0.99  # the other nine classes rank identically at layers 0 and 1
    assert layer_correlation(values)[0, 1] < corr[0, 1]
    assert np.linalg.eigvalsh(corr).min() > 0
    assert layer_correlation(values[:1]).tolist() == [[1.0]]


def test_statistic_is_the_smallest_summed_log_tail():
    rng = np.random.default_rng(5)
    values = rng.gamma(8.0, 1.0, size=(2, 8))
    pooled, target, nulls = joint_layer_statistic(values)
    log_tail = np.stack([stats.gamma.logsf(row, n.shape, scale=n.scale) for row, n in zip(values, nulls)])
    assert target == int(np.argmin(log_tail.sum(0))) and pooled == pytest.approx(log_tail.sum(0).min())


def test_reproducible_and_a_bootstrap_proportion():
    values = _correlated_clean_sets(1, rho=0.3, seed=3)[0]
    first = joint_layer_pvalue(values, n_bootstrap=19, random_state=7)
    assert first == joint_layer_pvalue(values, n_bootstrap=19, random_state=7)
    assert round(first[0] * 20) == pytest.approx(first[0] * 20) and 1 / 20 <= first[0] <= 1


@pytest.mark.parametrize("values, match", [
    (np.ones(10), "layers, classes"),
    (np.ones((3, 3)), "at least 4 classes"),
    (np.array([[1.0, 2.0, 3.0, -1.0]]), "> 0"),
    (np.array([[1.0, 2.0, np.nan, 4.0]]), "finite"),
])
def test_bad_values(values, match):
    with pytest.raises(DataError, match=match):
        joint_layer_pvalue(values)


@pytest.mark.parametrize("n_bootstrap", [0, 2.5, True])
def test_bad_n_bootstrap(n_bootstrap):
    with pytest.raises(InvalidParameterError, match="n_bootstrap"):
        joint_layer_pvalue(np.ones((2, 5)) + np.arange(5), n_bootstrap=n_bootstrap)


# ------------------------------------------------------------------ pooled_layer_pvalue (layer_pooling="pooled")
def _layers(rng, cvs, k=10):
    return np.stack([rng.gamma(1 / cv**2, cv**2, k) for cv in cvs])


def test_pooled_finds_a_wide_layer_outlier_and_ignores_a_tight_layer_mild_one():
    from art_backdoor_ext.functional.layer_pooling import pooled_layer_pvalue

    rng = np.random.default_rng(3)
    found, mild, mild_per_layer = 0, 0, 0
    for trial in range(10):
        v = _layers(rng, (0.2, 0.05, 0.05))
        v[0, 6] = 3.0 * np.median(v[0])  # a backdoor-like outlier at the wide layer: 3x its layer's median
        p, target, layer, raw = pooled_layer_pvalue(v, n_bootstrap=99, random_state=trial)
        found += p < 0.05 and (target, layer) == (6, 0)
        assert 0 < raw <= 1 and p >= 1 / 100
        w = _layers(rng, (0.2, 0.05, 0.05))
        w[2, 3] = 1.25 * np.median(w[2])  # 5 sd above at the tight layer, but only 1.25x its median
        mild += pooled_layer_pvalue(w, n_bootstrap=99, random_state=trial)[0] < 0.05
        per_layer = min(calibrated_max_statistic_pvalue(row, n_bootstrap=99, random_state=trial)[0] for row in w)
        mild_per_layer += sidak_correction(per_layer, 3) < 0.05  # the default decision: extreme for its layer
    assert found >= 8 and mild <= 1 and mild_per_layer >= 3  # measured: 8, 0 and 4 of 10


def test_pooled_is_scale_free_per_layer_and_reproducible():
    from art_backdoor_ext.functional.layer_pooling import pooled_layer_pvalue, relative_to_layer_median

    rng = np.random.default_rng(4)
    v = _layers(rng, (0.15, 0.1, 0.1))
    v[1, 2] *= 1.8
    scaled = v * np.array([[10.0], [0.01], [3.0]])  # each layer in its own units
    np.testing.assert_allclose(relative_to_layer_median(scaled), relative_to_layer_median(v))
    assert np.median(relative_to_layer_median(v), axis=1) == pytest.approx(np.ones(3))
    a = pooled_layer_pvalue(v, n_bootstrap=49, random_state=1)
    b = pooled_layer_pvalue(scaled, n_bootstrap=49, random_state=1)
    assert a[1:3] == b[1:3] == (2, 1) and a[3] == pytest.approx(b[3])
    assert a == pooled_layer_pvalue(v, n_bootstrap=49, random_state=1)
    assert round(a[0] * 50) == pytest.approx(a[0] * 50)


def test_pooled_rejection_rate_on_clean_layers_of_equal_spread():
    from art_backdoor_ext.functional.layer_pooling import pooled_layer_pvalue

    rng = np.random.default_rng(5)
    ps = np.array([pooled_layer_pvalue(_layers(rng, (0.15, 0.15, 0.15)), n_bootstrap=49, random_state=i)[0]
                   for i in range(40)])
    assert np.mean(ps < 0.05) <= 0.15 and np.mean(ps > 0.5) >= 0.3  # roughly uniform, not piled near zero


def test_pooled_bad_values():
    from art_backdoor_ext.functional.layer_pooling import pooled_layer_pvalue

    with pytest.raises(DataError, match="finite and > 0"):
        pooled_layer_pvalue(np.array([[1.0, 2.0, 0.0, 3.0, 4.0]]))
    with pytest.raises(DataError, match="at least 4 classes"):
        pooled_layer_pvalue(np.ones((2, 3)))
    with pytest.raises(InvalidParameterError, match="n_bootstrap"):
        pooled_layer_pvalue(np.arange(1.0, 11.0)[None], n_bootstrap=0)


def test_bootstraps_score_the_simulated_sets_as_one_set_at_a_time_would():
    """The simulated sets are fitted together; each set's statistic equals the one-set computation."""
    rng = np.random.default_rng(3)
    v = rng.gamma(12.0, 1.0, size=(3, 10))
    v[:, 6] *= 1.8
    _, target, nulls = pooling._pooled(v)
    simulated = pooling._simulated_layers(v, nulls, target, 40, np.random.default_rng(0))
    assert simulated.shape == (40, 3, 10)
    np.testing.assert_array_equal(pooling._pooled_many(simulated), [pooling._pooled(s)[0] for s in simulated])
    observed, _, _ = pooling._pooled(v)
    p, _, _ = joint_layer_pvalue(v, n_bootstrap=40, random_state=0)
    assert p == (1 + sum(pooling._pooled(s)[0] <= observed for s in simulated)) / 41
    raw, flat = pooling._pooled_raw(v, 3)
    p_pooled, *_ = pooling.pooled_layer_pvalue(v, n_bootstrap=40, random_state=0)
    simulated = pooling._simulated_layers(v, nulls, flat % 10, 40, np.random.default_rng(0))
    assert p_pooled == (1 + sum(pooling._pooled_raw(s, 3)[0] <= raw for s in simulated)) / 41
