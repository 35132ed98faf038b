"""The result dataclass of :class:`~art_backdoor_ext.defences.model.cepa.CEPA`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from art_backdoor_ext.defences.base import to_builtin

__all__ = ["CEPAReport"]


@dataclass
class CEPAReport:
    """Result of :meth:`CEPA.scan`.

    :ivar detected: True when the (Sidak-corrected) p-value is below ``significance`` (``inference="p-value"``)
        or the anomaly index exceeds ``anomaly_threshold`` (``inference="mad"``).
    :ivar p_value: ``1 - (1 - p_min)^m`` over the m tests (variant x layer; with ``layer_pooling="joint"`` or
        ``"pooled"``, those layers count as one test, ``joint`` or ``pooled``; ``"joint"`` is the default's
        choice for the all-to-one variant over several layers); the raw ones are in ``tests``.
    :ivar anomaly_index: MAD anomaly index of the chosen test's most extreme statistic.
    :ivar target: putative target class of the most extreme test.
    :ivar source: its source class for the pair variant; None for the all-to-one variant (pooled sources).
    :ivar variant: ``"pairs"`` or ``"all-to-one"``, the variant of the most extreme test.
    :ivar layer: the layer of the most extreme test (the layer ``mu`` lives in).
    :ivar mu: the common embedded perturbation of the chosen problem, shaped like the layer's output (no batch).
    :ivar misclassification: fraction of the chosen problem's clean samples sent to the target by its deltas
        (the ASR of the Eq. 1 perturbations on the clean set).
    :ivar statistics: ``statistics[variant][layer]`` -> dict of arrays: ``ratio`` (sigma / ||mu||), ``mu_norm``,
        ``sigma``, ``misclassification``, ``reached``, ``iterations``, ``delta_norm`` (mean L2 norm of the deltas),
        ``lam`` (final lambda), ``anomaly_index``, and two diagnostics: ``landing_sigma`` (spread of the perturbed
        features f(x + delta) about their mean) and ``class_sigma`` (spread of the target class's clean features
        about their mean); (K, K) matrices (row source, column target, NaN diagonal) for
        ``"pairs"``, (K,) vectors for ``"all-to-one"``.
    :ivar tests: one dict per (variant, layer): ``p_value`` (not Sidak-corrected), ``p_value_uncalibrated`` (before
        the bootstrap calibration), ``anomaly_index``, ``source``,
        ``target``.
    :ivar joint: the all-to-one test over all layers together (``p_value``, ``target``, ``layer``: where its
        ``mu`` is taken, ``pooled_layers``), computed whenever there are two or more layers, the p-value inference
        and the bootstrap calibration; it decides with ``layer_pooling="joint"`` (the default's resolution). None
        otherwise.
    :ivar pooled: with ``layer_pooling="pooled"``, the all-to-one test with the layers' median-relative statistics
        pooled (``p_value``, ``p_value_uncalibrated``, ``target``, ``layer`` where the pooled maximum lies,
        ``pooled_layers``); None otherwise.
    """

    detected: bool
    p_value: float
    anomaly_index: float
    target: int
    source: int | None
    variant: str
    layer: str
    mu: np.ndarray
    misclassification: float
    statistic: str
    layers: list[str]
    statistics: dict[str, dict[str, dict[str, np.ndarray]]]
    tests: list[dict[str, Any]]
    significance: float
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)
    joint: dict[str, Any] | None = None
    pooled: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return to_builtin({
            "detected": self.detected, "p_value": self.p_value, "anomaly_index": self.anomaly_index,
            "target": self.target, "source": self.source, "variant": self.variant, "layer": self.layer,
            "mu": self.mu, "misclassification": self.misclassification, "statistic": self.statistic,
            "layers": self.layers, "statistics": self.statistics, "tests": self.tests, "joint": self.joint,
            "pooled": self.pooled,
            "significance": self.significance, "seconds": self.seconds, "settings": self.settings,
        })
