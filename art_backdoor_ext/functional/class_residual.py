"""Class-conditional feature residuals, pure numpy: how far an input's features are from the clean mean of the
class the model predicts for it, in units of the clean within-class spread (a diagonal Mahalanobis distance with
one mean per class and one shared scale per feature, as in Lee et al., 2018, with a diagonal covariance).

- :func:`class_means_and_scale`: per-class mean feature vectors ``(K, D)`` and the within-class standard deviation
  of each feature ``(D,)``, pooled over classes, from clean features and their labels.
- :func:`residual_scores`: the mean squared standardised residual of each row to the mean of its predicted class.

A backdoored input is predicted as the target class while its features still carry the source image and the
trigger, so it sits far from the target's clean mean; a clean input the model classifies correctly sits near
its own class's mean.
"""

from __future__ import annotations

import numpy as np

from art_backdoor_ext.exceptions import DataError

__all__ = ["class_means_and_scale", "residual_scores", "SCALE_EPS"]

#: Added to every feature's scale: a feature that never varies among clean samples of a class (a dead ReLU unit)
#: turns any activation on a new input into a very large residual, which is what a trigger-specific unit does.
SCALE_EPS = 1e-6


def _as_features(features: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(features, dtype=np.float64)
    if arr.ndim != 2:
        raise DataError(f"{name} must be a (N, D) feature matrix, got shape {arr.shape}")
    return arr


def class_means_and_scale(features: np.ndarray, labels: np.ndarray, nb_classes: int) -> tuple[np.ndarray,
                                                                                              np.ndarray]:
    """
    Per-class mean feature vectors and the pooled within-class standard deviation of each feature.

    :param features: Clean features ``(N, D)``.
    :param labels: Their integer classes ``(N,)`` in ``0..nb_classes-1``.
    :param nb_classes: K.
    :return: ``(means, scale)``: float64 ``(K, D)`` and ``(D,)``; ``scale`` is the root mean square of each
        feature's deviation from its own class mean, over all N samples.
    :raises DataError: a class with fewer than two samples (no spread can be estimated), mismatched lengths.
    """
    f = _as_features(features, "features")
    y = np.asarray(labels, dtype=np.int64)
    if y.shape != (len(f),):
        raise DataError(f"labels must have shape ({len(f)},), got {y.shape}")
    counts = np.bincount(y, minlength=nb_classes)[:nb_classes]
    few = {int(c): int(counts[c]) for c in range(nb_classes) if counts[c] < 2}
    if few:
        raise DataError(f"every class needs at least 2 clean samples to estimate its mean and spread; too few for "
                        f"class(es) {few}")
    sums = np.zeros((nb_classes, f.shape[1]))
    np.add.at(sums, y, f)
    means = sums / counts[:, None]
    scale = np.sqrt(np.mean((f - means[y]) ** 2, axis=0))
    return means, scale


def residual_scores(features: np.ndarray, predicted: np.ndarray, means: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """
    Mean squared standardised residual of each row to the clean mean of its predicted class.

    :param features: ``(N, D)``.
    :param predicted: Predicted classes ``(N,)`` (rows of ``means``).
    :param means: ``(K, D)`` from :func:`class_means_and_scale`.
    :param scale: ``(D,)`` from :func:`class_means_and_scale`.
    :return: float64 ``(N,)``, ``mean_d ((f_d - means[predicted, d]) / (scale_d + SCALE_EPS)) ** 2``.
    :raises DataError: shapes that do not match.
    """
    f = _as_features(features, "features")
    p = np.asarray(predicted, dtype=np.int64)
    if p.shape != (len(f),) or means.ndim != 2 or means.shape[1] != f.shape[1] or scale.shape != (f.shape[1],):
        raise DataError(f"shapes do not match: features {f.shape}, predicted {p.shape}, means {means.shape}, "
                        f"scale {scale.shape}")
    if len(p) and (p.min() < 0 or p.max() >= len(means)):
        raise DataError(f"predicted classes must lie in 0..{len(means) - 1}")
    z = (f - means[p]) / (scale + SCALE_EPS)
    return np.mean(z * z, axis=1)
