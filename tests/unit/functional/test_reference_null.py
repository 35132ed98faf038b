import numpy as np
import pytest
from scipy import stats

from art_backdoor_ext.exceptions import DataError
from art_backdoor_ext.functional.reference_null import (
    MIN_REFERENCES,
    centred_log_statistics,
    reference_pvalue,
    reference_zscores,
)


def _population(rng, n_models, n_layers=2, k=10, noise=0.1):
    """Positive statistics with a fixed, uneven profile over classes (one class naturally 2x the others), a
    model-wide scale and independent log-normal noise per model, layer and class."""
    profile = np.log(np.r_[2.0, np.ones(k - 1)])[None, None, :] + rng.normal(0, 0.3, (1, n_layers, k))
    scale = rng.normal(0, 1.0, (n_models, 1, 1))
    return np.exp(profile + scale + rng.normal(0, noise, (n_models, n_layers, k)))


def test_centring_removes_a_model_wide_scale():
    v = np.array([[1.0, 2.0, 4.0], [3.0, 3.0, 3.0]])
    a = centred_log_statistics(v)
    np.testing.assert_allclose(a.mean(axis=-1), 0.0, atol=1e-12)
    np.testing.assert_allclose(centred_log_statistics(7.5 * v), a)
    np.testing.assert_allclose(a[0, 2] - a[0, 1], np.log(2.0))


def test_a_model_at_the_reference_mean_has_zero_z_and_p_one():
    rng = np.random.default_rng(0)
    refs = _population(rng, 6)
    typical = np.exp(centred_log_statistics(refs).mean(axis=0))
    z, df = reference_zscores(3.0 * typical, refs)
    assert df == 5
    np.testing.assert_allclose(z, 0.0, atol=1e-9)
    assert reference_pvalue(z, df)[0] == 1.0


def test_z_follows_the_formula_on_a_hand_example():
    refs = np.exp(np.array([[[0.0, 0.2]], [[0.0, -0.2]], [[0.0, 0.0]]]))  # 3 models, 1 layer, 2 classes
    z, df = reference_zscores(np.exp(np.array([[0.0, 0.6]])), refs)
    a = centred_log_statistics(refs)
    mean = a.mean(axis=0)
    s = np.sqrt(((a - mean) ** 2).sum() / (2 * 2))
    expected = (centred_log_statistics(np.exp(np.array([[0.0, 0.6]]))) - mean) / (s * np.sqrt(1 + 1 / 3))
    np.testing.assert_allclose(z, expected)
    assert z[0, 1] > 0 > z[0, 0]
    p, layer, cls = reference_pvalue(z, df)
    assert (layer, cls) == (0, 1)
    assert p == pytest.approx(min(1.0, 2 * stats.t.sf(z[0, 1], 2)))


def test_a_naturally_easy_class_is_not_flagged_but_a_planted_target_is():
    rng = np.random.default_rng(1)
    population = _population(rng, 11)
    refs, clean = population[:10], population[10]
    p_clean, _, _ = reference_pvalue(*reference_zscores(clean, refs))
    assert p_clean > 0.05  # class 0 is twice the others in every model: ordinary for these references
    attacked = clean.copy()
    attacked[0, 6] *= 2.5  # target 6 at layer 0
    p, layer, cls = reference_pvalue(*reference_zscores(attacked, refs))
    assert p < 0.01 and (layer, cls) == (0, 6)


def test_false_alarms_stay_below_the_level_when_models_share_the_references_distribution():
    rng = np.random.default_rng(2)
    flagged = 0
    trials = 400
    for _ in range(trials):
        population = _population(rng, 6)
        z, df = reference_zscores(population[5], population[:5])
        flagged += reference_pvalue(z, df)[0] < 0.05
    assert flagged / trials <= 0.05


def test_bad_input():
    rng = np.random.default_rng(3)
    refs = _population(rng, 4)
    with pytest.raises(DataError, match="at least"):
        reference_zscores(refs[0], refs[:MIN_REFERENCES - 1])
    with pytest.raises(DataError, match="references must be"):
        reference_zscores(refs[0], refs[:, :1])
    with pytest.raises(DataError, match="positive"):
        reference_zscores(-refs[0], refs)
    with pytest.raises(DataError, match="identical"):
        reference_zscores(refs[0], np.stack([refs[0]] * 3))
    with pytest.raises(DataError, match="df"):
        reference_pvalue(np.zeros((1, 2)), 0)
    before = refs.copy()
    reference_zscores(refs[0], refs)
    np.testing.assert_array_equal(refs, before)
