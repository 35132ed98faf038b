import numpy as np
import pytest

from art_backdoor_ext.exceptions import InvalidParameterError
from art_backdoor_ext.functional.null_exclusion import order_statistic_with_exclusion
from art_backdoor_ext.functional.robust import order_statistic_pvalue, reciprocal_statistics
from art_backdoor_ext.functional.size_null import size_order_statistic_pvalue


def _sizes(rng, factor=1.0, pairs=((3, 7),)):
    d = rng.gamma(20.0, 0.1, size=(10, 10))
    np.fill_diagonal(d, np.nan)
    for s, t in pairs:
        d[s, t] *= factor
    return d


def test_each_rule_runs_the_test_it_names():
    d = _sizes(np.random.default_rng(0), 0.6)
    many, n_many = order_statistic_with_exclusion(size_order_statistic_pvalue, d, "k-1")
    one, n_one = order_statistic_with_exclusion(size_order_statistic_pvalue, d, "one")
    assert (n_many, n_one) == (9, 1)
    assert many.p_value == size_order_statistic_pvalue(d, n_exclude=9).p_value
    assert one.p_value == size_order_statistic_pvalue(d, n_exclude=1).p_value
    combined, n = order_statistic_with_exclusion(size_order_statistic_pvalue, d, "combined")
    smaller = min(many.p_value, one.p_value)
    assert n == (1 if one.p_value < many.p_value else 9)
    assert combined.p_value == pytest.approx(1 - (1 - smaller) ** 2, rel=1e-12)
    assert combined.pair == (one if n == 1 else many).pair
    # the paper's null takes the rule too (on reciprocals, where the largest values are set aside)
    r = reciprocal_statistics(d)
    paper, n_paper = order_statistic_with_exclusion(order_statistic_pvalue, r, "one")
    assert n_paper == 1 and paper.p_value == order_statistic_pvalue(r, n_exclude=1).p_value


def test_combined_keeps_most_of_the_stronger_tests_power():
    """On Gamma sizes with a planted target (one source, or all nine), the combined rule finds it nearly as often
    as the better of its two tests (the Sidak price), far more often than the weaker one on nine sources."""
    rng = np.random.default_rng(1)
    for pairs in (((3, 7),), tuple((s, 7) for s in range(10) if s != 7)):
        hits = {"k-1": 0, "one": 0, "combined": 0}
        for _ in range(80):
            d = _sizes(rng, 0.45, pairs)
            for rule in hits:
                result, _ = order_statistic_with_exclusion(size_order_statistic_pvalue, d, rule)
                hits[rule] += result.p_value < 0.05 and result.target == 7
        best = max(hits["k-1"], hits["one"])
        assert best > 20 and hits["combined"] >= 0.85 * best
    assert hits["combined"] > 1.5 * hits["one"]  # nine sources: set one value aside and the null absorbs them


def test_unknown_rule_is_a_clear_error():
    with pytest.raises(InvalidParameterError, match="exclusion must be one of"):
        order_statistic_with_exclusion(size_order_statistic_pvalue, _sizes(np.random.default_rng(2)), "two")
