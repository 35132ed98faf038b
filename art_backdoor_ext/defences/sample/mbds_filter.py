"""``MBDSPoisonFilter``: a fitted :class:`~art_backdoor_ext.defences.sample.mbds.MBDS` behind ART's
``PoisonFilteringDefence`` interface, to filter a training set."""

from __future__ import annotations

from typing import Any

import numpy as np
from art.defences.detector.poison import GroundTruthEvaluator, PoisonFilteringDefence
from art.estimators.classification import PyTorchClassifier

from art_backdoor_ext._validation import Instance, Options, ParamsMixin, check_labels, check_pytorch_classifier
from art_backdoor_ext.defences.sample.mbds import MBDS
from art_backdoor_ext.exceptions import DataError, InvalidParameterError

__all__ = ["MBDSPoisonFilter"]


class MBDSPoisonFilter(ParamsMixin, PoisonFilteringDefence):
    """
    A fitted :class:`MBDS` as an ART ``PoisonFilteringDefence``: flags the training samples it judges backdoored.

    :param classifier: The ART ``PyTorchClassifier`` (the one ``mbds`` was fitted for).
    :param x_train: Training inputs NCHW.
    :param y_train: Training labels (integer or one-hot), used for the per-class evaluation.
    :param mbds: A fitted :class:`MBDS`.
    :param feature_source: Override the detector's feature source (``None``: keep it).

    Example::

        report, is_clean = MBDSPoisonFilter(classifier, x_train, y_train, mbds=mbds).detect_poison()
    """

    _parameter_constraints: dict[str, list[Any]] = {
        "mbds": [Instance(MBDS)],
        "feature_source": [Options(("shadow", "victim")), None],
    }
    defence_params = ["classifier", *_parameter_constraints]

    def __init__(self, classifier: PyTorchClassifier, x_train: np.ndarray, y_train: np.ndarray, *, mbds: MBDS,
                 feature_source: str | None = None) -> None:
        check_pytorch_classifier(classifier, type(self))
        PoisonFilteringDefence.__init__(self, classifier, x_train, y_train)
        self.mbds = mbds
        self.feature_source = feature_source
        self._check_params()
        if mbds.classifier is not classifier:
            raise InvalidParameterError("mbds was built for a different classifier than the one given")

    def _labels(self) -> np.ndarray:
        x = self.mbds._check_x(self.x_train, "x_train")
        return check_labels(self.y_train, n_samples=len(x), nb_classes=int(self.classifier.nb_classes),
                            name="y_train", allow_one_hot=True)

    def detect_poison(self, **kwargs: Any) -> tuple[dict[str, Any], list[int]]:
        """
        :param kwargs: Hyper-parameters to set first.
        :return: ``(report, is_clean)``: report dict (JSON-safe), ``is_clean[i] = 1`` when ``x_train[i]`` is judged
            clean, 0 when judged backdoored (ART's convention).
        """
        if kwargs:
            self.set_params(**kwargs)
        self._labels()
        report, is_backdoor = self.mbds.detect(self.x_train, feature_source=self.feature_source)
        report["flagged_indices"] = [int(i) for i in np.flatnonzero(is_backdoor)]
        return report, [int(v) for v in ~is_backdoor]

    def evaluate_defence(self, is_clean: np.ndarray, **kwargs: Any) -> str:
        """
        :param is_clean: Ground truth, ``is_clean[i] = 1`` when ``x_train[i]`` is clean, 0 when poisoned.
        :return: ART ``GroundTruthEvaluator`` JSON string, per class.
        """
        if is_clean is None or np.asarray(is_clean).size == 0:
            raise DataError("is_clean was not provided while invoking evaluate_defence")
        truth = np.asarray(is_clean).astype(np.int64).reshape(-1)
        labels = self._labels()
        if len(truth) != len(labels):
            raise DataError(f"is_clean has {len(truth)} entries but x_train has {len(labels)} samples")
        _, predicted = self.detect_poison(**kwargs)
        predicted_clean = np.asarray(predicted, dtype=np.int64)
        by_class = [labels == c for c in range(int(self.classifier.nb_classes))]
        _, conf_matrix_json = GroundTruthEvaluator().analyze_correctness(
            [predicted_clean[m] for m in by_class], [truth[m] for m in by_class])
        return conf_matrix_json
