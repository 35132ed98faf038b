"""MBDS internals: the meta-classifier network, feature-layer resolution, feature extraction and training.

Kept apart from :mod:`art_backdoor_ext.defences.sample.mbds` so that the public class stays readable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from art_backdoor_ext._torch import batch_slices, capture, eval_mode, layer_names, resolve_layers
from art_backdoor_ext.exceptions import InvalidParameterError

__all__ = ["MetaClassifier", "find_feature_layer", "probe_model", "module_features", "train_meta_classifier"]


class MetaClassifier(nn.Module):
    """
    The MBDS meta-classifier: two 1x1 convolutions over the ``(C, H, W)`` feature map, then three fully
    connected layers to one logit (positive = backdoored input).

    :param in_channels: ``C`` of the feature map.
    :param height: ``H`` of the feature map.
    :param width: ``W`` of the feature map.
    :param conv_channels: Output channels of the two 1x1 convolutions.
    :param hidden: Widths of the first two fully connected layers.
    """

    def __init__(self, in_channels: int, height: int, width: int, conv_channels: tuple[int, int] = (32, 16),
                 hidden: tuple[int, int] = (64, 32)) -> None:
        super().__init__()
        self.config = {"in_channels": int(in_channels), "height": int(height), "width": int(width),
                       "conv_channels": [int(c) for c in conv_channels], "hidden": [int(h) for h in hidden]}
        c1, c2 = conv_channels
        h1, h2 = hidden
        self.conv1 = nn.Conv2d(in_channels, c1, 1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c1, c2, 1)
        self.relu2 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(c2 * height * width, h1)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(h1, h2)
        self.relu4 = nn.ReLU()
        self.fc3 = nn.Linear(h2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.relu2(self.conv2(self.relu1(self.conv1(x)))))
        return self.fc3(self.relu4(self.fc2(self.relu3(self.fc1(x))))).squeeze(-1)


def _as_map(t: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) as is; (N, D) as (N, D, 1, 1)."""
    if t.dim() == 4:
        return t
    if t.dim() == 2:
        return t[:, :, None, None]
    return t.flatten(1)[:, :, None, None]


def probe_model(model: nn.Module, input_shape: tuple[int, ...], layers: list[str]) -> tuple[dict[str, tuple], tuple]:
    """One forward pass of a zero input through ``model``: output shapes of ``layers`` and of the model."""
    device = next(model.parameters()).device
    with eval_mode(model), torch.no_grad(), capture(model, layers) as outs:
        out = model(torch.zeros((1, *input_shape), device=device))
    return {name: tuple(outs[name].shape) for name in layers if name in outs}, tuple(out.shape)


def find_feature_layer(model: nn.Module, input_shape: tuple[int, ...]) -> str:
    """The last module with a 4-D output registered before the model's first ``nn.Linear``.

    For :class:`~art_backdoor_ext.models.DigitsCNN` this is ``"pool"`` (the map that ``flatten`` feeds to
    ``fc1``). Without a 4-D output before the first linear layer, the module just before it is used.
    """
    names = [(name, module) for name, module in model.named_modules() if name]
    first_linear = next((i for i, (_, m) in enumerate(names) if isinstance(m, nn.Linear)), None)
    if first_linear is None or first_linear == 0:
        raise InvalidParameterError(
            "cannot find the feature layer: the model has no nn.Linear after another module; pass "
            f"feature_layer=<name> (the model's layers are: {', '.join(layer_names(model))})")
    candidates = [name for name, _ in names[:first_linear]]
    shapes, _ = probe_model(model, input_shape, candidates)
    four_d = [name for name in candidates if len(shapes.get(name, ())) == 4]
    if four_d:
        return four_d[-1]
    return candidates[-1]


def feature_shape(model: nn.Module, input_shape: tuple[int, ...], layer: str) -> tuple[int, int, int]:
    """``(C, H, W)`` of the layer's output (a 2-D output ``(N, D)`` counts as ``(D, 1, 1)``)."""
    resolve_layers(model, [layer])
    shapes, _ = probe_model(model, input_shape, [layer])
    if layer not in shapes:
        raise InvalidParameterError(f"layer {layer!r} is not called in the model's forward pass")
    shape = shapes[layer]
    if len(shape) == 4:
        return int(shape[1]), int(shape[2]), int(shape[3])
    return int(np.prod(shape[1:])), 1, 1


def module_features(
    model: nn.Module, x: np.ndarray, layer: str, *, batch_size: int, device: torch.device,
    forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """Feature maps of ``layer`` (a CPU tensor ``(N, C, H, W)``) and predicted labels, one pass per batch.

    The model is put in eval mode and its previous mode restored; hooks are always removed.
    """
    run = forward if forward is not None else (lambda m, t: m(t))
    feats, preds = [], []
    with eval_mode(model), torch.no_grad(), capture(model, [layer]) as outs:
        for sl in batch_slices(len(x), batch_size):
            logits = run(model, torch.tensor(x[sl], dtype=torch.float32, device=device))
            feats.append(_as_map(outs[layer]).detach().cpu())
            preds.append(logits.argmax(1).cpu().numpy())
    return torch.cat(feats), np.concatenate(preds)


def train_meta_classifier(
    features: torch.Tensor, labels: np.ndarray, *, shape: tuple[int, int, int], nb_epochs: int, batch_size: int,
    learning_rate: float, seed: int, device: torch.device,
) -> MetaClassifier:
    """Train a :class:`MetaClassifier` with BCE-with-logits and Adam; initialisation and shuffling from ``seed``."""
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(rng.integers(2**31)))
        meta = MetaClassifier(*shape)
    meta = meta.to(device).train()
    optimiser = torch.optim.Adam(meta.parameters(), lr=learning_rate)
    x_all = features.to(device)
    y_all = torch.as_tensor(labels, dtype=torch.float32, device=device)
    for _ in range(nb_epochs):
        order = rng.permutation(len(x_all))
        for start in range(0, len(order), batch_size):
            idx = torch.as_tensor(order[start:start + batch_size], device=device)
            loss = F.binary_cross_entropy_with_logits(meta(x_all[idx]), y_all[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    return meta.cpu().eval()


def meta_probabilities(meta: MetaClassifier, features: torch.Tensor, *, batch_size: int) -> np.ndarray:
    """Sigmoid outputs of the meta-classifier, float64 ``(N,)``.

    The sigmoid is taken in float64: in float32 every logit above about 17 rounds to exactly 1.0, so confident
    scores would tie and a threshold set among tied calibration scores could flag nothing.
    """
    device = next(meta.parameters()).device
    out = []
    with eval_mode(meta), torch.no_grad():
        for sl in batch_slices(len(features), batch_size):
            out.append(torch.sigmoid(meta(features[sl].to(device)).double()).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def state_to_cpu(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a module's state dict (plain tensors only)."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def to_plain(value: Any) -> Any:
    """Tuples to lists, recursively (JSON-safe config)."""
    if isinstance(value, (tuple, list)):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    return value
