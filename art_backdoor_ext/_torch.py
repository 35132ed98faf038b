"""PyTorch hygiene shared by every method.

- :func:`capture` records the outputs of several named layers in one forward pass; its hooks are always
  removed, even when the forward pass raises. (ART's ``get_activations`` leaks a hook per call.)
- :func:`eval_mode` puts a model in eval mode and restores every module's previous mode afterwards.
- :func:`preprocess` applies an ART classifier's preprocessing to a torch tensor, differentiably.
- :func:`extract_features` runs a classifier over numpy data in batches and returns numpy features.
- :func:`clone_classifier` wraps a deep copy of a classifier's model in a new classifier of the same settings;
  :func:`deepcopy_classifier` deep-copies the classifier itself, also after ART's ``get_activations`` left
  non-leaf tensors in its cache.
- :func:`scan_model` gives the model a scan runs on: on CPU a private channels-last copy (about twice as fast
  for the convolutions of many images at once), elsewhere the model itself; :func:`scan_batch_images` the default
  number of images per forward pass of a scan on a device.
- :func:`clip_to_range` clips perturbed inputs to the valid range with a gradient that still flows at the bounds
  (``torch.clamp``'s is zero there, which freezes a zero-initialised perturbation on every black pixel).

This module imports nothing from the rest of the package except the exceptions.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from art_backdoor_ext.exceptions import InvalidParameterError

if TYPE_CHECKING:
    from art.estimators.classification import PyTorchClassifier

__all__ = [
    "capture",
    "eval_mode",
    "resolve_layers",
    "check_layer_list",
    "first_conv_activation",
    "conv_activations",
    "layer_names",
    "classifier_device",
    "to_tensor",
    "to_numpy",
    "batch_slices",
    "preprocess",
    "forward",
    "extract_features",
    "predict_logits",
    "clone_classifier",
    "deepcopy_classifier",
    "clip_to_range",
    "scan_model",
    "scan_batch_images",
]

#: Default images per forward pass of the perturbation scans: on CPU the per-image cost of the convolutions
#: grows beyond a few hundred images (caches), on a GPU larger batches keep it busy.
CPU_SCAN_BATCH_IMAGES = 512
GPU_SCAN_BATCH_IMAGES = 4096


def layer_names(model: nn.Module) -> list[str]:
    """Names of the model's sub-modules, in registration order (the root excluded)."""
    return [name for name, _ in model.named_modules() if name]


def conv_activations(model: nn.Module) -> list[tuple[str, str]]:
    """``(convolution, activation)`` name pairs in registration order: each convolution with the first activation
    module registered after it (before the next convolution or linear layer), or the convolution itself if none."""
    names = [(name, module) for name, module in model.named_modules() if name]
    pairs = []
    for i, (name, module) in enumerate(names):
        if isinstance(module, nn.Conv2d | nn.Conv1d):
            activation = name
            for later_name, later in names[i + 1:]:
                if isinstance(later, nn.ReLU | nn.LeakyReLU | nn.GELU | nn.ELU | nn.SiLU | nn.Tanh | nn.Sigmoid):
                    activation = later_name
                    break
                if isinstance(later, nn.Conv2d | nn.Conv1d | nn.Linear):
                    break
            pairs.append((name, activation))
    return pairs


def first_conv_activation(model: nn.Module) -> str:
    """Name of the first activation module after the first convolution (the conv itself if none follows).

    This is the "first convolutional layer" feature space that AD's internal-layer variant uses.
    """
    pairs = conv_activations(model)
    if not pairs:
        raise InvalidParameterError("the model has no convolution; pass layer=<name> or layer=None (input space)")
    return pairs[0][1]


def check_layer_list(model: nn.Module, names: Sequence[str], owner: str) -> None:
    """``names`` must be a non-empty list of distinct layer names of ``model`` (an unknown one lists the valid)."""
    if not names:
        raise InvalidParameterError(f"{owner}: layers is empty; give at least one layer name")
    if len(set(names)) != len(names):
        raise InvalidParameterError(f"{owner}: layers has duplicates: {list(names)}")
    resolve_layers(model, names)


def resolve_layers(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """Map layer names to modules; an unknown name raises and lists the valid ones."""
    modules = dict(model.named_modules())
    resolved: dict[str, nn.Module] = {}
    for name in names:
        if not isinstance(name, str) or name not in modules or name == "":
            valid = ", ".join(layer_names(model))
            raise InvalidParameterError(f"unknown layer {name!r}; the model's layers are: {valid}")
        resolved[name] = modules[name]
    return resolved


@contextmanager
def capture(model: nn.Module, layers: Sequence[str], *, flatten: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of ``layers`` during forward passes inside the ``with`` block.

    The returned dict maps each layer name to the output of its most recent forward call (kept in the
    autograd graph). Hooks are removed on exit, also when an exception is raised.

    :param flatten: Store outputs flattened to (N, -1).
    """
    modules = resolve_layers(model, layers)
    outputs: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(layer: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            tensor = output[0] if isinstance(output, tuple | list) else output
            outputs[layer] = tensor.flatten(1) if flatten else tensor

        return hook

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(make_hook(name)))
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode; restore each module's previous ``training`` flag on exit."""
    previous = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for module, was_training in previous:
            module.training = was_training


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Disable ``requires_grad`` on the model's parameters; restore the flags on exit."""
    previous = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in previous:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in previous:
            p.requires_grad_(flag)


def classifier_device(classifier: PyTorchClassifier) -> torch.device:
    """The device an ART ``PyTorchClassifier`` runs on."""
    device = getattr(classifier, "device", None) or getattr(classifier, "_device", None)
    return torch.device(device) if device is not None else torch.device("cpu")


def scan_model(model: nn.Module, device: torch.device) -> nn.Module:
    """The module a perturbation scan runs on: on CPU, when the model has 2-d convolutions, a deep copy in
    channels-last memory format (same weights and modes; the caller's model is not touched); otherwise, or when
    the model cannot be copied, ``model`` itself. Outputs agree with ``model``'s to floating-point rounding."""
    if device.type != "cpu" or not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return model
    try:
        working = copy.deepcopy(model)
    except Exception:  # noqa: BLE001  (a module that refuses deepcopy: run on the original, slower)
        return model
    return working.to(memory_format=torch.channels_last)


def scan_batch_images(device: torch.device, batch_size: int | None) -> int:
    """``batch_size`` when given, else the device's default images per forward pass of a scan."""
    if batch_size is not None:
        return batch_size
    return CPU_SCAN_BATCH_IMAGES if device.type == "cpu" else GPU_SCAN_BATCH_IMAGES


def to_tensor(x: np.ndarray, device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A new tensor on ``device`` (never a view of the caller's array)."""
    return torch.tensor(np.asarray(x), dtype=dtype, device=device)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """Detach, move to CPU and convert."""
    return t.detach().cpu().numpy()


def batch_slices(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices covering ``range(n)``."""
    if batch_size < 1:
        raise InvalidParameterError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def preprocess(classifier: PyTorchClassifier, x: torch.Tensor) -> torch.Tensor:
    """Apply the classifier's preprocessing (e.g. mean/std standardisation) to a tensor, keeping gradients."""
    if not classifier.preprocessing_operations:
        return x
    if not classifier.all_framework_preprocessing:
        raise InvalidParameterError(
            "the classifier has preprocessing that is not implemented in PyTorch "
            f"({[type(p).__name__ for p in classifier.preprocessing_operations]}); gradient-based methods need "
            "PyTorch preprocessing (e.g. preprocessing=(mean, std))"
        )
    x_pre, _ = classifier._apply_preprocessing(x, y=None, fit=False, no_grad=False)
    return x_pre


class _ClipToRange(torch.autograd.Function):
    """Clamp whose gradient passes at a bound when the descent step ``-grad`` points into the range."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor, low: float, high: float) -> torch.Tensor:
        ctx.save_for_backward(t)
        ctx.bounds = (low, high)
        return t.clamp(low, high)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (t,) = ctx.saved_tensors
        low, high = ctx.bounds
        inside = (t > low) & (t < high)
        inward = ((t == low) & (grad < 0)) | ((t == high) & (grad > 0))
        return grad * (inside | inward), None, None


def clip_to_range(t: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``t.clamp(low, high)`` with a one-sided gradient at the bounds.

    ``torch.clamp`` has a zero gradient where ``t`` equals a bound, so a perturbation that starts at zero on a
    pixel that is exactly at the bound (the black background of MNIST-like images, where patch triggers sit)
    never moves there. Here the gradient passes at a bound when a descent step (``-grad``) moves ``t`` back into
    the range, and stays zero strictly outside it, as for ``clamp``.

    >>> t = torch.zeros(2, requires_grad=True)
    >>> (clip_to_range(t, 0.0, 1.0) * torch.tensor([-1.0, 1.0])).sum().backward()
    >>> t.grad.tolist()
    [-1.0, 0.0]
    """
    out: torch.Tensor = _ClipToRange.apply(t, float(low), float(high))
    return out


def forward(classifier: PyTorchClassifier, x: torch.Tensor) -> torch.Tensor:
    """Logits of the classifier's model for a raw-input tensor (preprocessing applied)."""
    return classifier.model(preprocess(classifier, x))


def predict_logits(classifier: PyTorchClassifier, x: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Logits for numpy input in batches, model in eval mode, no gradients, mode restored afterwards."""
    return extract_features(classifier, x, layers=[], batch_size=batch_size, include_logits=True)["logits"]


def extract_features(
    classifier: PyTorchClassifier,
    x: np.ndarray,
    layers: Sequence[str],
    *,
    batch_size: int = 256,
    flatten: bool = True,
    include_logits: bool = False,
) -> dict[str, np.ndarray]:
    """Outputs of several layers from one forward pass per batch, as numpy arrays.

    :param x: Raw inputs (N, C, H, W); the classifier's preprocessing is applied.
    :param layers: Layer names of ``classifier.model``.
    :param flatten: Flatten each layer's output to (N, D).
    :param include_logits: Also return the model output under the key ``"logits"``.
    """
    model = classifier.model
    device = classifier_device(classifier)
    collected: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    if include_logits:
        collected["logits"] = []
    with eval_mode(model), torch.no_grad(), capture(model, layers, flatten=flatten) as outputs:
        for sl in batch_slices(len(x), batch_size):
            logits = forward(classifier, to_tensor(x[sl], device))
            for name in layers:
                collected[name].append(to_numpy(outputs[name]))
            if include_logits:
                collected["logits"].append(to_numpy(logits))
    return {name: np.concatenate(parts, axis=0) for name, parts in collected.items()}


def reset_parameters(model: nn.Module) -> nn.Module:
    """Fresh weights in ``model``, in place: every submodule's ``reset_parameters()`` (seed torch first to repeat
    a draw); returns ``model``."""
    for module in model.modules():
        if hasattr(module, "reset_parameters") and callable(module.reset_parameters):
            module.reset_parameters()
    return model


def deepcopy_classifier(classifier: PyTorchClassifier) -> PyTorchClassifier:
    """``copy.deepcopy(classifier)`` that also works after ART's ``get_activations`` has run on it.

    ART 1.20.1's ``PyTorchClassifier.get_activations`` (used by ``ActivationDefence``) leaves a forward hook on the
    model that stores every later forward's output in ``classifier._features``; after a forward with gradients
    that cache holds non-leaf tensors, which ``copy.deepcopy`` refuses (``RuntimeError: Only Tensors created
    explicitly by the user ...``). The copy gets an empty cache instead; the original is not touched.
    """
    features = getattr(classifier, "_features", None)
    memo: dict[int, Any] = {id(features): {}} if isinstance(features, dict) else {}
    return copy.deepcopy(classifier, memo)


def clone_classifier(classifier: PyTorchClassifier) -> PyTorchClassifier:
    """A new classifier of the same type and settings wrapping a deep copy of ``classifier.model``.

    The copy keeps the weights and the train/eval mode; a fresh optimizer of the original's type and defaults
    is bound to it (none when the original has none). The original classifier and model are not touched.
    """
    params = classifier.get_params()
    model = copy.deepcopy(classifier.model)
    optimizer = params.get("optimizer")
    params["model"] = model
    params["loss"] = copy.deepcopy(params["loss"])
    params["optimizer"] = None if optimizer is None else type(optimizer)(model.parameters(), **optimizer.defaults)
    return type(classifier)(**params)
