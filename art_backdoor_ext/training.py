"""Victim training under a backdoor attack, with the ground truth a defence is scored against.

:func:`poison_dataset` applies a trigger through ART's ``PoisoningAttackBackdoor`` to a chosen set of
source-class samples and relabels them (all-to-one, one-to-one or multi-source, at a rate or a count).
:func:`fit_classifier` trains an ART ``PyTorchClassifier``'s model with a seeded, progress-reporting loop
(:func:`run_epochs`, which other training objectives such as SDRM's reuse with their own batch loss).
:func:`train_victim` does both and measures benign accuracy (BA) and attack success rate (ASR).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from art_backdoor_ext._progress import progress
from art_backdoor_ext._torch import batch_slices, classifier_device, eval_mode, forward, predict_logits, to_tensor
from art_backdoor_ext._validation import check_images, check_labels, check_pytorch_classifier
from art_backdoor_ext.exceptions import DataError, InvalidParameterError
from art_backdoor_ext.functional.metrics import attack_success_rate, benign_accuracy

__all__ = ["PoisonedData", "poison_dataset", "run_epochs", "fit_classifier", "evaluate_attack", "VictimResult",
           "train_victim"]

logger = logging.getLogger(__name__)

MODES = ("all-to-one", "one-to-one", "multi-source")


@dataclass
class PoisonedData:
    """A poisoned training set and its ground truth.

    ``x``/``y`` are new arrays (the caller's are untouched); ``is_poison[i]`` is True for samples that carry
    the trigger and were relabelled to ``target``; ``original_labels`` are the labels before relabelling.
    """

    x: np.ndarray
    y: np.ndarray
    is_poison: np.ndarray
    original_labels: np.ndarray
    target: int
    sources: list[int]
    mode: str
    trigger: Callable[[np.ndarray], np.ndarray] = field(repr=False)

    @property
    def poison_indices(self) -> np.ndarray:
        return np.flatnonzero(self.is_poison)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_samples": int(len(self.y)),
            "n_poison": int(self.is_poison.sum()),
            "target": int(self.target),
            "sources": [int(s) for s in self.sources],
            "mode": self.mode,
            "trigger": dict(getattr(self.trigger, "params", {})) if hasattr(self.trigger, "params") else None,
        }


def _resolve_sources(mode: str, target: int, sources: Sequence[int] | None, nb_classes: int) -> list[int]:
    if mode not in MODES:
        raise InvalidParameterError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not 0 <= target < nb_classes:
        raise InvalidParameterError(f"target must be a class in 0..{nb_classes - 1}, got {target}")
    if mode == "all-to-one":
        if sources is not None:
            raise InvalidParameterError("all-to-one takes every non-target class; leave sources=None")
        return [c for c in range(nb_classes) if c != target]
    if sources is None or len(sources) == 0:
        raise InvalidParameterError(f"mode {mode!r} needs sources (a list of source classes)")
    chosen = [int(s) for s in sources]
    if mode == "one-to-one" and len(chosen) != 1:
        raise InvalidParameterError(f"one-to-one takes exactly one source class, got {chosen}")
    bad = [s for s in chosen if s == target or not 0 <= s < nb_classes]
    if bad:
        raise InvalidParameterError(f"sources must be classes other than the target {target}, got {bad}")
    return sorted(set(chosen))


def poison_dataset(
    x: np.ndarray,
    y: np.ndarray,
    trigger: Callable[[np.ndarray], np.ndarray],
    *,
    target: int = 0,
    mode: str = "all-to-one",
    sources: Sequence[int] | None = None,
    rate: float | None = 0.1,
    count: int | None = None,
    nb_classes: int | None = None,
    random_state: int | np.random.Generator | None = None,
) -> PoisonedData:
    """Stamp ``trigger`` on samples of the source classes and relabel them to ``target``.

    The trigger is applied through ART's ``PoisoningAttackBackdoor(perturbation=trigger)``.

    :param x: Clean images (N, C, H, W), float32 in [0, 1].
    :param y: Integer labels (N,).
    :param rate: Poisoned fraction of the whole training set (ignored when ``count`` is given).
    :param count: Exact number of poisoned samples.
    """
    from art.attacks.poisoning import PoisoningAttackBackdoor

    x = check_images(x)
    k = int(nb_classes) if nb_classes is not None else int(np.max(y)) + 1
    labels = check_labels(y, n_samples=len(x), nb_classes=k)
    chosen_sources = _resolve_sources(mode, target, sources, k)
    candidates = np.flatnonzero(np.isin(labels, chosen_sources))
    if count is None:
        if rate is None or not 0 < rate < 1:
            raise InvalidParameterError(f"rate must lie in (0, 1) when count is not given, got {rate}")
        count = int(round(rate * len(x)))
    if count < 1 or count > len(candidates):
        raise DataError(f"cannot poison {count} samples: the source classes {chosen_sources} have {len(candidates)}")
    rng = np.random.default_rng(random_state)
    picked = np.sort(rng.choice(candidates, size=count, replace=False))
    attack = PoisoningAttackBackdoor(perturbation=trigger)
    x_out, y_out = x.copy(), labels.copy()
    target_one_hot = np.zeros((count, k), dtype=np.float32)
    target_one_hot[:, target] = 1.0
    x_poison, _ = attack.poison(x[picked], y=target_one_hot)
    x_out[picked] = x_poison.astype(x.dtype, copy=False)
    y_out[picked] = target
    is_poison = np.zeros(len(x), dtype=bool)
    is_poison[picked] = True
    return PoisonedData(x_out, y_out, is_poison, labels.copy(), int(target), chosen_sources, mode, trigger)


def run_epochs(
    model: nn.Module,
    n_samples: int,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    *,
    device: torch.device | str,
    nb_epochs: int = 10,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    random_state: int | None = None,
    verbose: bool = False,
    desc: str = "training",
) -> tuple[list[float], list[float]]:
    """Train ``model`` in place with Adam over shuffled mini-batches of ``range(n_samples)``.

    ``batch_loss(idx)`` gets the batch's indices (a tensor on ``device``) and returns the scalar loss to
    minimise. Shuffling and any in-model randomness are seeded by ``random_state`` without touching the global
    RNGs; the model's train/eval mode is restored afterwards.

    :return: (mean batch loss per epoch weighted by batch size, wall-clock seconds per epoch).
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    rng = np.random.default_rng(random_state)
    losses: list[float] = []
    seconds: list[float] = []
    was_training = model.training
    with torch.random.fork_rng(devices=[]):
        if random_state is not None:
            torch.manual_seed(int(random_state))
        model.train()
        try:
            for epoch in progress(range(nb_epochs), verbose=verbose, desc=desc, unit="epoch"):
                start = time.perf_counter()
                order = torch.as_tensor(rng.permutation(n_samples), device=device)
                total = 0.0
                for sl in batch_slices(n_samples, batch_size):
                    idx = order[sl]
                    optimizer.zero_grad(set_to_none=True)
                    loss = batch_loss(idx)
                    loss.backward()
                    optimizer.step()
                    total += float(loss.detach()) * len(idx)
                losses.append(total / n_samples)
                seconds.append(time.perf_counter() - start)
                logger.debug("epoch %d loss %.4f", epoch, losses[-1])
        finally:
            model.train(was_training)
    return losses, seconds


def fit_classifier(
    classifier: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    nb_epochs: int = 10,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    random_state: int | None = None,
    verbose: bool = False,
) -> list[float]:
    """Train the classifier's model in place with Adam and cross-entropy; return the loss per epoch.

    Shuffling and any in-model randomness are seeded by ``random_state`` without touching the global RNGs.
    The model's train/eval mode is restored afterwards.
    """
    check_pytorch_classifier(classifier, "fit_classifier")
    x = check_images(x, input_shape=classifier.input_shape, clip_values=classifier.clip_values)
    labels = check_labels(y, n_samples=len(x), nb_classes=classifier.nb_classes)
    device = classifier_device(classifier)
    loss_fn = nn.CrossEntropyLoss()
    x_t, y_t = to_tensor(x, device), torch.as_tensor(labels, device=device)
    losses, _ = run_epochs(classifier.model, len(x), lambda idx: loss_fn(forward(classifier, x_t[idx]), y_t[idx]),
                           device=device, nb_epochs=nb_epochs, batch_size=batch_size, learning_rate=learning_rate,
                           random_state=random_state, verbose=verbose)
    return losses


def evaluate_attack(
    classifier: Any, x_test: np.ndarray, y_test: np.ndarray, trigger: Callable[[np.ndarray], np.ndarray], *,
    target: int, sources: Sequence[int] | None = None, batch_size: int = 256,
) -> tuple[float, float]:
    """Benign accuracy on clean test data and attack success rate on triggered source-class test data."""
    with eval_mode(classifier.model):
        pred_clean = predict_logits(classifier, x_test, batch_size=batch_size).argmax(1)
        src = [c for c in range(classifier.nb_classes) if c != target] if sources is None else list(sources)
        keep = np.isin(y_test, src)
        pred_trig = predict_logits(classifier, trigger(x_test[keep]).astype(np.float32), batch_size=batch_size)
    return benign_accuracy(pred_clean, y_test), attack_success_rate(pred_trig.argmax(1), target)


@dataclass
class VictimResult:
    """A trained victim, its poisoned training data (ground truth) and its BA/ASR."""

    classifier: Any = field(repr=False)
    data: PoisonedData = field(repr=False)
    benign_accuracy: float
    attack_success_rate: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "benign_accuracy": self.benign_accuracy,
            "attack_success_rate": self.attack_success_rate,
            "seconds": self.seconds,
            **self.data.to_dict(),
        }


def train_victim(
    classifier: Any,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    trigger: Callable[[np.ndarray], np.ndarray],
    *,
    target: int = 0,
    mode: str = "all-to-one",
    sources: Sequence[int] | None = None,
    rate: float | None = 0.1,
    count: int | None = None,
    nb_epochs: int = 10,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    random_state: int | None = None,
    verbose: bool = False,
) -> VictimResult:
    """Poison ``x_train`` (see :func:`poison_dataset`), train ``classifier`` on it, and measure BA and ASR.

    Example::

        from art_backdoor_ext.datasets import load_digits
        from art_backdoor_ext.models import DigitsCNN, make_classifier
        from art_backdoor_ext.attacks.triggers import patch_trigger
        data = load_digits()
        victim = train_victim(make_classifier(DigitsCNN()), data.x_train, data.y_train, data.x_test,
                              data.y_test, patch_trigger(size=2, random_state=0), target=0, random_state=0)
        victim.benign_accuracy, victim.attack_success_rate   # about 0.98 and 1.0
    """
    check_pytorch_classifier(classifier, "train_victim")
    start = time.perf_counter()
    poisoned = poison_dataset(x_train, y_train, trigger, target=target, mode=mode, sources=sources, rate=rate,
                              count=count, nb_classes=classifier.nb_classes, random_state=random_state)
    fit_classifier(classifier, poisoned.x, poisoned.y, nb_epochs=nb_epochs, batch_size=batch_size,
                   learning_rate=learning_rate, random_state=random_state, verbose=verbose)
    ba, asr = evaluate_attack(classifier, x_test, y_test, trigger, target=target, sources=poisoned.sources)
    return VictimResult(classifier, poisoned, ba, asr, time.perf_counter() - start)
