"""Candidate internal layers for CEPA (Li, Wang, Miller & Kesidis, 2024, Section 3.1: "a plurality of layers").

| Paper link: ../shared/papers/cepa-universal-post-training-defense.md
"""

from __future__ import annotations

import numpy as np
from torch import nn

from art_backdoor_ext.exceptions import InvalidParameterError

__all__ = ["candidate_layers"]

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.ELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softplus)
_LINEAR = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def candidate_layers(model: nn.Module, n: int = 3, first_linear: bool = False) -> list[str]:
    """Up to ``n`` internal layers spread through the network: activation modules (ReLU, GELU, ...) evenly
    spaced in registration order, first and last included; leaf modules but the last when there is no activation.

    With ``first_linear``, the first convolution or linear module registered before the first of them is put in
    front (when there is one): a linear map moves every image by the same amount under an additive trigger
    (``W (x + c) - W x = W c``), so such a trigger's embedded shifts agree exactly there (up to clipping), while
    after an activation the gates differ from image to image.
    """
    modules = [(name, module) for name, module in model.named_modules() if name]
    names = [name for name, module in modules if isinstance(module, _ACTIVATIONS)]
    if not names:
        names = [name for name, module in modules if not list(module.children())][:-1]
    if not names:
        raise InvalidParameterError("the model has no internal layer to analyse; pass layers=[<name>, ...]")
    picks = np.unique(np.round(np.linspace(0, len(names) - 1, min(n, len(names)))).astype(int))
    chosen = [names[i] for i in picks]
    if first_linear:
        before = modules[:[name for name, _ in modules].index(chosen[0])]
        chosen = [name for name, module in before if isinstance(module, _LINEAR)][:1] + chosen
    return chosen
