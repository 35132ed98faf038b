"""How many extreme class-pair statistics AD sets aside before fitting its null (this project's addition).

| Paper link: https://arxiv.org/abs/1908.10498 (AD, Section 3.1.3: the ``K - 1`` most extreme statistics are
  set aside, so that an attack with up to ``K - 1`` source classes does not enter the null)

Setting ``K - 1`` values aside protects the null from a multi-source attack, whose source pairs into the target
are all extreme; with one source, eight ordinary pairs leave the fit and the truncated fit extrapolates its tail
from the ninth smallest value. On exactly Gamma-distributed sizes that costs nothing (simulated, the two tests
find one planted pair about equally often), but the size-like statistics of real scans are not exactly Gamma in
their lower tail, where naturally confusable pairs sit. :func:`order_statistic_with_exclusion` runs the test
with ``"k-1"`` (the paper), ``"one"``, or ``"combined"``: both, keeping the smaller p-value, Sidak-corrected
for the two tests (``1 - (1 - p)^2``): if each test is calibrated, the rule's false-alarm rate is at most
``2 (1 - sqrt(1 - theta))`` (0.0506 at theta = 0.05) whatever their dependence (a union bound), and theta for
independent tests; these two are positively dependent, where the correction is conservative. Measured on
Fashion-MNIST scans: docs/order-statistic.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from art_backdoor_ext.exceptions import InvalidParameterError
from art_backdoor_ext.functional.cepa_math import sidak_correction
from art_backdoor_ext.functional.robust import OrderStatisticResult

__all__ = ["EXCLUSIONS", "order_statistic_with_exclusion"]

#: ``"k-1"``: the paper's K - 1 values set aside; ``"one"``: one; ``"combined"``: both tests, the smaller p-value
#: Sidak-corrected for two.
EXCLUSIONS = ("k-1", "one", "combined")


def order_statistic_with_exclusion(test: Callable[..., OrderStatisticResult], statistics: np.ndarray,
                                   exclusion: str) -> tuple[OrderStatisticResult, int]:
    """Run an order-statistic ``test`` (a function of the K x K statistics with an ``n_exclude`` keyword, such as
    :func:`~art_backdoor_ext.functional.size_null.size_order_statistic_pvalue`) under an ``exclusion`` rule.

    :param test: The test; called once (``"k-1"``, ``"one"``) or twice (``"combined"``).
    :param statistics: K x K statistics as ``test`` takes them.
    :param exclusion: One of :data:`EXCLUSIONS`.
    :return: ``(result, n_exclude of the test whose result it is)``; for ``"combined"`` the result of the test
        with the smaller p-value (ties: ``K - 1``), its p-value replaced by ``1 - (1 - p)^2``.
    :raises InvalidParameterError: an unknown rule.

    >>> from art_backdoor_ext.functional.size_null import size_order_statistic_pvalue
    >>> rng = np.random.default_rng(0)
    >>> d = rng.gamma(20.0, 0.1, size=(10, 10)); d[3, 7] *= 0.4
    >>> result, n_exclude = order_statistic_with_exclusion(size_order_statistic_pvalue, d, "combined")
    >>> result.pair, n_exclude in (1, 9)
    ((3, 7), True)
    """
    if exclusion not in EXCLUSIONS:
        raise InvalidParameterError(f"exclusion must be one of {EXCLUSIONS}, got {exclusion!r}")
    k = np.asarray(statistics).shape[0]
    if exclusion == "k-1":
        return test(statistics, n_exclude=k - 1), k - 1
    if exclusion == "one":
        return test(statistics, n_exclude=1), 1
    many, one = test(statistics, n_exclude=k - 1), test(statistics, n_exclude=1)
    chosen, n_exclude = (one, 1) if one.p_value < many.p_value else (many, k - 1)
    return dataclasses.replace(chosen, p_value=sidak_correction(chosen.p_value, 2)), n_exclude
