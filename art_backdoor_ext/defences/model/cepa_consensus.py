"""How consensual a *known* trigger is in the embedded space: CEPA's premise, measured.

CEPA (Li et al., 2024) detects a backdoor when the perturbations that move clean images to one class share a
common embedded shift ``mu`` with little spread ``sigma`` about it (Eq. 1-2). This module measures, for a trigger
the user holds (a benchmark's ground truth, a suspected patch), ``sigma / ||mu||`` of its shifts
``f(x_triggered) - f(x)`` per layer. It bounds what Eq. 1 can reach for the trigger's target class: the trigger
itself is one feasible answer when it sends at least ``target_misclassification`` of the images there.
Compared with the statistics CEPA reaches for the putative targets
(``report.statistics[variant][layer]["ratio"]``): well below their median, the trigger is an outlier CEPA should
find, so a miss is the optimisation's or the inference's; above it, the measurement is inconclusive, because
Eq. 1 may still find another, more consensual perturbation into the backdoor (it does on a digits warp victim,
whose warp has sigma / ||mu|| near 2 and is detected).

| Paper link: ../shared/papers/cepa-universal-post-training-defense.md
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from art_backdoor_ext._torch import classifier_device, eval_mode, resolve_layers, to_tensor
from art_backdoor_ext._validation import check_images
from art_backdoor_ext.exceptions import DataError
from art_backdoor_ext.functional.cepa_math import consensus_statistics

if TYPE_CHECKING:  # pragma: no cover
    from art_backdoor_ext.defences.model.cepa import CEPA

__all__ = ["trigger_consensus"]


def trigger_consensus(detector: CEPA, x: np.ndarray, x_triggered: np.ndarray,
                      layers: str | Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """
    ``sigma``, ``||mu||`` and ``sigma / ||mu||`` of the embedded shifts ``f(x_triggered) - f(x)`` per layer.

    :param detector: The CEPA detector whose classifier (and default layers) to use.
    :param x: Clean images (N, C, H, W) float32 in ``clip_values``, N >= 2.
    :param x_triggered: The same images with the trigger inserted, same shape.
    :param layers: Layer name(s); ``None``: the detector's layers.
    :return: ``{layer: {"ratio": ..., "sigma": ..., "mu_norm": ...}}``.
    :raises DataError: mismatched shapes, fewer than two images, NHWC or out-of-range data.
    """
    clf = detector.classifier
    x = check_images(x, name="x", input_shape=clf.input_shape, clip_values=clf.clip_values)
    x_triggered = check_images(x_triggered, name="x_triggered", input_shape=clf.input_shape,
                               clip_values=clf.clip_values)
    if x.shape != x_triggered.shape:
        raise DataError(f"x and x_triggered must have the same shape (image i of one is image i of the other), "
                        f"got {x.shape} and {x_triggered.shape}")
    if len(x) < 2:
        raise DataError(f"trigger_consensus needs at least 2 images (a spread about the mean shift), got {len(x)}")
    if layers is None:
        names = detector._resolved_layers()
    else:
        names = [layers] if isinstance(layers, str) else list(layers)
        resolve_layers(clf.model, names)
    device = classifier_device(clf)
    with eval_mode(clf.model):
        clean = detector._clean_features(clf.model, to_tensor(x, device), names)
        triggered = detector._clean_features(clf.model, to_tensor(x_triggered, device), names)
    out: dict[str, dict[str, Any]] = {}
    for layer in names:
        shifts = (triggered[layer] - clean[layer]).double().cpu().numpy()
        st = consensus_statistics(shifts)
        out[layer] = {"ratio": float(st.ratio), "sigma": float(st.sigma), "mu_norm": float(st.mu_norm)}
    return out
