"""MBDS's ``feature_source="victim+residual"``: the white-box meta-classifier score fused with the class residual.

:class:`ResidualFusion` holds what the fused mode needs besides MBDS itself: a
:class:`~art_backdoor_ext.defences.sample.ClassResidualDetector` with class statistics of the victim's penultimate
features (from the reserve outside MBDS's calibration part), and the two scores' split-conformal thresholds at half
the target FRR each on MBDS's calibration part, with their units
(:func:`~art_backdoor_ext.functional.score_fusion.union_thresholds`). The fused score is the margin above the nearer
threshold (:func:`~art_backdoor_ext.functional.score_fusion.union_margin`); an input is flagged when it is positive.
:func:`fit_residual_fusion` builds it, or returns why it cannot (a reserve class with fewer than two samples outside
the calibration part, a model without a penultimate layer): MBDS then offers its other modes and names the reason
when the fused one is asked for.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from art.estimators.classification import PyTorchClassifier

from art_backdoor_ext.defences.sample.class_residual import ClassResidualDetector
from art_backdoor_ext.exceptions import DataError, InvalidParameterError
from art_backdoor_ext.functional.score_fusion import union_margin, union_thresholds

logger = logging.getLogger(__name__)

__all__ = ["ResidualFusion", "fit_residual_fusion", "fusion_report"]


@dataclass
class ResidualFusion:
    """The fused mode's residual detector and the per-score thresholds and units (``victim``, ``residual``)."""

    residual: ClassResidualDetector
    thresholds: np.ndarray
    scales: np.ndarray
    classes_with_all_samples: list[int] = field(default_factory=list)
    #: The fused score is a margin: inputs above 0 are flagged.
    threshold: ClassVar[float] = 0.0

    def score(self, victim_scores: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Fused scores (margins) of ``x``, given MBDS's white-box scores of the same inputs."""
        return union_margin([victim_scores, self.residual.score(x)], self.thresholds, self.scales)


def fit_residual_fusion(classifier: PyTorchClassifier, x: np.ndarray, y: np.ndarray, idx_cal: np.ndarray,
                        victim_cal: np.ndarray, target_frr: float, batch_size: int) -> ResidualFusion | str:
    """
    The fused mode for ``classifier``, or the reason it cannot be built.

    :param x: The validated reserve; ``y`` its integer labels.
    :param idx_cal: MBDS's calibration part (the residual's statistics come from the rest).
    :param victim_cal: MBDS's white-box scores of the calibration part.
    """
    residual = ClassResidualDetector(classifier, batch_size=batch_size)
    outside = np.setdiff1d(np.arange(len(x)), idx_cal)
    try:
        fallback = residual.fit_statistics(x[outside], y[outside])
    except (DataError, InvalidParameterError) as err:
        logger.info("MBDS: no victim+residual mode (%s)", err)
        return str(err)
    thresholds, scales = union_thresholds([victim_cal, residual.score(x[idx_cal])], target_frr)
    return ResidualFusion(residual, thresholds, scales, fallback)


def fusion_report(fusion: ResidualFusion | str) -> dict[str, object]:
    """The fused mode's part of ``MBDS.fit_report_``: its residual layer and the classes whose statistics use all
    their samples (the victim gets them right fewer than twice), or why the mode is unavailable."""
    if isinstance(fusion, ResidualFusion):
        return {"residual_layer": fusion.residual.statistics[0],
                "classes_with_all_samples": fusion.classes_with_all_samples}
    return {"unavailable": fusion}
