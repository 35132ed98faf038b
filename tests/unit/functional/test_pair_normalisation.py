import numpy as np
import pytest

from art_backdoor_ext.exceptions import DataError, InvalidParameterError
from art_backdoor_ext.functional.pair_normalisation import (
    class_mean_distances,
    clean_margins,
    normalised_statistics,
    smallest_size_source,
    source_normalised_statistics,
)
from art_backdoor_ext.functional.size_null import size_order_statistic_pvalue

OFF = ~np.eye(10, dtype=bool)


def _sizes(rng, k=10):
    d = rng.gamma(20.0, 0.15, size=(k, k))
    np.fill_diagonal(d, np.nan)
    return d


def _leave_one_out(d):
    k = len(d)
    out = np.full((k, k), np.nan)
    for s in range(k):
        for t in range(k):
            if s != t:
                out[s, t] = d[s, t] / np.median([d[s, u] for u in range(k) if u not in (s, t)])
    return out


def test_each_size_divided_by_the_median_of_its_sources_other_pairs():
    rng = np.random.default_rng(0)
    d = _sizes(rng)
    out = source_normalised_statistics(d)
    np.testing.assert_allclose(out[OFF], _leave_one_out(d)[OFF])
    assert np.isnan(np.diag(out)).all()
    assert np.isnan(np.diag(d)).all() and np.isfinite(d[OFF]).all()  # input not mutated
    scaled = d.copy()
    scaled[3] *= 0.2  # an easy source: its whole row scaled
    np.testing.assert_allclose(source_normalised_statistics(scaled)[OFF], out[OFF])


def test_an_easy_source_is_not_flagged_but_a_backdoor_pair_is():
    """One source whose whole row is 3x smaller (an easy class, like mostly dark sneaker images) makes the raw
    sizes flag every clean matrix; the normalised statistic is flagged at about the nominal rate (size null),
    and a backdoor pair in the easy row is still the one found. Including the pair in its own normaliser (the
    plain row median) would flag about 20% of the clean matrices."""
    rng = np.random.default_rng(1)
    p_size, p_norm, p_row_median, found = [], [], [], 0
    for _ in range(100):
        d = _sizes(rng)
        d[7] /= 3.0
        p_size.append(size_order_statistic_pvalue(d).p_value)
        p_norm.append(size_order_statistic_pvalue(source_normalised_statistics(d)).p_value)
        row_median = d / np.nanmedian(d, axis=1, keepdims=True)
        p_row_median.append(size_order_statistic_pvalue(row_median).p_value)
        d[7, 5] /= 4.0
        res = size_order_statistic_pvalue(source_normalised_statistics(d))
        found += res.pair == (7, 5) and res.p_value < 0.05
    assert np.mean(np.array(p_size) < 0.05) > 0.9
    assert np.mean(np.array(p_norm) < 0.05) < 0.12
    assert np.mean(np.array(p_row_median) < 0.05) > 0.15
    assert found >= 90


@pytest.mark.parametrize("bad", [np.ones((2, 2)), np.ones((3, 4)), np.zeros((4, 4)), np.full((4, 4), np.nan)])
def test_source_normalised_bad_sizes(bad):
    with pytest.raises(DataError):
        source_normalised_statistics(bad)


def test_margins_are_quantiles_of_logit_differences():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(60, 3)) * 2
    y = np.repeat([0, 1, 2], 20)
    m = clean_margins(z, y, quantile=0.5, floor=1e-9)
    for s in range(3):
        for t in range(3):
            if s != t:
                assert m[s, t] == pytest.approx(max(np.median(z[y == s, s] - z[y == s, t]), 1e-9))
    assert np.isnan(np.diag(m)).all()
    floored = clean_margins(z, y, floor=5.0)
    assert np.nanmin(floored) == 5.0


def test_probabilities_give_the_same_margins_as_logits():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(30, 4))
    y = np.tile(np.arange(4), 8)[:30]
    prob = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    np.testing.assert_allclose(clean_margins(prob, y), clean_margins(z, y), rtol=1e-6)


def test_margins_bad_input():
    z = np.zeros((6, 3))
    with pytest.raises(DataError, match="no samples of class"):
        clean_margins(z, np.array([0, 0, 1, 1, 0, 1]))
    with pytest.raises(DataError, match="valid labels 0..2"):
        clean_margins(z, np.array([0, 1, 2, 3, 0, 1]))
    with pytest.raises(DataError, match="integer class labels"):
        clean_margins(z, np.array([0.5, 1, 2, 0, 1, 2]))
    with pytest.raises(DataError, match="looks one-hot"):
        clean_margins(z, np.eye(3)[[0, 1, 2, 0, 1, 2]])
    with pytest.raises(DataError, match="3 labels but there are 6 samples"):
        clean_margins(z, np.array([0, 1, 2]))
    with pytest.raises(DataError, match=r"\(N, K\)"):
        clean_margins(z[0], np.array([0, 1, 2]))


def test_normalised_statistics_dispatch():
    rng = np.random.default_rng(5)
    d = _sizes(rng)
    x, y = rng.uniform(size=(30, 1, 2, 2)), np.repeat(np.arange(10), 3)
    z = rng.normal(size=(30, 10))
    base = source_normalised_statistics(d)
    np.testing.assert_allclose(normalised_statistics(d, "source-normalised")[OFF], base[OFF])
    np.testing.assert_allclose(normalised_statistics(d, "source-normalised-distance", x=x, y=y)[OFF],
                               (base / class_mean_distances(x, y))[OFF])
    np.testing.assert_allclose(normalised_statistics(d, "source-normalised-margin", y=y, outputs=z)[OFF],
                               (base / np.sqrt(clean_margins(z, y)))[OFF])
    with pytest.raises(InvalidParameterError, match="needs the clean images"):
        normalised_statistics(d, "source-normalised-distance", y=y)
    with pytest.raises(InvalidParameterError, match="must be one of"):
        normalised_statistics(d, "asymmetry")


def test_class_mean_distances():
    rng = np.random.default_rng(4)
    x = rng.uniform(size=(12, 1, 2, 2)).astype(np.float32)
    y = np.repeat([0, 1, 2], 4)
    dist = class_mean_distances(x, y)
    means = np.stack([x[y == c].reshape(4, -1).mean(0) for c in range(3)])
    assert dist[0, 2] == pytest.approx(np.linalg.norm(means[0] - means[2]), rel=1e-6)
    np.testing.assert_allclose(dist, dist.T)
    assert np.isnan(np.diag(dist)).all()
    with pytest.raises(DataError, match="no samples of class"):
        class_mean_distances(x[:8], np.array([0, 0, 0, 0, 2, 2, 2, 2]))
    with pytest.raises(DataError, match="identical mean"):
        class_mean_distances(np.zeros((3, 4)), np.array([0, 1, 2]))
    with pytest.raises(DataError, match="integer class labels"):
        class_mean_distances(x, y + 0.5)
    with pytest.raises(DataError, match="looks one-hot"):
        class_mean_distances(x, np.eye(3)[y])


def test_smallest_size_source_names_the_cheapest_class_into_the_target():
    d = np.full((4, 4), 5.0)
    np.fill_diagonal(d, np.nan)
    d[3, 2], d[0, 2], d[1, 0] = 1.5, 2.0, 0.1  # (1, 0) is smaller but goes to another target
    assert smallest_size_source(d, 2) == 3
    d[0, 2] = 0.0  # a pair the model already confuses counts as the smallest
    assert smallest_size_source(d, 2) == 0
    assert smallest_size_source(d, 0) == 1  # a source index below the target
    with pytest.raises(DataError, match="target must be a class index in 0..3"):
        smallest_size_source(d, 4)
    with pytest.raises(DataError, match="square K x K"):
        smallest_size_source(d[:2, :2], 0)
    d[1, 2] = np.inf
    with pytest.raises(DataError, match="sizes into target 2 must be finite"):
        smallest_size_source(d, 2)
