"""
A white-box sample-level baseline: flag inputs whose internal features are far from the clean features of the class
the classifier predicts for them (a class-conditional, diagonal Mahalanobis distance; Lee et al., 2018).

:class:`ClassResidualDetector` needs the classifier's weights and a small clean labelled reserve, nothing else: no
shadow models and no knowledge of the attack. It was added beside :class:`~art_backdoor_ext.defences.sample.MBDS`
as the comparison that explains where MBDS's meta-classifier falls short (docs/class-residual.md): a meta-classifier
trained on Jumbo shadow backdoors learns features of those triggers, while a trigger the victim learnt makes its
inputs look unlike clean inputs of the target class whatever the trigger is.

- ``fit(x, y)`` splits the reserve (stratified) into a statistics part and a calibration part; the statistics part
  gives per-class mean features and a per-feature within-class scale, from the samples the classifier gets right
  (all of a class's samples where it gets fewer than two right);
  the threshold is the split-conformal rank of the calibration part's scores (expected FRR on new clean inputs at
  most ``target_frr``, :func:`~art_backdoor_ext.functional.detection.threshold_at_frr`).
- ``score(x)`` is the mean squared standardised residual of the input's features to the mean of its predicted
  class (:func:`~art_backdoor_ext.functional.class_residual.residual_scores`); higher is more suspicious.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from art.estimators.classification import PyTorchClassifier

from art_backdoor_ext._torch import extract_features, resolve_layers
from art_backdoor_ext._validation import Instance, Interval, check_labels
from art_backdoor_ext.defences.activation.multilayer import penultimate_layer
from art_backdoor_ext.defences.base import to_builtin
from art_backdoor_ext.defences.sample._calibrated import CalibratedDetector
from art_backdoor_ext.exceptions import DataError, NotFittedError
from art_backdoor_ext.functional.class_residual import class_means_and_scale, residual_scores
from art_backdoor_ext.functional.detection import calibration_frr_summary, threshold_at_frr

logger = logging.getLogger(__name__)

__all__ = ["ClassResidualDetector"]


class ClassResidualDetector(CalibratedDetector):
    """
    Flag inputs whose features at ``layer`` are far from the clean mean of their predicted class, in units of the
    clean within-class spread (white-box baseline; see the module doc).

    | Paper link (the class-conditional Gaussian score, here with a diagonal covariance):
      https://arxiv.org/abs/1807.03888

    :param classifier: The (possibly backdoored) ART ``PyTorchClassifier``; inputs NCHW in its ``clip_values``. It
        is only read.
    :param layer: Layer whose (flattened) output is the feature vector; ``None``: the leaf module registered just
        before the last ``nn.Linear`` (:func:`~art_backdoor_ext.defences.activation.multilayer.penultimate_layer`,
        the default of the layer-selectable AC/SS too).
    :param target_frr: Bound on the expected false rejection rate on new clean inputs (split-conformal rank of the
        calibration scores).
    :param calibration_fraction: Share of the reserve (per class) kept for the threshold; the rest gives the class
        statistics.
    :param batch_size: Forward-pass batch size.
    :param random_state: Seed or generator of the reserve split.
    :param verbose: Unused (one forward pass per batch; no long loop); kept for the house signature.

    Example::

        det = ClassResidualDetector(classifier, target_frr=0.05, random_state=0)
        det.fit(x_reserved, y_reserved)           # small clean labelled reserve, NCHW float32 in [0, 1]
        report, is_backdoor = det.detect(x)       # is_backdoor[i] True: x[i] judged backdoored
        scores = det.score(x)                     # (N,), higher = more suspicious
    """

    higher_is_suspicious = True
    threshold_method = "conformal"
    _parameter_constraints: dict[str, list[Any]] = {
        "layer": [Instance(str), None],
        "target_frr": [Interval(float, 0, 1, closed="neither")],
        "calibration_fraction": [Interval(float, 0, 1, closed="neither")],
        "batch_size": [Interval(int, 1, None)],
        "random_state": [Interval(int, 0, None), Instance(np.random.Generator), None],
        "verbose": [Instance(bool)],
    }
    defence_params = list(_parameter_constraints)

    def __init__(
        self,
        classifier: PyTorchClassifier,
        layer: str | None = None,
        target_frr: float = 0.05,
        random_state: int | np.random.Generator | None = None,
        verbose: bool = False,
        *,
        calibration_fraction: float = 0.4,
        batch_size: int = 256,
    ) -> None:
        super().__init__(classifier)
        self.layer = layer
        self.target_frr = target_frr
        self.calibration_fraction = calibration_fraction
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose
        self._has_threshold = False
        self._check_params()

    # ------------------------------------------------------------------ public API
    def fit(self, x: np.ndarray, y: np.ndarray | None = None, batch_size: int | None = None,
            nb_epochs: int | None = None, **kwargs: Any) -> None:
        """
        Class statistics from part of the clean reserve, threshold from the rest (no training).

        :param x: Clean reserve, NCHW float32 in the classifier's ``clip_values``.
        :param y: Integer labels ``(N,)`` (or one-hot); required (``None`` raises: the class statistics need them).
        :param batch_size: Unused (``self.batch_size`` is the forward-pass batch size); kept for ART's signature.
        :param nb_epochs: Unused (nothing is trained).
        :param kwargs: Hyper-parameters to set first (validated).
        :raises DataError: NHWC / float64 / out-of-range data, bad labels, a class with fewer than 3 reserve samples
            (each class needs 2 for its statistics and 1 for calibration). A class with fewer than two samples the
            classifier gets right uses all its statistics samples (``fit_report_["classes_with_all_samples"]``).
        """
        if kwargs:
            self.set_params(**kwargs)
        start = time.perf_counter()
        k = int(self.classifier.nb_classes)
        x = self._check_x(x)
        if y is None:
            raise DataError("ClassResidualDetector.fit needs the reserve's labels: fit(x_reserved, y_reserved)")
        y = check_labels(y, n_samples=len(x), nb_classes=k, name="y", allow_one_hot=True)
        idx_stats, idx_cal = self._split(y)
        kept, fallback = self._fit_statistics(x[idx_stats], y[idx_stats])
        if fallback:
            logger.warning("ClassResidualDetector: fewer than 2 correctly classified statistics samples of class(es) "
                           "%s; their statistics use all their samples", fallback)
        clean = self._score(x[idx_cal], calibration=True)
        self._threshold = threshold_at_frr(clean, self.target_frr, method="conformal")
        self._has_threshold = True
        self.fit_report_ = to_builtin({
            "layer": self._layer, "n_features": int(self._means.shape[1]),
            "reserve_split": {"statistics": len(idx_stats), "calibration": len(idx_cal)},
            "statistics_samples_kept": kept, "classes_with_all_samples": fallback,
            "threshold": self._threshold,
            "calibration_frr": calibration_frr_summary(len(idx_cal), self.target_frr),
            "seconds": time.perf_counter() - start})
        logger.info("ClassResidualDetector fitted: %s", self.fit_report_)

    def fit_statistics(self, x: np.ndarray, y: np.ndarray) -> list[int]:
        """
        Class statistics only, from all of ``x`` (no reserve split, no threshold): :meth:`score` works afterwards,
        :meth:`detect` needs :meth:`fit`. For callers that calibrate the score themselves (MBDS's
        ``feature_source="victim+residual"`` fuses it with its meta-classifier's score).

        :param x: Clean labelled samples, NCHW float32 in the classifier's ``clip_values``.
        :param y: Integer labels ``(N,)`` (or one-hot).
        :return: The classes the classifier gets right fewer than twice, whose statistics use all their samples
            (:meth:`fit` logs a warning for them; here the caller decides).
        :raises DataError: bad data or labels, a class with fewer than 2 samples.
        """
        x = self._check_x(x)
        y = check_labels(y, n_samples=len(x), nb_classes=int(self.classifier.nb_classes), name="y",
                         allow_one_hot=True)
        _, fallback = self._fit_statistics(x, y)
        self._has_threshold = False
        return fallback

    @classmethod
    def from_statistics(cls, classifier: PyTorchClassifier, layer: str, means: np.ndarray, scale: np.ndarray, *,
                        batch_size: int = 256) -> ClassResidualDetector:
        """A detector holding given class statistics (``means`` ``(K, D)``, ``scale`` ``(D,)`` at ``layer``), as
        :meth:`fit_statistics` leaves it: it scores, it has no threshold. Used to restore a saved MBDS."""
        det = cls(classifier, layer=layer, batch_size=batch_size)
        det._layer = det._resolve_layer()
        means, scale = np.asarray(means, dtype=np.float64), np.asarray(scale, dtype=np.float64)
        if means.ndim != 2 or means.shape[0] != int(classifier.nb_classes) or scale.shape != (means.shape[1],):
            raise DataError(f"class statistics of shape {means.shape} and {scale.shape} do not fit "
                            f"{classifier.nb_classes} classes")
        det._means, det._scale, det._fitted = means, scale, True
        return det

    @property
    def statistics(self) -> tuple[str, np.ndarray, np.ndarray]:
        """``(layer, means, scale)``: the class statistics :meth:`fit` or :meth:`fit_statistics` set (what
        :meth:`from_statistics` takes back)."""
        self._require_fitted()
        return self._layer, self._means, self._scale

    def detect(self, x: np.ndarray, batch_size: int = 128, **kwargs: Any) -> tuple[dict[str, Any], np.ndarray]:
        """As :meth:`CalibratedDetector.detect`; after :meth:`fit_statistics` alone (no threshold) it raises
        :class:`~art_backdoor_ext.exceptions.NotFittedError`."""
        self._require_threshold()
        return super().detect(x, batch_size, **kwargs)

    @property
    def threshold(self) -> float:
        """The calibrated threshold (set by :meth:`fit`, not by :meth:`fit_statistics`)."""
        self._require_threshold()
        return float(self._threshold)

    def _require_threshold(self) -> None:
        if self._fitted and not self._has_threshold:
            raise NotFittedError("ClassResidualDetector has class statistics but no threshold (fit_statistics): "
                                 "call fit(x_reserved, y_reserved) to detect")

    # ------------------------------------------------------------------ steps
    def _fit_statistics(self, x: np.ndarray, y: np.ndarray) -> tuple[int, list[int]]:
        """Per-class means and pooled scale from the samples the classifier gets right (all of a class's samples
        where it gets fewer than two right); returns the number of samples used and the classes that kept all."""
        k = int(self.classifier.nb_classes)
        layer = self._resolve_layer()
        features, predicted = self._features(x, layer)
        kept = predicted == y
        # a class the classifier gets (almost) never right keeps all its samples rather than none
        fallback = [c for c in range(k) if np.sum(kept & (y == c)) < 2]
        kept |= np.isin(y, fallback)
        self._layer = layer
        self._means, self._scale = class_means_and_scale(features[kept], y[kept], k)
        self._fitted = True
        return int(kept.sum()), fallback

    def _prepare(self, x: np.ndarray) -> None:
        """Unused: :meth:`fit` needs the labels and sets the class statistics itself."""

    def _score(self, x: np.ndarray, *, calibration: bool = False) -> np.ndarray:
        features, predicted = self._features(x, self._layer)
        return residual_scores(features, predicted, self._means, self._scale)

    def _report_extra(self) -> dict[str, Any]:
        return {"layer": self._layer, "score": "mean squared standardised residual to the predicted class's clean "
                                               "mean; high = backdoored"}

    def _require_fitted(self) -> None:
        if not self._fitted:
            raise NotFittedError("ClassResidualDetector is not fitted: call fit(x_reserved, y_reserved) first")

    def _resolve_layer(self) -> str:
        model = self.classifier.model
        if self.layer is None:
            return penultimate_layer(model)
        resolve_layers(model, [self.layer])
        return self.layer

    def _split(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.random_state)
        stats, cal = [], []
        for c in range(int(self.classifier.nb_classes)):
            idx = rng.permutation(np.flatnonzero(y == c))
            n_cal = int(round(self.calibration_fraction * len(idx)))
            if len(idx) < 3 or n_cal == 0 or n_cal == len(idx):
                raise DataError(f"class {c} has {len(idx)} reserve samples: ClassResidualDetector needs every class "
                                f"in both parts of the reserve (calibration_fraction={self.calibration_fraction}), "
                                "at least 3 samples per class")
            cal.append(idx[:n_cal])
            stats.append(idx[n_cal:])
        return np.sort(np.concatenate(stats)), np.sort(np.concatenate(cal))

    def _features(self, x: np.ndarray, layer: str) -> tuple[np.ndarray, np.ndarray]:
        out = extract_features(self.classifier, x, [layer], batch_size=self.batch_size, include_logits=True)
        return out[layer].astype(np.float64), out["logits"].argmax(axis=1)
