"""Backdoor defences for ART's PyTorchClassifier.

- Model scanners (``scan(x_clean, y_clean) -> report``): :class:`OrderStatisticDetector` (AD),
  :class:`PyTorchNeuralCleanse`.
- Poison filters (ART ``PoisonFilteringDefence``): :class:`MultiLayerActivationDefence`,
  :class:`MultiLayerSpectralSignature`.
"""

from __future__ import annotations

from art_backdoor_ext.defences.activation import MultiLayerActivationDefence, MultiLayerSpectralSignature
from art_backdoor_ext.defences.base import ModelScanner
from art_backdoor_ext.defences.model.neural_cleanse import PyTorchNeuralCleanse
from art_backdoor_ext.defences.model.order_statistic import OrderStatisticDetector

__all__ = [
    "ModelScanner",
    "OrderStatisticDetector",
    "PyTorchNeuralCleanse",
    "MultiLayerActivationDefence",
    "MultiLayerSpectralSignature",
]
