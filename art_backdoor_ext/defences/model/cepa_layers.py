"""Candidate internal layers for CEPA (Li, Wang, Miller & Kesidis, 2024, Section 3.1: "a plurality of layers").

| Paper link: ../shared/papers/cepa-universal-post-training-defense.md
"""

from __future__ import annotations

import numpy as np
from torch import nn

from art_backdoor_ext.exceptions import InvalidParameterError

__all__ = ["candidate_layers"]

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.ELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softplus)


def candidate_layers(model: nn.Module, n: int = 3) -> list[str]:
    """Up to ``n`` internal layers spread through the network: activation modules (ReLU, GELU, ...) evenly
    spaced in registration order, first and last included; leaf modules but the last when there is no activation.
    """
    names = [name for name, module in model.named_modules() if name and isinstance(module, _ACTIVATIONS)]
    if not names:
        names = [name for name, module in model.named_modules() if name and not list(module.children())][:-1]
    if not names:
        raise InvalidParameterError("the model has no internal layer to analyse; pass layers=[<name>, ...]")
    picks = np.unique(np.round(np.linspace(0, len(names) - 1, min(n, len(names)))).astype(int))
    return [names[i] for i in picks]
