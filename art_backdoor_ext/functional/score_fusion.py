"""Fusing several detection scores into one decision: flag an input when *any* detector finds it unusual, pure numpy.

Two detectors that are each strong on different triggers (MBDS's meta-classifier on global blended noise, the class
residual on local patches) are combined as a union: each detector gets its own split-conformal threshold on the
same clean calibration inputs at ``target_frr / D`` (D detectors; :func:`union_thresholds`), and an input is flagged
when it is above at least one of them. Each threshold bounds its detector's expected FRR on new clean inputs by
``target_frr / D``, so the union's is at most ``target_frr`` whatever the detectors' correlation (Bonferroni).

The scores are on different scales; :func:`union_margin` puts them on one: each score's distance above its
threshold in units of that detector's clean spread above its median (``threshold - median`` of the calibration
scores), the largest over detectors kept. The margin is positive exactly for the inputs the union flags, and orders
inputs for threshold-free measures (AUROC).

A rank-based fusion (the largest calibration rank, each calibration input ranked among the others) was tried first
and dropped: with a few dozen calibration inputs the threshold falls above every calibration score of a detector,
where ranks tie, and whatever breaks the tie decides (docs/benchmarks.md, "mbds: the white-box meta-classifier and the
class residual fused").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from art_backdoor_ext.exceptions import DataError
from art_backdoor_ext.functional.detection import threshold_at_frr

__all__ = ["union_thresholds", "union_margin"]


def _vector(a: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != 1:
        raise DataError(f"{name} must be a vector of scores, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{name} contains NaN or infinite values")
    return arr


def union_thresholds(calibration: Sequence[np.ndarray], target_frr: float) -> tuple[np.ndarray, np.ndarray]:
    """
    Per-detector split-conformal thresholds at ``target_frr / D`` on clean calibration scores, and each detector's
    clean spread above its median (the margin's unit).

    :param calibration: Per detector, its scores of the same M clean calibration inputs ``(M,)`` (higher = more
        suspicious), M >= 2.
    :param target_frr: Bound on the union's expected FRR on new clean inputs, in (0, 1).
    :return: ``(thresholds, scales)``, float64 ``(D,)`` each; ``scales > 0``.
    :raises DataError: no detector, detectors calibrated on different numbers of inputs.
    """
    cal = [_vector(c, f"calibration[{i}]") for i, c in enumerate(calibration)]
    if not cal:
        raise DataError("union_thresholds needs at least one detector's calibration scores")
    if len({len(c) for c in cal}) != 1:
        raise DataError(f"every detector must be calibrated on the same inputs: got lengths {[len(c) for c in cal]}")
    share = target_frr / len(cal)
    thresholds = np.array([threshold_at_frr(c, share, method="conformal") for c in cal])
    spread = thresholds - np.array([np.median(c) for c in cal])
    fallback = np.array([np.std(c) for c in cal])  # a threshold at the median (a flat calibration tail)
    scales = np.where(spread > 0, spread, np.where(fallback > 0, fallback, 1.0))
    return thresholds, scales


def union_margin(scores: Sequence[np.ndarray], thresholds: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """
    The largest over detectors of ``(score - threshold) / scale``: positive exactly when some detector's score is
    above its threshold (the union flags the input).

    :param scores: Per detector (the order of :func:`union_thresholds`), the scores of the same N inputs ``(N,)``.
    :param thresholds: From :func:`union_thresholds`.
    :param scales: From :func:`union_thresholds`.
    :return: float64 ``(N,)``.
    :raises DataError: a number of score vectors other than of thresholds, score vectors of different lengths.
    """
    vectors = [_vector(s, f"scores[{i}]") for i, s in enumerate(scores)]
    thresholds, scales = np.asarray(thresholds, dtype=np.float64), np.asarray(scales, dtype=np.float64)
    if len(vectors) == 0 or len(vectors) != len(thresholds) or thresholds.shape != scales.shape:
        raise DataError(f"one score vector per threshold is needed: got {len(vectors)} score vectors, thresholds "
                        f"{thresholds.shape}, scales {scales.shape}")
    if len({len(v) for v in vectors}) != 1:
        raise DataError(f"every detector must score the same inputs: got lengths {[len(v) for v in vectors]}")
    return np.max((np.stack(vectors) - thresholds[:, None]) / scales[:, None], axis=0)
