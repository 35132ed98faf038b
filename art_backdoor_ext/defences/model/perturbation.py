"""Batched perturbation engine shared by AD, Neural Cleanse and CEPA.

A *problem* is a set of clean samples plus a target class: "find a small perturbation that sends at least a
fraction ``pi`` of these samples to the target". AD (Xiang et al., 2020) has one problem per (source, target)
pair, Neural Cleanse (Wang et al., 2019) one per target with every other class pooled. All problems of a chunk
are optimised together as one tensor problem: their samples are stacked into one forward pass, and a
problem stops updating (and leaves the forward pass) once it reaches ``pi`` or its size cap (Algorithm 1 of
Xiang et al., with the paper's upper bound). The per-iteration (size, misclassification) trace is kept for
the confusion correction (Eq. 7).

Parametrisations (how the perturbation enters and how it is updated):

- :class:`Additive`: one common additive perturbation per problem, clipped to the valid range in input
  space (Eq. 2) or added to a layer's output (Eq. 10). Updated by normalised gradient descent on the
  objective (a step of fixed L2 length ``step_size``): the step no longer depends on the gradient's scale,
  which is what the paper's line search is for, and no pair can overshoot by more than one step.
- :class:`MaskPattern`: Neural Cleanse's ``(1 - m) x + m p`` with an L1 penalty on the mask, Adam, and the
  adaptive penalty weight of Wang et al.; the smallest mask reaching ``pi`` is kept.
- :class:`SampleWiseShift`: CEPA's one perturbation per *sample* and problem, per-problem Adam. CEPA's
  objective needs embedded features and a closed-form common shift, so its loop lives in
  :mod:`~art_backdoor_ext.defences.model.cepa` (same problems and chunking).

Problems are processed in chunks so that at most ``max_batch_images`` images go through the model at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from art_backdoor_ext._progress import progress
from art_backdoor_ext._torch import (
    classifier_device,
    clip_to_range,
    eval_mode,
    frozen,
    preprocess,
    resolve_layers,
    scan_model,
    to_tensor,
)
from art_backdoor_ext.defences.model._chunk_state import ChunkState, EarlyStop
from art_backdoor_ext.exceptions import InvalidParameterError

__all__ = [
    "Problems",
    "pair_problems",
    "target_problems",
    "Additive",
    "MaskPattern",
    "SampleWiseShift",
    "EngineResult",
    "PerturbationEngine",
]

logger = logging.getLogger(__name__)

OBJECTIVES = ("J", "Jp", "Jc")


@dataclass
class Problems:
    """Problem definitions: ``indices`` (P, n_max) into the clean set, -1 for padding; ``targets`` (P,);
    ``sources`` (P,) the source class or -1 when several classes are pooled."""

    indices: np.ndarray
    targets: np.ndarray
    sources: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, keep: np.ndarray) -> Problems:
        return Problems(self.indices[keep], self.targets[keep], self.sources[keep])


def _pad(rows: list[np.ndarray]) -> np.ndarray:
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def pair_problems(y: np.ndarray, nb_classes: int) -> Problems:
    """All K(K-1) (source, target) problems, source-major: (0,1), (0,2), ..., (K-1,K-2)."""
    by_class = [np.flatnonzero(y == c) for c in range(nb_classes)]
    pairs = [(s, t) for s in range(nb_classes) for t in range(nb_classes) if s != t]
    return Problems(_pad([by_class[s] for s, _ in pairs]), np.array([t for _, t in pairs]),
                    np.array([s for s, _ in pairs]))


def target_problems(y: np.ndarray, nb_classes: int, *, max_samples: int | None = None,
                    random_state: int | None = None) -> Problems:
    """One problem per target with every other class pooled (Neural Cleanse, CEPA's all-to-one variant)."""
    rng = np.random.default_rng(random_state)
    rows = []
    for t in range(nb_classes):
        idx = np.flatnonzero(y != t)
        if max_samples is not None and len(idx) > max_samples:
            idx = np.sort(rng.choice(idx, size=max_samples, replace=False))
        rows.append(idx)
    return Problems(_pad(rows), np.arange(nb_classes), np.full(nb_classes, -1))


def _norms(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = t.flatten(1)
    return flat.abs().sum(1), flat.norm(dim=1)


class Parametrisation(Protocol):
    """How a perturbation is stored, applied, measured and updated (one row per problem)."""

    def init(self, n: int, shape: tuple[int, ...], device: torch.device) -> list[torch.Tensor]: ...
    def apply(self, params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor: ...
    def sizes(self, params: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]: ...
    def penalty(self, params: list[torch.Tensor]) -> torch.Tensor: ...
    def update(self, params: list[torch.Tensor], active: torch.Tensor, reached: torch.Tensor) -> None: ...
    def pattern(self, params: list[torch.Tensor]) -> torch.Tensor: ...


class Additive:
    """Common additive perturbation v per problem; normalised gradient steps of L2 length ``step_size``."""

    stops_at_target = True

    def __init__(self, step_size: float) -> None:
        self.step_size = step_size

    def init(self, n: int, shape: tuple[int, ...], device: torch.device) -> list[torch.Tensor]:
        return [torch.zeros((n,) + shape, device=device, requires_grad=True)]

    def apply(self, params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return x + params[0][:, None]

    def sizes(self, params: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return _norms(params[0])

    def penalty(self, params: list[torch.Tensor]) -> torch.Tensor:
        return torch.zeros(params[0].shape[0], device=params[0].device)

    def update(self, params: list[torch.Tensor], active: torch.Tensor, reached: torch.Tensor) -> None:
        v = params[0]
        if v.grad is None:
            return
        grad = v.grad[active]
        norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view((-1,) + (1,) * (grad.dim() - 1))
        v[active] -= self.step_size * grad / norm
        v.grad = None

    def pattern(self, params: list[torch.Tensor]) -> torch.Tensor:
        return params[0]


class MaskPattern:
    """Neural Cleanse: x' = (1 - m) x + m p, m = sigmoid(a) (1, H, W), p = low + (high - low) sigmoid(b) (C, H, W).

    Loss: cross-entropy to the target + cost * |m|_1, with Wang et al.'s adaptive cost (multiplied by 1.5
    after ``patience`` iterations at or above ``pi``, divided by 1.5**1.5 after ``patience`` below), each
    problem with its own cost and counters. Adam with Wang et al.'s betas (0.5, 0.9).

    Every problem starts from the *same* random (mask, pattern), drawn from ``random_state`` alone: a
    problem's trajectory then depends neither on how many problems share its chunk nor on its position, so
    running all problems at once, in chunks, or one at a time gives the same result (Adam and the adaptive
    cost act per element / per problem). ``random_state=None`` draws the seed once, at construction.

    Early stop (as in Wang et al.'s reference code): once a problem's cost has been both raised and lowered (the
    cost has found its balance around ``pi``), it is frozen (its kept mask no longer changes) after
    ``early_stop_patience`` consecutive iterations without shrinking the mask's L1 norm, at ``pi``, by more than
    ``early_stop_tolerance`` (relative) below its value at the last such improvement; a chunk stops when all its
    problems are frozen. A problem's result still depends on its own trajectory only, not on the problems sharing
    its chunk.

    :param value_range: (low, high) of the space the pattern lives in (the classifier's ``clip_values`` in
        input space); the pattern is kept inside it.
    :param early_stop_patience: Iterations without improvement before a problem is frozen (None: never; every
        problem runs ``max_iter`` iterations).
    :param early_stop_tolerance: Relative L1 decrease that counts as an improvement.
    """

    stops_at_target = False

    def __init__(self, learning_rate: float = 0.1, init_cost: float = 1e-3, patience: int = 5, *,
                 random_state: int | None = None, value_range: tuple[float, float] = (0.0, 1.0),
                 early_stop_patience: int | None = None, early_stop_tolerance: float = 0.01) -> None:
        if early_stop_patience is not None and (isinstance(early_stop_patience, bool)
                                                or not isinstance(early_stop_patience, int)
                                                or early_stop_patience < 1):
            raise InvalidParameterError(f"early_stop_patience must be None or an int >= 1, got {early_stop_patience!r}")
        if not 0.0 <= float(early_stop_tolerance) < 1.0:
            raise InvalidParameterError(f"early_stop_tolerance must be in [0, 1), got {early_stop_tolerance!r}")
        if random_state is not None and (isinstance(random_state, bool) or not isinstance(random_state, int)
                                         or random_state < 0):
            raise InvalidParameterError(f"random_state must be None or an int >= 0, got {random_state!r}")
        low, high = (float(v) for v in value_range)
        if not high > low:
            raise InvalidParameterError(f"value_range must be (low, high) with low < high, got {value_range!r}")
        self.learning_rate = learning_rate
        self.init_cost = init_cost
        self.patience = patience
        self.random_state = random_state
        self.value_range = (low, high)
        self.early_stop_patience = early_stop_patience
        self.early_stop_tolerance = float(early_stop_tolerance)
        self._seed = int(np.random.SeedSequence(random_state).generate_state(1)[0])
        self._optimizer: torch.optim.Optimizer | None = None
        self._cost: torch.Tensor | None = None
        self._up: torch.Tensor | None = None
        self._down: torch.Tensor | None = None
        self._raised: torch.Tensor | None = None
        self._lowered: torch.Tensor | None = None

    def init(self, n: int, shape: tuple[int, ...], device: torch.device) -> list[torch.Tensor]:
        gen = torch.Generator(device="cpu").manual_seed(self._seed)
        mask0 = torch.rand((1, 1) + tuple(shape[1:]), generator=gen) * 2 - 1
        pattern0 = torch.rand((1,) + tuple(shape), generator=gen) * 2 - 1
        mask = mask0.expand((n,) + mask0.shape[1:]).clone().to(device).requires_grad_(True)
        pattern = pattern0.expand((n,) + pattern0.shape[1:]).clone().to(device).requires_grad_(True)
        self._optimizer = torch.optim.Adam([mask, pattern], lr=self.learning_rate, betas=(0.5, 0.9))
        self._cost = torch.full((n,), self.init_cost, device=device)
        self._up = torch.zeros(n, dtype=torch.long, device=device)
        self._down = torch.zeros(n, dtype=torch.long, device=device)
        self._raised = torch.zeros(n, dtype=torch.bool, device=device)
        self._lowered = torch.zeros(n, dtype=torch.bool, device=device)
        return [mask, pattern]

    def settled(self) -> torch.Tensor:
        """(n,) whether each problem's cost has been raised and lowered at least once (early stop may count)."""
        if self._raised is None or self._lowered is None:
            raise RuntimeError("MaskPattern.init was not called")
        return self._raised & self._lowered

    def _pattern(self, raw: torch.Tensor) -> torch.Tensor:
        low, high = self.value_range
        return low + (high - low) * torch.sigmoid(raw)

    def apply(self, params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        m, p = torch.sigmoid(params[0])[:, None], self._pattern(params[1])[:, None]
        return (1 - m) * x + m * p

    def sizes(self, params: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return _norms(torch.sigmoid(params[0]))

    def penalty(self, params: list[torch.Tensor]) -> torch.Tensor:
        if self._cost is None:
            raise RuntimeError("MaskPattern.init was not called")
        if params[0].shape[0] != self._cost.shape[0]:
            raise RuntimeError(f"MaskPattern.penalty needs all {self._cost.shape[0]} problems of the chunk, "
                               f"got {params[0].shape[0]}")
        return self._cost * torch.sigmoid(params[0]).flatten(1).sum(1)

    def update(self, params: list[torch.Tensor], active: torch.Tensor, reached: torch.Tensor) -> None:
        if (self._optimizer is None or self._cost is None or self._up is None or self._down is None
                or self._raised is None or self._lowered is None):
            raise RuntimeError("MaskPattern.init was not called")
        self._optimizer.step()
        self._optimizer.zero_grad(set_to_none=True)
        self._up = torch.where(reached, self._up + 1, torch.zeros_like(self._up))
        self._down = torch.where(reached, torch.zeros_like(self._down), self._down + 1)
        raise_cost = self._up >= self.patience
        lower_cost = self._down >= self.patience
        self._cost = torch.where(raise_cost, self._cost * 1.5, self._cost)
        self._cost = torch.where(lower_cost, self._cost / 1.5**1.5, self._cost)
        self._up[raise_cost] = 0
        self._down[lower_cost] = 0
        self._raised |= raise_cost
        self._lowered |= lower_cost

    def pattern(self, params: list[torch.Tensor]) -> torch.Tensor:
        """(n, 1 + C, H, W): the mask in channel 0, the pattern (in ``value_range``) in the others."""
        return torch.cat([torch.sigmoid(params[0]), self._pattern(params[1])], dim=1)


class SampleWiseShift:
    """CEPA's parametrisation: one additive input perturbation per sample and problem, ``delta`` (P, n, C, H, W).

    Zero-initialised (Li et al., 2024: the sizes of the deltas are kept small implicitly by starting at zero and
    stopping early). Updated by Adam implemented per row: each problem keeps its own moments and step count and
    only the rows in ``active`` move, so a stopped problem stays frozen and a problem's trajectory does not depend
    on the other problems of its chunk. :meth:`project` clips ``x + delta`` to the valid range. The consensus
    penalty of CEPA's Eq. 1 needs embedded features, so :meth:`penalty` is zero and
    :mod:`~art_backdoor_ext.defences.model.cepa` adds the penalty in its own loop.
    """

    stops_at_target = False

    def __init__(self, learning_rate: float = 0.05, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.learning_rate = learning_rate
        self.betas = betas
        self.eps = eps
        self._m: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._t: torch.Tensor | None = None

    def init(self, n: int, shape: tuple[int, ...], device: torch.device) -> list[torch.Tensor]:
        """``shape`` is (n_samples, C, H, W): one delta per sample of each of the ``n`` problems."""
        delta = torch.zeros((n,) + tuple(shape), device=device, requires_grad=True)
        self._m = torch.zeros_like(delta, requires_grad=False)
        self._v = torch.zeros_like(delta, requires_grad=False)
        self._t = torch.zeros(n, device=device)
        return [delta]

    def apply(self, params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return x + params[0]

    def sizes(self, params: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean over each problem's samples of the L1 and L2 norms of the deltas (padding rows are zero)."""
        flat = params[0].flatten(2)
        return flat.abs().sum(-1).mean(1), flat.norm(dim=-1).mean(1)

    def penalty(self, params: list[torch.Tensor]) -> torch.Tensor:
        return torch.zeros(params[0].shape[0], device=params[0].device)

    def update(self, params: list[torch.Tensor], active: torch.Tensor, reached: torch.Tensor) -> None:
        if self._m is None or self._v is None or self._t is None:
            raise RuntimeError("SampleWiseShift.init was not called")
        delta = params[0]
        if delta.grad is None:
            return
        b1, b2 = self.betas
        with torch.no_grad():
            g = delta.grad[active]
            m = self._m[active].mul_(b1).add_(g, alpha=1 - b1)
            v = self._v[active].mul_(b2).addcmul_(g, g, value=1 - b2)
            t = self._t[active] + 1
            shape = (-1,) + (1,) * (g.dim() - 1)
            m_hat = m / (1 - b1 ** t).view(shape)
            v_hat = v / (1 - b2 ** t).view(shape)
            delta[active] -= self.learning_rate * m_hat / (v_hat.sqrt() + self.eps)
            self._m[active], self._v[active], self._t[active] = m, v, t
        delta.grad = None

    @staticmethod
    def project(params: list[torch.Tensor], x: torch.Tensor, value_range: tuple[float, float]) -> None:
        """Clip so that ``x + delta`` lies in ``value_range`` (in place); ``x`` broadcasts against delta."""
        with torch.no_grad():
            delta = params[0]
            delta.copy_((x + delta).clamp(*value_range) - x)

    def pattern(self, params: list[torch.Tensor]) -> torch.Tensor:
        return params[0]


@dataclass
class EngineResult:
    """Per-problem outcome. ``size`` is the L1 or L2 size (``norm``) of the perturbation at stopping."""

    problems: Problems
    size_l1: np.ndarray
    size_l2: np.ndarray
    misclassification: np.ndarray
    initial_misclassification: np.ndarray
    reached: np.ndarray
    iterations: np.ndarray
    perturbations: np.ndarray
    trace_size_l1: np.ndarray  # (T, P), NaN after a problem stopped
    trace_size_l2: np.ndarray
    trace_misclassification: np.ndarray

    def sizes(self, norm: str) -> np.ndarray:
        return self.size_l1 if norm == "l1" else self.size_l2

    def trace_sizes(self, norm: str) -> np.ndarray:
        return self.trace_size_l1 if norm == "l1" else self.trace_size_l2

    def at_fraction(self, target_misclassification: float, max_size_l2: float, max_iter: int) -> EngineResult:
        """The result the same run would have given with a smaller ``target_misclassification``, read off the trace.

        For problems that stop at the target (:class:`Additive`, Algorithm 1) each problem's steps do not depend
        on ``pi`` until it stops: a smaller ``pi`` stops it at the first traced iteration where its fraction
        reaches ``pi``, its L2 size ``max_size_l2`` or the count ``max_iter``, compared in float32 as the engine
        does. Traces end there. Perturbations are not traced: the returned ones are NaN (run the engine again on
        the problems whose pattern is needed).

        :raises InvalidParameterError: ``target_misclassification`` above the fraction of a problem's run that
            reached its target (only a smaller ``pi`` can be read off a trace).
        """
        rho, d = self.trace_misclassification, self.trace_size_l2
        pi, cap = np.float32(target_misclassification), np.float32(max_size_l2)
        ran_for = (~np.isnan(d)).sum(0)  # iterations traced per problem
        stop_here = (rho >= pi) | (d >= cap) | (np.arange(len(d))[:, None] >= max_iter)
        stop_here &= np.arange(len(d))[:, None] < ran_for[None, :]
        if np.any(self.reached & (self.misclassification < pi) & (self.iterations < max_iter)):
            raise InvalidParameterError(
                f"target_misclassification {target_misclassification} is above the fraction this run stopped at; "
                "only a smaller one can be read off its trace")
        stop = np.where(stop_here.any(0), stop_here.argmax(0), ran_for - 1)
        cols = np.arange(d.shape[1])
        after = np.arange(len(d))[:, None] > stop[None, :]

        def cut(trace: np.ndarray) -> np.ndarray:
            return np.where(after, np.nan, trace)

        return EngineResult(
            problems=self.problems,
            size_l1=self.trace_size_l1[stop, cols].astype(float),
            size_l2=d[stop, cols].astype(float),
            misclassification=rho[stop, cols].astype(float),
            initial_misclassification=self.initial_misclassification,
            reached=rho[stop, cols] >= pi,
            iterations=stop,
            perturbations=np.full_like(self.perturbations, np.nan),
            trace_size_l1=cut(self.trace_size_l1),
            trace_size_l2=cut(d),
            trace_misclassification=cut(rho),
        )


class PerturbationEngine:
    """Optimise many perturbation problems at once on an ART ``PyTorchClassifier``.

    :param classifier: ART ``PyTorchClassifier`` (its preprocessing is applied).
    :param parametrisation: :class:`Additive` or :class:`MaskPattern`.
    :param target_misclassification: ``pi``, the fraction of a problem's samples that must reach the target.
    :param objective: ``"J"`` (Eq. 3, mean target probability), ``"Jp"`` (Eq. 5, only samples not yet sent to
        the target), ``"Jc"`` (Eq. 6, only samples the model classifies correctly without perturbation).
    :param layer: None for input space (clipped to ``clip_values``), or a layer name of ``classifier.model``
        whose output receives the perturbation (Eq. 10).
    :param max_iter: Iteration cap per problem.
    :param max_size_l2: Size cap (L2); a problem stops when it is exceeded.
    :param max_batch_images: Images per forward pass; problems are chunked to respect it.
    """

    def __init__(self, classifier: Any, parametrisation: Any, *, target_misclassification: float = 0.8,
                 objective: str = "J", layer: str | None = None, max_iter: int = 300,
                 max_size_l2: float = float("inf"), max_batch_images: int = 8192, verbose: bool = False) -> None:
        if objective not in OBJECTIVES:
            raise InvalidParameterError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.classifier = classifier
        self.parametrisation = parametrisation
        self.target_misclassification = target_misclassification
        self.objective = objective
        self.layer = layer
        self.max_iter = max_iter
        self.max_size_l2 = max_size_l2
        self.max_batch_images = max_batch_images
        self.verbose = verbose
        self.device = classifier_device(classifier)
        self.model = scan_model(classifier.model, self.device)
        if layer is not None:
            self._layer_module: nn.Module | None = resolve_layers(self.model, [layer])[layer]
        else:
            self._layer_module = None

    # ------------------------------------------------------------------------------------------ public
    def run(self, x: np.ndarray, y: np.ndarray, problems: Problems) -> EngineResult:
        """Optimise every problem; ``x`` (N, C, H, W) float32 clean samples, ``y`` (N,) their labels."""
        model = self.model
        x_t = to_tensor(x, self.device)
        y_t = torch.as_tensor(y, device=self.device)
        n_max = problems.indices.shape[1]
        per_chunk = max(1, self.max_batch_images // max(1, n_max))
        chunks = [np.arange(i, min(i + per_chunk, len(problems))) for i in range(0, len(problems), per_chunk)]
        parts = []
        with eval_mode(model), frozen(model):
            for chunk in progress(chunks, verbose=self.verbose and len(chunks) > 1, desc="problem chunks"):
                parts.append(self._run_chunk(x_t, y_t, problems.subset(chunk)))
        return _concat(problems, parts)

    # ------------------------------------------------------------------------------------------ internals
    def _feature_shape(self, x_t: torch.Tensor) -> tuple[int, ...]:
        if self._layer_module is None:
            return tuple(x_t.shape[1:])
        shape: list[tuple[int, ...]] = []
        handle = self._layer_module.register_forward_hook(lambda _m, _i, out: shape.append(tuple(out.shape[1:])))
        try:
            with torch.no_grad():
                self.model(preprocess(self.classifier, x_t[:1]))
        finally:
            handle.remove()
        return shape[0]

    def _logits(self, params: list[torch.Tensor], x_groups: torch.Tensor) -> torch.Tensor:
        """Logits (A, n, K) for problem groups x_groups (A, n, C, H, W) under the current perturbations."""
        a, n = x_groups.shape[:2]
        model = self.model
        if self._layer_module is None:
            low, high = (float(v) for v in self.classifier.clip_values)
            perturbed = clip_to_range(self.parametrisation.apply(params, x_groups), low, high)
            return model(preprocess(self.classifier, perturbed.flatten(0, 1))).view(a, n, -1)

        def hook(_module: nn.Module, _inputs: Any, out: torch.Tensor) -> torch.Tensor:
            grouped = out.view((a, n) + tuple(out.shape[1:]))
            return self.parametrisation.apply(params, grouped).flatten(0, 1)

        handle = self._layer_module.register_forward_hook(hook)
        try:
            return model(preprocess(self.classifier, x_groups.flatten(0, 1))).view(a, n, -1)
        finally:
            handle.remove()

    def _run_chunk(self, x_t: torch.Tensor, y_t: torch.Tensor, problems: Problems) -> dict[str, Any]:
        """Algorithm 1 for the problems of one chunk, all in one forward pass per iteration."""
        p = len(problems)
        idx = torch.as_tensor(problems.indices, device=self.device)
        x_groups = x_t[idx.clamp_min(0)]  # (P, n, C, H, W)
        targets = torch.as_tensor(problems.targets, device=self.device)
        valid = self._counted_samples(idx, x_groups, y_t)
        counts = valid.sum(1).clamp_min(1)
        params = self.parametrisation.init(p, self._feature_shape(x_t), self.device)
        stops = self.parametrisation.stops_at_target
        state = ChunkState(p, self.max_iter, self.device)
        early_stop = EarlyStop(p, getattr(self.parametrisation, "early_stop_patience", None),
                               getattr(self.parametrisation, "early_stop_tolerance", 0.0), self.device)
        active = torch.ones(p, dtype=torch.bool, device=self.device)
        for it in range(self.max_iter + 1):
            act = torch.nonzero(active).flatten() if stops else torch.arange(p, device=self.device)
            if len(act) == 0:
                break
            sub = [q[act] for q in params]
            logits = self._logits(sub, x_groups[act])
            hit = (logits.argmax(-1) == targets[act, None]) & valid[act]
            rho = hit.sum(1) / counts[act]
            l1, l2 = (v.detach() for v in self.parametrisation.sizes(sub))
            state.trace(it, act, l1, l2, rho.detach())
            reached = rho >= self.target_misclassification
            pattern = self.parametrisation.pattern([q.detach() for q in params])
            if stops:  # Additive: a problem stops at the target or the size cap (Algorithm 1)
                finish = reached | (l2 >= self.max_size_l2) | (it == self.max_iter)
                state.keep(act[finish], l1[finish], l2[finish], rho.detach()[finish], it, pattern[act[finish]])
                state.reached_ever[act[finish]] = reached[finish]
                active[act[finish]] = False
                step_mask = ~finish
            else:  # MaskPattern: keep the smallest perturbation that reached the target, until frozen or max_iter
                improve = reached & (torch.isnan(state.l1) | (l1 < state.l1)) & ~early_stop.frozen
                state.keep(act[improve], l1[improve], l2[improve], rho.detach()[improve], it, pattern[improve])
                state.reached_ever |= reached
                if it == self.max_iter or early_stop.update(l1.detach(), reached, self.parametrisation.settled()):
                    break
                step_mask = torch.ones_like(reached)
            if step_mask.any():
                loss = self._objective(logits, targets[act], valid[act], hit, counts[act])
                ((loss + self.parametrisation.penalty(sub))[step_mask]).sum().backward()
                with torch.no_grad():
                    self.parametrisation.update(params, _scatter(act[step_mask], p), _scatter(act[reached], p))
        if not stops:
            final = [q.detach() for q in params]
            l1_end, l2_end = self.parametrisation.sizes(final)
            state.fill_unreached(l1_end, l2_end, self.max_iter, self.parametrisation.pattern(final))
        return state.to_numpy()

    def _counted_samples(self, idx: torch.Tensor, x_groups: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
        """(P, n) mask of the samples that count: all real ones; for Jc (Eq. 6) only those the model classifies
        correctly without perturbation (all real ones for a problem where it gets none right)."""
        valid = idx >= 0
        if self.objective != "Jc":
            return valid
        with torch.no_grad():
            clean_logits = self.model(preprocess(self.classifier, x_groups.flatten(0, 1)))
            clean_pred = clean_logits.view(x_groups.shape[0], x_groups.shape[1], -1).argmax(-1)
        correct = valid & (clean_pred == y_t[idx.clamp_min(0)])
        return torch.where(correct.any(1, keepdim=True), correct, valid)

    def _objective(self, logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, hit: torch.Tensor,
                   counts: torch.Tensor) -> torch.Tensor:
        """Per-problem objective (A,): Eq. 3/5/6 for Additive, cross-entropy for MaskPattern."""
        if isinstance(self.parametrisation, MaskPattern):
            ce = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), targets.repeat_interleave(logits.shape[1]), reduction="none"
            ).view(logits.shape[:2])
            return (ce * valid).sum(1) / counts
        p_t = torch.softmax(logits, -1).gather(-1, targets.view(-1, 1, 1).expand(-1, logits.shape[1], 1))[..., 0]
        weight = valid & ~hit if self.objective == "Jp" else valid
        return -(p_t * weight).sum(1) / weight.sum(1).clamp_min(1)


def _scatter(rows: torch.Tensor, p: int) -> torch.Tensor:
    """Boolean (p,) mask, True at ``rows``."""
    mask = torch.zeros(p, dtype=torch.bool, device=rows.device)
    mask[rows] = True
    return mask


def _concat(problems: Problems, parts: list[dict[str, Any]]) -> EngineResult:
    t = max(part["trace_l1"].shape[0] for part in parts)

    def traces(key: str) -> np.ndarray:
        padded = [np.vstack([part[key], np.full((t - part[key].shape[0], part[key].shape[1]), np.nan)])
                  for part in parts]
        return np.concatenate(padded, axis=1)

    return EngineResult(
        problems=problems,
        size_l1=np.concatenate([p["l1"] for p in parts]).astype(float),
        size_l2=np.concatenate([p["l2"] for p in parts]).astype(float),
        misclassification=np.concatenate([p["rho"] for p in parts]).astype(float),
        initial_misclassification=np.concatenate([p["rho0"] for p in parts]).astype(float),
        reached=np.concatenate([p["reached"] for p in parts]).astype(bool),
        iterations=np.concatenate([p["it"] for p in parts]).astype(int),
        perturbations=np.concatenate([p["pattern"] for p in parts]),
        trace_size_l1=traces("trace_l1"),
        trace_size_l2=traces("trace_l2"),
        trace_misclassification=traces("trace_rho"),
    )
