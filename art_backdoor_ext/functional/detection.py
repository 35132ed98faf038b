"""Math for input-level backdoor detectors, pure numpy: prediction vectors, their entropy and L1 distance, and
decision thresholds calibrated on clean scores at a target false rejection rate (FRR).

- :func:`softmax`, :func:`to_probabilities`: turn a model's outputs (logits or probabilities) into probability
  vectors; ``kind="auto"`` keeps rows that already are probability vectors and applies softmax otherwise.
- :func:`prediction_entropy`: Shannon entropy of each probability vector (STRIP, Gao et al., 2019, Eq. 1-2 use
  base 2), with ``0 log 0 = 0``.
- :func:`l1_distance`: ``||p - q||_1`` per row (feature squeezing, Xu et al., 2018).
- :func:`threshold_at_frr` / :func:`flag_scores`: a threshold from clean scores such that at most ``target_frr`` of
  those clean scores are flagged, for scores where high (feature squeezing) or low (STRIP) is suspicious;
  ``method="conformal"`` instead bounds the expected FRR on *new* clean inputs exchangeable with the calibration
  ones (split-conformal rank, Vovk et al., 2005), and :func:`realised_frr_interval` gives the spread of the FRR
  such a threshold realises (:func:`calibration_frr_summary`: both, for a fit report).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import beta, norm

from art_backdoor_ext.exceptions import DataError, InvalidParameterError

__all__ = [
    "softmax",
    "is_probability_matrix",
    "to_probabilities",
    "prediction_entropy",
    "l1_distance",
    "threshold_at_frr",
    "conformal_rank",
    "realised_frr_interval",
    "calibration_frr_summary",
    "flag_scores",
]

_PROB_TOL = 1e-3


def _as_2d(a: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise DataError(f"{name} must have shape (N, K) with K >= 2 classes, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{name} contains NaN or infinite values")
    return arr


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, K) logits, computed stably (max subtracted); float64."""
    z = _as_2d(logits, "logits")
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def is_probability_matrix(outputs: np.ndarray, tol: float = _PROB_TOL) -> bool:
    """True when every row is non-negative and sums to 1 within ``tol``."""
    arr = _as_2d(outputs, "outputs")
    return bool(arr.min() >= -tol and np.all(np.abs(arr.sum(axis=1) - 1.0) <= tol))


def to_probabilities(outputs: np.ndarray, kind: str = "auto") -> np.ndarray:
    """Probability vectors (N, K), float64, from a model's outputs.

    :param kind: ``"logits"`` (softmax), ``"probabilities"`` (checked, clipped to [0, 1] and renormalised) or
        ``"auto"`` (probabilities when every row is a probability vector, logits otherwise).
    :raises DataError: ``kind="probabilities"`` but some row is negative or does not sum to 1.
    """
    if kind not in ("auto", "logits", "probabilities"):
        raise InvalidParameterError(f"kind must be 'auto', 'logits' or 'probabilities', got {kind!r}")
    arr = _as_2d(outputs, "outputs")
    if kind == "logits" or (kind == "auto" and not is_probability_matrix(arr)):
        return softmax(arr)
    if not is_probability_matrix(arr):
        raise DataError(
            "the model's outputs are not probability vectors (rows must be non-negative and sum to 1, got sums in "
            f"[{arr.sum(1).min():.4g}, {arr.sum(1).max():.4g}] and minimum {arr.min():.4g}); use output='logits' "
            "or output='auto'"
        )
    p = np.clip(arr, 0.0, 1.0)
    return p / p.sum(axis=1, keepdims=True)


def prediction_entropy(probabilities: np.ndarray, base: float = 2.0) -> np.ndarray:
    """Shannon entropy ``-sum_k p_k log p_k`` of each row of (N, K) probabilities (``0 log 0 = 0``); shape (N,)."""
    p = _as_2d(probabilities, "probabilities")
    if base <= 0 or base == 1:
        raise InvalidParameterError(f"base must be positive and != 1, got {base}")
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return -terms.sum(axis=1) / np.log(base)


def l1_distance(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise L1 distance ``sum_k |p_k - q_k|`` of two (N, K) arrays; shape (N,)."""
    a, b = _as_2d(p, "p"), _as_2d(q, "q")
    if a.shape != b.shape:
        raise DataError(f"p has shape {a.shape} but q has {b.shape}")
    return np.abs(a - b).sum(axis=1)


def threshold_at_frr(
    clean_scores: np.ndarray, target_frr: float, *, higher_is_suspicious: bool = True, method: str = "quantile"
) -> float:
    """Decision threshold from clean scores at a target false rejection rate.

    With :func:`flag_scores` (strict inequality), ``method="quantile"`` flags at most ``target_frr`` of
    ``clean_scores`` (the empirical quantile, never rounded towards more rejections); ``method="normal"`` fits a
    normal distribution to the clean scores and takes its ``target_frr`` tail quantile (STRIP's choice);
    ``method="conformal"`` takes the ``k``-th most suspicious clean score with ``k = floor((M + 1) target_frr)``
    (:func:`conformal_rank`), so that a new clean input exchangeable with the M calibration ones is flagged with
    probability at most ``k / (M + 1) <= target_frr`` (continuous scores). The empirical quantile can exceed the
    target on new inputs (at M = 50 and 5% it takes the 3rd largest score: 3 / 51 = 5.9% expected). Where
    ``(M + 1) target_frr < 1`` no threshold bounds it; the most suspicious score is returned (expected FRR
    ``1 / (M + 1)``).

    :param clean_scores: Scores of clean inputs (M,), M >= 2.
    :param target_frr: In (0, 1).
    :param higher_is_suspicious: True: inputs above the threshold are flagged; False: inputs below it.
    """
    scores = np.asarray(clean_scores, dtype=np.float64)
    if scores.ndim != 1 or len(scores) < 2:
        raise DataError(f"clean_scores must be a vector of at least 2 scores, got shape {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise DataError("clean_scores contains NaN or infinite values")
    if not 0 < target_frr < 1:
        raise InvalidParameterError(f"target_frr must lie in (0, 1), got {target_frr}")
    if method == "quantile":
        if higher_is_suspicious:
            return float(np.quantile(scores, 1.0 - target_frr, method="higher"))
        return float(np.quantile(scores, target_frr, method="lower"))
    if method == "conformal":
        rank = max(conformal_rank(len(scores), target_frr), 1)
        ordered = np.sort(scores)
        return float(ordered[-rank] if higher_is_suspicious else ordered[rank - 1])
    if method == "normal":
        loc, scale = float(scores.mean()), float(scores.std(ddof=1))
        q = 1.0 - target_frr if higher_is_suspicious else target_frr
        return float(norm.ppf(q, loc=loc, scale=scale)) if scale > 0 else loc
    raise InvalidParameterError(f"method must be 'quantile', 'conformal' or 'normal', got {method!r}")


def conformal_rank(n_calibration: int, target_frr: float) -> int:
    """Largest rank ``k`` (1 = most suspicious) whose calibration score bounds the expected FRR by ``target_frr``.

    ``k = floor((n + 1) target_frr)``: a new score exchangeable with ``n`` calibration scores lies above their
    ``k``-th most suspicious one with probability ``k / (n + 1)``. 0 means no calibration score achieves the bound.
    """
    if n_calibration < 1:
        raise DataError(f"n_calibration must be >= 1, got {n_calibration}")
    if not 0 < target_frr < 1:
        raise InvalidParameterError(f"target_frr must lie in (0, 1), got {target_frr}")
    return int(np.floor((n_calibration + 1) * target_frr + 1e-9))


def realised_frr_interval(n_calibration: int, rank: int, coverage: float = 0.9) -> tuple[float, float, float]:
    """Expected value and central ``coverage`` interval of the FRR that a rank-``rank`` threshold realises.

    With the threshold at the ``rank``-th most suspicious of ``n_calibration`` exchangeable continuous clean
    scores, the probability that a new clean score lies beyond it is Beta(rank, n + 1 - rank) distributed over
    draws of the calibration set. Returns ``(mean, low, high)``: how far a single fit's FRR on a large test set
    may land from its target.
    """
    if not 1 <= rank <= n_calibration:
        raise DataError(f"rank must lie in [1, n_calibration={n_calibration}], got {rank}")
    if not 0 < coverage < 1:
        raise InvalidParameterError(f"coverage must lie in (0, 1), got {coverage}")
    a, b = rank, n_calibration + 1 - rank
    tail = (1.0 - coverage) / 2
    return a / (a + b), float(beta.ppf(tail, a, b)), float(beta.ppf(1.0 - tail, a, b))


def calibration_frr_summary(n_calibration: int, target_frr: float, coverage: float = 0.9) -> dict[str, object]:
    """What a split-conformal threshold promises, for a fit report: ``n_calibration``, the ``rank`` used (at least 1,
    the most suspicious score, when no rank achieves ``target_frr``), the ``expected`` FRR on new clean inputs and
    its central ``coverage`` interval over calibration draws (``interval_90`` for the default coverage)."""
    rank = max(conformal_rank(n_calibration, target_frr), 1)
    mean, low, high = realised_frr_interval(n_calibration, rank, coverage=coverage)
    return {"n_calibration": n_calibration, "rank": rank, "expected": mean,
            f"interval_{round(coverage * 100)}": [low, high]}


def flag_scores(scores: np.ndarray, threshold: float, *, higher_is_suspicious: bool = True) -> np.ndarray:
    """Boolean flags: ``scores > threshold`` (or ``<`` when low scores are suspicious)."""
    s = np.asarray(scores, dtype=np.float64)
    return np.asarray(s > threshold if higher_is_suspicious else s < threshold, dtype=bool)
