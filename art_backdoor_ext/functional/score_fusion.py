"""Fusing several detection scores by their ranks among clean calibration scores, pure numpy.

Two detectors that are each strong on different triggers (MBDS's meta-classifier on global blended noise, the class
residual on local patches) are combined by flagging an input when *either* score is unusually high for a clean
input. Their scales differ, so each score is first turned into its rank among the same clean calibration inputs'
scores of that detector (:func:`calibration_ranks`: the fraction of calibration scores strictly below it); the fused
score is the largest of the ranks (:func:`max_rank_fusion`).

Ranks cannot order two inputs that are both above every calibration score, and a threshold at a 5% FRR with a few
dozen calibration inputs falls there. So an input above every calibration score of a detector also gets a bonus for
how far above it lies (:func:`tail_exceedance`: the distance past the calibration maximum in units of the
calibration range, mapped into ``[0, 1)``); inputs below the maximum get none, so the bonus never reorders them.

Each calibration input's rank and bonus are taken among the *other* calibration inputs, as a new input's are among
all of them, so a calibration input and a new clean one get their fused score by nearly the same rule, and the
split-conformal threshold on the calibration inputs' fused scores (:func:`~art_backdoor_ext.functional.detection.
threshold_at_frr`, ``method="conformal"``) keeps its guarantee up to that difference: a calibration input is
ranked among ``M - 1`` others, a new one among ``M``, which puts the calibration inputs' fused scores a fraction
``1 / M`` higher and the realised FRR, if anything, lower.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from art_backdoor_ext.exceptions import DataError

__all__ = ["calibration_ranks", "tail_exceedance", "max_rank_fusion"]


def _vector(a: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != 1:
        raise DataError(f"{name} must be a vector of scores, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{name} contains NaN or infinite values")
    return arr


def _prepare(calibration: np.ndarray, values: np.ndarray, leave_one_out: bool) -> tuple[np.ndarray, np.ndarray]:
    cal = np.sort(_vector(calibration, "calibration"))
    vals = _vector(values, "values")
    if len(cal) < 3:
        raise DataError(f"calibration needs at least 3 scores, got {len(cal)}")
    if leave_one_out and vals.shape != cal.shape:
        raise DataError(f"leave_one_out ranks the calibration scores themselves: values must have shape "
                        f"{cal.shape}, got {vals.shape}")
    return cal, vals


def calibration_ranks(calibration: np.ndarray, values: np.ndarray, *, leave_one_out: bool = False) -> np.ndarray:
    """
    Rank of each value among clean calibration scores: the fraction of them strictly below it.

    :param calibration: Clean calibration scores ``(M,)``, higher = more suspicious, M >= 3.
    :param values: Scores to rank ``(N,)``.
    :param leave_one_out: ``values`` *are* the calibration scores (any order): each is ranked among the other
        ``M - 1`` (the count below it divided by ``M - 1``), as a new input is ranked among all ``M``.
    :return: float64 ``(N,)`` in ``[0, 1]``.
    """
    cal, vals = _prepare(calibration, values, leave_one_out)
    below = np.searchsorted(cal, vals, side="left")
    return below / (len(cal) - 1) if leave_one_out else below / len(cal)


def tail_exceedance(calibration: np.ndarray, values: np.ndarray, *, leave_one_out: bool = False) -> np.ndarray:
    """
    How far each value lies above the largest calibration score, in units of the calibration range, mapped into
    ``[0, 1)`` by ``1 - exp(-e)``; 0 for values at or below the largest score.

    :param calibration: Clean calibration scores ``(M,)``, M >= 3.
    :param values: Scores ``(N,)``.
    :param leave_one_out: ``values`` are the calibration scores: each is compared with the largest and smallest of
        the *other* ``M - 1``.
    :return: float64 ``(N,)`` in ``[0, 1)``.
    """
    cal, vals = _prepare(calibration, values, leave_one_out)
    top = np.full(len(vals), cal[-1])
    bottom = np.full(len(vals), cal[0])
    if leave_one_out:  # the largest / smallest calibration input is compared with the runner-up
        top[vals >= cal[-1]] = cal[-2]
        bottom[vals <= cal[0]] = cal[1]
    span = np.maximum(top - bottom, np.finfo(np.float64).tiny)
    return 1.0 - np.exp(-np.maximum(vals - top, 0.0) / span)


def max_rank_fusion(calibration: Sequence[np.ndarray], scores: Sequence[np.ndarray], *,
                    scores_are_calibration: bool = False) -> np.ndarray:
    """
    Fused score: each detector's score ranked among its clean calibration scores, the largest rank kept, plus the
    largest :func:`tail_exceedance` (non-zero only for inputs above every calibration score of some detector).

    :param calibration: Per detector, its clean calibration scores ``(M,)`` (the same M inputs for every detector).
    :param scores: Per detector (same order), the scores of the inputs to fuse ``(N,)`` (the same N inputs).
    :param scores_are_calibration: ``scores`` are the calibration scores: rank each among the others (the fused
        calibration scores a conformal threshold is set on).
    :return: float64 ``(N,)`` in ``[0, 2)``; higher = more suspicious under at least one detector.
    :raises DataError: no detector, detectors with different numbers of calibration or scored inputs.
    """
    if len(calibration) == 0 or len(calibration) != len(scores):
        raise DataError(f"one calibration vector per score vector is needed, got {len(calibration)} and "
                        f"{len(scores)}")
    if len({len(c) for c in calibration}) != 1 or len({len(s) for s in scores}) != 1:
        raise DataError("every detector must be calibrated on the same inputs and score the same inputs: got "
                        f"calibration lengths {[len(c) for c in calibration]}, score lengths "
                        f"{[len(s) for s in scores]}")
    loo = scores_are_calibration
    ranks = np.stack([calibration_ranks(c, s, leave_one_out=loo) for c, s in zip(calibration, scores)])
    bonus = np.stack([tail_exceedance(c, s, leave_one_out=loo) for c, s in zip(calibration, scores)])
    return ranks.max(axis=0) + bonus.max(axis=0)
