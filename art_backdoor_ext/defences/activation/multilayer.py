"""Implementation of Activation Clustering (Chen et al., 2018) and Spectral Signatures (Tran et al., 2018).

Both run on any named layer(s) of a PyTorch model.

| Paper link (AC): https://arxiv.org/abs/1811.03728
| Paper link (SS): https://arxiv.org/abs/1811.00636

ART's :class:`~art.defences.detector.poison.ActivationDefence` and
:class:`~art.defences.detector.poison.SpectralSignatureDefense` only look at the last registered child module
(the logits of most PyTorch models), AC's default flags the smaller cluster of every class, SS's defaults flag
about half of every class and its scores project uncentred features, and neither report is JSON-serialisable.
The two classes here keep ART's interface (``detect_poison`` -> ``(report, is_clean)``, ``evaluate_defence``
-> JSON confusion matrix) and instead:

- read any named layer(s) of the PyTorch model, several layers from ONE forward pass per batch (hooks removed,
  model mode restored, activations of convolutional layers flattened); the default layer is the penultimate
  one;
- AC: PCA/FastICA to ``nb_dims`` then KMeans per class, and flag a cluster only when it is small (relative
  size < ``max_poison_fraction``) AND the split is well separated (silhouette > ``min_silhouette``);
- SS: centre each class's features, project on the top right-singular vector, flag projections that are robust
  outliers (|p - median| > ``mad_threshold`` * 1.4826 MAD), or the paper's top ``eps_multiplier *
  expected_poison_fraction`` of every class when that fraction is given.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from art.defences.detector.poison import GroundTruthEvaluator, PoisonFilteringDefence
from art.estimators.classification import PyTorchClassifier
from torch import nn

from art_backdoor_ext._torch import check_layer_list, extract_features, layer_names
from art_backdoor_ext._validation import (
    Instance,
    Interval,
    Options,
    ParamsMixin,
    check_images,
    check_labels,
    check_pytorch_classifier,
)
from art_backdoor_ext.defences.activation import _scoring
from art_backdoor_ext.defences.activation._scoring import ClassAnalysis, LayerDetection
from art_backdoor_ext.exceptions import DataError, InvalidParameterError

__all__ = [
    "ClassAnalysis",
    "LayerDetection",
    "MultiLayerActivationDefence",
    "MultiLayerSpectralSignature",
    "penultimate_layer",
]

logger = logging.getLogger(__name__)


def penultimate_layer(model: nn.Module) -> str:
    """Name of the leaf module registered just before the model's last ``nn.Linear`` (the logits' input).

    Registration order is used as a proxy for execution order, which holds for the reference networks.

    :raises InvalidParameterError: when the model has no ``nn.Linear`` or nothing before its last one.
    """
    leaves = [(name, m) for name, m in model.named_modules() if name and not any(True for _ in m.children())]
    linear = [i for i, (_, m) in enumerate(leaves) if isinstance(m, nn.Linear)]
    if not linear or linear[-1] == 0:
        raise InvalidParameterError(
            "cannot infer the penultimate layer (no nn.Linear with a module before it); pass layers= one of: "
            + ", ".join(layer_names(model))
        )
    return leaves[linear[-1] - 1][0]


class _MultiLayerDefence(ParamsMixin, PoisonFilteringDefence):
    """Shared plumbing: input checks, layers, cached one-pass features, voting, report, evaluation."""

    _estimator_requirements = (PyTorchClassifier,)
    method = ""
    _parameter_constraints: dict[str, list[Any]] = {
        "layers": [Instance(str), Instance((list, tuple), label="a list of layer names"), None],
        "layer_vote": [Options(("first", "any", "all"))],
        "batch_size": [Interval(int, 1, None)],
    }

    def __init__(self, classifier: PyTorchClassifier, x_train: np.ndarray, y_train: np.ndarray) -> None:
        check_pytorch_classifier(classifier, type(self))
        self._x, self._labels = self._checked_set(classifier, x_train, y_train, "train")
        super().__init__(classifier, x_train, y_train)
        self._feature_cache: dict[str, tuple[tuple[Any, ...], dict[str, np.ndarray]]] = {}

    @staticmethod
    def _checked_set(classifier: PyTorchClassifier, x: np.ndarray, y: np.ndarray,
                     suffix: str) -> tuple[np.ndarray, np.ndarray]:
        """``x_<suffix>`` checked against the classifier (NCHW, range; float64 cast on a copy, as ART users pass
        it) and ``y_<suffix>`` as integer labels (one-hot accepted)."""
        clip = classifier.clip_values
        x_checked = check_images(x, name=f"x_{suffix}", input_shape=classifier.input_shape,
                                 clip_values=None if clip is None else (float(clip[0]), float(clip[1])),
                                 allow_float64=True)
        labels = check_labels(y, n_samples=len(x_checked), nb_classes=classifier.nb_classes, name=f"y_{suffix}",
                              allow_one_hot=True)
        return x_checked, labels

    # ------------------------------------------------------------------ parameters
    @property
    def layer_list(self) -> list[str]:
        """The layers analysed, resolved (``None`` -> the penultimate layer)."""
        if self.layers is None:
            return [penultimate_layer(self.classifier.model)]
        return [self.layers] if isinstance(self.layers, str) else list(self.layers)

    def _check_params(self) -> None:
        super()._check_params()
        check_layer_list(self.classifier.model, self.layer_list, type(self).__name__)

    # ------------------------------------------------------------------ features
    def _layer_features(self) -> dict[str, np.ndarray]:
        """Flattened activations of every layer for ``x_train``; cached until layers change."""
        return self._cached_features("x_train", self._x)

    def _cached_features(self, name: str, x: np.ndarray) -> dict[str, np.ndarray]:
        """Flattened activations of every layer for ``x``, one forward pass per batch, cached under ``name``
        until ``layers`` or ``batch_size`` change."""
        key = (tuple(self.layer_list), self.batch_size)
        cached = self._feature_cache.get(name)
        if cached is None or cached[0] != key:
            logger.info("%s: extracting %s for %d samples (%s)", type(self).__name__, list(key[0]), len(x), name)
            cached = (key, extract_features(self.classifier, x, key[0], batch_size=self.batch_size))
            self._feature_cache[name] = cached
        return cached[1]

    def _truth(self, is_clean_true: Any) -> np.ndarray:
        """Ground truth in ART's convention (1 clean, 0 poison) -> bool ``is_poison``."""
        truth = np.asarray(is_clean_true)
        if truth.shape != (len(self._labels),) or not np.all(np.isin(truth, (0, 1))):
            raise DataError(
                f"is_clean_true must be a vector of {len(self._labels)} values in {{0, 1}} (1 clean, "
                f"0 poison), got shape {truth.shape}"
            )
        return truth.astype(np.int64) == 0

    # ------------------------------------------------------------------ public entry points
    def detect_poison_by_layer(self, *, is_clean_true: np.ndarray | None = None) -> dict[str, LayerDetection]:
        """Run the method on every layer from one forward pass.

        :param is_clean_true: Optional ground truth (1 clean, 0 poison) to fill each result's ``metrics``.
        :return: Layer name -> :class:`LayerDetection`, in the order of ``layers``.
        """
        truth = None if is_clean_true is None else self._truth(is_clean_true)
        results: dict[str, LayerDetection] = {}
        for layer, feats in self._layer_features().items():
            result = self._analyse_layer(layer, feats)
            if truth is not None:
                result.metrics = _scoring.detection_metrics(result.is_poison, truth)
            logger.info("%s on %s: %d flagged", self.method, layer, int(result.is_poison.sum()))
            results[layer] = result
        return results

    def detect_poison(self, **kwargs: Any) -> tuple[dict[str, Any], list[int]]:
        """Detect poison on every layer and combine the decisions with ``layer_vote``.

        :param kwargs: Hyper-parameters to set first (validated), and optionally ``is_clean_true`` (ground
            truth, 1 clean, 0 poison) to add precision/recall/F1 to the report.
        :return: (report, is_clean): a JSON-serialisable dict, and a list with is_clean[i] = 1 when x_train[i]
            is judged clean and 0 when it is judged poison (ART's convention).
        """
        truth = kwargs.pop("is_clean_true", None)
        truth_poison = None if truth is None else self._truth(truth)
        if kwargs:
            self.set_params(**kwargs)
        results = self.detect_poison_by_layer(is_clean_true=truth)
        is_poison = self._vote(results)
        report: dict[str, Any] = {
            "defence": type(self).__name__,
            "method": self.method,
            "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.get_params().items()},
            "layers": list(results),
            "layer_vote": self.layer_vote,
            "n_samples": int(len(is_poison)),
            "n_flagged": int(is_poison.sum()),
            "flagged_indices": [int(i) for i in np.flatnonzero(is_poison)],
            "metrics": None if truth_poison is None else _scoring.detection_metrics(is_poison, truth_poison),
            "by_layer": {name: r.to_dict() for name, r in results.items()},
        }
        return report, [int(v) for v in ~is_poison]

    def evaluate_defence(self, is_clean: np.ndarray, **kwargs: Any) -> str:
        """Confusion matrix per class of the combined decision, as ART's ``GroundTruthEvaluator`` JSON string.

        :param is_clean: Ground truth, is_clean[i] = 1 when x_train[i] is clean, 0 when it is poison.
        :param kwargs: Hyper-parameters to set first.
        :return: JSON object ``{"class_0": {"TruePositive": {...}, ...}, ...}`` like ART's AC and SS.
        """
        if is_clean is None or np.asarray(is_clean).size == 0:
            raise DataError("is_clean was not provided while invoking evaluate_defence")
        truth_poison = self._truth(is_clean)
        if kwargs:
            self.set_params(**kwargs)
        predicted_clean = (~self._vote(self.detect_poison_by_layer())).astype(np.int64)
        truth_clean = (~truth_poison).astype(np.int64)
        by_class = [self._labels == c for c in range(self.classifier.nb_classes)]
        _, conf_matrix_json = GroundTruthEvaluator().analyze_correctness(
            [predicted_clean[m] for m in by_class], [truth_clean[m] for m in by_class]
        )
        return conf_matrix_json

    # ------------------------------------------------------------------ steps
    def _vote(self, results: dict[str, LayerDetection]) -> np.ndarray:
        flags = np.stack([r.is_poison for r in results.values()])
        if self.layer_vote == "any":
            return np.asarray(flags.any(axis=0), dtype=bool)
        if self.layer_vote == "all":
            return np.asarray(flags.all(axis=0), dtype=bool)
        return flags[0].copy()

    def _analyse_layer(self, layer: str, features: np.ndarray) -> LayerDetection:
        n = len(self._labels)
        is_poison = np.zeros(n, dtype=bool)
        scores = np.zeros(n, dtype=np.float64)
        classes = []
        for label in range(self.classifier.nb_classes):
            idx = np.flatnonzero(self._labels == label)
            info = ClassAnalysis(label=label, n_samples=len(idx))
            if len(idx) < 3:
                info.note = f"not analysed: {len(idx)} sample(s), at least 3 needed"
            else:
                flags, class_scores = self._analyse_class(layer, features[idx], info)
                is_poison[idx], scores[idx] = flags, class_scores
                info.n_flagged = int(flags.sum())
            classes.append(info)
        return LayerDetection(layer, self.method, int(features.shape[1]), is_poison, scores, classes)

    def _analyse_class(self, layer: str, features: np.ndarray, info: ClassAnalysis
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Flags and scores (higher = more suspicious) of one class's features at ``layer``; fills ``info``."""
        raise NotImplementedError


class MultiLayerActivationDefence(_MultiLayerDefence):
    """Implementation of Activation Clustering (Chen et al., 2018) on any layer(s) of a PyTorch model.

    | Paper link: https://arxiv.org/abs/1811.03728

    Per class and layer: flatten the activations, reduce them to ``nb_dims`` with PCA or FastICA, split them
    with KMeans, and flag the clusters that ``cluster_analysis`` judges poisonous. The default
    ``"size-silhouette"`` flags a cluster only when it holds less than ``max_poison_fraction`` of its class
    AND the silhouette score of the split exceeds ``min_silhouette`` (Chen et al.'s relative-size and
    silhouette analyses), so that clean classes are left alone; ``"smaller"`` reproduces ART's default (the
    smaller cluster of every class).

    :param classifier: ART ``PyTorchClassifier`` trained on ``(x_train, y_train)``.
    :param x_train: Training images (N, C, H, W) within the classifier's ``clip_values`` (e.g. [0, 1]);
        float32 (float64 is cast on a copy).
    :param y_train: Labels, integer (N,) or one-hot (N, K).
    :param layers: Layer name or list of names of ``classifier.model``; ``None`` = the penultimate layer.
    :param nb_clusters: KMeans clusters per class (>= 2).
    :param nb_dims: Dimensions kept by the reduction.
    :param reduce: ``"PCA"`` or ``"FastICA"``.
    :param cluster_analysis: ``"size-silhouette"``, ``"relative-size"``, ``"silhouette"`` or ``"smaller"``.
    :param max_poison_fraction: Largest relative size, in (0, 0.5], of a cluster that can be flagged.
    :param min_silhouette: Silhouette score a split must exceed before a cluster is flagged.
    :param layer_vote: How several layers decide ``is_clean``: ``"first"`` layer, ``"any"`` or ``"all"``.
    :param batch_size: Batch size of the forward pass.
    :param random_state: Seed of PCA/FastICA and KMeans.

    Example::

        defence = MultiLayerActivationDefence(classifier, x_train, y_train, layers=["relu2", "relu3"])
        report, is_clean = defence.detect_poison()
        per_layer = defence.detect_poison_by_layer()  # no second forward pass
    """

    method = "activation-clustering"
    _parameter_constraints = {
        **_MultiLayerDefence._parameter_constraints,
        "nb_clusters": [Interval(int, 2, None)],
        "nb_dims": [Interval(int, 1, None)],
        "reduce": [Options(("PCA", "FastICA"))],
        "cluster_analysis": [Options(("size-silhouette", "relative-size", "silhouette", "smaller"))],
        "max_poison_fraction": [Interval(float, 0.0, 0.5, closed="right")],
        "min_silhouette": [Interval(float, -1.0, 1.0)],
        "random_state": [Interval(int, 0, None), None],
    }
    defence_params = list(_parameter_constraints)

    def __init__(
        self,
        classifier: PyTorchClassifier,
        x_train: np.ndarray,
        y_train: np.ndarray,
        *,
        layers: str | list[str] | None = None,
        nb_clusters: int = 2,
        nb_dims: int = 10,
        reduce: str = "PCA",
        cluster_analysis: str = "size-silhouette",
        max_poison_fraction: float = 0.35,
        min_silhouette: float = 0.40,
        layer_vote: str = "first",
        batch_size: int = 128,
        random_state: int | None = None,
    ) -> None:
        super().__init__(classifier, x_train, y_train)
        self.layers = layers
        self.nb_clusters = nb_clusters
        self.nb_dims = nb_dims
        self.reduce = reduce
        self.cluster_analysis = cluster_analysis
        self.max_poison_fraction = max_poison_fraction
        self.min_silhouette = min_silhouette
        self.layer_vote = layer_vote
        self.batch_size = batch_size
        self.random_state = random_state
        self._check_params()

    def _analyse_class(self, layer: str, features: np.ndarray, info: ClassAnalysis
                       ) -> tuple[np.ndarray, np.ndarray]:
        reduced = _scoring.reduce_dimensionality(features, nb_dims=self.nb_dims, method=self.reduce,
                                                 random_state=self.random_state)
        assignment, silhouette, per_sample = _scoring.cluster_class(reduced, nb_clusters=self.nb_clusters,
                                                                    random_state=self.random_state)
        sizes = np.bincount(assignment, minlength=self.nb_clusters)
        suspicious = _scoring.suspicious_clusters(
            sizes, silhouette, rule=self.cluster_analysis, max_poison_fraction=self.max_poison_fraction,
            min_silhouette=self.min_silhouette,
        )
        info.cluster_sizes = [int(s) for s in sizes]
        info.silhouette = float(silhouette)
        info.suspicious_clusters = suspicious
        outside_largest = assignment != int(np.argmax(sizes))
        scores = np.where(outside_largest, np.clip(per_sample, 0.0, None), 0.0)
        return np.isin(assignment, suspicious), scores


class MultiLayerSpectralSignature(_MultiLayerDefence):
    """Implementation of Spectral Signatures (Tran et al., 2018) on any layer(s) of a PyTorch model.

    | Paper link: https://arxiv.org/abs/1811.00636

    Per class and layer: flatten and centre the activations, take the top right-singular vector of the centred
    matrix, and score each sample by its squared projection on it. By default a sample is flagged when its
    projection is a robust outlier, ``|p - median(p)| > mad_threshold * 1.4826 * MAD(p)``, so a clean class
    loses only its few extreme points. With ``expected_poison_fraction`` set, the paper's rule is used
    instead: the top ``ceil(eps_multiplier * expected_poison_fraction * n)`` scores of EVERY class are
    flagged.

    :param classifier: ART ``PyTorchClassifier`` trained on ``(x_train, y_train)``.
    :param x_train: Training images (N, C, H, W) within the classifier's ``clip_values`` (e.g. [0, 1]);
        float32 (float64 is cast on a copy).
    :param y_train: Labels, integer (N,) or one-hot (N, K).
    :param layers: Layer name or list of names of ``classifier.model``; ``None`` = the penultimate layer.
    :param mad_threshold: Robust z-score above which a projection is an outlier (default rule).
    :param expected_poison_fraction: Fraction of poison expected per class; switches to the paper's rule.
    :param eps_multiplier: Multiplier of ``expected_poison_fraction`` in the paper's rule (1.5 in the paper).
    :param layer_vote: How several layers decide ``is_clean``: ``"first"`` layer, ``"any"`` or ``"all"``.
    :param batch_size: Batch size of the forward pass.

    Example::

        defence = MultiLayerSpectralSignature(classifier, x_train, y_train, layers="pool")
        report, is_clean = defence.detect_poison()
    """

    method = "spectral-signature"
    _parameter_constraints = {
        **_MultiLayerDefence._parameter_constraints,
        "mad_threshold": [Interval(float, 0.0, None, closed="neither")],
        "expected_poison_fraction": [Interval(float, 0.0, 1.0, closed="right"), None],
        "eps_multiplier": [Interval(float, 0.0, None, closed="neither")],
    }
    defence_params = list(_parameter_constraints)

    def __init__(
        self,
        classifier: PyTorchClassifier,
        x_train: np.ndarray,
        y_train: np.ndarray,
        *,
        layers: str | list[str] | None = None,
        mad_threshold: float = 3.5,
        expected_poison_fraction: float | None = None,
        eps_multiplier: float = 1.5,
        layer_vote: str = "first",
        batch_size: int = 128,
    ) -> None:
        super().__init__(classifier, x_train, y_train)
        self.layers = layers
        self.mad_threshold = mad_threshold
        self.expected_poison_fraction = expected_poison_fraction
        self.eps_multiplier = eps_multiplier
        self.layer_vote = layer_vote
        self.batch_size = batch_size
        self._check_params()

    def _analyse_class(self, layer: str, features: np.ndarray, info: ClassAnalysis
                       ) -> tuple[np.ndarray, np.ndarray]:
        projection = _scoring.spectral_projection(features)
        scores = projection**2
        if self.expected_poison_fraction is None:
            flags, median, scale = _scoring.robust_outliers(projection, self.mad_threshold)
            info.median, info.scale = median, scale
        else:
            fraction = min(1.0, self.eps_multiplier * self.expected_poison_fraction)
            flags, cutoff = _scoring.top_fraction(scores, fraction)
            info.threshold = cutoff if np.isfinite(cutoff) else None
        return flags, scores
