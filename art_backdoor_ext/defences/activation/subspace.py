"""Implementation of Subspace Reconstruction (Javaheripi et al., 2020) as evaluated by SDRM (Xia et al., 2022).

| Paper link (CLEANN, the idea): https://arxiv.org/abs/2009.02326
| Paper link (SDRM, section 3.4.3 and 6.1.3, the variant implemented): https://arxiv.org/abs/2111.05077

A subspace is learned from a few trusted clean samples' features; projecting a triggered input's features onto
it loses more information than projecting a clean input's, so the reconstruction loss is the poison score.
SDRM's protocol: 1% clean data, a subspace that keeps 90% of their energy, the L2 norm of the reconstruction
residual as the loss.

Choices made here (the papers leave them open):

- one affine subspace per class (the clean reference samples of that class, centred; ``energy`` is the share of
  their variance kept), because the poison filter judges each training sample within its labelled class;
- decision rule, as :class:`~art_backdoor_ext.defences.activation.MultiLayerSpectralSignature`: by default a
  sample is flagged when its loss is a high robust outlier within its class (``loss - median > mad_threshold *
  1.4826 MAD``); with ``expected_poison_fraction`` set, the top ``ceil(fraction * n)`` losses of every class are
  flagged. SDRM reports the best F1 over all thresholds, which needs the ground truth: compute it from
  ``LayerDetection.scores`` (e.g. :func:`art_backdoor_ext.functional.metrics.best_f1`);
- CLEANN's sparse dictionary learning is replaced by the principal subspace, as SDRM describes it.

Feature extraction, layers, caching, voting over layers, the report and ``evaluate_defence`` are shared with
the multi-layer AC/SS (:mod:`~art_backdoor_ext.defences.activation.multilayer`).
"""

from __future__ import annotations

import logging

import numpy as np
from art.estimators.classification import PyTorchClassifier

from art_backdoor_ext._validation import Interval
from art_backdoor_ext.defences.activation import _scoring
from art_backdoor_ext.defences.activation._scoring import ClassAnalysis
from art_backdoor_ext.defences.activation.multilayer import _MultiLayerDefence
from art_backdoor_ext.exceptions import DataError

__all__ = ["SubspaceReconstruction"]

logger = logging.getLogger(__name__)


class SubspaceReconstruction(_MultiLayerDefence):
    """Implementation of Subspace Reconstruction (Javaheripi et al., 2020; as in Xia et al., 2022) on any
    layer(s) of a PyTorch model.

    | Paper link: https://arxiv.org/abs/2111.05077 (SDRM, section 3.4.3)

    Per class and layer: fit the affine subspace of the clean reference features of the class that keeps
    ``energy`` of their variance, score every training sample of the class by the L2 norm of its
    reconstruction residual, and flag the high robust outliers (or the top ``expected_poison_fraction``).

    :param classifier: ART ``PyTorchClassifier`` trained on ``(x_train, y_train)``.
    :param x_train: Images to filter (N, C, H, W) within the classifier's ``clip_values``; float32 (float64 is
        cast on a copy).
    :param y_train: Labels, integer (N,) or one-hot (N, K).
    :param x_clean: Trusted clean images (M, C, H, W), e.g. 1% of the data (keyword-only, required).
    :param y_clean: Their labels, integer (M,) or one-hot (M, K). A class needs at least 2 of them to be analysed.
    :param layers: Layer name or list of names of ``classifier.model``; ``None`` = the penultimate layer.
    :param energy: Share of the clean features' variance the subspace keeps, in (0, 1] (the paper: 0.9).
    :param mad_threshold: Robust z-score above which a loss is flagged (default rule).
    :param expected_poison_fraction: When set, flag the top ``ceil(fraction * n)`` losses of every class instead.
    :param layer_vote: How several layers decide ``is_clean``: ``"first"`` layer, ``"any"`` or ``"all"``.
    :param batch_size: Batch size of the forward pass.

    Example::

        from art_backdoor_ext.datasets import sample_per_class
        x_ref, y_ref = sample_per_class(x_test, y_test, 10, random_state=0)
        defence = SubspaceReconstruction(classifier, x_train, y_train, x_clean=x_ref, y_clean=y_ref,
                                         layers=["relu2", "relu3"])
        report, is_clean = defence.detect_poison()
        losses = defence.detect_poison_by_layer()["relu2"].scores
    """

    method = "subspace-reconstruction"
    _parameter_constraints = {
        **_MultiLayerDefence._parameter_constraints,
        "energy": [Interval(float, 0.0, 1.0, closed="right")],
        "mad_threshold": [Interval(float, 0.0, None, closed="neither")],
        "expected_poison_fraction": [Interval(float, 0.0, 1.0, closed="right"), None],
    }
    defence_params = list(_parameter_constraints)

    def __init__(
        self,
        classifier: PyTorchClassifier,
        x_train: np.ndarray,
        y_train: np.ndarray,
        *,
        x_clean: np.ndarray,
        y_clean: np.ndarray,
        layers: str | list[str] | None = None,
        energy: float = 0.9,
        mad_threshold: float = 3.5,
        expected_poison_fraction: float | None = None,
        layer_vote: str = "first",
        batch_size: int = 128,
    ) -> None:
        super().__init__(classifier, x_train, y_train)
        self._x_clean, self._y_clean = self._checked_set(classifier, x_clean, y_clean, "clean")
        counts = np.bincount(self._y_clean, minlength=classifier.nb_classes)
        if counts.max() < 2:
            raise DataError(f"x_clean needs at least 2 samples of a class to fit its subspace; it has at most "
                            f"{int(counts.max())} per class")
        self.layers = layers
        self.energy = energy
        self.mad_threshold = mad_threshold
        self.expected_poison_fraction = expected_poison_fraction
        self.layer_vote = layer_vote
        self.batch_size = batch_size
        self._check_params()

    def _analyse_class(self, layer: str, features: np.ndarray, info: ClassAnalysis
                       ) -> tuple[np.ndarray, np.ndarray]:
        reference = self._cached_features("x_clean", self._x_clean)[layer][self._y_clean == info.label]
        info.n_reference = int(len(reference))
        if len(reference) < 2:
            info.note = f"not analysed: {len(reference)} clean reference sample(s) of this class, at least 2 needed"
            return np.zeros(len(features), dtype=bool), np.zeros(len(features))
        mean, basis = _scoring.fit_subspace(reference, self.energy)
        info.n_components = int(basis.shape[1])
        losses = _scoring.reconstruction_error(features, mean, basis)
        if self.expected_poison_fraction is None:
            flags, median, scale = _scoring.robust_outliers(losses, self.mad_threshold)
            info.median, info.scale = median, scale
            flags &= losses > median  # only unusually HIGH losses are suspicious
        else:
            flags, cutoff = _scoring.top_fraction(losses, self.expected_poison_fraction)
            info.threshold = cutoff if np.isfinite(cutoff) else None
        return flags, losses
