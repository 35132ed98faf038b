"""A per-class null from clean *reference models*: how unusual is one class of a scanned model, compared with the same
class of clean models of the same architecture? (This project's addition to CEPA, opt-in; pure numpy/scipy.)

| Paper link: ../shared/papers/cepa-universal-post-training-defense.md (CEPA's own inference compares the K classes
  of one model with each other; comparing each class with clean reference models is this project's.)

CEPA's per-model tests fit a null to the other classes of the scanned model. A class that is naturally easy to
reach (the bag class of our Fashion-MNIST CNNs, at 1.8-2.0 times the median at ``conv1`` in clean models) then
looks like a backdoor target, and a real target that is extreme but not by far is lost among classes that are
naturally hard to reach. With R clean reference models of the same architecture, scanned with the same settings,
each class is compared with *itself*:

- per model, layer and class: ``a = log(v) - mean over classes of log(v)``, with ``v`` the statistic (higher = more
  suspicious, e.g. CEPA's ``1 / sigma``); the centring removes a model-wide scale;
- per layer and class, the reference mean ``m`` over the R references, and one spread per layer ``s``, pooled over
  classes: ``s^2 = sum over references and classes of (a - m)^2 / (K (R - 1))``;
- for the scanned model, ``z = (a - m) / (s sqrt(1 + 1/R))`` (a prediction interval: ``m`` is itself estimated);
- the p-value of the largest ``z`` over the L layers and K classes: Bonferroni over the ``L K`` values, each with a
  Student t tail on **R - 1 degrees of freedom** (:func:`reference_pvalue`).

The degrees of freedom are counted in models, not in the ``K (R - 1)`` residuals the spread is pooled from: the
classes of one model move together (the centring alone ties them), and the tails of clean models' largest ``z``
are heavier than ``K (R - 1)`` degrees of freedom allow. Measured on 28 clean Fashion-MNIST models (references
drawn from the others): with ``K (R - 1)`` degrees of freedom 10-12% were flagged at 0.05, with ``R - 1`` about
0.4% (docs/benchmarks.md, "Clean reference models: a per-class null instead of the per-model one").

The test assumes the references are trained like the scanned model (architecture, data distribution, training
recipe); references trained otherwise shift ``m`` and make the test flag or miss for that reason alone.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from art_backdoor_ext.exceptions import DataError

__all__ = ["centred_log_statistics", "reference_zscores", "reference_pvalue", "MIN_REFERENCES"]

#: Fewest reference models the test accepts (two degrees of freedom).
MIN_REFERENCES = 3


def centred_log_statistics(values: ArrayLike) -> np.ndarray:
    """
    ``log(values)`` minus its mean over the last axis (the classes).

    :param values: ``(..., K)`` positive statistics, higher = more suspicious.
    :return: float64, the same shape.
    :raises DataError: a value that is not finite and positive, fewer than two classes.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim < 1 or arr.shape[-1] < 2:
        raise DataError(f"the statistics need a class axis of at least two classes, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise DataError("the statistics must be finite and positive (e.g. CEPA's 1 / sigma)")
    logs = np.log(arr)
    return logs - logs.mean(axis=-1, keepdims=True)


def reference_zscores(values: ArrayLike, references: ArrayLike) -> tuple[np.ndarray, int]:
    """
    Per layer and class, how far the scanned model's centred log statistic lies above the clean references' mean
    for that class, in units of the references' pooled spread (a prediction-interval z).

    :param values: ``(L, K)`` statistics of the scanned model (higher = more suspicious).
    :param references: ``(R, L, K)`` the same statistics of R clean reference models, R >= ``MIN_REFERENCES``.
    :return: ``(z, df)``: float64 ``(L, K)``, and the degrees of freedom of the test (``R - 1``).
    :raises DataError: shapes that do not match, too few references, references without spread at a layer.
    """
    a = centred_log_statistics(values)
    refs = centred_log_statistics(references)
    if a.ndim != 2:
        raise DataError(f"values must be (layers, classes), got shape {a.shape}")
    if refs.ndim != 3 or refs.shape[1:] != a.shape:
        raise DataError(f"references must be (models, layers, classes) = (R, {a.shape[0]}, {a.shape[1]}), "
                        f"got shape {refs.shape}")
    n_refs, _, k = refs.shape
    if n_refs < MIN_REFERENCES:
        raise DataError(f"the reference null needs at least {MIN_REFERENCES} reference models, got {n_refs}")
    mean = refs.mean(axis=0)
    spread = np.sqrt(((refs - mean) ** 2).sum(axis=(0, 2)) / (k * (n_refs - 1)))
    if np.any(spread <= 1e-12 * (1.0 + np.abs(mean).max())):  # rounding aside, no spread
        raise DataError("the reference models have identical statistics at some layer (copies of one model?)")
    z = (a - mean) / (spread[:, None] * np.sqrt(1.0 + 1.0 / n_refs))
    return z, n_refs - 1


def reference_pvalue(z: ArrayLike, df: int) -> tuple[float, int, int]:
    """
    Bonferroni p-value of the largest of the ``L K`` z-scores, each with a Student t tail on ``df`` degrees of
    freedom.

    :param z: ``(L, K)`` from :func:`reference_zscores`.
    :param df: Its degrees of freedom (>= 1).
    :return: ``(p_value, layer_index, class_index)`` of the largest z.
    """
    zz = np.asarray(z, dtype=np.float64)
    if zz.ndim != 2 or zz.size == 0 or not np.all(np.isfinite(zz)):
        raise DataError(f"z must be a finite (layers, classes) array, got shape {zz.shape}")
    if df < 1:
        raise DataError(f"df must be at least 1, got {df}")
    layer, cls = np.unravel_index(int(np.argmax(zz)), zz.shape)
    p = min(1.0, zz.size * float(stats.t.sf(zz[layer, cls], df)))
    return p, int(layer), int(cls)
