"""Implementation of the Statistical Difference Reduction Method, SDRM (Xia et al., 2022).

| Paper link: https://arxiv.org/abs/2111.05077

SDRM trains a backdoored model whose internal features of triggered inputs are statistically close to those of
clean target-class inputs, so that difference-based detectors (Activation Clustering, Spectral Signatures,
Subspace Reconstruction) lose their signal. Per mini-batch of the concatenated set ``C = D u U`` (Algorithm 1)::

    L = CE(clean samples) + CE(poisoned samples) + lam * mean_{layer in layers} MMD^2(Z_layer(poisoned),
                                                                                     Z_layer(clean target-class))

with the two cross-entropies averaged separately (Eq. 2 and 4) and MMD^2 the unbiased estimator of Eq. 3
(:mod:`art_backdoor_ext.functional.mmd`). One layer is SDRM-L (the paper constrains the last hidden layer),
several are SDRM-A, ``lam=0`` is regular backdoor training (RBT).

Choices where the paper is silent or the project differs:

- ``U`` are triggered *copies* of ``round(poison_ratio * |D|)`` samples drawn from the non-target classes and
  relabelled ``target`` (all-to-one), appended to the clean set ``D``, so ``poison_ratio`` is the paper's
  ``r = |U| / |D|``. The trigger is applied through ART's ``PoisoningAttackBackdoor``
  (:func:`art_backdoor_ext.training.poison_dataset`).
- Optimiser: Adam with a constant learning rate, as every training loop of this package
  (:func:`art_backdoor_ext.training.run_epochs`); the paper uses SGD with momentum and a step schedule.
- Kernel: Gaussian mixture with Table 3's GMK2 bandwidths by default, each ``sigma^2`` multiplied by the mean
  pairwise squared distance of the batch's pooled features (``scale_bandwidth``), so the penalty does not
  depend on the scale of a layer's activations. A batch with fewer than two poisoned or two clean target-class
  samples gets no MMD term (counted in the training log).
- Convolutional features are flattened; a layer is read with a forward hook on the named module (one forward
  pass per batch for every layer; hooks removed when training ends, also on error).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from art.attacks.attack import PoisoningAttackTransformer
from art.estimators.classification import PyTorchClassifier
from torch import nn

from art_backdoor_ext._torch import (
    capture,
    check_layer_list,
    classifier_device,
    clone_classifier,
    forward,
    to_tensor,
)
from art_backdoor_ext._validation import (
    Instance,
    Interval,
    Options,
    ParamsMixin,
    check_images,
    check_labels,
    check_pytorch_classifier,
)
from art_backdoor_ext.exceptions import InvalidParameterError
from art_backdoor_ext.functional.mmd import KERNELS, mmd2_pooled, resolve_sigmas
from art_backdoor_ext.training import poison_dataset, run_epochs

__all__ = ["SDRM", "SDRMTrainingLog"]

logger = logging.getLogger(__name__)


@dataclass
class SDRMTrainingLog:
    """What :meth:`SDRM.poison_estimator` did, epoch by epoch (plain Python values only).

    :param variant: ``"RBT"`` (``lam == 0``), ``"SDRM-L"`` (one layer) or ``"SDRM-A"`` (several layers).
    :param loss: Total loss per epoch (mean over samples).
    :param ce_clean: Mean cross-entropy of the clean samples per epoch (mean over batches).
    :param ce_poison: Mean cross-entropy of the poisoned samples per epoch.
    :param mmd: Mean over batches of the layer-averaged MMD^2 per epoch (``None`` for RBT or when no batch had
        enough samples).
    :param batches_without_mmd: Batches whose MMD term was skipped (fewer than two poisoned or two clean
        target-class samples).
    :param seconds_per_epoch: Wall-clock time of each epoch.
    """

    variant: str
    layers: list[str]
    lam: float
    n_clean: int
    n_poison: int
    loss: list[float] = field(default_factory=list)
    ce_clean: list[float] = field(default_factory=list)
    ce_poison: list[float] = field(default_factory=list)
    mmd: list[float | None] = field(default_factory=list)
    batches_without_mmd: int = 0
    seconds_per_epoch: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SDRM(ParamsMixin, PoisoningAttackTransformer):
    """Implementation of SDRM, backdoor training with a multi-level MMD penalty (Xia et al., 2022).

    | Paper link: https://arxiv.org/abs/2111.05077

    :param classifier: ART ``PyTorchClassifier`` whose model is the starting point (usually freshly initialised).
        It is never modified: :meth:`poison_estimator` trains a deep copy, on the classifier's device (ART's
        ``device_type="gpu"`` default and :func:`~art_backdoor_ext.models.make_classifier` pick CUDA when
        available).
    :param perturbation: Trigger, a callable ``np.ndarray -> np.ndarray`` on (N, C, H, W) batches in the
        classifier's ``clip_values`` (e.g. :mod:`art_backdoor_ext.attacks.triggers`).
    :param target: Target class ``t`` (all-to-one).
    :param poison_ratio: ``r = |U| / |D|``, in (0, 1]: triggered copies appended per clean sample.
    :param layers: Layer name(s) of ``classifier.model`` whose outputs are constrained; one = SDRM-L, several =
        SDRM-A. An unknown name raises and lists the valid ones.
    :param lam: Constraint strength ``lambda`` (>= 0; the paper uses 0.3); 0 is regular backdoor training.
    :param kernel: ``"gmk"`` (Gaussian mixture), ``"gk"`` (Gaussian) or ``"lk"`` (linear).
    :param sigmas: Bandwidth(s); ``None``: GMK2 ``(1/4, 1/2, 1, 2, 4)`` for ``"gmk"``, ``1`` for ``"gk"``.
    :param scale_bandwidth: Multiply ``sigma^2`` by the mean pairwise squared distance of the batch's features.
    :param unbiased: Eq. 3's unbiased estimator (``True``) or the biased one.
    :param nb_epochs: Training epochs.
    :param batch_size: Mini-batch size over ``C = D u U`` (>= 2).
    :param learning_rate: Adam learning rate.
    :param random_state: Seed of the poisoned-sample choice, the shuffling and the model's own randomness; the
        global RNGs are not touched. ``None``: not reproducible.
    :param verbose: Show a progress bar.

    After :meth:`poison`: ``last_is_poison`` (bool mask over the returned arrays) and ``last_source_indices``
    (index in ``x`` of each poisoned copy's original). After :meth:`poison_estimator`: ``last_training``, an
    :class:`SDRMTrainingLog`.

    Example::

        from art_backdoor_ext.attacks import SDRM
        from art_backdoor_ext.attacks.triggers import patch_trigger
        from art_backdoor_ext.datasets import load_digits
        from art_backdoor_ext.models import build_model, make_classifier
        from art_backdoor_ext.training import evaluate_attack

        data = load_digits()
        trigger = patch_trigger(size=2, random_state=0)
        attack = SDRM(make_classifier(build_model("digits-cnn", random_state=0)), perturbation=trigger, target=0,
                      poison_ratio=0.1, layers=["relu1", "relu2", "relu3"], lam=0.3, nb_epochs=20,
                      learning_rate=3e-3, random_state=0)
        poisoned = attack.poison_estimator(data.x_train, data.y_train)   # a new PyTorchClassifier
        evaluate_attack(poisoned, data.x_test, data.y_test, trigger, target=0)   # (BA, ASR)
    """

    _estimator_requirements = (PyTorchClassifier,)
    _parameter_constraints: dict[str, list[Any]] = {
        "perturbation": [Instance(callable)],
        "target": [Interval(int, 0, None)],
        "poison_ratio": [Interval(float, 0.0, 1.0, closed="right")],
        "layers": [Instance(str), Instance((list, tuple), label="a list of layer names")],
        "lam": [Interval(float, 0.0, None)],
        "kernel": [Options(KERNELS)],
        "sigmas": [Interval(float, 0.0, None, closed="neither"),
                   Instance((list, tuple), label="a list of positive numbers"), None],
        "scale_bandwidth": [Instance(bool)],
        "unbiased": [Instance(bool)],
        "nb_epochs": [Interval(int, 1, None)],
        "batch_size": [Interval(int, 2, None)],
        "learning_rate": [Interval(float, 0.0, None, closed="neither")],
        "random_state": [Interval(int, 0, None), None],
        "verbose": [Instance(bool)],
    }
    attack_params = list(_parameter_constraints)

    def __init__(
        self,
        classifier: PyTorchClassifier,
        *,
        perturbation: Callable[[np.ndarray], np.ndarray],
        layers: str | Sequence[str],
        target: int = 0,
        poison_ratio: float = 0.1,
        lam: float = 0.3,
        kernel: str = "gmk",
        sigmas: float | Sequence[float] | None = None,
        scale_bandwidth: bool = True,
        unbiased: bool = True,
        nb_epochs: int = 20,
        batch_size: int = 128,
        learning_rate: float = 1e-3,
        random_state: int | None = None,
        verbose: bool = False,
    ) -> None:
        check_pytorch_classifier(classifier, type(self))
        super().__init__(classifier)
        self.perturbation = perturbation
        self.target = target
        self.poison_ratio = poison_ratio
        self.layers = layers
        self.lam = lam
        self.kernel = kernel
        self.sigmas = sigmas
        self.scale_bandwidth = scale_bandwidth
        self.unbiased = unbiased
        self.nb_epochs = nb_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.random_state = random_state
        self.verbose = verbose
        self.last_is_poison: np.ndarray | None = None
        self.last_source_indices: np.ndarray | None = None
        self.last_training: SDRMTrainingLog | None = None
        self._check_params()

    # ------------------------------------------------------------------ parameters
    @property
    def layer_list(self) -> list[str]:
        """The constrained layers as a list."""
        return [self.layers] if isinstance(self.layers, str) else list(self.layers)

    @property
    def variant(self) -> str:
        """``"RBT"`` when ``lam == 0``, ``"SDRM-L"`` for one layer, ``"SDRM-A"`` for several."""
        if self.lam == 0:
            return "RBT"
        return "SDRM-L" if len(self.layer_list) == 1 else "SDRM-A"

    def _check_params(self) -> None:
        super()._check_params()
        owner = type(self).__name__
        nb_classes = self.estimator.nb_classes
        if self.target >= nb_classes:
            raise InvalidParameterError(f"{owner}: target must be a class in 0..{nb_classes - 1}, got {self.target}")
        check_layer_list(self.estimator.model, self.layer_list, owner)
        resolve_sigmas(self.kernel, self.sigmas)

    # ------------------------------------------------------------------ public entry points
    def poison(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        """Build the training set ``C = D u U`` of Algorithm 1.

        :param x: Clean training images (N, C, H, W), float32 within the classifier's ``clip_values``.
        :param y: Integer labels (N,).
        :return: ``(x_p, y_p)``: the N clean samples followed by ``round(poison_ratio * N)`` triggered copies of
            non-target samples labelled ``target``; float32 and int64, new arrays.
        """
        if kwargs:
            raise InvalidParameterError(f"{type(self).__name__}.poison got unexpected arguments {sorted(kwargs)}")
        x_all, y_all, is_poison, sources = self._training_set(x, y)
        self.last_is_poison, self.last_source_indices = is_poison, sources
        return x_all, y_all

    def poison_estimator(self, x: np.ndarray, y: np.ndarray, **kwargs: Any) -> PyTorchClassifier:
        """Train a copy of the classifier's model on ``C = D u U`` with the SDRM loss (Algorithm 1).

        :param x: Clean training images (N, C, H, W), float32 within the classifier's ``clip_values``.
        :param y: Integer labels (N,).
        :return: A new ``PyTorchClassifier`` (same settings) wrapping the trained copy; the attack's classifier is
            unchanged. The epoch-by-epoch log is in ``last_training``.
        """
        if kwargs:
            raise InvalidParameterError(
                f"{type(self).__name__}.poison_estimator got unexpected arguments {sorted(kwargs)}")
        x_all, y_all, is_poison, sources = self._training_set(x, y)
        self.last_is_poison, self.last_source_indices = is_poison, sources
        poisoned = clone_classifier(self.estimator)
        self.last_training = self._train(poisoned, x_all, y_all, is_poison)
        logger.info("%s: trained %s on %d clean + %d poisoned samples", type(self).__name__, self.variant,
                    int((~is_poison).sum()), int(is_poison.sum()))
        return poisoned

    # ------------------------------------------------------------------ steps
    def _training_set(self, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        clf = self.estimator
        clip = clf.clip_values
        x_checked = check_images(x, input_shape=clf.input_shape,
                                 clip_values=None if clip is None else (float(clip[0]), float(clip[1])))
        if y is None:
            raise InvalidParameterError(f"{type(self).__name__} needs the labels y of the clean samples, got None")
        labels = check_labels(y, n_samples=len(x_checked), nb_classes=clf.nb_classes)
        count = max(1, int(round(self.poison_ratio * len(x_checked))))
        data = poison_dataset(x_checked, labels, self.perturbation, target=self.target, rate=None, count=count,
                              nb_classes=clf.nb_classes, random_state=self.random_state)
        sources = data.poison_indices
        x_all = np.concatenate([x_checked, data.x[sources]]).astype(np.float32, copy=False)
        y_all = np.concatenate([labels, np.full(len(sources), self.target, dtype=np.int64)])
        is_poison = np.concatenate([np.zeros(len(x_checked), bool), np.ones(len(sources), bool)])
        return x_all, y_all, is_poison, sources

    def _train(self, classifier: PyTorchClassifier, x: np.ndarray, y: np.ndarray, is_poison: np.ndarray
               ) -> SDRMTrainingLog:
        device = classifier_device(classifier)
        layers = self.layer_list if self.lam > 0 else []
        x_t, y_t = to_tensor(x, device), torch.as_tensor(y, device=device)
        poison_t = torch.as_tensor(is_poison, device=device)
        cross_entropy = nn.CrossEntropyLoss()
        mmd_kwargs: dict[str, Any] = {"kernel": self.kernel, "sigmas": self.sigmas, "unbiased": self.unbiased,
                                      "scale_bandwidth": self.scale_bandwidth}
        needed = 2 if self.unbiased else 1
        records: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        zero = torch.zeros((), device=device)

        def batch_loss(idx: torch.Tensor) -> torch.Tensor:
            logits = forward(classifier, x_t[idx])
            labels, poison = y_t[idx], poison_t[idx]
            clean = ~poison
            ce_clean = cross_entropy(logits[clean], labels[clean]) if bool(clean.any()) else zero
            ce_poison = cross_entropy(logits[poison], labels[poison]) if bool(poison.any()) else zero
            loss = ce_clean + ce_poison
            penalty: torch.Tensor | None = None
            if layers:
                poisoned = torch.nonzero(poison).flatten()
                reference = torch.nonzero(clean & (labels == self.target)).flatten()
                if len(poisoned) >= needed and len(reference) >= needed:
                    both = torch.cat([poisoned, reference])
                    penalty = mmd2_pooled([features[name].index_select(0, both) for name in layers], len(poisoned),
                                          **mmd_kwargs).mean()
                    loss = loss + self.lam * penalty
            records.append((ce_clean.detach(), ce_poison.detach(), None if penalty is None else penalty.detach()))
            return loss

        with capture(classifier.model, layers, flatten=True) as features:
            losses, seconds = run_epochs(classifier.model, len(x), batch_loss, device=device,
                                         nb_epochs=self.nb_epochs, batch_size=self.batch_size,
                                         learning_rate=self.learning_rate, random_state=self.random_state,
                                         verbose=self.verbose, desc=self.variant)
        log = SDRMTrainingLog(self.variant, list(layers), float(self.lam), int((~is_poison).sum()),
                              int(is_poison.sum()), loss=[float(v) for v in losses],
                              seconds_per_epoch=[float(s) for s in seconds])
        per_epoch = math.ceil(len(x) / self.batch_size)
        values = [(float(a), float(b), None if c is None else float(c)) for a, b, c in records]
        for start in range(0, len(values), per_epoch):
            chunk = values[start:start + per_epoch]
            log.ce_clean.append(float(np.mean([r[0] for r in chunk])))
            log.ce_poison.append(float(np.mean([r[1] for r in chunk])))
            penalties = [r[2] for r in chunk if r[2] is not None]
            log.mmd.append(float(np.mean(penalties)) if penalties else None)
        log.batches_without_mmd = sum(1 for r in values if r[2] is None) if layers else 0
        return log
