"""One p-value for a putative target from its statistics at several layers (this project's addition to CEPA).

| Paper link: ../shared/papers/cepa-universal-post-training-defense.md (CEPA evaluates several layers "from the
  same forward passes" and decides with the most extreme; pooling the layers' evidence is this project's).

CEPA's default decision tests each layer on its own (the calibrated order-statistic p-value of the largest of
K statistics, :func:`~art_backdoor_ext.functional.bootstrap_calibration.calibrated_max_statistic_pvalue`) and
corrects the smallest p-value for the number of layers (Sidak). A backdoor whose target is the most extreme
class at every layer, but not extreme enough at any one of them, is then missed. :func:`joint_layer_pvalue`
asks instead how extreme one target is at all layers together:

- each layer's statistics get the Gamma null of the per-layer test (fitted to all but the largest, truncated
  there); each class gets its log tail probability ``log(1 - G_l(v_lt))`` under it;
- the joint statistic is the smallest sum over layers, ``T = min_t sum_l log(1 - G_l(v_lt))``: the target
  whose evidence adds up best;
- its p-value is calibrated by a parametric bootstrap: sets of K classes drawn from the fitted nulls, with
  the layers *correlated* as the non-target classes of the model at hand are (Spearman correlation across
  those K - 1 classes, through a Gaussian copula), refitted, and scored the same way.

Layers of one network are not independent: a class that is easy to shift at one layer tends to be easy at the
next. Treating them as independent would make a clean model whose natural outlier class shows at two layers
look like a backdoor; the copula keeps that dependence in the null. The correlation is estimated without the
putative target, so a backdoor's own agreement across layers does not inflate it.

:func:`pooled_layer_pvalue` (``layer_pooling="pooled"``) asks a third question: is one (layer, target) far
from its layer's median *relative to how far the other classes are from theirs at all layers*? Each layer's
statistics are divided by their median (scale-free), the L x K values are pooled into one set, a Gamma null is
fitted to all but the ``n_exclude`` largest (truncated there) and the order-statistic p-value of the largest of
the L K values is computed; that raw p-value is calibrated by a parametric bootstrap from each layer's *own*
fitted null (with the copula correlation above), so that layers with a wide natural spread do not make the
pooled test fire on their ordinary maxima. One null fitted to 27 values instead of three fitted to nine each
gives the test more power; the price is an assumption, that the relative spread of clean classes is comparable
across layers. A tight layer's mild natural outlier (a class a little easier to reach than the rest, as the bag
class at the last layer of our Fashion-MNIST CNNs) then no longer counts as a backdoor.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from art_backdoor_ext.exceptions import DataError
from art_backdoor_ext.functional.bootstrap_calibration import bootstrap_generator
from art_backdoor_ext.functional.cepa_math import (
    max_statistic_null,
    max_statistic_nulls,
    max_statistic_pvalue,
    max_statistic_pvalues,
)
from art_backdoor_ext.functional.robust import GammaNull

__all__ = ["joint_layer_statistic", "layer_correlation", "joint_layer_pvalue", "pooled_layer_pvalue",
           "relative_to_layer_median"]


def _check(values: ArrayLike) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or v.shape[0] < 1 or v.shape[1] < 4:
        raise DataError(f"values must be (layers, classes) with at least 4 classes, got shape {v.shape}")
    if not np.isfinite(v).all() or (v <= 0).any():
        raise DataError("values must be finite and > 0")
    return v


def joint_layer_statistic(values: ArrayLike) -> tuple[float, int, list[GammaNull]]:
    """``T = min_t sum_l log(1 - G_l(v_lt))`` and its target, with each layer's fitted null.

    :param values: (L, K) statistics, large = anomalous (one row per layer, one column per putative target),
        finite and ``> 0``, K >= 4.
    :return: ``(T, target index, [null per layer])``; smaller T is more extreme.
    :raises DataError: a bad shape or values, or a layer whose null cannot be fitted.
    """
    return _pooled(_check(values))


def _pooled(v: np.ndarray) -> tuple[float, int, list[GammaNull]]:
    nulls = [max_statistic_null(row) for row in v]
    log_tail = np.stack([stats.gamma.logsf(row, null.shape, scale=null.scale) for row, null in zip(v, nulls)])
    pooled = log_tail.sum(axis=0)
    target = int(np.argmin(pooled))
    return float(pooled[target]), target, nulls


def layer_correlation(values: ArrayLike, leave_out: int | None = None) -> np.ndarray:
    """(L, L) Gaussian-copula correlation of the layers, from the Spearman correlation of their statistics
    across classes (``leave_out`` excluded), mapped by ``2 sin(pi rho / 6)`` and made positive definite.

    >>> v = np.array([[1.0, 2.0, 3.0, 4.0, 5.0], [1.5, 2.5, 3.5, 4.5, 0.5]])
    >>> np.round(layer_correlation(v, leave_out=4), 3).tolist()
    [[1.0, 0.999], [0.999, 1.0]]
    """
    return _correlation(_check(values), leave_out)


def _correlation(v: np.ndarray, leave_out: int | None) -> np.ndarray:
    if v.shape[0] == 1:
        return np.ones((1, 1))
    keep = np.ones(v.shape[1], dtype=bool)
    if leave_out is not None:
        keep[leave_out] = False
    ranks = np.apply_along_axis(stats.rankdata, 1, v[:, keep])
    with np.errstate(invalid="ignore"):
        rho = np.atleast_2d(np.corrcoef(ranks))
    rho = np.nan_to_num(rho, nan=0.0)
    corr = 2.0 * np.sin(np.pi * rho / 6.0)
    np.fill_diagonal(corr, 1.0)
    eigenvalues, vectors = np.linalg.eigh(corr)
    corr = (vectors * np.clip(eigenvalues, 1e-3, None)) @ vectors.T
    scale = np.sqrt(np.diag(corr))
    return corr / scale[:, None] / scale[None, :]


def _simulated_layers(v: np.ndarray, nulls: list[GammaNull], target: int, n_bootstrap: int,
                      rng: np.random.Generator) -> np.ndarray:
    """The bootstrap's simulated sets, (B', L, K): each layer from its fitted null, the layers correlated as the
    classes other than ``target`` are (Gaussian copula); a draw with a quantile at 1.0 (z beyond ~8 sd) is
    dropped, which counts it as not as extreme."""
    n_layers, k = v.shape
    z = rng.multivariate_normal(np.zeros(n_layers), layer_correlation(v, leave_out=target),
                                size=(n_bootstrap, k))  # (B, K, L)
    quantiles = stats.norm.cdf(z)
    simulated = np.stack([stats.gamma.ppf(quantiles[:, :, layer], null.shape, scale=null.scale)
                          for layer, null in enumerate(nulls)], axis=1)  # (B, L, K)
    simulated = simulated[np.isfinite(simulated).all(axis=(1, 2))]
    return np.maximum(simulated, np.finfo(float).tiny)


def _pooled_many(simulated: np.ndarray) -> np.ndarray:
    """:func:`_pooled`'s statistic T of each simulated (L, K) set, all layers of all sets fitted together;
    NaN where a layer's null cannot be fitted."""
    n_sets, n_layers, k = simulated.shape
    rows = simulated.reshape(n_sets * n_layers, k)
    shapes, scales = max_statistic_nulls(rows)
    with np.errstate(invalid="ignore"):
        log_tail = stats.gamma.logsf(rows, shapes[:, None], scale=scales[:, None])
    return log_tail.reshape(n_sets, n_layers, k).sum(axis=1).min(axis=1)


def joint_layer_pvalue(values: ArrayLike, *, n_bootstrap: int = 199,
                       random_state: int | np.random.Generator | None = 0) -> tuple[float, int, float]:
    """Bootstrap-calibrated p-value of the target most extreme over all layers together (see the module doc).

    :param values: (L, K) statistics, large = anomalous, finite and ``> 0``, K >= 4.
    :param n_bootstrap: Simulated sets (>= 1); the smallest attainable p-value is ``1 / (n_bootstrap + 1)``.
    :param random_state: Seed or generator of the simulation (the default 0 makes the p-value reproducible).
    :return: ``(p-value, target index, T)``.

    >>> rng = np.random.default_rng(0)
    >>> v = rng.gamma(10.0, 1.0, size=(3, 10)); v[:, 4] *= 2.2   # class 4 high at every layer
    >>> p, target, _ = joint_layer_pvalue(v, n_bootstrap=99)
    >>> target, p < 0.05
    (4, True)
    """
    rng = bootstrap_generator(n_bootstrap, random_state)
    v = _check(values)
    observed, target, nulls = _pooled(v)
    simulated_t = _pooled_many(_simulated_layers(v, nulls, target, int(n_bootstrap), rng))
    as_extreme = int(np.count_nonzero(simulated_t <= observed))  # a degenerate draw (NaN): not as extreme
    return (1.0 + as_extreme) / (n_bootstrap + 1.0), target, observed


def relative_to_layer_median(values: ArrayLike) -> np.ndarray:
    """(L, K) statistics divided by each layer's median: scale-free, 1 = an ordinary class of its layer."""
    v = _check(values)
    return v / np.median(v, axis=1, keepdims=True)


def _pooled_raw(v: np.ndarray, n_exclude: int) -> tuple[float, int]:
    return max_statistic_pvalue((v / np.median(v, axis=1, keepdims=True)).ravel(), n_exclude=n_exclude)


def pooled_layer_pvalue(values: ArrayLike, *, n_exclude: int = 3, n_bootstrap: int = 199,
                        random_state: int | np.random.Generator | None = 0) -> tuple[float, int, int, float]:
    """Bootstrap-calibrated p-value of the largest median-relative statistic over all layers pooled (see the
    module doc).

    :param values: (L, K) statistics, large = anomalous, finite and ``> 0``, K >= 4.
    :param n_exclude: Largest pooled values set aside from the null fit (3: a backdoor target may be extreme at
        up to three layers).
    :param n_bootstrap: Simulated sets (>= 1); the smallest attainable p-value is ``1 / (n_bootstrap + 1)``.
    :param random_state: Seed or generator of the simulation (the default 0 makes the p-value reproducible).
    :return: ``(calibrated p-value, target index, layer index, uncalibrated p-value)``.

    >>> rng = np.random.default_rng(0)
    >>> v = rng.gamma(20.0, 1.0, size=(3, 10)); v[0, 4] *= 4.0   # class 4 stands out at layer 0 only
    >>> p, target, layer, _ = pooled_layer_pvalue(v, n_bootstrap=99)
    >>> target, layer, p < 0.05
    (4, 0, True)
    """
    rng = bootstrap_generator(n_bootstrap, random_state)
    v = _check(values)
    n_layers, k = v.shape
    if n_layers * k < n_exclude + 2:
        raise DataError(f"need at least {n_exclude + 2} pooled statistics, got {n_layers * k}")
    raw, flat = _pooled_raw(v, n_exclude)
    layer, target = divmod(flat, k)
    nulls = [max_statistic_null(row) for row in v]
    simulated = _simulated_layers(v, nulls, target, int(n_bootstrap), rng)
    relative = (simulated / np.median(simulated, axis=2, keepdims=True)).reshape(len(simulated), -1)
    p_simulated, _ = max_statistic_pvalues(relative, n_exclude=n_exclude)  # as _pooled_raw, all sets at once
    as_small = int(np.count_nonzero(p_simulated <= raw))  # a degenerate draw (NaN): not as extreme
    return (1.0 + as_small) / (n_bootstrap + 1.0), int(target), int(layer), float(raw)
