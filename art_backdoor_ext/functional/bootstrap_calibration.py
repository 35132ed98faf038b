"""Parametric-bootstrap calibration of the order-statistic p-value of the largest of K statistics.

| Paper link: ../shared/papers/cepa-universal-post-training-defense.md (CEPA's inference "by the order-statistic
  p-value"; this calibration is this project's, not the paper's).

:func:`~art_backdoor_ext.functional.cepa_math.max_statistic_pvalue` fits a Gamma null to the K - 1 smaller
statistics, truncated at the largest, and returns ``1 - G(v_max)^K``. With K = 10 that p-value is far from
uniform under its own null: on K i.i.d. Gamma draws (any shape from 3 to 100) it falls below 0.05 for 23-24% of
sets and below 1e-4 for 2-3% (tools/scratch/cepa_calibration_map.py), because nine values say little about a
Gamma's upper tail and the right-truncated fit favours light tails. A clean model is then flagged far more often
than the significance level says.

:func:`calibrated_max_statistic_pvalue` keeps the fitted null but asks how often *that null* produces a p-value
as small: it draws ``n_bootstrap`` sets of K values from the fitted Gamma, runs the same fit and p-value on each,
and returns ``(1 + #{p_sim <= p_obs}) / (n_bootstrap + 1)``. The raw p-value's null distribution hardly depends
on the Gamma shape (the fit is scale-free), so the estimated shape matters little.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from art_backdoor_ext.exceptions import InvalidParameterError
from art_backdoor_ext.functional.cepa_math import max_statistic_null, max_statistic_pvalue, max_statistic_pvalues

__all__ = ["bootstrap_generator", "calibrated_max_statistic_pvalue"]


def bootstrap_generator(n_bootstrap: int, random_state: int | np.random.Generator | None) -> np.random.Generator:
    """Check ``n_bootstrap`` (an int >= 1) and return the simulation's generator for ``random_state``."""
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 1:
        raise InvalidParameterError(f"n_bootstrap must be an int >= 1, got {n_bootstrap!r}")
    return random_state if isinstance(random_state, np.random.Generator) else np.random.default_rng(random_state)


def calibrated_max_statistic_pvalue(values: ArrayLike, *, n_exclude: int = 1, n_bootstrap: int = 199,
                                    random_state: int | np.random.Generator | None = 0) -> tuple[float, int, float]:
    """Bootstrap-calibrated p-value of the largest of ``n`` statistics (large = anomalous).

    :param values: 1-D statistics, as for :func:`~art_backdoor_ext.functional.cepa_math.max_statistic_pvalue`.
    :param n_exclude: Largest values set aside from the null fit (1 for one putative backdoor target).
    :param n_bootstrap: Simulated sets (>= 1); the smallest attainable p-value is ``1 / (n_bootstrap + 1)``.
    :param random_state: Seed or generator of the simulation (the default 0 makes the p-value reproducible).
    :return: ``(calibrated p-value, index of the maximum, uncalibrated p-value)``; an infinite maximum gives 0.
    """
    rng = bootstrap_generator(n_bootstrap, random_state)
    values = np.asarray(values, dtype=np.float64)
    if np.isposinf(values).any():  # an infinite maximum: p-value 0 (max_statistic_pvalue checks the rest)
        raw, index = max_statistic_pvalue(values, n_exclude=n_exclude)
        return raw, index, raw
    null = max_statistic_null(values, n_exclude=n_exclude)
    raw, index = max_statistic_pvalue(values, n_exclude=n_exclude, null=null)
    simulated = rng.gamma(null.shape, null.scale, size=(int(n_bootstrap), values.size))
    p_simulated, _ = max_statistic_pvalues(simulated, n_exclude=n_exclude)  # all sets fitted together
    as_small = int(np.count_nonzero(p_simulated <= raw))  # a degenerate draw (NaN) counts as not as extreme
    return (1.0 + as_small) / (n_bootstrap + 1.0), index, raw
