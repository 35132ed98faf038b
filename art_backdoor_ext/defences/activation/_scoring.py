"""Per-class statistics behind :mod:`art_backdoor_ext.defences.activation.multilayer` (numpy / scikit-learn only).

- Activation Clustering (Chen et al., 2018): :func:`reduce_dimensionality`, :func:`cluster_class`,
  :func:`suspicious_clusters` (relative size + silhouette analysis written here with scikit-learn, because ART's
  ``cluster_analysis="relative-size"``/``"silhouette-scores"`` crash on NumPy 2).
- Spectral Signatures (Tran et al., 2018): :func:`spectral_projection` (features centred per class before the top
  right-singular vector), :func:`robust_outliers` (median/MAD rule), :func:`top_fraction` (the paper's rule).
- :func:`detection_metrics`: precision, recall and F1 of a poison detection against ground truth.

Nothing here touches a model; every function takes the features of ONE class.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "reduce_dimensionality",
    "cluster_class",
    "suspicious_clusters",
    "spectral_projection",
    "robust_outliers",
    "top_fraction",
    "detection_metrics",
]

#: 1 / Phi^-1(3/4): makes the MAD a consistent estimate of a normal standard deviation.
MAD_TO_SIGMA = 1.4826
#: sqrt(pi / 2): the same for the mean absolute deviation (fallback when the MAD is 0).
MEANAD_TO_SIGMA = 1.2533


def reduce_dimensionality(
    features: np.ndarray, *, nb_dims: int, method: str = "PCA", random_state: int | None = None
) -> np.ndarray:
    """Project (n, D) features to ``min(nb_dims, n, D)`` dimensions with PCA or FastICA.

    Features that already have ``D <= nb_dims`` are returned unchanged (as float64).
    """
    from sklearn.decomposition import PCA, FastICA

    data = np.asarray(features, dtype=np.float64)
    n, d = data.shape
    dims = min(nb_dims, n, d)
    if d <= nb_dims or dims < 1:
        return data
    if method == "FastICA":
        projector = FastICA(n_components=dims, whiten="unit-variance", max_iter=1000, tol=0.005,
                            random_state=random_state)
    else:
        projector = PCA(n_components=dims, random_state=random_state)
    return projector.fit_transform(data)


def cluster_class(
    reduced: np.ndarray, *, nb_clusters: int = 2, random_state: int | None = None
) -> tuple[np.ndarray, float, np.ndarray]:
    """KMeans on one class's reduced features.

    :return: (cluster index per sample, silhouette score of the split, per-sample silhouette values).
        The silhouette is 0 when KMeans finds a single cluster (e.g. identical points).
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_samples

    k = min(nb_clusters, len(reduced))
    assignment = KMeans(n_clusters=k, n_init=10, random_state=random_state).fit_predict(reduced)
    n_found = len(np.unique(assignment))
    if n_found < 2 or n_found > len(reduced) - 1:
        return assignment, 0.0, np.zeros(len(reduced))
    per_sample = silhouette_samples(reduced, assignment)
    return assignment, float(np.mean(per_sample)), per_sample


def suspicious_clusters(
    cluster_sizes: np.ndarray,
    silhouette: float,
    *,
    rule: str = "size-silhouette",
    max_poison_fraction: float = 0.35,
    min_silhouette: float = 0.40,
) -> list[int]:
    """The clusters of one class judged poisonous.

    - ``"size-silhouette"`` (default): clusters smaller than ``max_poison_fraction`` of the class, and only when
      the split is well separated (silhouette > ``min_silhouette``). A class that does not split clearly keeps all.
    - ``"relative-size"``: clusters smaller than ``max_poison_fraction`` of the class.
    - ``"silhouette"``: the smallest cluster when silhouette > ``min_silhouette``.
    - ``"smaller"``: the smallest cluster of every class, unconditionally (ART's default; flags every class).
    """
    sizes = np.asarray(cluster_sizes, dtype=np.int64)
    total = int(sizes.sum())
    if total == 0 or np.count_nonzero(sizes) < 2:
        return []
    relative = sizes / total
    non_empty = np.flatnonzero(sizes > 0)
    smallest = int(non_empty[np.argmin(sizes[non_empty])])
    small = [int(i) for i in non_empty if relative[i] < max_poison_fraction]
    separated = silhouette > min_silhouette
    if rule == "smaller":
        return [smallest]
    if rule == "relative-size":
        return small
    if rule == "silhouette":
        return [smallest] if separated else []
    return small if separated else []


def spectral_projection(features: np.ndarray) -> np.ndarray:
    """Signed projection of one class's centred features on their top right-singular vector.

    The spectral-signature score of Tran et al. is the square of this projection. ART's
    ``SpectralSignatureDefense.spectral_signature_scores`` centres the features to find the singular vector but
    then projects the uncentred features, which shifts every score; applied to features that are already centred
    it gives ``abs`` of this projection.

    :param features: (n, D) features of one class.
    :return: (n,) projections with mean 0.
    """
    data = np.asarray(features, dtype=np.float64)
    centred = data - data.mean(axis=0, keepdims=True)
    if len(centred) < 2 or not np.any(centred):
        return np.zeros(len(centred))
    _, _, v_t = np.linalg.svd(centred, full_matrices=False)
    return centred @ v_t[0]


def robust_outliers(values: np.ndarray, k: float) -> tuple[np.ndarray, float, float]:
    """Flag ``|v - median| > k * scale`` with scale = 1.4826 * MAD (the modified z-score of Iglewicz & Hoaglin).

    When more than half of the values are equal (MAD = 0) the scale falls back to 1.2533 times the mean absolute
    deviation; when that is 0 too nothing is flagged.

    :return: (mask, median, scale).
    """
    v = np.asarray(values, dtype=np.float64)
    median = float(np.median(v))
    deviation = np.abs(v - median)
    scale = MAD_TO_SIGMA * float(np.median(deviation))
    if scale <= 0.0:
        scale = MEANAD_TO_SIGMA * float(np.mean(deviation))
    if scale <= 0.0:
        return np.zeros(len(v), dtype=bool), median, 0.0
    return deviation > k * scale, median, scale


def top_fraction(scores: np.ndarray, fraction: float) -> tuple[np.ndarray, float]:
    """Flag the ``ceil(fraction * n)`` highest scores (Tran et al.'s removal rule).

    :return: (mask, the lowest flagged score, or +inf when nothing is flagged).
    """
    s = np.asarray(scores, dtype=np.float64)
    count = min(len(s), int(math.ceil(fraction * len(s) - 1e-9)))
    mask = np.zeros(len(s), dtype=bool)
    if count == 0:
        return mask, math.inf
    order = np.argsort(-s, kind="stable")[:count]
    mask[order] = True
    return mask, float(s[order[-1]])


def detection_metrics(is_poison: np.ndarray, is_poison_true: np.ndarray) -> dict[str, float | int]:
    """Confusion counts, precision, recall and F1 of a poison detection (poison is the positive class).

    Precision (recall) is 0 when nothing is flagged (nothing is poisoned); F1 is 0 when both are 0.
    """
    pred = np.asarray(is_poison, dtype=bool)
    true = np.asarray(is_poison_true, dtype=bool)
    tp = int(np.sum(pred & true))
    fp = int(np.sum(pred & ~true))
    fn = int(np.sum(~pred & true))
    tn = int(np.sum(~pred & ~true))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "precision": float(precision), "recall": float(recall), "f1": float(f1)}
