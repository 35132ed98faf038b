"""Per-class statistics and result types behind :mod:`~art_backdoor_ext.defences.activation.multilayer`.

- Activation Clustering (Chen et al., 2018): :func:`reduce_dimensionality`, :func:`cluster_class`,
  :func:`suspicious_clusters` (relative size + silhouette analysis written here with scikit-learn, because
  ART's ``cluster_analysis="relative-size"``/``"silhouette-scores"`` crash on NumPy 2).
- Spectral Signatures (Tran et al., 2018): :func:`spectral_projection` (features centred per class before the
  top right-singular vector), :func:`robust_outliers` (median/MAD rule), :func:`top_fraction` (the paper's
  rule).
- Subspace Reconstruction (as evaluated by Xia et al., 2022): :func:`fit_subspace` (principal subspace of clean
  features keeping a share of their energy), :func:`reconstruction_error` (the score).
- :func:`detection_metrics`: precision, recall and F1 of a poison detection against ground truth.

:func:`robust_outliers` is not :func:`art_backdoor_ext.functional.robust.mad_anomaly_index` because of the
MAD = 0 case: Neural Cleanse's convention (any deviation is infinitely anomalous) would flag up to half of a
class whose activations are mostly identical.

Numpy / scikit-learn only: nothing here touches a model; every function takes the features of ONE class.
The result types :class:`ClassAnalysis` and :class:`LayerDetection` are re-exported by ``multilayer``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from art_backdoor_ext.functional import metrics

__all__ = [
    "ClassAnalysis",
    "LayerDetection",
    "principal_components",
    "reduce_dimensionality",
    "cluster_class",
    "suspicious_clusters",
    "spectral_projection",
    "robust_outliers",
    "top_fraction",
    "fit_subspace",
    "reconstruction_error",
    "detection_metrics",
]

#: 1 / Phi^-1(3/4): makes the MAD a consistent estimate of a normal standard deviation.
MAD_TO_SIGMA = 1.4826
#: sqrt(pi / 2): the same for the mean absolute deviation (fallback when the MAD is 0).
MEANAD_TO_SIGMA = 1.2533


@dataclass
class ClassAnalysis:
    """What the analysis found in one class (fields that do not apply to the method are ``None``).

    :param cluster_sizes: AC: samples per KMeans cluster.
    :param silhouette: AC: silhouette score of the class's split.
    :param suspicious_clusters: AC: indices of the clusters flagged as poison.
    :param median: SS: median projection on the top singular vector.
    :param scale: SS: robust scale (1.4826 MAD) of the projections.
    :param threshold: SS, SR: the lowest flagged score under the paper's fraction rule.
    :param n_components: SR: dimension of the clean subspace.
    :param n_reference: SR: clean reference samples of the class.
    :param note: why the class was not analysed (too few samples).
    """

    label: int
    n_samples: int
    n_flagged: int = 0
    cluster_sizes: list[int] | None = None
    silhouette: float | None = None
    suspicious_clusters: list[int] | None = None
    median: float | None = None
    scale: float | None = None
    threshold: float | None = None
    n_components: int | None = None
    n_reference: int | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LayerDetection:
    """Result of one method on one layer.

    :param is_poison: (N,) bool, True where the sample is flagged as poison.
    :param scores: (N,) float, higher is more suspicious. SS: squared projection on the top singular vector of
        the centred class features. AC: the sample's silhouette value (clipped at 0) when it lies outside the
        largest cluster of its class, else 0.
    :param classes: One :class:`ClassAnalysis` per class.
    :param metrics: precision/recall/F1 and confusion counts when ground truth was given, else ``None``.
    """

    layer: str
    method: str
    n_features: int
    is_poison: np.ndarray
    scores: np.ndarray
    classes: list[ClassAnalysis] = field(default_factory=list)
    metrics: dict[str, float | int] | None = None

    @property
    def is_clean(self) -> list[int]:
        """ART's convention: 1 clean, 0 poison."""
        return [int(v) for v in ~self.is_poison]

    def to_dict(self, include_arrays: bool = True) -> dict[str, Any]:
        """Plain Python values only (``json.dumps`` accepts it); ``include_arrays`` adds is_clean, scores."""
        out: dict[str, Any] = {
            "layer": self.layer,
            "method": self.method,
            "n_features": int(self.n_features),
            "n_flagged": int(np.sum(self.is_poison)),
            "classes": [c.to_dict() for c in self.classes],
            "metrics": None if self.metrics is None else dict(self.metrics),
        }
        if include_arrays:
            out["is_clean"] = self.is_clean
            out["scores"] = [float(s) for s in self.scores]
        return out


def principal_components(centred: np.ndarray, k: int) -> np.ndarray:
    """Scores of centred (n, D) data on its top ``k`` principal axes, i.e. ``U_k * S_k`` of its SVD.

    Computed from the smaller of the two Gram matrices (n x n or D x D), which is much faster than an SVD when
    n << D (a class of conv activations); signs are fixed so that each column's largest entry is positive.
    """
    n, d = centred.shape
    k = min(k, n, d)
    if n <= d:
        eigenvalues, vectors = np.linalg.eigh(centred @ centred.T)
        top = np.argsort(eigenvalues)[::-1][:k]
        scores = vectors[:, top] * np.sqrt(np.clip(eigenvalues[top], 0.0, None))
    else:
        eigenvalues, vectors = np.linalg.eigh(centred.T @ centred)
        top = np.argsort(eigenvalues)[::-1][:k]
        scores = centred @ vectors[:, top]
    pivot = np.argmax(np.abs(scores), axis=0)
    signs = np.sign(scores[pivot, np.arange(scores.shape[1])])
    return scores * np.where(signs == 0, 1.0, signs)


def reduce_dimensionality(
    features: np.ndarray, *, nb_dims: int, method: str = "PCA", random_state: int | None = None
) -> np.ndarray:
    """Project (n, D) features to ``min(nb_dims, n, D)`` dimensions with PCA or scikit-learn's FastICA.

    Features that already have ``D <= nb_dims`` are returned unchanged (as float64).
    """
    data = np.asarray(features, dtype=np.float64)
    n, d = data.shape
    if d <= nb_dims or n < 2:
        return data
    if method == "FastICA":
        from sklearn.decomposition import FastICA

        projector = FastICA(n_components=min(nb_dims, n), whiten="unit-variance", max_iter=1000, tol=0.005,
                            random_state=random_state)
        return projector.fit_transform(data)
    return principal_components(data - data.mean(axis=0, keepdims=True), nb_dims)


def cluster_class(
    reduced: np.ndarray, *, nb_clusters: int = 2, random_state: int | None = None
) -> tuple[np.ndarray, float, np.ndarray]:
    """KMeans on one class's reduced features.

    :return: (cluster index per sample: 0 for the largest cluster, 1 for the next, ...; silhouette score of
        the split; per-sample silhouette values). The silhouette is 0 when KMeans finds a single cluster.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_samples

    k = min(nb_clusters, len(reduced))
    raw = KMeans(n_clusters=k, n_init=10, random_state=random_state).fit_predict(reduced)
    # canonical cluster indices: largest cluster first, ties by first appearance (KMeans labels are arbitrary)
    labels, first_seen, counts = np.unique(raw, return_index=True, return_counts=True)
    order = labels[np.lexsort((first_seen, -counts))]
    assignment = np.argsort(order)[np.searchsorted(labels, raw)]
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

    - ``"size-silhouette"`` (default): clusters smaller than ``max_poison_fraction`` of the class, and only
      when the split is well separated (silhouette > ``min_silhouette``). A class that does not split clearly
      keeps all.
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
    ``SpectralSignatureDefense.spectral_signature_scores`` centres the features to find the singular vector
    but then projects the uncentred features, which shifts every score; applied to features that are already
    centred it gives ``abs`` of this projection.

    :param features: (n, D) features of one class.
    :return: (n,) projections with mean 0.
    """
    data = np.asarray(features, dtype=np.float64)
    centred = data - data.mean(axis=0, keepdims=True)
    if len(centred) < 2 or not np.any(centred):
        return np.zeros(len(centred))
    return principal_components(centred, 1)[:, 0]


def robust_outliers(values: np.ndarray, k: float) -> tuple[np.ndarray, float, float]:
    """Flag ``|v - median| > k * scale`` with scale = 1.4826 * MAD (the modified z-score of Iglewicz &
    Hoaglin).

    When more than half of the values are equal (MAD = 0) the scale falls back to 1.2533 times the mean
    absolute deviation; when that is 0 too nothing is flagged.

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


def fit_subspace(reference: np.ndarray, energy: float) -> tuple[np.ndarray, np.ndarray]:
    """Affine principal subspace of (n, D) clean features that keeps ``energy`` of their variance.

    The features are centred; the basis is the smallest number k of top right-singular vectors whose squared
    singular values sum to at least ``energy`` of the total (k = 0 when the features are all equal).

    :return: (mean (D,), basis (D, k) with orthonormal columns).
    """
    data = np.asarray(reference, dtype=np.float64)
    mean = data.mean(axis=0)
    _, singular, vt = np.linalg.svd(data - mean, full_matrices=False)
    power = singular**2
    total = float(power.sum())
    if total <= 0.0:
        return mean, np.zeros((data.shape[1], 0))
    k = int(np.searchsorted(np.cumsum(power) / total, energy - 1e-12) + 1)
    return mean, vt[: min(k, len(power))].T


def reconstruction_error(features: np.ndarray, mean: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """L2 norm of what the subspace ``(mean, basis)`` misses of each (n, D) feature vector: ``||r - B B^T r||``
    with ``r = f - mean``."""
    residual = np.asarray(features, dtype=np.float64) - mean
    return np.linalg.norm(residual - (residual @ basis) @ basis.T, axis=1)


def detection_metrics(is_poison: np.ndarray, is_poison_true: np.ndarray) -> dict[str, float | int]:
    """Confusion counts, precision, recall and F1 (poison is the positive class), as plain Python numbers.

    Built on :mod:`art_backdoor_ext.functional.metrics` (precision/recall/F1 are 0 when undefined).
    """
    counts = metrics.detection_counts(is_poison, is_poison_true)
    return {"tp": counts.true_positives, "fp": counts.false_positives, "fn": counts.false_negatives,
            "tn": counts.true_negatives, "precision": metrics.precision(is_poison, is_poison_true),
            "recall": metrics.recall(is_poison, is_poison_true),
            "f1": metrics.f_beta(is_poison, is_poison_true)}
