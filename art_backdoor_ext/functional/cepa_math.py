"""Pure math of CEPA (Li, Wang, Miller & Kesidis, 2024): consensus shift, consensus statistics, lambda schedule.

| Paper link: ../shared/papers/cepa-universal-post-training-defense.md ("Universal post-training
  reverse-engineering defense against backdoors in deep neural networks"), Eq. 1-2 and Section 4.1.

- :func:`closed_form_shift`: Eq. 2, the common embedded perturbation ``mu`` that minimises the variance term of
  Eq. 1 for fixed input perturbations: the mean of the embedded shifts ``f(x + delta_x) - f(x)``.
- :func:`consensus_statistics`: ``mu``, ``sigma`` (root mean squared deviation of the shifts about ``mu``),
  ``||mu||`` and the consensus ratio ``sigma / ||mu||`` (Section 3).
- :func:`update_penalty_weight`: the lambda schedule of Section 4.1 (multiply by 1.5 after 5 consecutive
  iterations at or above the target misclassification, divide by 1.5 after 5 consecutive iterations below).
- :func:`update_norm_plateau`: the stopping rule of Section 4.1 (stop once the mean norm of the deltas has not
  decreased for ``patience`` consecutive iterations while the misclassification stays at or above the target).
- :func:`sidak_correction`: ``1 - (1 - p)^m``, the p-value of the smallest of m independent tests.
- :func:`max_statistic_pvalue`: the order-statistic p-value of the largest of a 1-D set of statistics (the
  K-value analogue of AD's Eq. 4, for the all-to-one variant with one statistic per putative target);
  :func:`max_statistic_pvalues` the same for many sets at once.

Shapes: every function works on a leading batch of problems, one row per problem. numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from art_backdoor_ext.exceptions import DataError, InvalidParameterError
from art_backdoor_ext.functional.gamma_fit import fit_truncated_gamma_many
from art_backdoor_ext.functional.robust import GammaNull, fit_truncated_gamma

__all__ = [
    "ConsensusStatistics",
    "closed_form_shift",
    "consensus_statistics",
    "update_penalty_weight",
    "update_norm_plateau",
    "max_statistic_null",
    "max_statistic_nulls",
    "max_statistic_pvalue",
    "max_statistic_pvalues",
    "sidak_correction",
]


def _shifts_and_weights(shifts: ArrayLike, valid: ArrayLike | None) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(shifts, dtype=np.float64)
    if s.ndim < 2:
        raise DataError(f"shifts must have shape (..., n_samples, D), got {s.shape}")
    if valid is None:
        w = np.ones(s.shape[:-1], dtype=np.float64)
    else:
        w = np.asarray(valid).astype(np.float64)
        if w.shape != s.shape[:-1]:
            raise DataError(f"valid has shape {w.shape} but shifts {s.shape} need {s.shape[:-1]}")
    if (w.sum(-1) == 0).any():
        raise DataError("every problem needs at least one valid sample")
    return s, w


def closed_form_shift(shifts: ArrayLike, valid: ArrayLike | None = None) -> np.ndarray:
    """Eq. 2: ``mu = 1/|D_s| sum_x (f(x + delta_x) - f(x))``, the minimiser of the variance term of Eq. 1.

    :param shifts: Embedded shifts ``f(x + delta_x) - f(x)``, shape ``(..., n, D)``.
    :param valid: Optional boolean mask ``(..., n)`` of the samples that belong to each problem (padding
        excluded).
    :return: ``mu`` with shape ``(..., D)``.

    >>> closed_form_shift([[1.0, 0.0], [3.0, 2.0]]).tolist()
    [2.0, 1.0]
    """
    s, w = _shifts_and_weights(shifts, valid)
    return (s * w[..., None]).sum(-2) / w.sum(-1)[..., None]


@dataclass(frozen=True)
class ConsensusStatistics:
    """CEPA's per-problem statistics (Section 3).

    :param mu: common embedded perturbation (Eq. 2), ``(..., D)``.
    :param sigma: ``sqrt(1/|D_s| sum_x ||f(x + delta_x) - f(x) - mu||^2)``, ``(...)``.
    :param mu_norm: ``||mu||_2``, ``(...)``.
    :param ratio: the consensus measure ``sigma / ||mu||``; ``inf`` where ``mu = 0``.
    """

    mu: np.ndarray
    sigma: np.ndarray
    mu_norm: np.ndarray
    ratio: np.ndarray


def consensus_statistics(shifts: ArrayLike, valid: ArrayLike | None = None) -> ConsensusStatistics:
    """``mu``, ``sigma``, ``||mu||`` and ``sigma / ||mu||`` of the embedded shifts of each problem.

    :param shifts: ``(..., n, D)`` embedded shifts ``f(x + delta_x) - f(x)``.
    :param valid: Optional ``(..., n)`` mask of real (non-padding) samples.

    >>> st = consensus_statistics([[1.0, 0.0], [3.0, 0.0]])
    >>> float(st.sigma), float(st.mu_norm), float(st.ratio)
    (1.0, 2.0, 0.5)
    """
    s, w = _shifts_and_weights(shifts, valid)
    mu = (s * w[..., None]).sum(-2) / w.sum(-1)[..., None]
    sq = ((s - mu[..., None, :]) ** 2).sum(-1)
    sigma = np.sqrt((sq * w).sum(-1) / w.sum(-1))
    mu_norm = np.linalg.norm(mu, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(mu_norm > 0, sigma / np.where(mu_norm > 0, mu_norm, 1.0), np.inf)
    return ConsensusStatistics(mu, sigma, mu_norm, ratio)


def _check_schedule(patience: int, factor: float) -> None:
    if isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) or patience < 1:
        raise InvalidParameterError(f"patience must be an int >= 1, got {patience!r}")
    if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 1):
        raise InvalidParameterError(f"factor must be a number > 1, got {factor!r}")


def update_penalty_weight(
    lam: ArrayLike, above: ArrayLike, below: ArrayLike, reached: ArrayLike, *, patience: int = 5,
    factor: float = 1.5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One step of the lambda schedule of Section 4.1, for every problem at once.

    ``above`` / ``below`` count the consecutive iterations at or above / below the target misclassification
    (``reached``). After this iteration is counted, a problem whose ``above`` count reaches ``patience`` has its
    lambda multiplied by ``factor`` (tightening the consensus) and the count reset; one whose ``below`` count
    reaches ``patience`` has its lambda divided by ``factor``. An iteration on the other side resets a count.

    :param lam: ``(P,)`` current weights ``lambda > 0``.
    :param above: ``(P,)`` consecutive iterations at or above the target so far.
    :param below: ``(P,)`` consecutive iterations below the target so far.
    :param reached: ``(P,)`` booleans, this iteration at or above the target.
    :return: new ``(lam, above, below)`` (new arrays).

    >>> lam, up, down = np.array([1.0]), np.array([4]), np.array([0])
    >>> [v.tolist() for v in update_penalty_weight(lam, up, down, np.array([True]))]
    [[1.5], [0], [0]]
    """
    _check_schedule(patience, factor)
    lam_a = np.array(lam, dtype=np.float64)
    hit = np.asarray(reached, dtype=bool)
    up = np.where(hit, np.asarray(above, dtype=np.int64) + 1, 0)
    down = np.where(hit, 0, np.asarray(below, dtype=np.int64) + 1)
    raise_ = up >= patience
    lower = down >= patience
    lam_a = np.where(raise_, lam_a * factor, lam_a)
    lam_a = np.where(lower, lam_a / factor, lam_a)
    return lam_a, np.where(raise_, 0, up), np.where(lower, 0, down)


def update_norm_plateau(
    best: ArrayLike, stall: ArrayLike, mean_norm: ArrayLike, reached: ArrayLike, *, patience: int = 50
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One step of the stopping rule of Section 4.1, for every problem at once.

    ``best`` is the smallest mean norm of the deltas seen at or above the target (``inf`` before); ``stall``
    counts the consecutive iterations at or above the target without a new smallest norm. An iteration below the
    target resets ``stall``. A problem stops when it is at or above the target and ``stall >= patience``
    (``patience=0``: stop as soon as the target is reached, the rule of Section 3).

    :return: new ``(best, stall, stop)``.

    >>> b, s, stop = update_norm_plateau([1.0], [1], [2.0], [True], patience=2)
    >>> b.tolist(), s.tolist(), stop.tolist()
    ([1.0], [2], [True])
    """
    if isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) or patience < 0:
        raise InvalidParameterError(f"patience must be an int >= 0, got {patience!r}")
    best_a = np.array(best, dtype=np.float64)
    norm = np.asarray(mean_norm, dtype=np.float64)
    hit = np.asarray(reached, dtype=bool)
    improved = hit & (norm < best_a)
    best_a = np.where(improved, norm, best_a)
    stall_a = np.where(hit & ~improved, np.asarray(stall, dtype=np.int64) + 1, 0)
    return best_a, stall_a, hit & (stall_a >= patience)


def _max_statistic_parts(values: ArrayLike, n_exclude: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Checked statistics, the values the null is fitted to, and its truncation point."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise DataError(f"values must be one-dimensional, got shape {v.shape}")
    if isinstance(n_exclude, bool) or not isinstance(n_exclude, (int, np.integer)) or n_exclude < 1:
        raise InvalidParameterError(f"n_exclude must be an int >= 1, got {n_exclude!r}")
    if v.size < n_exclude + 2:
        raise DataError(f"need at least {n_exclude + 2} statistics, got {v.size}")
    if np.isnan(v).any() or (v <= 0).any():
        raise DataError("values must be > 0 and not NaN")
    order = np.sort(v)
    fit, truncation = order[: v.size - n_exclude], float(order[v.size - n_exclude])
    if not np.isfinite(fit).all():
        raise DataError("too many infinite statistics to fit a null")
    return v, fit, truncation


def max_statistic_null(values: ArrayLike, *, n_exclude: int = 1) -> GammaNull:
    """The Gamma null of :func:`max_statistic_pvalue`: fitted to all but the ``n_exclude`` largest values,
    truncated at the smallest of them."""
    _, fit, truncation = _max_statistic_parts(values, n_exclude)
    return fit_truncated_gamma(fit, truncation)


def max_statistic_pvalue(values: ArrayLike, *, n_exclude: int = 1,
                         null: GammaNull | None = None) -> tuple[float, int]:
    """Order-statistic p-value of the largest of ``n`` statistics (large = anomalous), robust Gamma null.

    The ``n_exclude`` largest values are set aside, a Gamma null is fitted by maximum likelihood to the others,
    truncated at the smallest excluded value (:func:`~art_backdoor_ext.functional.robust.fit_truncated_gamma`,
    as in AD Section 3.1.3), and ``p = 1 - G(v_max)^n``. Used for CEPA's all-to-one variant (one statistic per
    putative target); the class-pair variant uses :func:`~art_backdoor_ext.functional.robust.order_statistic_pvalue`.
    With n = 10 this p-value is anti-conservative (below 0.05 for about a quarter of i.i.d. Gamma sets):
    :func:`~art_backdoor_ext.functional.bootstrap_calibration.calibrated_max_statistic_pvalue` calibrates it.

    :param values: 1-D statistics, finite and ``> 0``, at least ``n_exclude + 2``; ``inf`` maximum allowed
        (p-value 0).
    :param null: The already fitted :func:`max_statistic_null` of ``values`` (None: fit it).
    :return: ``(p_value, index of the maximum)``.
    """
    v, fit, truncation = _max_statistic_parts(values, n_exclude)
    index = int(np.argmax(v))
    if not np.isfinite(v[index]):
        return 0.0, index
    null = fit_truncated_gamma(fit, truncation) if null is None else null
    p = float(np.clip(-np.expm1(v.size * float(null.log_cdf(v[index]))), 0.0, 1.0))
    return p, index


def max_statistic_nulls(rows: np.ndarray, *, n_exclude: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """:func:`max_statistic_null` of each row of a (B, n) array, fitted together: ``(shapes, scales)``, NaN where
    a row's null cannot be fitted (values not finite and ``> 0``, or all equal)."""
    n = rows.shape[1]
    order = np.sort(rows, axis=1)
    return fit_truncated_gamma_many(order[:, : n - n_exclude], order[:, n - n_exclude])


def max_statistic_pvalues(rows: ArrayLike, *, n_exclude: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """:func:`max_statistic_pvalue` of each row of a (B, n) array at once (the bootstraps' simulated sets): the
    nulls are fitted together (:func:`~art_backdoor_ext.functional.gamma_fit.fit_truncated_gamma_many`), so a
    row gets the same p-value as alone.

    :param rows: (B, n) statistics, ``n >= n_exclude + 2``.
    :return: ``(p-values, index of each row's maximum)``; a row that is not finite and ``> 0``, or whose null
        cannot be fitted (all fitted values equal), gets a NaN p-value, where the single-set function raises.
    """
    v = np.asarray(rows, dtype=np.float64)
    if v.ndim != 2:
        raise DataError(f"rows must be two-dimensional (sets, statistics), got shape {v.shape}")
    if isinstance(n_exclude, bool) or not isinstance(n_exclude, (int, np.integer)) or n_exclude < 1:
        raise InvalidParameterError(f"n_exclude must be an int >= 1, got {n_exclude!r}")
    if v.shape[1] < n_exclude + 2:
        raise DataError(f"need at least {n_exclude + 2} statistics per row, got {v.shape[1]}")
    n = v.shape[1]
    shapes, scales = max_statistic_nulls(v, n_exclude=n_exclude)
    valid = np.isfinite(v).all(axis=1) & (v > 0).all(axis=1) & np.isfinite(shapes)
    index = np.argmax(np.where(np.isnan(v), -np.inf, v), axis=1)
    v_max = v[np.arange(v.shape[0]), index]
    with np.errstate(invalid="ignore", divide="ignore"):
        sf = stats.gamma.sf(v_max, np.where(valid, shapes, 1.0), scale=np.where(valid, scales, 1.0))
        log_cdf = np.where(sf < 0.5, np.log1p(-np.minimum(sf, 0.5)), np.log(np.maximum(1.0 - sf, 0.0)))
    p = np.clip(-np.expm1(n * log_cdf), 0.0, 1.0)
    return np.where(valid, p, np.nan), index


def sidak_correction(p_value: float, n_tests: int) -> float:
    """Sidak-corrected p-value ``1 - (1 - p)^m`` of the smallest of ``n_tests`` p-values (exact for independent
    tests, conservative for positively correlated ones), computed as ``-expm1(m log1p(-p))`` so that tiny
    p-values keep their precision; ``p >= 1`` gives 1."""
    if n_tests < 1:
        raise InvalidParameterError(f"n_tests must be >= 1, got {n_tests}")
    return 1.0 if p_value >= 1 else float(-np.expm1(n_tests * np.log1p(-p_value)))
