"""Backdoor defences for ART's PyTorchClassifier.

- Model scanners (``scan(x_clean, y_clean) -> report``): :class:`OrderStatisticDetector` (AD),
  :class:`CEPA` (+ :class:`CEPAReference`, its test against clean
  reference models), :class:`PyTorchNeuralCleanse`.
- Sample-level detectors (ART ``EvasionDetector``): :class:`MBDS` (+ the ``MBDSPoisonFilter`` adapter),
  :class:`STRIP`, :class:`FeatureSqueezingDetector`, :class:`ClassResidualDetector`.
- Model transformers (ART ``Transformer``): :class:`FinePruning`.
- Poison filters (ART ``PoisonFilteringDefence``): :class:`MultiLayerActivationDefence`,
  :class:`MultiLayerSpectralSignature`, :class:`SubspaceReconstruction`.
"""

from __future__ import annotations

from art_backdoor_ext.defences.activation import (
    MultiLayerActivationDefence,
    MultiLayerSpectralSignature,
    SubspaceReconstruction,
)
from art_backdoor_ext.defences.base import ModelScanner
from art_backdoor_ext.defences.model.cepa import CEPA, CEPAReport
from art_backdoor_ext.defences.model.cepa_reference import CEPAReference, ReferenceTest
from art_backdoor_ext.defences.model.neural_cleanse import PyTorchNeuralCleanse
from art_backdoor_ext.defences.model.order_statistic import OrderStatisticDetector
from art_backdoor_ext.defences.sample import (
    MBDS,
    STRIP,
    ClassResidualDetector,
    FeatureSqueezingDetector,
    MBDSPoisonFilter,
)
from art_backdoor_ext.defences.transformer import FinePruning, FinePruningReport

__all__ = [
    "ModelScanner",
    "CEPA",
    "CEPAReport",
    "CEPAReference",
    "ReferenceTest",
    "OrderStatisticDetector",
    "PyTorchNeuralCleanse",
    "MultiLayerActivationDefence",
    "MultiLayerSpectralSignature",
    "SubspaceReconstruction",
    "MBDS",
    "MBDSPoisonFilter",
    "STRIP",
    "FeatureSqueezingDetector",
    "ClassResidualDetector",
    "FinePruning",
    "FinePruningReport",
]
