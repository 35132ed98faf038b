"""
Train many copies of one small architecture at once, each on its own dataset (shadow models).

:func:`train_ensemble` stacks the parameters of ``models_per_chunk`` models (``torch.func.stack_module_state``),
runs them in one vectorised forward/backward pass (``torch.vmap`` over ``torch.func.functional_call``) and
updates them with a functional, per-model Adam. :func:`train_sequential` trains the same models one after the
other with a plain loop and ``torch.optim.Adam``; with the same ``random_state`` both return the same weights up
to float rounding (the unit tests check it), so the batched path is an optimisation, not a different method.

Per-step math, shared by both paths
-----------------------------------
- Model ``i`` gets its own generator from ``(random_state, i)``: it seeds the weight initialisation (the
  ``model_factory(i)`` call runs under a forked, temporarily seeded CPU RNG, restored afterwards) and draws one
  permutation of its dataset per epoch. Nothing depends on the other models, the chunking or the device.
- An epoch of model ``i`` is ``ceil(n_i / batch_size)`` mini-batches of its permutation (the last may be
  smaller); the loss is the mean cross-entropy over the batch; one Adam step per batch.
- Datasets may differ in length. In a chunk, step ``s`` of an epoch runs every model whose epoch has a batch
  ``s``; shorter batches are padded with weight-0 samples and models without a batch ``s`` take no Adam step
  (their step counters and moments stay as they are). This reproduces the sequential loop exactly.

Limits: models must be deterministic and hold no running state (``BatchNorm`` buffers updated in the forward
pass and ``Dropout`` randomness do not vectorise reproducibly): such modules raise ``InvalidParameterError``.
Every model of a chunk must have the same parameter names and shapes. A chunk's datasets live on ``device``
while it trains (memory ~ ``models_per_chunk`` x the largest dataset, plus K copies of the weights and of the
Adam moments).

Checkpoints: with ``checkpoint_dir``, each finished model is written as ``model_{i:04d}.pt`` (a ``torch.save``
of ``{"state_dict", "config"}``, written atomically) as soon as its chunk finishes; a rerun loads finished
models with ``torch.load(..., weights_only=True)`` (a file holding pickled objects is refused) and trains only
the others. A checkpoint whose ``config`` (epochs, batch size, learning rate, Adam settings, dataset size)
differs from the call raises ``DataError`` instead of being reused silently.
"""

from __future__ import annotations

import copy
import logging
import os
import resource
import threading
import time
from collections.abc import Callable, Iterable, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from art_backdoor_ext._progress import progress
from art_backdoor_ext._validation import Instance, Interval, validate_parameters
from art_backdoor_ext.exceptions import DataError, InvalidParameterError

logger = logging.getLogger(__name__)

__all__ = ["train_ensemble", "train_sequential", "profile_training", "TrainingProfile", "checkpoint_path"]

RandomState = int | np.random.Generator | None
DatasetLike = Any  # (x, y) pair, or an object with ``.x`` and ``.y`` (e.g. jumbo.ShadowDataset)

_UNSUPPORTED: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
_FORMAT = 1

_CONSTRAINTS: dict[str, list[Any]] = {
    "model_factory": [Instance(callable)],
    "nb_epochs": [Interval(int, 1, None)],
    "batch_size": [Interval(int, 1, None)],
    "learning_rate": [Interval(float, 0, None, closed="neither")],
    "betas": [Instance((tuple, list), label="a pair (beta1, beta2) in [0, 1)")],
    "eps": [Interval(float, 0, None, closed="neither")],
    "device": [Instance((str, torch.device)), None],
    "models_per_chunk": [Interval(int, 1, None)],
    "checkpoint_dir": [Instance((str, os.PathLike)), None],
    "random_state": [Interval(int, 0, None), Instance(np.random.Generator), None],
    "verbose": [Instance(bool)],
}


# ---------------------------------------------------------------------------------------------- public API
def train_ensemble(
    model_factory: Callable[[int], nn.Module],
    datasets: Sequence[DatasetLike] | Iterable[DatasetLike],
    *,
    nb_epochs: int,
    batch_size: int,
    learning_rate: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    device: str | torch.device | None = None,
    models_per_chunk: int = 16,
    checkpoint_dir: str | os.PathLike | None = None,
    random_state: RandomState = None,
    verbose: bool = False,
) -> list[nn.Module]:
    """
    Train one model per dataset, ``models_per_chunk`` at a time in one vectorised computation (torch.func).

    :param model_factory: ``i -> nn.Module``, a fresh model for dataset ``i`` (same architecture for all); it is
        called under a CPU RNG seeded from ``(random_state, i)`` and restored afterwards.
    :param datasets: A sequence or (lazy) iterable of ``(x, y)`` pairs or objects with ``.x``/``.y`` (e.g. the
        ``ShadowDataset`` of :meth:`JumboContamination.generate_shadow_datasets`); ``x`` in the model's input
        layout (NCHW), ``y`` integer ``(n,)`` or one-hot ``(n, K)``. Lengths may differ. Iterables are consumed
        one chunk at a time.
    :param nb_epochs: Epochs per model.
    :param batch_size: Mini-batch size.
    :param learning_rate: Adam learning rate.
    :param betas: Adam ``(beta1, beta2)``.
    :param eps: Adam epsilon.
    :param device: ``"cpu"``, ``"cuda"``, ... ; ``None``: CUDA when available, else CPU.
    :param models_per_chunk: Models trained together (bounds memory).
    :param checkpoint_dir: Folder for ``model_{i:04d}.pt`` checkpoints; finished models are skipped on rerun.
    :param random_state: Seed (int) or generator; ``None`` draws fresh entropy.
    :param verbose: Progress bar over the datasets.
    :return: The trained models, in dataset order, on CPU and in eval mode.

    Example::

        from art_backdoor_ext.models import DigitsCNN
        models = train_ensemble(lambda i: DigitsCNN(), [(x1, y1), (x2, y2)], nb_epochs=5, batch_size=64,
                                learning_rate=1e-3, random_state=0)
    """
    return _run("batched", model_factory, datasets, nb_epochs=nb_epochs, batch_size=batch_size,
                learning_rate=learning_rate, betas=betas, eps=eps, device=device, models_per_chunk=models_per_chunk,
                checkpoint_dir=checkpoint_dir, random_state=random_state, verbose=verbose)


def train_sequential(
    model_factory: Callable[[int], nn.Module],
    datasets: Sequence[DatasetLike] | Iterable[DatasetLike],
    *,
    nb_epochs: int,
    batch_size: int,
    learning_rate: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    device: str | torch.device | None = None,
    models_per_chunk: int = 16,
    checkpoint_dir: str | os.PathLike | None = None,
    random_state: RandomState = None,
    verbose: bool = False,
) -> list[nn.Module]:
    """
    Train the same models as :func:`train_ensemble`, one at a time with a plain loop and ``torch.optim.Adam``.

    Same signature and per-step math (``models_per_chunk`` only groups checkpoint writes here); the reference
    for the equivalence test and the baseline of speed benchmarks.
    """
    return _run("sequential", model_factory, datasets, nb_epochs=nb_epochs, batch_size=batch_size,
                learning_rate=learning_rate, betas=betas, eps=eps, device=device, models_per_chunk=models_per_chunk,
                checkpoint_dir=checkpoint_dir, random_state=random_state, verbose=verbose)


def checkpoint_path(checkpoint_dir: str | os.PathLike, index: int) -> Path:
    """Path of model ``index``'s checkpoint: ``checkpoint_dir / f"model_{index:04d}.pt"``."""
    return Path(checkpoint_dir) / f"model_{index:04d}.pt"


@dataclass
class TrainingProfile:
    """
    Cost of one training call (see :func:`profile_training`).

    :ivar trainer: Name of the function timed.
    :ivar n_models: Models returned.
    :ivar seconds: Wall-clock time.
    :ivar peak_cuda_bytes: ``torch.cuda.max_memory_allocated`` during the call (``None`` on CPU).
    :ivar max_rss_bytes: The process's peak resident memory so far (``getrusage``; a lifetime maximum, so it
        only reflects this call when the call is the most memory-hungry thing the process has done).
    :ivar peak_rss_increase_bytes: Highest resident memory seen during the call (sampled every 5 ms from
        ``/proc/self/statm``) minus the resident memory at its start; ``None`` where ``/proc`` is missing.
    """

    trainer: str
    n_models: int
    seconds: float
    peak_cuda_bytes: int | None
    max_rss_bytes: int
    peak_rss_increase_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"trainer": self.trainer, "n_models": int(self.n_models), "seconds": float(self.seconds),
                "peak_cuda_bytes": None if self.peak_cuda_bytes is None else int(self.peak_cuda_bytes),
                "max_rss_bytes": int(self.max_rss_bytes),
                "peak_rss_increase_bytes": None if self.peak_rss_increase_bytes is None
                else int(self.peak_rss_increase_bytes)}


def profile_training(
    trainer: Callable[..., list[nn.Module]], model_factory: Callable[[int], nn.Module],
    datasets: Sequence[DatasetLike], **kwargs: Any,
) -> tuple[list[nn.Module], TrainingProfile]:
    """
    Run ``trainer(model_factory, datasets, **kwargs)`` (:func:`train_ensemble` or :func:`train_sequential`) and
    measure its wall time and peak memory.

    Example::

        _, fast = profile_training(train_ensemble, factory, data, nb_epochs=2, batch_size=32, learning_rate=1e-3)
        _, slow = profile_training(train_sequential, factory, data, nb_epochs=2, batch_size=32, learning_rate=1e-3)
        speedup = slow.seconds / fast.seconds
    """
    device = _resolve_device(kwargs.get("device"))
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with _RssSampler() as sampler:
        start = time.perf_counter()
        models = trainer(model_factory, datasets, **kwargs)
        if on_cuda:
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    peak = int(torch.cuda.max_memory_allocated(device)) if on_cuda else None
    rss = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # kB on Linux
    name = getattr(trainer, "__name__", type(trainer).__name__)
    return models, TrainingProfile(name, len(models), seconds, peak, rss, sampler.increase)


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class _RssSampler:
    """Peak resident memory above the starting level, sampled in a daemon thread while the block runs."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.increase: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start: int | None = None
        self._peak = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            now = _resident_bytes()
            if now is not None:
                self._peak = max(self._peak, now)
            self._stop.wait(self.interval)

    def __enter__(self) -> _RssSampler:
        self._start = _resident_bytes()
        if self._start is not None:
            self._peak = self._start
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._start is None:
            return
        self._stop.set()
        self._thread.join()
        end = _resident_bytes()
        self.increase = max(self._peak, end or 0) - self._start


# ---------------------------------------------------------------------------------------------- driver
@dataclass
class _Job:
    index: int
    x: np.ndarray
    y: np.ndarray
    rng: np.random.Generator
    init_seed: int


def _run(mode: str, model_factory: Callable[[int], nn.Module], datasets: Any, **params: Any) -> list[nn.Module]:
    owner = "train_ensemble" if mode == "batched" else "train_sequential"
    validate_parameters(owner, {"model_factory": model_factory, **params}, _CONSTRAINTS)
    betas = params["betas"]
    if not (len(betas) == 2 and all(Interval(float, 0, 1, closed="left").accepts(b) for b in betas)):
        raise InvalidParameterError(f"{owner}: betas must be a pair (beta1, beta2) in [0, 1), got {betas!r}")
    if isinstance(datasets, (str, bytes)) or not isinstance(datasets, Iterable):
        raise InvalidParameterError(f"{owner}: datasets must be a sequence or iterable of (x, y) pairs, "
                                    f"got {type(datasets).__name__}")
    device = _resolve_device(params["device"])
    base_seed = _base_seed(params["random_state"])
    ckpt = None if params["checkpoint_dir"] is None else Path(params["checkpoint_dir"])
    if ckpt is not None:
        ckpt.mkdir(parents=True, exist_ok=True)
    hyper = {"nb_epochs": params["nb_epochs"], "batch_size": params["batch_size"],
             "learning_rate": float(params["learning_rate"]), "betas": [float(b) for b in betas],
             "eps": float(params["eps"])}
    total = len(datasets) if isinstance(datasets, Sized) else None

    results: dict[int, nn.Module] = {}
    pending: list[_Job] = []

    def flush() -> None:
        if not pending:
            return
        trained = _train_batched(model_factory, pending, device, hyper) if mode == "batched" else [
            _train_one(model_factory, job, device, hyper) for job in pending]
        for job, model in zip(pending, trained):
            if ckpt is not None:
                _save(checkpoint_path(ckpt, job.index), model, _config(hyper, len(job.x)))
            results[job.index] = model
        logger.info("%s: trained models %d..%d", owner, pending[0].index, pending[-1].index)
        pending.clear()

    n_loaded = 0
    for index, dataset in progress(enumerate(datasets), verbose=params["verbose"], desc=owner, total=total):
        x, y = _as_arrays(dataset, index)
        child = np.random.default_rng(np.random.SeedSequence([base_seed, index]))
        init_seed = int(child.integers(2**63))
        path = None if ckpt is None else checkpoint_path(ckpt, index)
        if path is not None and path.exists():
            results[index] = _load(path, model_factory, index, _config(hyper, len(x)))
            n_loaded += 1
            continue
        pending.append(_Job(index, x, y, child, init_seed))
        if len(pending) >= params["models_per_chunk"]:
            flush()
    flush()
    if n_loaded:
        logger.info("%s: %d models loaded from %s, %d trained", owner, n_loaded, ckpt, len(results) - n_loaded)
    return [results[i] for i in range(len(results))]


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _base_seed(random_state: RandomState) -> int:
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(2**63))
    if random_state is None:
        return int(np.random.default_rng().integers(2**63))
    return int(random_state)


def _as_arrays(dataset: Any, index: int) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(dataset, "x") and hasattr(dataset, "y"):
        x, y = dataset.x, dataset.y
    elif isinstance(dataset, (tuple, list)) and len(dataset) == 2:
        x, y = dataset
    else:
        raise DataError(f"dataset {index} must be an (x, y) pair or have .x and .y, got {type(dataset).__name__}")
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 2 or len(x) == 0:
        raise DataError(f"dataset {index}: x must be a non-empty batch (n, ...), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"dataset {index}: x must hold floating-point values, got dtype {x.dtype}")
    if y.ndim == 2 and y.shape[1] > 1:
        y = np.argmax(y, axis=1)
    y = y.reshape(len(y)) if y.ndim == 2 and y.shape[1] == 1 else y
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"dataset {index}: y must hold one label per sample ({len(x)}), got shape {y.shape}")
    if not np.all(np.equal(np.mod(y, 1), 0)) or (y.size and y.min() < 0):
        raise DataError(f"dataset {index}: y must hold class indices >= 0 (or one-hot rows)")
    return x, y.astype(np.int64)


def _build(model_factory: Callable[[int], nn.Module], index: int, init_seed: int) -> nn.Module:
    """Call the factory under a temporarily seeded CPU RNG (the global RNG state is restored)."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(init_seed)
        model = model_factory(index)
    if not isinstance(model, nn.Module):
        raise InvalidParameterError(f"model_factory({index}) must return an nn.Module, got {type(model).__name__}")
    bad = sorted({type(m).__name__ for m in model.modules() if isinstance(m, _UNSUPPORTED)})
    if bad:
        raise InvalidParameterError(
            f"model_factory({index}) returned a model with {', '.join(bad)}: batch-norm running statistics and "
            "dropout randomness are not supported by ensemble training; use a model without them"
        )
    if not any(True for _ in model.parameters()):
        raise InvalidParameterError(f"model_factory({index}) returned a model without parameters")
    return model


def _epoch_batches(job: _Job, batch_size: int) -> list[np.ndarray]:
    """One epoch of model ``job``: its permutation cut into ``ceil(n / batch_size)`` batches."""
    order = job.rng.permutation(len(job.x))
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def _check_labels_fit(job: _Job, nb_outputs: int) -> None:
    if job.y.max() >= nb_outputs:
        raise DataError(f"dataset {job.index} has label {int(job.y.max())} but the model has {nb_outputs} outputs")


# ---------------------------------------------------------------------------------------------- sequential
def _train_one(model_factory: Callable[[int], nn.Module], job: _Job, device: torch.device,
               hyper: dict[str, Any]) -> nn.Module:
    model = _build(model_factory, job.index, job.init_seed).to(device)
    model.train()
    dtype = next(model.parameters()).dtype
    x = torch.as_tensor(job.x, device=device, dtype=dtype)
    y = torch.as_tensor(job.y, device=device)
    optimiser = torch.optim.Adam(model.parameters(), lr=hyper["learning_rate"], betas=tuple(hyper["betas"]),
                                 eps=hyper["eps"])
    checked = False
    for _ in range(hyper["nb_epochs"]):
        for batch in _epoch_batches(job, hyper["batch_size"]):
            idx = torch.as_tensor(batch, device=device)
            logits = model(x[idx])
            if not checked:
                _check_labels_fit(job, logits.shape[-1])
                checked = True
            loss = F.cross_entropy(logits, y[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    return model.cpu().eval()


# ---------------------------------------------------------------------------------------------- batched
def _train_batched(model_factory: Callable[[int], nn.Module], jobs: list[_Job], device: torch.device,
                   hyper: dict[str, Any]) -> list[nn.Module]:
    from torch.func import functional_call, stack_module_state

    models = [_build(model_factory, job.index, job.init_seed) for job in jobs]
    reference = {name: p.shape for name, p in models[0].named_parameters()}
    for job, model in zip(jobs[1:], models[1:]):
        shapes = {name: p.shape for name, p in model.named_parameters()}
        if shapes != reference:
            raise InvalidParameterError(f"model_factory({job.index}) returned a different architecture than "
                                        f"model_factory({jobs[0].index}); ensemble models must share one")
    stacked_params, stacked_buffers = stack_module_state(models)
    params = {k: v.detach().to(device).requires_grad_(True) for k, v in stacked_params.items()}
    buffers = {k: v.to(device) for k, v in stacked_buffers.items()}
    base = copy.deepcopy(models[0]).to("meta")
    base.train()

    def forward(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
        return functional_call(base, (p, b), (xb,))

    batched_forward = torch.vmap(forward, in_dims=(0, 0, 0))

    k = len(jobs)
    dtype = next(iter(params.values())).dtype
    batch_size = hyper["batch_size"]
    n_max = max(len(job.x) for job in jobs)
    x_all = torch.zeros((k, n_max) + jobs[0].x.shape[1:], dtype=dtype, device=device)
    y_all = torch.zeros((k, n_max), dtype=torch.int64, device=device)
    for j, job in enumerate(jobs):
        if job.x.shape[1:] != jobs[0].x.shape[1:]:
            raise DataError(f"dataset {job.index} has samples of shape {job.x.shape[1:]} but dataset "
                            f"{jobs[0].index} has {jobs[0].x.shape[1:]}")
        x_all[j, :len(job.x)] = torch.as_tensor(job.x, dtype=dtype)
        y_all[j, :len(job.y)] = torch.as_tensor(job.y)
    rows = torch.arange(k, device=device)[:, None]

    adam = _StackedAdam(params, hyper, k)
    checked = False
    for _ in range(hyper["nb_epochs"]):
        epochs = [_epoch_batches(job, batch_size) for job in jobs]
        for step in range(max(len(batches) for batches in epochs)):
            index = np.zeros((k, batch_size), dtype=np.int64)
            weight = np.zeros((k, batch_size), dtype=np.float32)
            active = np.zeros(k, dtype=bool)
            for j, batches in enumerate(epochs):
                if step < len(batches):
                    b = batches[step]
                    index[j, :len(b)] = b
                    weight[j, :len(b)] = 1.0
                    active[j] = True
            idx = torch.as_tensor(index, device=device)
            w = torch.as_tensor(weight, device=device, dtype=dtype)
            logits = batched_forward(params, buffers, x_all[rows, idx])  # (K, B, classes)
            if not checked:
                for job in jobs:
                    _check_labels_fit(job, logits.shape[-1])
                checked = True
            ce = F.cross_entropy(logits.reshape(k * batch_size, -1), y_all[rows, idx].reshape(-1),
                                 reduction="none").reshape(k, batch_size)
            loss = ((ce * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)).sum()
            grads = torch.autograd.grad(loss, list(params.values()))
            adam.step(grads, active)

    out = []
    for j, model in enumerate(models):
        state = {name: tensor[j].detach().cpu().clone() for name, tensor in {**params, **buffers}.items()}
        model.load_state_dict(state)
        out.append(model.eval())
    return out


class _StackedAdam:
    """Adam on stacked parameters ``(K, ...)`` with a per-model step count; inactive models are left unchanged.

    Same arithmetic as ``torch.optim.Adam`` (no weight decay, no amsgrad): ``denom = sqrt(v) / sqrt(bc2) + eps``,
    ``p -= (lr / bc1) * m / denom``.
    """

    def __init__(self, params: dict[str, torch.Tensor], hyper: dict[str, Any], k: int) -> None:
        self.params = list(params.values())
        self.lr = hyper["learning_rate"]
        self.beta1, self.beta2 = hyper["betas"]
        self.eps = hyper["eps"]
        self.steps = np.zeros(k, dtype=np.int64)
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor], active: np.ndarray) -> None:
        """One Adam step of the ``active`` models, every tensor updated in place. When some models take no step,
        they get the coefficients of "no step" (moment decay 1, gradient weight 0, step size 0) instead of masked
        copies (which spent a third of a 28x28 ensemble's training time here)."""
        self.steps = self.steps + active.astype(np.int64)
        t = np.maximum(self.steps, 1).astype(np.float64)
        device, dtype = self.params[0].device, self.params[0].dtype

        def per_model(values: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(values, device=device, dtype=dtype)

        minus_size = per_model(np.where(active, -self.lr / (1.0 - self.beta1**t), 0.0))
        bc2_sqrt = per_model(np.sqrt(1.0 - self.beta2**t))
        every = bool(active.all())
        if not every:  # per-model decays: 1 (no step) for the inactive models
            keep1, keep2 = (per_model(np.where(active, beta, 1.0)) for beta in (self.beta1, self.beta2))
        for p, g, m, v in zip(self.params, grads, self.exp_avg, self.exp_avg_sq):
            view = (-1,) + (1,) * (p.dim() - 1)
            if every:  # the usual case: scalar coefficients, as in torch.optim.Adam
                m.mul_(self.beta1).add_(g, alpha=1 - self.beta1)
                v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
            else:
                m.mul_(keep1.view(view)).addcmul_(g, (1 - keep1).view(view))
                v.mul_(keep2.view(view)).addcmul_(g, g * (1 - keep2).view(view))
            denom = v.sqrt().div_(bc2_sqrt.view(view)).add_(self.eps)
            p.addcdiv_(m * minus_size.view(view), denom)


# ---------------------------------------------------------------------------------------------- checkpoints
def _config(hyper: dict[str, Any], n_samples: int) -> dict[str, Any]:
    return {**hyper, "n_samples": int(n_samples), "format": _FORMAT}


def _save(path: Path, model: nn.Module, config: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"state_dict": model.state_dict(), "config": config}, tmp)
    os.replace(tmp, path)


def _load(path: Path, model_factory: Callable[[int], nn.Module], index: int, config: dict[str, Any]) -> nn.Module:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle.UnpicklingError and friends: refuse anything but tensors and plain data
        raise DataError(f"checkpoint {path} cannot be loaded with torch.load(weights_only=True) (it may hold "
                        f"pickled objects, or be corrupt); delete it to retrain model {index}: {error}") from error
    if not (isinstance(payload, dict) and "state_dict" in payload and "config" in payload):
        raise DataError(f"checkpoint {path} is not an ensemble checkpoint (expected keys 'state_dict', 'config')")
    saved = payload["config"]
    changed = {key: (saved.get(key), value) for key, value in config.items() if saved.get(key) != value}
    if changed:
        details = ", ".join(f"{key}: saved {old!r}, requested {new!r}" for key, (old, new) in changed.items())
        raise DataError(f"checkpoint {path} was trained with different settings ({details}); use another "
                        "checkpoint_dir or delete it")
    with torch.random.fork_rng(devices=[]):
        model = model_factory(index)
    model.load_state_dict(payload["state_dict"])
    return model.eval()
