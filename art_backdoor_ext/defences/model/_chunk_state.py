"""Per-chunk bookkeeping of :class:`~art_backdoor_ext.defences.model.perturbation.PerturbationEngine`: what each
problem keeps (its final or best state and the per-iteration trace) and the early stop of mask+pattern problems.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["ChunkState", "EarlyStop"]


class EarlyStop:
    """Per-problem early stop of :class:`MaskPattern` problems (all problems of a chunk run every iteration)."""

    def __init__(self, p: int, patience: int | None, tolerance: float, device: torch.device) -> None:
        self.patience = patience
        self.tolerance = tolerance
        self.frozen = torch.zeros(p, dtype=torch.bool, device=device)
        self._reference = torch.full((p,), float("inf"), device=device)
        self._count = torch.zeros(p, dtype=torch.long, device=device)

    def update(self, l1: torch.Tensor, reached: torch.Tensor, counting: torch.Tensor) -> bool:
        """Count this iteration for the ``counting`` problems; freeze stalled ones. True when all are frozen."""
        if self.patience is None:
            return False
        better = reached & (l1 < self._reference * (1.0 - self.tolerance))
        self._reference = torch.where(better, l1, self._reference)
        self._count = torch.where(better, torch.zeros_like(self._count),
                                  self._count + counting.long())
        self.frozen |= self._count >= self.patience
        return bool(self.frozen.all())


class ChunkState:
    """What one chunk of problems records: the per-iteration trace and each problem's kept (final) state."""

    def __init__(self, p: int, max_iter: int, device: torch.device) -> None:
        self.l1 = torch.full((p,), float("nan"), device=device)
        self.l2 = torch.full((p,), float("nan"), device=device)
        self.rho = torch.zeros(p, device=device)
        self.it = torch.zeros(p, dtype=torch.long, device=device)
        self.pattern: torch.Tensor | None = None
        self.reached_ever = torch.zeros(p, dtype=torch.bool, device=device)
        self.trace_l1, self.trace_l2, self.trace_rho = (torch.full((max_iter + 1, p), float("nan")) for _ in range(3))
        self.rho0 = torch.zeros(p)

    def trace(self, it: int, rows: torch.Tensor, l1: torch.Tensor, l2: torch.Tensor, rho: torch.Tensor) -> None:
        rows_cpu = rows.cpu()
        self.trace_l1[it, rows_cpu], self.trace_l2[it, rows_cpu] = l1.cpu(), l2.cpu()
        self.trace_rho[it, rows_cpu] = rho.cpu()
        if it == 0:
            self.rho0[rows_cpu] = rho.cpu()

    def keep(self, rows: torch.Tensor, l1: torch.Tensor, l2: torch.Tensor, rho: torch.Tensor, it: int,
             pattern: torch.Tensor) -> None:
        """Record the state of problems ``rows`` at iteration ``it`` (``pattern`` holds their patterns only)."""
        if self.pattern is None:
            self.pattern = torch.zeros((len(self.l1),) + tuple(pattern.shape[1:]), device=pattern.device)
        self.l1[rows], self.l2[rows], self.rho[rows], self.it[rows] = l1, l2, rho, it
        self.pattern[rows] = pattern

    def fill_unreached(self, l1: torch.Tensor, l2: torch.Tensor, max_iter: int, pattern: torch.Tensor) -> None:
        """Problems that never reached the target report their final size (and pattern)."""
        never = torch.isnan(self.l1)
        self.l1[never], self.l2[never], self.it[never] = l1[never], l2[never], max_iter
        if self.pattern is None:
            self.pattern = pattern.clone()
        self.pattern[never] = pattern[never]

    def to_numpy(self) -> dict[str, Any]:
        last = int(torch.max(self.it).item()) + 1
        return {"l1": self.l1.cpu().numpy(), "l2": self.l2.cpu().numpy(), "rho": self.rho.cpu().numpy(),
                "rho0": self.rho0.numpy(), "reached": self.reached_ever.cpu().numpy(), "it": self.it.cpu().numpy(),
                "pattern": self.pattern.cpu().numpy() if self.pattern is not None else None,
                "trace_l1": self.trace_l1[:last].numpy(), "trace_l2": self.trace_l2[:last].numpy(),
                "trace_rho": self.trace_rho[:last].numpy()}
