"""Eq. 3 of CEPA (Li, Wang, Miller & Kesidis, 2024): per-sample input perturbations that reproduce a detected
common embedded shift ``mu`` on new samples (:meth:`~art_backdoor_ext.defences.model.cepa.CEPA.estimate_trigger`).

| Paper link: ../shared/papers/cepa-universal-post-training-defense.md
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from art_backdoor_ext._torch import (
    batch_slices,
    capture,
    classifier_device,
    clip_to_range,
    eval_mode,
    frozen,
    preprocess,
    resolve_layers,
    to_tensor,
)
from art_backdoor_ext._validation import check_images
from art_backdoor_ext.exceptions import DataError, InvalidParameterError

if TYPE_CHECKING:  # pragma: no cover
    from art_backdoor_ext.defences.model.cepa import CEPA

__all__ = ["estimate_trigger"]


def estimate_trigger(det: CEPA, x: np.ndarray, report: Any, *, v: float = 0.0,
                     max_iter: int | None = None) -> np.ndarray:
    """:meth:`CEPA.estimate_trigger` for the detector ``det`` (see there)."""
    x = check_images(x, name="x", input_shape=det.classifier.input_shape, clip_values=det.classifier.clip_values)
    if isinstance(report, Mapping):
        layer, mu_np = report.get("layer"), report.get("mu")
    else:
        layer, mu_np = getattr(report, "layer", None), getattr(report, "mu", None)
    if not isinstance(layer, str) or mu_np is None:
        raise DataError("report must be a CEPAReport (or its to_dict()) with 'layer' and 'mu'")
    if not (isinstance(v, (int, float)) and v >= 0):
        raise InvalidParameterError(f"v must be a number >= 0, got {v!r}")
    iters = det.max_iter if max_iter is None else max_iter
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise InvalidParameterError(f"max_iter must be an int >= 1, got {iters!r}")
    resolve_layers(det.classifier.model, [layer])
    model = det.classifier.model
    device = classifier_device(det.classifier)
    mu = torch.as_tensor(np.asarray(mu_np, dtype=np.float32), device=device).flatten()
    low, high = det._value_range
    out = []
    with eval_mode(model), frozen(model):
        for sl in batch_slices(len(x), det._batch_images):
            xb = to_tensor(x[sl], device)
            with torch.no_grad(), capture(model, [layer], flatten=True) as feats:
                model(preprocess(det.classifier, xb))
                goal = feats[layer] + mu if feats[layer].shape[1] == mu.numel() else None
            if goal is None:
                raise DataError(f"report.mu has {mu.numel()} values but layer {layer!r} outputs "
                                f"{feats[layer].shape[1]} per sample; was the report made on this model?")
            param = det._parametrisation()
            params = param.init(1, tuple(xb.shape), device)
            everything = torch.ones(1, dtype=torch.bool, device=device)
            for _ in range(iters):
                with capture(model, [layer], flatten=True) as feats:
                    model(preprocess(det.classifier, clip_to_range(xb + params[0][0], low, high)))
                loss = (feats[layer] - goal).pow(2).sum() + v * params[0].pow(2).sum()
                loss.backward()
                param.update(params, everything, everything)
                param.project(params, xb, (low, high))
            out.append(params[0][0].detach().cpu().numpy())
    return np.concatenate(out).astype(np.float32)
