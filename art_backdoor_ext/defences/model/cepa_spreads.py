"""Two diagnostic spreads of CEPA's scan (Li, Wang, Miller & Kesidis, 2024), kept beside sigma and ||mu|| in
``report.statistics``: how spread the perturbed features f(x + delta) of a problem are (``landing_sigma``), and how
spread the target class's own clean features are (``class_sigma``), both in the layer's raw units.

| Paper link: ../shared/papers/cepa-universal-post-training-defense.md
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["class_spreads", "feature_spread"]


def feature_spread(features: torch.Tensor, weights: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Root mean squared distance of each copy's (weighted) features (A, n, D) to their mean: (A,)."""
    mean = (features * weights[..., None]).sum(1) / counts[:, None]
    return ((((features - mean[:, None]).pow(2).sum(-1) * weights).sum(1) / counts).sqrt())


def class_spreads(features: torch.Tensor, labels: np.ndarray, k: int) -> np.ndarray:
    """Root mean squared distance of each class's clean features (N, D) to the class mean: (k,), NaN if absent."""
    out = np.full(k, np.nan)
    for c in range(k):
        rows = torch.as_tensor(np.flatnonzero(labels == c), device=features.device)
        if len(rows):
            part = features[rows]
            out[c] = float((part - part.mean(0)).pow(2).sum(-1).mean().sqrt())
    return out
