"""CEPA against clean reference models: each class of a scanned model compared with the same class of clean models
of the same architecture (this project's opt-in addition; the paper assumes no reference model).

| Paper link: ../shared/papers/cepa-universal-post-training-defense.md

CEPA's own tests (:class:`~art_backdoor_ext.defences.model.cepa.CEPA`) compare the K putative targets of one
model with each other. On our Fashion-MNIST CNNs that costs both ways: the bag class is naturally easy to reach and
gets flagged in clean models, and a chessboard target that is extreme, but not by far, is missed. Where the
defender can train a few clean models like the one under test (same architecture, data of the same distribution,
same recipe), :class:`CEPAReference` keeps their all-to-one ``1 / sigma`` at every scanned layer, and
:meth:`CEPAReference.test` asks how far each class of a new scan lies above the same class of the references
(:mod:`art_backdoor_ext.functional.reference_null`: a prediction-interval z per layer and class, the largest
Bonferroni-corrected with a Student t tail on R - 1 degrees of freedom)::

    det = CEPA(classifier, random_state=0)
    reference = CEPAReference.scan_references(det, clean_classifiers, x_clean, y_clean)   # R >= 3 clean models
    result = reference.test(det.scan(x_clean, y_clean))
    result.detected, result.p_value, result.target, result.layer

The references must be scanned with the same settings and layers as the model under test (the test checks the
layers and the class count, and logs a warning when other scan settings differ). :meth:`save` / :meth:`load` keep
the references' statistics in a ``.npz`` file read with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from art.estimators.classification import PyTorchClassifier

from art_backdoor_ext._progress import progress
from art_backdoor_ext.defences.base import to_builtin
from art_backdoor_ext.defences.model.cepa import CEPA
from art_backdoor_ext.defences.model.cepa_report import CEPAReport
from art_backdoor_ext.exceptions import DataError, InvalidParameterError
from art_backdoor_ext.functional.reference_null import MIN_REFERENCES, reference_pvalue, reference_zscores

logger = logging.getLogger(__name__)

__all__ = ["CEPAReference", "ReferenceTest"]

#: Scan settings that change the statistics: a reference scanned otherwise is not comparable.
COMPARED_SETTINGS = ("variant", "target_misclassification", "lam", "max_iter", "learning_rate", "stop_patience",
                     "max_samples_per_target", "layer_penalty")
_FORMAT = "art-backdoor-ext/cepa-reference/1"
#: Below this many references the test has little power (digits: 4 references found 7 of 16 attacks, 8 found all;
#: docs/benchmarks.md), so fewer are accepted with a warning.
RECOMMENDED_REFERENCES = 8


@dataclass
class ReferenceTest:
    """Result of :meth:`CEPAReference.test`.

    :ivar detected: ``p_value < significance``.
    :ivar p_value: Bonferroni p-value of the largest z over the layers and classes.
    :ivar target: the class of the largest z (the putative backdoor target).
    :ivar layer: the layer of the largest z.
    :ivar z: ``z[layer][class]``: each class's prediction-interval z against the references.
    :ivar n_references: how many reference models the null came from.
    :ivar significance: the level ``detected`` uses.
    """

    detected: bool
    p_value: float
    target: int
    layer: str
    z: dict[str, np.ndarray]
    n_references: int
    significance: float

    def to_dict(self) -> dict[str, Any]:
        return to_builtin({"detected": self.detected, "p_value": self.p_value, "target": self.target,
                           "layer": self.layer, "z": self.z, "n_references": self.n_references,
                           "significance": self.significance})


def _inverse_sigma(report: CEPAReport, layers: Sequence[str]) -> np.ndarray:
    """``(L, K)`` all-to-one ``1 / sigma`` of a scan at ``layers``."""
    if not isinstance(report, CEPAReport):
        raise InvalidParameterError(f"expected a CEPAReport (CEPA.scan), got {type(report).__name__}")
    per_layer = report.statistics.get("all-to-one")
    if per_layer is None:
        raise DataError("the reference test uses the all-to-one statistics: scan with variant='all-to-one' or 'both'")
    missing = [layer for layer in layers if layer not in per_layer]
    if missing:
        raise DataError(f"the scan has no statistics at {missing}; it was scanned at {list(per_layer)}, the "
                        f"references at {list(layers)}: scan both with the same layers")
    sigma = np.stack([np.asarray(per_layer[layer]["sigma"], dtype=np.float64) for layer in layers])
    if not np.all(np.isfinite(sigma)) or np.any(sigma <= 0):
        raise DataError("a putative target has no positive, finite sigma in this scan (a class without samples?)")
    return 1.0 / sigma


class CEPAReference:
    """
    Clean reference models' CEPA statistics, and the per-class test of a new scan against them.

    :param layers: The layers every reference was scanned at, in order.
    :param statistics: ``(R, L, K)`` all-to-one ``1 / sigma`` of the R references, R >= 3 (8 or more recommended:
        fewer log a warning).
    :param significance: Level of :meth:`test`'s ``detected``.
    :param settings: The references' scan settings (:attr:`CEPAReport.settings`), compared with each tested scan's.
    """

    def __init__(self, layers: Sequence[str], statistics: np.ndarray, significance: float = 0.05,
                 settings: dict[str, Any] | None = None) -> None:
        values = np.asarray(statistics, dtype=np.float64)
        if values.ndim != 3 or values.shape[1] != len(layers):
            raise DataError(f"statistics must be (references, {len(layers)} layers, classes), got {values.shape}")
        _check_count(values.shape[0])
        if not 0.0 < significance < 1.0:
            raise InvalidParameterError(f"significance must be in (0, 1), got {significance}")
        if values.shape[0] < RECOMMENDED_REFERENCES:
            logger.warning("CEPAReference: %d reference models; the test has R - 1 = %d degrees of freedom and little "
                           "power below %d references", values.shape[0], values.shape[0] - 1, RECOMMENDED_REFERENCES)
        self.layers = list(layers)
        self.statistics = values.copy()
        self.significance = float(significance)
        self.settings = dict(settings or {})

    @property
    def n_references(self) -> int:
        return int(self.statistics.shape[0])

    @classmethod
    def from_reports(cls, reports: Sequence[CEPAReport], significance: float = 0.05) -> CEPAReference:
        """References from scans of clean models (all with the same layers and settings)."""
        _check_count(len(reports))
        layers = list(reports[0].layers)
        for i, report in enumerate(reports[1:], start=1):
            if list(report.layers) != layers:
                raise DataError(f"reference scan {i} was scanned at {list(report.layers)}, scan 0 at {layers}: "
                                "scan every reference with the same layers")
        values = [_inverse_sigma(report, layers) for report in reports]
        if len({v.shape for v in values}) != 1:
            raise DataError("the reference scans have different numbers of classes")
        return cls(layers, np.stack(values), significance, _compared(reports[0].settings))

    @classmethod
    def scan_references(cls, detector: CEPA, classifiers: Sequence[PyTorchClassifier], x_clean: np.ndarray,
                        y_clean: np.ndarray, significance: float = 0.05) -> CEPAReference:
        """
        Scan each clean reference classifier with ``detector``'s settings and layers, and keep the statistics.

        :param detector: The CEPA detector that will scan the models under test (its settings are copied).
        :param classifiers: R >= 3 clean models of the same architecture as the models under test.
        :param x_clean: The clean set the models under test are scanned with (the references see the same).
        :param y_clean: Its integer labels.
        """
        if not isinstance(detector, CEPA):
            raise InvalidParameterError(f"detector must be a CEPA instance, got {type(detector).__name__}")
        _check_count(len(classifiers))  # before any scan
        params = detector.get_params()
        params["layers"] = detector._resolved_layers()
        reports = []
        for clf in progress(classifiers, verbose=detector.verbose, desc="CEPA reference scans"):
            if not isinstance(clf, PyTorchClassifier) or clf.nb_classes != detector.classifier.nb_classes:
                raise InvalidParameterError("every reference must be a PyTorchClassifier with "
                                            f"{detector.classifier.nb_classes} classes, like the detector's")
            reports.append(CEPA(clf, **params).scan(x_clean, y_clean))
        return cls.from_reports(reports, significance)

    def test(self, report: CEPAReport) -> ReferenceTest:
        """The scanned model's classes against the references' (nothing in ``report`` is changed)."""
        values = _inverse_sigma(report, self.layers)
        if values.shape[1] != self.statistics.shape[2]:
            raise DataError(f"the scan has {values.shape[1]} classes, the references {self.statistics.shape[2]}")
        differing = {k: (v, report.settings.get(k)) for k, v in self.settings.items()
                     if k in report.settings and report.settings.get(k) != v}
        if differing:
            logger.warning("CEPA reference test: the scan's settings differ from the references' (reference, scan): "
                           "%s; the statistics may not be comparable", differing)
        z, df = reference_zscores(values, self.statistics)
        p_value, layer, target = reference_pvalue(z, df)
        return ReferenceTest(detected=bool(p_value < self.significance), p_value=p_value, target=target,
                             layer=self.layers[layer], z={name: z[i] for i, name in enumerate(self.layers)},
                             n_references=self.n_references, significance=self.significance)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the references to ``path`` (``.npz``; no pickled object)."""
        meta = json.dumps({"format": _FORMAT, "layers": self.layers, "significance": self.significance,
                           "settings": to_builtin(self.settings)})
        with open(path, "wb") as handle:
            np.savez(handle, statistics=self.statistics, meta=np.array(meta))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CEPAReference:
        """Read references written by :meth:`save` (``allow_pickle=False``: a file cannot run code)."""
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                statistics = np.asarray(data["statistics"], dtype=np.float64)
        except (OSError, ValueError, KeyError) as err:
            raise DataError(f"{path} is not a CEPA reference file written by CEPAReference.save: {err}") from err
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT or "layers" not in meta:
            found = meta.get("format") if isinstance(meta, dict) else None
            raise DataError(f"{path} is not a CEPA reference file (format {found!r})")
        return cls(meta["layers"], statistics, meta.get("significance", 0.05), meta.get("settings"))


def _check_count(n_references: int) -> None:
    if n_references < MIN_REFERENCES:
        raise DataError(f"the reference test needs at least {MIN_REFERENCES} clean reference models, got "
                        f"{n_references}")


def _compared(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: settings[k] for k in COMPARED_SETTINGS if k in settings}
