"""Poison-filtering defences that read a model's internal activations (PyTorch, any layer)."""

from art_backdoor_ext.defences.activation.multilayer import (
    ClassAnalysis,
    LayerDetection,
    MultiLayerActivationDefence,
    MultiLayerSpectralSignature,
    penultimate_layer,
)
from art_backdoor_ext.defences.activation.subspace import SubspaceReconstruction

__all__ = [
    "ClassAnalysis",
    "LayerDetection",
    "MultiLayerActivationDefence",
    "MultiLayerSpectralSignature",
    "SubspaceReconstruction",
    "penultimate_layer",
]
