import numpy as np
import pytest

from art_backdoor_ext.exceptions import DataError, InvalidParameterError
from art_backdoor_ext.functional.cepa_math import (
    closed_form_shift,
    consensus_statistics,
    max_statistic_pvalue,
    update_norm_plateau,
    update_penalty_weight,
)


def test_closed_form_shift_is_the_mean_and_minimises_the_variance_term():
    rng = np.random.default_rng(0)
    shifts = rng.normal(size=(3, 7, 5))
    valid = np.ones((3, 7), dtype=bool)
    valid[1, 5:] = False  # padding
    mu = closed_form_shift(shifts, valid)
    np.testing.assert_allclose(mu[0], shifts[0].mean(0))
    np.testing.assert_allclose(mu[1], shifts[1, :5].mean(0))

    def variance(m, p):
        return np.sum(valid[p][:, None] * (shifts[p] - m) ** 2)

    for p in range(3):  # Eq. 2 is the global minimiser: any other mu gives a larger variance term
        for _ in range(20):
            assert variance(mu[p], p) < variance(mu[p] + rng.normal(scale=0.1, size=5), p)


def test_consensus_statistics_formula():
    shifts = np.array([[[1.0, 0.0], [3.0, 0.0], [2.0, 3.0]]])
    st = consensus_statistics(shifts)
    np.testing.assert_allclose(st.mu, [[2.0, 1.0]])
    sigma = np.sqrt(np.mean([1 + 1, 1 + 1, 0 + 4]))
    np.testing.assert_allclose(st.sigma, [sigma])
    np.testing.assert_allclose(st.mu_norm, [np.sqrt(5)])
    np.testing.assert_allclose(st.ratio, [sigma / np.sqrt(5)])
    # identical shifts: perfect consensus; zero shifts: no mu, ratio inf
    same = consensus_statistics(np.ones((1, 4, 3)))
    assert same.sigma[0] == 0 and same.ratio[0] == 0
    assert np.isinf(consensus_statistics(np.zeros((1, 4, 3))).ratio[0])
    with pytest.raises(DataError, match="at least one valid"):
        closed_form_shift(np.ones((1, 2, 3)), np.zeros((1, 2), dtype=bool))
    with pytest.raises(DataError, match="valid has shape"):
        closed_form_shift(np.ones((1, 2, 3)), np.ones((2, 2), dtype=bool))


def test_lambda_schedule_multiplies_and_divides_after_patience():
    lam, up, down = np.array([1.0, 1.0]), np.zeros(2, dtype=int), np.zeros(2, dtype=int)
    history = []
    for _ in range(10):  # problem 0 always above the target, problem 1 always below
        lam, up, down = update_penalty_weight(lam, up, down, np.array([True, False]), patience=5, factor=1.5)
        history.append(lam.copy())
    np.testing.assert_allclose([h[0] for h in history], [1, 1, 1, 1, 1.5, 1.5, 1.5, 1.5, 1.5, 2.25])
    np.testing.assert_allclose([h[1] for h in history], [1, 1, 1, 1, 1 / 1.5] + [1 / 1.5] * 4 + [1 / 2.25])
    # the count must be *consecutive*: a switch resets it
    lam, up, down = np.array([1.0]), np.array([4]), np.array([0])
    lam, up, down = update_penalty_weight(lam, up, down, np.array([False]))
    assert lam[0] == 1.0 and up[0] == 0 and down[0] == 1
    with pytest.raises(InvalidParameterError, match="factor"):
        update_penalty_weight(lam, up, down, np.array([True]), factor=1.0)
    with pytest.raises(InvalidParameterError, match="patience"):
        update_penalty_weight(lam, up, down, np.array([True]), patience=0)


def test_norm_plateau_stopping_rule():
    best, stall = np.array([np.inf]), np.array([0])
    stops = []
    for norm, reached in [(3.0, False), (2.0, True), (2.5, True), (1.5, True), (1.6, True), (1.7, False),
                          (1.8, True), (1.9, True)]:
        best, stall, stop = update_norm_plateau(best, stall, [norm], [reached], patience=2)
        stops.append(bool(stop[0]))
    # best only counts iterations at the target; going below the target resets the stall counter
    assert best[0] == 1.5
    assert stops == [False, False, False, False, False, False, False, True]
    _, _, stop = update_norm_plateau([np.inf], [0], [1.0], [True], patience=0)
    assert stop[0]  # patience 0: stop as soon as the target is reached


def test_max_statistic_pvalue():
    rng = np.random.default_rng(1)
    values = rng.gamma(5.0, 1.0, size=10)
    values[3] = 40.0
    p, index = max_statistic_pvalue(values)
    assert index == 3 and p < 1e-3
    p_null, _ = max_statistic_pvalue(rng.gamma(5.0, 1.0, size=10))
    assert p_null > 0.05
    assert max_statistic_pvalue(np.r_[values, np.inf]) == (0.0, 10)
    with pytest.raises(DataError, match="at least 3"):
        max_statistic_pvalue([1.0, 2.0])
    with pytest.raises(DataError, match="> 0"):
        max_statistic_pvalue([1.0, 2.0, -1.0])


def test_sidak_correction():
    from art_backdoor_ext.functional.cepa_math import sidak_correction

    assert sidak_correction(0.1, 3) == pytest.approx(1 - 0.9 ** 3)
    assert sidak_correction(1e-20, 3) == pytest.approx(3e-20)  # no rounding to 0 for tiny p-values
    assert sidak_correction(0.2, 1) == pytest.approx(0.2) and sidak_correction(1.0, 5) == 1.0
    with pytest.raises(InvalidParameterError, match="n_tests must be >= 1"):
        sidak_correction(0.1, 0)
