"""
Fine-Pruning (Liu, Dolan-Gavitt and Garg, 2018): prune the last convolutional layer's dormant channels, then
fine-tune on clean data, to remove a backdoor from a trained model.

Backdoor behaviour tends to live in channels that clean inputs leave dormant. :class:`FinePruning` (an ART
``Transformer``) records each channel's mean activation on the defender's clean data, prunes channels in
increasing order of it (zeroing the channel's filter and bias, and those of a BatchNorm that follows) while the
clean accuracy stays within ``max_accuracy_drop`` of the original, then fine-tunes the pruned model on the same
clean data with the pruned channels held at zero. It returns a new classifier; the one it was given is not
changed.

Choices where the paper leaves room (see docs/fine-pruning.md):

- The one clean set given serves for ranking channels, for the accuracy stopping rule and for fine-tuning (the
  paper keeps a separate validation set for the stopping rule).
- Activations are read at the activation module after the convolution (its ReLU), averaged over samples and
  spatial positions; the stopping rule keeps the largest prefix of the ranking whose accuracy drop is at most
  ``max_accuracy_drop``, and never prunes every channel.
- Fine-tuning uses Adam (:func:`~art_backdoor_ext.training.fit_classifier`) with pruned weights masked through
  ``torch.nn.utils.prune`` so that they stay zero; the masks are made permanent afterwards.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from art.defences.transformer.transformer import Transformer
from art.estimators.classification import PyTorchClassifier
from torch import nn
from torch.nn.utils import prune

from art_backdoor_ext._progress import progress
from art_backdoor_ext._torch import (
    conv_activations,
    deepcopy_classifier,
    extract_features,
    predict_logits,
    resolve_layers,
)
from art_backdoor_ext._validation import (
    Instance,
    Interval,
    ParamsMixin,
    check_images,
    check_labels,
    check_pytorch_classifier,
    seed_from,
)
from art_backdoor_ext.defences.base import to_builtin
from art_backdoor_ext.exceptions import InvalidParameterError
from art_backdoor_ext.functional.metrics import benign_accuracy

logger = logging.getLogger(__name__)

__all__ = ["FinePruning", "FinePruningReport"]


@dataclass
class FinePruningReport:
    """What :class:`FinePruning` did: the layer, the channels pruned (in pruning order) and clean accuracies.

    ``pruning_curve[k]`` is the clean accuracy with the first ``k`` channels of the ranking pruned (``k = 0``: the
    original model), up to and including the step that exceeded ``max_accuracy_drop`` (not kept).
    """

    layer: str
    activation_layer: str
    n_channels: int
    pruned_channels: list[int]
    mean_activations: list[float]
    accuracy_before: float
    accuracy_pruned: float
    accuracy_fine_tuned: float
    pruning_curve: list[float]
    max_accuracy_drop: float
    fine_tune_epochs: int
    seconds: float

    @property
    def n_pruned(self) -> int:
        return len(self.pruned_channels)

    def to_dict(self) -> dict[str, Any]:
        return to_builtin({**asdict(self), "n_pruned": self.n_pruned})


class FinePruning(ParamsMixin, Transformer):
    """
    Implementation of Fine-Pruning (Liu, Dolan-Gavitt and Garg, 2018): pruning of the last convolutional layer's
    channels in increasing order of mean clean activation until the clean accuracy drops by
    ``max_accuracy_drop``, then fine-tuning on clean data.

    | Paper link: https://arxiv.org/abs/1805.12185

    :param classifier: The (possibly backdoored) ART ``PyTorchClassifier``; inputs NCHW in its ``clip_values``.
        It is never modified: :meth:`__call__` returns a new classifier.
    :param layer: Name of the convolution to prune; ``None``: the last ``nn.Conv2d`` / ``nn.Conv1d`` registered.
    :param max_accuracy_drop: Largest clean accuracy drop (absolute, e.g. 0.04 = four points) pruning may cause.
    :param fine_tune_epochs: Epochs of fine-tuning on the clean data (0: pruning only).
    :param learning_rate: Adam learning rate of fine-tuning (the paper does not give one; on digits 1e-3 leaves the
        backdoor in place and 1e-2 removes it, see docs/fine-pruning.md).
    :param batch_size: Mini-batch size of fine-tuning.
    :param random_state: Seed (or generator) of the fine-tuning shuffles.
    :param verbose: Progress bars.

    Example::

        fp = FinePruning(classifier, max_accuracy_drop=0.04, fine_tune_epochs=10, random_state=0)
        repaired = fp(x_clean, y_clean)          # a new PyTorchClassifier; classifier is untouched
        fp.report_.n_pruned, fp.report_.accuracy_fine_tuned
        pruned_only = fp.pruned_classifier_      # after pruning, before fine-tuning
    """

    _estimator_requirements = (PyTorchClassifier,)
    _parameter_constraints: dict[str, list[Any]] = {
        "layer": [Instance(str), None],
        "max_accuracy_drop": [Interval(float, 0, 1)],
        "fine_tune_epochs": [Interval(int, 0, None)],
        "learning_rate": [Interval(float, 0, None, closed="neither")],
        "batch_size": [Interval(int, 1, None)],
        "random_state": [Interval(int, 0, None), Instance(np.random.Generator), None],
        "verbose": [Instance(bool)],
    }
    params = list(_parameter_constraints)

    def __init__(
        self,
        classifier: PyTorchClassifier,
        layer: str | None = None,
        max_accuracy_drop: float = 0.04,
        fine_tune_epochs: int = 10,
        random_state: int | np.random.Generator | None = None,
        verbose: bool = False,
        *,
        learning_rate: float = 1e-2,
        batch_size: int = 64,
    ) -> None:
        check_pytorch_classifier(classifier, type(self))
        Transformer.__init__(self, classifier)
        self.layer = layer
        self.max_accuracy_drop = max_accuracy_drop
        self.fine_tune_epochs = fine_tune_epochs
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose
        self._check_params()

    def _check_params(self) -> None:
        super()._check_params()
        self._resolve_layer(self.classifier.model)

    # ------------------------------------------------------------------ public API
    def __call__(  # type: ignore[override]
        self, x: np.ndarray, y: np.ndarray, transformed_classifier: PyTorchClassifier | None = None
    ) -> PyTorchClassifier:
        """
        Fine-prune a copy of the classifier with clean data.

        :param x: Clean inputs, NCHW float32 in the classifier's ``clip_values``.
        :param y: Their integer labels ``(N,)``.
        :param transformed_classifier: ART's output slot: ``None`` (default) for a deep copy of ``classifier``;
            otherwise a ``PyTorchClassifier`` of the same architecture whose weights are overwritten with
            ``classifier``'s and then fine-pruned (it is the object returned).
        :return: The fine-pruned ``PyTorchClassifier``. ``self.report_`` (:class:`FinePruningReport`) records what
            was done, ``self.pruned_classifier_`` holds the model after pruning and before fine-tuning.
        :raises DataError: NHWC / float64 / out-of-range inputs, one-hot or out-of-range labels.
        """
        start = time.perf_counter()
        x = check_images(x, input_shape=self.classifier.input_shape, clip_values=self.classifier.clip_values)
        y = check_labels(y, n_samples=len(x), nb_classes=int(self.classifier.nb_classes))
        out = self._output_classifier(transformed_classifier)
        conv_name, act_name = self._resolve_layer(out.model)
        modules = _pruned_modules(out.model, conv_name)
        features = extract_features(out, x, [act_name], flatten=False)[act_name]
        mean_act = features.mean(axis=tuple(i for i in range(features.ndim) if i != 1)).astype(np.float64)
        order = np.argsort(mean_act, kind="stable")

        curve = [_accuracy(out, x, y)]
        originals = {name: p.detach().clone() for name, p in _channel_parameters(modules)}
        pruned: list[int] = []
        for channel in progress(order[:-1], verbose=self.verbose, desc="Fine-Pruning: pruning"):
            _set_channel(modules, originals, int(channel), zero=True)
            curve.append(_accuracy(out, x, y))
            if curve[0] - curve[-1] > self.max_accuracy_drop:
                _set_channel(modules, originals, int(channel), zero=False)
                break
            pruned.append(int(channel))
        accuracy_pruned = curve[len(pruned)]
        self.pruned_classifier_ = deepcopy_classifier(out)

        if self.fine_tune_epochs > 0:
            self._fine_tune(out, modules, pruned, x, y)
        self.report_ = FinePruningReport(
            layer=conv_name, activation_layer=act_name, n_channels=len(mean_act), pruned_channels=pruned,
            mean_activations=[float(v) for v in mean_act], accuracy_before=curve[0], accuracy_pruned=accuracy_pruned,
            accuracy_fine_tuned=_accuracy(out, x, y), pruning_curve=curve, max_accuracy_drop=self.max_accuracy_drop,
            fine_tune_epochs=self.fine_tune_epochs, seconds=time.perf_counter() - start)
        self._is_fitted = True
        logger.info("Fine-Pruning: %s", self.report_.to_dict())
        return out

    def fit(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs: Any) -> None:
        """Not used: Fine-Pruning has nothing to fit apart from the transformation; call ``fp(x, y)``."""
        raise NotImplementedError("FinePruning has no separate fit step; call the instance, fp(x_clean, y_clean), "
                                  "which returns the fine-pruned classifier")

    # ------------------------------------------------------------------ steps
    def _resolve_layer(self, model: nn.Module) -> tuple[str, str]:
        pairs = conv_activations(model)
        if self.layer is None:
            if not pairs:
                raise InvalidParameterError("FinePruning: the model has no nn.Conv2d / nn.Conv1d layer to prune")
            return pairs[-1]
        module = resolve_layers(model, [self.layer])[self.layer]
        if not isinstance(module, nn.Conv2d | nn.Conv1d):
            convs = ", ".join(name for name, _ in pairs) or "none"
            raise InvalidParameterError(f"FinePruning: layer {self.layer!r} is a {type(module).__name__}, not a "
                                        f"convolution; the model's convolutions are: {convs}")
        return self.layer, dict(pairs)[self.layer]

    def _output_classifier(self, transformed: PyTorchClassifier | None) -> PyTorchClassifier:
        if transformed is None:
            return deepcopy_classifier(self.classifier)
        check_pytorch_classifier(transformed, type(self))
        if transformed is self.classifier or transformed.model is self.classifier.model:
            raise InvalidParameterError("transformed_classifier must not be the classifier being defended (it "
                                        "would be modified); pass None for a copy")
        try:
            transformed.model.load_state_dict(self.classifier.model.state_dict())
        except RuntimeError as err:
            raise InvalidParameterError("transformed_classifier must share the classifier's architecture: "
                                        f"{str(err).splitlines()[0]}") from None
        return transformed

    def _fine_tune(self, out: PyTorchClassifier, modules: list[nn.Module], pruned: list[int], x: np.ndarray,
                   y: np.ndarray) -> None:
        from art_backdoor_ext.training import fit_classifier

        masked = []
        for module in modules:
            for name in ("weight", "bias"):
                param = getattr(module, name, None)
                if isinstance(param, nn.Parameter):
                    mask = torch.ones_like(param)
                    mask[pruned] = 0
                    prune.custom_from_mask(module, name, mask)
                    masked.append((module, name))
        try:
            fit_classifier(out, x, y, nb_epochs=self.fine_tune_epochs, batch_size=self.batch_size,
                           learning_rate=self.learning_rate, random_state=seed_from(self.random_state),
                           verbose=self.verbose)
        finally:
            for module, name in masked:
                prune.remove(module, name)


def _pruned_modules(model: nn.Module, conv_name: str) -> list[nn.Module]:
    """The convolution and any BatchNorm registered between it and the next convolution / linear layer."""
    names = [(n, m) for n, m in model.named_modules() if n]
    index = [n for n, _ in names].index(conv_name)
    conv = names[index][1]
    modules = [conv]
    for _, later in names[index + 1:]:
        if isinstance(later, nn.Conv2d | nn.Conv1d | nn.Linear):
            break
        if isinstance(later, nn.BatchNorm2d | nn.BatchNorm1d) and later.num_features == conv.out_channels:
            modules.append(later)
    return modules


def _channel_parameters(modules: list[nn.Module]) -> list[tuple[str, nn.Parameter]]:
    return [(f"{i}.{name}", p) for i, m in enumerate(modules) for name, p in m.named_parameters(recurse=False)]


def _set_channel(modules: list[nn.Module], originals: dict[str, torch.Tensor], channel: int, *, zero: bool) -> None:
    with torch.no_grad():
        for key, param in _channel_parameters(modules):
            param[channel] = 0 if zero else originals[key][channel]


def _accuracy(classifier: PyTorchClassifier, x: np.ndarray, y: np.ndarray) -> float:
    return benign_accuracy(predict_logits(classifier, x).argmax(axis=1), y)
