"""Shared base of the score-and-threshold sample detectors (:class:`~art_backdoor_ext.defences.sample.STRIP`,
:class:`~art_backdoor_ext.defences.sample.FeatureSqueezingDetector`, and
:class:`~art_backdoor_ext.defences.sample.ClassResidualDetector`, whose ``fit`` needs labels and is its own).

Each scores an input from the classifier's predictions; :meth:`CalibratedDetector.fit` scores the defender's
clean inputs and sets the threshold at ``target_frr`` (:func:`~art_backdoor_ext.functional.detection.
threshold_at_frr`); :meth:`CalibratedDetector.detect` answers ART's ``EvasionDetector`` contract with a
JSON-safe report and a boolean ``is_backdoor`` array. Subclasses implement :meth:`_prepare` (what fit stores
besides the threshold) and :meth:`_score`.
"""

from __future__ import annotations

import abc
import logging
import time
from typing import Any

import numpy as np
from art.defences.detector.evasion.evasion_detector import EvasionDetector
from art.estimators.classification import PyTorchClassifier

from art_backdoor_ext._torch import predict_logits
from art_backdoor_ext._validation import ParamsMixin, check_images, check_pytorch_classifier
from art_backdoor_ext.defences.base import to_builtin
from art_backdoor_ext.exceptions import DataError, InvalidParameterError, NotFittedError
from art_backdoor_ext.functional.detection import flag_scores, threshold_at_frr, to_probabilities

logger = logging.getLogger(__name__)

__all__ = ["CalibratedDetector"]


class CalibratedDetector(ParamsMixin, EvasionDetector, abc.ABC):
    """Score inputs, calibrate the threshold on clean ones at ``target_frr``, flag the rest (see module doc)."""

    _estimator_requirements = (PyTorchClassifier,)
    higher_is_suspicious: bool = True
    target_frr: float
    threshold_method: str
    output: str
    batch_size: int
    _min_calibration = 2

    def __init__(self, classifier: PyTorchClassifier) -> None:
        EvasionDetector.__init__(self)
        check_pytorch_classifier(classifier, type(self))
        self.classifier = classifier
        self._fitted = False

    # ------------------------------------------------------------------ public API
    def fit(self, x: np.ndarray, y: np.ndarray | None = None, batch_size: int | None = None,
            nb_epochs: int | None = None, **kwargs: Any) -> None:
        """
        Calibrate the threshold on the defender's clean inputs (no training: ``nb_epochs`` is unused).

        :param x: Clean inputs, NCHW float32 in the classifier's ``clip_values``.
        :param y: Unused (labels are not needed); accepted for ART's ``EvasionDetector.fit`` signature.
        :param batch_size: Unused (``self.batch_size`` is the forward-pass batch size); kept for ART's signature.
        :param kwargs: Hyper-parameters to set first (validated).
        :raises DataError: fewer than two inputs, NHWC / float64 / out-of-range data.
        """
        if kwargs:
            self.set_params(**kwargs)
        start = time.perf_counter()
        x = self._check_x(x)
        if len(x) < self._min_calibration:
            raise DataError(f"{type(self).__name__}.fit needs at least {self._min_calibration} clean inputs, "
                            f"got {len(x)}")
        self._prepare(x)
        clean = self._score(x, calibration=True)
        self._threshold = threshold_at_frr(clean, self.target_frr, higher_is_suspicious=self.higher_is_suspicious,
                                           method=self.threshold_method)
        self._fitted = True
        flagged = flag_scores(clean, self._threshold, higher_is_suspicious=self.higher_is_suspicious)
        self.fit_report_ = to_builtin({
            "n_clean": len(x), "threshold": self._threshold, "clean_score_mean": float(clean.mean()),
            "clean_score_std": float(clean.std()), "calibration_frr": float(flagged.mean()),
            "seconds": time.perf_counter() - start})
        logger.info("%s fitted: %s", type(self).__name__, self.fit_report_)

    def score(self, x: np.ndarray) -> np.ndarray:
        """
        The detector's score of each input (see :attr:`higher_is_suspicious` for its direction).

        :param x: Inputs NCHW float32 in the classifier's ``clip_values``.
        :return: float64 ``(N,)``.
        :raises NotFittedError: before :meth:`fit`.
        """
        self._require_fitted()
        return self._score(self._check_x(x), calibration=False)

    def detect(self, x: np.ndarray, batch_size: int = 128, **kwargs: Any) -> tuple[dict[str, Any], np.ndarray]:
        """
        Flag backdoored inputs (ART's ``EvasionDetector`` contract).

        :param x: Inputs NCHW float32 in the classifier's ``clip_values``.
        :param batch_size: Unused (``self.batch_size`` is the forward-pass batch size); kept for ART's signature.
        :return: ``(report, is_backdoor)``: a JSON-serialisable dict and a boolean ``(N,)`` array, True for inputs
            judged backdoored.
        """
        if kwargs:
            raise InvalidParameterError(f"{type(self).__name__}.detect got unknown argument(s) {sorted(kwargs)}")
        scores = self.score(x)
        is_backdoor = flag_scores(scores, self._threshold, higher_is_suspicious=self.higher_is_suspicious)
        report = to_builtin({
            "defence": type(self).__name__, "threshold": self._threshold, "target_frr": self.target_frr,
            "higher_is_suspicious": self.higher_is_suspicious, "n_samples": len(scores),
            "n_flagged": int(is_backdoor.sum()), "scores": scores, **self._report_extra()})
        return report, is_backdoor

    @property
    def threshold(self) -> float:
        """The calibrated threshold."""
        self._require_fitted()
        return float(self._threshold)

    # ------------------------------------------------------------------ steps
    @abc.abstractmethod
    def _prepare(self, x: np.ndarray) -> None:
        """Store what scoring needs from the clean inputs (called by :meth:`fit` before calibration)."""

    @abc.abstractmethod
    def _score(self, x: np.ndarray, *, calibration: bool) -> np.ndarray:
        """Scores of validated inputs; ``calibration`` is True for the clean inputs given to :meth:`fit`."""

    def _report_extra(self) -> dict[str, Any]:
        return {}

    def _require_fitted(self) -> None:
        if not self._fitted:
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit(x_clean) first")

    @property
    def _clip(self) -> tuple[float, float] | None:
        clip = self.classifier.clip_values
        return None if clip is None else (float(np.min(clip[0])), float(np.max(clip[1])))

    def _check_x(self, x: Any, name: str = "x") -> np.ndarray:
        return check_images(x, name=name, input_shape=self.classifier.input_shape,
                            clip_values=self.classifier.clip_values)

    def _probabilities(self, x: np.ndarray) -> np.ndarray:
        """Probability vectors of the classifier for ``x`` (model in eval mode, mode restored)."""
        outputs = predict_logits(self.classifier, x, batch_size=self.batch_size)
        return to_probabilities(outputs, self.output)
