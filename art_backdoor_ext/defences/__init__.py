"""Backdoor defences: model scanners, sample detectors and poison filters for ART's PyTorchClassifier."""

from __future__ import annotations

from art_backdoor_ext.defences.activation import MultiLayerActivationDefence, MultiLayerSpectralSignature

__all__ = ["MultiLayerActivationDefence", "MultiLayerSpectralSignature"]
