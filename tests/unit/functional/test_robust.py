"""Tests of art_backdoor_ext.functional.robust against formulas, reference fits and simulated nulls."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from art_backdoor_ext.exceptions import DataError, InvalidParameterError
from art_backdoor_ext.functional.robust import (
    MAD_CONSISTENCY,
    GammaNull,
    asymmetry_statistics,
    confusion_correction,
    fit_truncated_gamma,
    mad_anomaly_index,
    order_statistic_pvalue,
    reciprocal_statistics,
)


def _null_matrix(rng: np.random.Generator, k: int, shape: float = 5.0, scale: float = 1.0) -> np.ndarray:
    r = rng.gamma(shape, scale, size=(k, k))
    np.fill_diagonal(r, np.nan)
    return r


# ---------------------------------------------------------------- reciprocal_statistics


def test_reciprocal_statistics_values_and_diagonal():
    sizes = np.array([[np.nan, 2.0, 4.0], [0.5, 7.0, 0.0], [1.0, 8.0, np.nan]])
    r = reciprocal_statistics(sizes)
    assert np.isnan(np.diag(r)).all()  # the diagonal (even a finite 7.0) is ignored
    np.testing.assert_allclose(r[0, 1:], [0.5, 0.25])
    np.testing.assert_allclose(r[1, 0], 2.0)
    assert r[1, 2] == math.inf  # zero size: already misclassified
    np.testing.assert_allclose(r[2, :2], [1.0, 0.125])
    assert not np.isnan(sizes[0, 1])  # input not mutated


@pytest.mark.parametrize(
    ("sizes", "match"),
    [
        (np.ones((2, 3)), r"square K x K matrix .* shape \(2, 3\)"),
        (np.ones(4), r"square K x K matrix .* shape \(4,\)"),
        (np.ones((1, 1)), r"at least K=2 classes, got K=1"),
        (np.array([[np.nan, np.nan], [1.0, np.nan]]), r"NaN off the diagonal"),
        (np.array([[np.nan, -1.0], [1.0, np.nan]]), r"sizes must be >= 0, got minimum -1"),
        (np.array([[np.nan, np.inf], [1.0, np.nan]]), r"sizes must be finite off the diagonal"),
        ([["a", "b"], ["c", "d"]], r"numeric K x K matrix"),
    ],
)
def test_reciprocal_statistics_errors(sizes, match):
    with pytest.raises((DataError, InvalidParameterError), match=match):
        reciprocal_statistics(sizes)


# ---------------------------------------------------------------- fit_truncated_gamma / GammaNull


def test_fit_truncated_gamma_recovers_parameters_from_truncated_sample():
    rng = np.random.default_rng(0)
    sample = rng.gamma(3.0, 0.5, size=20_000)
    truncation = float(np.quantile(sample, 0.8))
    kept = sample[sample <= truncation]
    null = fit_truncated_gamma(kept, truncation)
    assert null.shape == pytest.approx(3.0, rel=0.1)
    assert null.scale == pytest.approx(0.5, rel=0.1)
    assert null.truncation == truncation and null.n_fit == kept.size
    # the naive untruncated fit to the same truncated data is badly biased: truncation matters
    naive = fit_truncated_gamma(kept)
    assert abs(naive.shape * naive.scale - 1.5) > 0.2


def test_fit_untruncated_matches_scipy_mle():
    rng = np.random.default_rng(1)
    x = rng.gamma(2.5, 4.0, size=300)
    null = fit_truncated_gamma(x)
    shape, _, scale = stats.gamma.fit(x, floc=0)
    assert null.shape == pytest.approx(shape, rel=1e-4)
    assert null.scale == pytest.approx(scale, rel=1e-4)
    assert null.truncation == math.inf


def test_gamma_null_cdf_sf_logcdf():
    null = GammaNull(shape=2.0, scale=3.0, truncation=5.0, n_fit=10)
    r = np.array([0.5, 3.0, 40.0, 400.0])
    np.testing.assert_allclose(null.cdf(r), stats.gamma.cdf(r, 2.0, scale=3.0))
    np.testing.assert_allclose(null.sf(r), stats.gamma.sf(r, 2.0, scale=3.0))
    np.testing.assert_allclose(null.log_cdf(r[:3]), np.log(stats.gamma.cdf(r[:3], 2.0, scale=3.0)))
    assert null.log_cdf(400.0) < 0  # far tail: stays strictly negative instead of rounding to 0


def test_gamma_null_to_dict_json_round_trip():
    null = GammaNull(shape=np.float64(2.0), scale=np.float64(3.0), truncation=math.inf, n_fit=np.int64(4))
    d = null.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert d == {"shape": 2.0, "scale": 3.0, "truncation": None, "n_fit": 4, "variable": "reciprocal"}
    assert all(type(v) in (float, int, str, type(None)) for v in d.values())


@pytest.mark.parametrize(
    ("values", "truncation", "exc", "match"),
    [
        ([1.0], math.inf, DataError, r"at least 2 value\(s\), got 1"),
        ([[1.0, 2.0]], math.inf, DataError, r"one-dimensional"),
        ([1.0, np.nan], math.inf, DataError, r"must be finite"),
        ([1.0, 0.0], math.inf, DataError, r"must be > 0, got minimum 0"),
        ([1.0, 3.0], 2.0, DataError, r"<= truncation=2, got maximum 3"),
        ([2.0, 2.0, 2.0], math.inf, DataError, r"all equal"),
        ([1.0, 2.0], 0.0, InvalidParameterError, r"truncation must be > 0"),
        ([1.0, 2.0], math.nan, InvalidParameterError, r"truncation must be > 0"),
    ],
)
def test_fit_truncated_gamma_errors(values, truncation, exc, match):
    with pytest.raises(exc, match=match):
        fit_truncated_gamma(values, truncation)


# ---------------------------------------------------------------- order_statistic_pvalue


def test_pvalue_is_calibrated_under_the_null():
    rng = np.random.default_rng(2)
    p10 = np.array([order_statistic_pvalue(_null_matrix(rng, 10)).p_value for _ in range(400)])
    assert abs(p10.mean() - 0.5) < 0.06
    assert 0.02 < np.mean(p10 < 0.05) < 0.15  # plug-in null: mildly anti-conservative at K=10
    p20 = np.array([order_statistic_pvalue(_null_matrix(rng, 20)).p_value for _ in range(200)])
    assert stats.kstest(p20, "uniform").pvalue > 0.01


def test_pvalue_matches_eq4_and_uses_conditional_fit():
    rng = np.random.default_rng(3)
    r = _null_matrix(rng, 6)
    res = order_statistic_pvalue(r)
    values = np.sort(r[~np.eye(6, dtype=bool)])
    assert res.n_statistics == 30 and res.null.n_fit == 25  # (K-1)^2 smallest
    assert res.null.truncation == values[25]  # the smallest of the K-1 largest
    assert res.r_max == values[-1] == r[res.source, res.target]
    expected = 1.0 - res.null.cdf(res.r_max) ** 30
    assert res.p_value == pytest.approx(float(expected), rel=1e-9)
    custom = order_statistic_pvalue(r, n_exclude=2)
    assert custom.null.n_fit == 28 and custom.null.truncation == values[28]


def test_planted_outlier_detected_with_correct_pair():
    rng = np.random.default_rng(4)
    r = _null_matrix(rng, 10)
    r[3, 8] = 5.0 * np.nanmax(r)
    res = order_statistic_pvalue(r)
    assert res.p_value < 1e-3
    assert res.pair == (3, 8) and isinstance(res.source, int) and isinstance(res.target, int)


def test_tiny_pvalues_do_not_round_to_zero():
    rng = np.random.default_rng(5)
    r = _null_matrix(rng, 10)
    r[1, 2] = 60.0
    res = order_statistic_pvalue(r)
    assert 0.0 < res.p_value < 1e-12
    assert res.p_value == pytest.approx(90 * float(res.null.sf(60.0)), rel=1e-6)


def test_robust_null_beats_naive_fit_when_all_sources_hit_one_target():
    """Paper Table 5: a null fitted to all K(K-1) statistics absorbs the K-1 attacked pairs."""
    rng = np.random.default_rng(6)
    r = _null_matrix(rng, 10)
    top = np.nanmax(r)
    for s in range(10):
        if s != 7:
            r[s, 7] = rng.uniform(3.0, 5.0) * top
    robust = order_statistic_pvalue(r)
    naive = order_statistic_pvalue(r, robust=False)
    assert robust.p_value < 1e-6 and robust.target == 7
    assert naive.p_value > 0.05  # the naive null misses the attack at theta = 0.05
    assert naive.null.n_fit == 90 and naive.null.truncation == math.inf and not naive.robust


def test_infinite_reciprocal_gives_zero_pvalue():
    rng = np.random.default_rng(7)
    r = _null_matrix(rng, 5)
    r[0, 4] = math.inf
    res = order_statistic_pvalue(r)
    assert res.p_value == 0.0 and res.pair == (0, 4)
    d = res.to_dict()
    assert d["r_max"] is None


def test_order_statistic_result_to_dict_json_round_trip():
    rng = np.random.default_rng(8)
    res = order_statistic_pvalue(_null_matrix(rng, 4))
    d = res.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert set(d) == {"p_value", "r_max", "source", "target", "null", "n_statistics", "robust"}
    assert type(d["p_value"]) is float and type(d["source"]) is int and d["null"]["n_fit"] == 9


@pytest.mark.parametrize(
    ("matrix", "kwargs", "exc", "match"),
    [
        (np.ones((2, 2)), {}, InvalidParameterError, r"at least K=3 classes, got K=2; .*no null"),
        (np.ones((3, 4)), {}, DataError, r"square"),
        (np.where(np.eye(3) == 1, 1.0, np.nan), {}, DataError, r"NaN off the diagonal"),
        (np.full((3, 3), 0.0), {}, DataError, r"must be > 0 off the diagonal"),
        (np.full((3, 3), -1.0), {}, DataError, r"must be > 0 off the diagonal"),
        (np.arange(9.0).reshape(3, 3) + 1, {"n_exclude": 0}, InvalidParameterError, r"\[1, 4\], got 0"),
        (np.arange(9.0).reshape(3, 3) + 1, {"n_exclude": 5}, InvalidParameterError, r"\[1, 4\], got 5"),
        (np.arange(9.0).reshape(3, 3) + 1, {"n_exclude": 1.5}, InvalidParameterError, r"got 1.5"),
        (np.arange(9.0).reshape(3, 3) + 1, {"n_exclude": True}, InvalidParameterError, r"got True"),
        (
            np.arange(9.0).reshape(3, 3) + 1,
            {"n_exclude": 2, "robust": False},
            InvalidParameterError,
            r"only applies to robust=True",
        ),
        (np.full((3, 3), np.inf), {}, DataError, r"too many infinite reciprocals"),
        (np.full((3, 3), np.inf), {"robust": False}, DataError, r"too many infinite reciprocals"),
    ],
)
def test_order_statistic_pvalue_errors(matrix, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        order_statistic_pvalue(matrix, **kwargs)


# ---------------------------------------------------------------- confusion_correction (Eq. 7)


def _cubic_trace(d0: float) -> tuple[np.ndarray, np.ndarray]:
    d = np.linspace(0.0, 1.2, 13)
    x = d + d0
    return d, 0.2 * x + 0.1 * x**2 + 0.05 * x**3  # polynomial through the origin, rho in [0, 1]


def test_confusion_correction_recovers_exact_shift():
    d, rho = _cubic_trace(0.5)
    assert confusion_correction(d, rho, order=3) == pytest.approx(0.5, abs=1e-8)
    d, rho = _cubic_trace(0.25)
    assert confusion_correction(d, rho, order=3) == pytest.approx(0.25, abs=1e-8)
    d = np.linspace(0.0, 2.0, 9)
    assert confusion_correction(d, 0.3 * (d + 0.4), order=1) == pytest.approx(0.4, abs=1e-10)
    # two real roots left of the origin (-0.4 and -1.9): the one nearest the origin is the compensation
    d = np.linspace(0.0, 1.0, 11)
    x = d + 0.4
    assert confusion_correction(d, 0.3 * x + 0.2 * x**2, order=2) == pytest.approx(0.4, abs=1e-8)


def test_confusion_correction_zero_initial_confusion_needs_no_correction():
    d, rho = _cubic_trace(0.0)
    assert rho[0] == 0.0
    assert confusion_correction(d, rho) == 0.0


def test_confusion_correction_target_fraction_cuts_the_trace():
    d, rho = _cubic_trace(0.5)
    cut = int(np.flatnonzero(rho >= 0.6)[0])
    d_ext = np.concatenate([d[: cut + 1], [2.0, 3.0, 4.0]])
    rho_ext = np.concatenate([rho[: cut + 1], [1.0, 0.2, 1.0]])  # junk after reaching pi
    assert confusion_correction(d_ext, rho_ext, target_fraction=0.6) == pytest.approx(0.5, abs=1e-8)
    assert confusion_correction(d_ext, rho_ext) != pytest.approx(0.5, abs=1e-3)


def test_confusion_correction_fallback_minimises_eq7_profile():
    d = np.linspace(0.0, 1.0, 11)
    rho = 0.3 + 0.5 * d + 0.4 * d**2 - 0.3 * d**3  # saturating: its cubic has no real root <= 0
    d0 = confusion_correction(d, rho, order=3)

    def profile(shift: float) -> float:
        design = np.stack([(d + shift) ** m for m in (1, 2, 3)], axis=1)
        coef = np.linalg.lstsq(design, rho, rcond=None)[0]
        return float(np.sum((design @ coef - rho) ** 2))

    grid = np.linspace(0.0, 10.0, 20_001)
    best = min(profile(g) for g in grid)
    assert 0.0 < d0 < 10.0
    assert profile(d0) <= best * (1 + 1e-6)


@pytest.mark.parametrize(
    ("sizes", "fractions", "kwargs", "exc", "match"),
    [
        ([0.0, 1.0, 2.0], [0.1, 0.5], {}, DataError, r"3 values but trace_misclassification has 2"),
        ([0.5, 1.0, 2.0], [0.1, 0.5, 0.9], {}, DataError, r"must start at 0"),
        ([0.0, -1.0, 2.0], [0.1, 0.5, 0.9], {}, DataError, r">= 0, got minimum -1"),
        ([0.0, 1.0, 2.0], [0.1, 1.5, 0.9], {}, DataError, r"fractions in \[0, 1\]"),
        ([0.0, 1.0, np.nan], [0.1, 0.5, 0.9], {}, DataError, r"must be finite"),
        ([0.0, 1.0, 2.0], [0.1, 0.5, 0.9], {}, DataError, r"order-3 fit needs 4 distinct sizes, got 3"),
        ([0.0, 1.0, 2.0], [0.1, 0.5, 0.9], {"order": 0}, InvalidParameterError, r"order must be an int >= 1"),
        ([0.0, 1.0, 2.0], [0.1, 0.5, 0.9], {"order": 2.0}, InvalidParameterError, r"order must be an int"),
        ([0.0, 1.0, 2.0], [0.1, 0.5, 0.9], {"target_fraction": 0.0}, InvalidParameterError, r"\(0, 1\]"),
        ([0.0, 1.0, 2.0], [0.1, 0.5, 0.9], {"target_fraction": 1.2}, InvalidParameterError, r"\(0, 1\]"),
    ],
)
def test_confusion_correction_errors(sizes, fractions, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        confusion_correction(sizes, fractions, **kwargs)


# ---------------------------------------------------------------- mad_anomaly_index


def test_mad_anomaly_index_hand_computed():
    values = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    # median = 3; |x - 3| = [2, 1, 0, 1, 97]; sorted [0, 1, 1, 2, 97] -> MAD = 1
    both = mad_anomaly_index(values, side="both")
    np.testing.assert_allclose(both, np.array([2.0, 1.0, 0.0, 1.0, 97.0]) / 1.4826)
    np.testing.assert_allclose(mad_anomaly_index(values), np.array([2.0, 1.0, 0.0, 0.0, 0.0]) / 1.4826)
    np.testing.assert_allclose(
        mad_anomaly_index(values, side="high"), np.array([0.0, 0.0, 0.0, 1.0, 97.0]) / 1.4826
    )
    assert MAD_CONSISTENCY == 1.4826


def test_mad_anomaly_index_flags_small_norm_class_like_neural_cleanse():
    norms = np.array([10.0, 11.0, 9.5, 10.5, 2.0, 10.2, 9.8, 10.1, 9.9, 10.4])
    index = mad_anomaly_index(norms, side="low")
    assert np.flatnonzero(index > 2).tolist() == [4]


def test_mad_anomaly_index_zero_mad():
    values = np.array([5.0, 5.0, 5.0, 1.0, 9.0])  # median 5, |dev| = [0, 0, 0, 4, 4] -> MAD 0
    np.testing.assert_array_equal(mad_anomaly_index(values), [0.0, 0.0, 0.0, np.inf, 0.0])
    np.testing.assert_array_equal(mad_anomaly_index(values, side="both"), [0.0, 0.0, 0.0, np.inf, np.inf])
    np.testing.assert_array_equal(mad_anomaly_index(np.full(4, 2.0)), np.zeros(4))


@pytest.mark.parametrize(
    ("values", "kwargs", "exc", "match"),
    [
        ([1.0, 2.0], {"side": "left"}, InvalidParameterError, r"'low', 'high' or 'both', got 'left'"),
        ([], {}, DataError, r"at least 1 value\(s\), got 0"),
        ([[1.0, 2.0]], {}, DataError, r"one-dimensional"),
        ([1.0, np.inf], {}, DataError, r"must be finite"),
    ],
)
def test_mad_anomaly_index_errors(values, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        mad_anomaly_index(values, **kwargs)


# ---------------------------------------------------------------- asymmetry_statistics


def test_asymmetry_statistics_values():
    d = np.array([[np.nan, 1.0, 2.0], [4.0, np.nan, 2.0], [2.0, 1.0, np.nan]])
    a = asymmetry_statistics(d)
    assert np.isnan(np.diag(a)).all()
    assert a[0, 1] == 0.25 and a[1, 0] == 4.0 and a[0, 2] == 1.0 and a[2, 1] == 0.5
    for bad in (np.array([[np.nan, 0.0], [1.0, np.nan]]), np.ones((2, 3))):
        with pytest.raises(DataError):
            asymmetry_statistics(bad)


def test_asymmetry_ignores_confusable_classes_and_keeps_one_way_backdoor():
    """Sizes ~ U(2, 3) with one naturally confusable class pair (small in both directions): the paper's size
    statistic flags every such clean matrix; the asymmetry statistic flags about the nominal 5%, and still finds
    a planted one-way (backdoor) pair."""
    p_size, p_asym, found = [], [], []
    for seed in range(60):
        d = np.random.default_rng(seed).uniform(2, 3, (10, 10))
        np.fill_diagonal(d, np.nan)
        d[1, 8] = d[8, 1] = 1.0
        p_size.append(order_statistic_pvalue(reciprocal_statistics(d)).p_value)
        p_asym.append(order_statistic_pvalue(reciprocal_statistics(asymmetry_statistics(d))).p_value)
        d[5, 2] = 1.0
        res = order_statistic_pvalue(reciprocal_statistics(asymmetry_statistics(d)))
        found.append(res.pair == (5, 2) and res.p_value < 0.05)
    assert max(p_size) < 1e-6
    assert np.mean(np.array(p_asym) < 0.05) <= 0.15
    assert all(found)
