"""Metrics for backdoor attacks and detectors, pure numpy.

- Attack: benign accuracy (BA) on clean test data, attack success rate (ASR) on triggered non-target data.
- Sample-level detection (positive = backdoored/poisoned): precision, recall, F-beta (F1, F2), false
  acceptance rate FAR (backdoored inputs accepted as clean) and false rejection rate FRR (clean inputs
  rejected), as defined in MBDS (Li et al., 2022).
- Model-level detection: detection accuracy over a group of models.
- Score-level detection: the best F1 over all thresholds of a suspicion score (SDRM's protocol for SR), and the
  area under the ROC curve (threshold-free: how well a score separates, whatever the operating point).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from art_backdoor_ext.exceptions import DataError

__all__ = [
    "benign_accuracy",
    "attack_success_rate",
    "DetectionCounts",
    "detection_counts",
    "precision",
    "recall",
    "f_beta",
    "false_acceptance_rate",
    "false_rejection_rate",
    "detection_accuracy",
    "best_f1",
    "roc_auc",
]


def _as_1d(a: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise DataError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


def benign_accuracy(y_pred: np.ndarray, y_true: np.ndarray) -> float:
    """Fraction of clean samples classified correctly. Labels are integers (N,)."""
    y_pred, y_true = _as_1d(y_pred, "y_pred"), _as_1d(y_true, "y_true")
    if y_pred.shape != y_true.shape:
        raise DataError(f"y_pred has shape {y_pred.shape} but y_true has {y_true.shape}")
    if y_true.size == 0:
        raise DataError("benign accuracy of an empty set is undefined")
    return float(np.mean(y_pred == y_true))


def attack_success_rate(y_pred_triggered: np.ndarray, target: int | np.ndarray,
                        y_true: np.ndarray | None = None) -> float:
    """Fraction of triggered samples classified as the target.

    :param y_pred_triggered: Predictions on triggered inputs (N,).
    :param target: Target class (all-to-one) or per-sample targets (N,).
    :param y_true: Original labels; when given, samples already of the target class are excluded.
    """
    pred = _as_1d(y_pred_triggered, "y_pred_triggered")
    tgt = np.broadcast_to(np.asarray(target), pred.shape)
    keep = np.ones(pred.shape, dtype=bool) if y_true is None else _as_1d(y_true, "y_true") != tgt
    if not keep.any():
        raise DataError("no triggered sample from a non-target class: the attack success rate is undefined")
    return float(np.mean(pred[keep] == tgt[keep]))


@dataclass(frozen=True)
class DetectionCounts:
    """Confusion counts with backdoored/poisoned as the positive class."""

    true_positives: int
    false_positives: int
    true_negatives: int
    false_negatives: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def detection_counts(is_flagged: np.ndarray, is_poison: np.ndarray) -> DetectionCounts:
    """Counts from boolean flags (True = flagged as backdoored) and ground truth (True = poisoned)."""
    flagged = _as_1d(is_flagged, "is_flagged").astype(bool)
    truth = _as_1d(is_poison, "is_poison").astype(bool)
    if flagged.shape != truth.shape:
        raise DataError(f"is_flagged has shape {flagged.shape} but is_poison has {truth.shape}")
    return DetectionCounts(
        true_positives=int(np.sum(flagged & truth)),
        false_positives=int(np.sum(flagged & ~truth)),
        true_negatives=int(np.sum(~flagged & ~truth)),
        false_negatives=int(np.sum(~flagged & truth)),
    )


def _ratio(num: int, den: int) -> float:
    return float(num / den) if den else 0.0


def precision(is_flagged: np.ndarray, is_poison: np.ndarray) -> float:
    """TP / (TP + FP); 0 when nothing is flagged."""
    c = detection_counts(is_flagged, is_poison)
    return _ratio(c.true_positives, c.true_positives + c.false_positives)


def recall(is_flagged: np.ndarray, is_poison: np.ndarray) -> float:
    """TP / (TP + FN); 0 when there is no poison."""
    c = detection_counts(is_flagged, is_poison)
    return _ratio(c.true_positives, c.true_positives + c.false_negatives)


def f_beta(is_flagged: np.ndarray, is_poison: np.ndarray, beta: float = 1.0) -> float:
    """(1 + b^2) P R / (b^2 P + R); F1 for beta=1, F2 (recall-weighted, MBDS) for beta=2."""
    if beta <= 0:
        raise DataError(f"beta must be positive, got {beta}")
    p, r = precision(is_flagged, is_poison), recall(is_flagged, is_poison)
    den = beta**2 * p + r
    return float((1 + beta**2) * p * r / den) if den > 0 else 0.0


def false_acceptance_rate(is_flagged: np.ndarray, is_poison: np.ndarray) -> float:
    """Backdoored inputs accepted as clean: FN / (TP + FN)."""
    c = detection_counts(is_flagged, is_poison)
    return _ratio(c.false_negatives, c.true_positives + c.false_negatives)


def false_rejection_rate(is_flagged: np.ndarray, is_poison: np.ndarray) -> float:
    """Clean inputs rejected as backdoored: FP / (FP + TN)."""
    c = detection_counts(is_flagged, is_poison)
    return _ratio(c.false_positives, c.false_positives + c.true_negatives)


def detection_accuracy(detected: np.ndarray, is_attacked: np.ndarray) -> float:
    """Model-level: fraction of models whose verdict (detected or not) matches whether they were attacked."""
    d = _as_1d(detected, "detected").astype(bool)
    a = _as_1d(is_attacked, "is_attacked").astype(bool)
    if d.shape != a.shape or d.size == 0:
        raise DataError(f"detected {d.shape} and is_attacked {a.shape} must be non-empty and of equal shape")
    return float(np.mean(d == a))


def _scores_and_truth(scores: np.ndarray, is_poison: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validated float64 scores and boolean truth of equal, non-zero length."""
    s = _as_1d(scores, "scores").astype(np.float64)
    truth = _as_1d(is_poison, "is_poison").astype(bool)
    if s.shape != truth.shape or s.size == 0:
        raise DataError(f"scores {s.shape} and is_poison {truth.shape} must be non-empty and of equal shape")
    if not np.all(np.isfinite(s)):
        raise DataError("scores contain NaN or infinite values")
    return s, truth


def best_f1(scores: np.ndarray, is_poison: np.ndarray) -> tuple[float, float]:
    """The largest F1 of ``scores >= threshold`` over all thresholds, and the threshold reaching it.

    Higher scores are more suspicious. Every distinct score is a candidate threshold (samples with equal scores
    are flagged together). With no poison the F1 is 0 whatever the threshold, and the threshold returned is
    +inf (nothing flagged).

    :return: (F1, threshold).
    """
    s, truth = _scores_and_truth(scores, is_poison)
    positives = int(truth.sum())
    if positives == 0:
        return 0.0, float("inf")
    order = np.argsort(-s, kind="stable")
    sorted_scores = s[order]
    true_positives = np.cumsum(truth[order])
    flagged = np.arange(1, len(s) + 1)
    last_of_tie = np.append(sorted_scores[1:] != sorted_scores[:-1], True)
    f1 = np.where(last_of_tie, 2.0 * true_positives / (flagged + positives), -1.0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(sorted_scores[best])


def roc_auc(scores: np.ndarray, is_poison: np.ndarray) -> float:
    """Area under the ROC curve of a suspicion score (higher = more suspicious): the probability that a random
    poisoned sample scores above a random clean one, ties counting one half (the Mann-Whitney statistic).

    0.5 is a score that does not separate at all, 1.0 a perfect one; below 0.5 the score points the wrong way.

    :raises DataError: shapes differ, non-finite scores, or only one class present (the area is undefined).
    """
    s, truth = _scores_and_truth(scores, is_poison)
    positives, negatives = int(truth.sum()), int((~truth).sum())
    if positives == 0 or negatives == 0:
        raise DataError("roc_auc needs both poisoned and clean samples")
    # average ranks (ties share the mean of their ranks), then the rank-sum form of the Mann-Whitney U
    order = np.argsort(s, kind="stable")
    sorted_scores = s[order]
    starts = np.r_[0, np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]) + 1]
    ends = np.r_[starts[1:], len(s)]
    ranks = np.empty(len(s), np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    u = ranks[truth].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))
