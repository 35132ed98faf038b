"""The tests behind :class:`~art_backdoor_ext.defences.model.cepa.CEPA`'s decision: one per (variant, layer), and
the joint all-to-one test over the layers (``layer_pooling="joint"``).

| Paper link: ../shared/papers/cepa-universal-post-training-defense.md
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from art_backdoor_ext.exceptions import DataError
from art_backdoor_ext.functional.bootstrap_calibration import calibrated_max_statistic_pvalue
from art_backdoor_ext.functional.cepa_math import max_statistic_pvalue, sidak_correction
from art_backdoor_ext.functional.layer_pooling import joint_layer_pvalue, pooled_layer_pvalue
from art_backdoor_ext.functional.robust import mad_anomaly_index, order_statistic_pvalue

if TYPE_CHECKING:
    from art_backdoor_ext.defences.model.cepa import CEPA
    from art_backdoor_ext.defences.model.perturbation import Problems

__all__ = ["decide", "evidence", "layer_test", "joint_test", "pooled_test"]

logger = logging.getLogger(__name__)


def evidence(statistic: str, stats: Mapping[str, np.ndarray]
             ) -> tuple[np.ndarray, np.ndarray, Literal["low", "high"]]:
    """(evidence for the p-value, large = backdoor, with NaN and non-positive values raised to half the smallest
    positive one; the raw statistic; the side of the MAD anomaly index). ``statistic``: ``"consensus"``
    (evidence ||mu|| / sigma, raw sigma / ||mu||), ``"norm"`` (||mu|| both) or ``"sigma"`` (evidence 1 / sigma,
    raw sigma)."""
    side: Literal["low", "high"] = "high" if statistic == "norm" else "low"
    if statistic == "norm":
        values, raw = stats["mu_norm"].astype(float), stats["mu_norm"].astype(float)
    elif statistic == "sigma":
        raw = stats["sigma"].astype(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            values = 1.0 / raw
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            values = stats["mu_norm"] / stats["sigma"]
        raw = stats["ratio"].astype(float)
    positive = values[np.isfinite(values) & (values > 0)]
    floor = 0.5 * float(positive.min()) if positive.size else 1.0
    return np.where(np.isnan(values) | (values <= 0), floor, values), raw, side


def _seed(det: CEPA) -> int:
    return 0 if det.random_state is None else int(det.random_state)


def layer_test(det: CEPA, kind: str, layer: str, problems: Problems, stats: Mapping[str, np.ndarray],
               k: int) -> dict[str, Any]:
    """The test of one (variant, layer): p-value (calibrated for all-to-one unless ``calibration="none"``), MAD
    anomaly indices, and the most extreme problem's source and target."""
    values, raw, side = evidence(det.statistic, stats)
    finite_raw = np.isfinite(raw)
    ai = np.full(len(raw), np.nan)
    if finite_raw.sum() >= 3:
        ai[finite_raw] = mad_anomaly_index(raw[finite_raw], side=side)
    uncalibrated: float | None = None
    try:
        if kind == "pairs":
            matrix = np.full((k, k), np.nan)
            matrix[problems.sources, problems.targets] = values
            ost = order_statistic_pvalue(matrix)
            p_value, source, target = float(ost.p_value), int(ost.source), int(ost.target)
            row = int(np.flatnonzero((problems.sources == source) & (problems.targets == target))[0])
        elif det.calibration == "bootstrap":
            p_value, row, uncalibrated = calibrated_max_statistic_pvalue(
                values, n_bootstrap=det.n_bootstrap, random_state=_seed(det))
            source, target = None, int(problems.targets[row])
        else:
            p_value, row = max_statistic_pvalue(values)
            source, target = None, int(problems.targets[row])
    except DataError as err:
        logger.debug("no p-value for %s at %s: %s", kind, layer, err)
        row = int(np.argmax(values))
        p_value, target = 1.0, int(problems.targets[row])
        source = int(problems.sources[row]) if kind == "pairs" else None
    return {"variant": kind, "layer": layer, "p_value": p_value,
            "p_value_uncalibrated": p_value if uncalibrated is None else uncalibrated,
            "anomaly_index": float(ai[row]),
            "source": source, "target": target, "problem": row, "anomaly_indices": ai}


def joint_test(det: CEPA, problems: Problems, per_layer: Mapping[str, Mapping[str, np.ndarray]],
               layers: Sequence[str], tests: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The all-to-one test over all ``layers`` together
    (:func:`~art_backdoor_ext.functional.layer_pooling.joint_layer_pvalue`), as a test dict whose ``layer`` is
    the layer where the target's own per-layer test is most extreme (its ``mu`` is the one reported); None with
    fewer than two layers or when no p-value can be computed."""
    if len(layers) < 2:
        return None
    matrix = np.stack([evidence(det.statistic, per_layer[layer])[0] for layer in layers])
    try:
        p_value, row, _ = joint_layer_pvalue(matrix, n_bootstrap=det.n_bootstrap, random_state=_seed(det))
    except DataError as err:
        logger.debug("no joint p-value: %s", err)
        return None
    target = int(problems.targets[row])
    own = [t for t in tests if t["variant"] == "all-to-one" and t["layer"] in layers]
    ranked = sorted(own, key=lambda t: (t["target"] != target, t["p_value"]))
    layer = str(ranked[0]["layer"]) if ranked else str(layers[0])
    ai = next(t["anomaly_indices"] for t in own if t["layer"] == layer) if own else np.full(len(problems), np.nan)
    return {"variant": "all-to-one", "layer": layer, "pooled_layers": list(layers), "p_value": p_value,
            "p_value_uncalibrated": p_value, "anomaly_index": float(ai[row]), "source": None, "target": target,
            "problem": row, "anomaly_indices": ai}


def pooled_test(det: CEPA, problems: Problems, per_layer: Mapping[str, Mapping[str, np.ndarray]],
                layers: Sequence[str], tests: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The all-to-one test with the layers' median-relative statistics pooled
    (:func:`~art_backdoor_ext.functional.layer_pooling.pooled_layer_pvalue`, ``layer_pooling="pooled"``), as a
    test dict whose ``layer`` is where the pooled maximum lies; None with fewer than two layers or when no
    p-value can be computed."""
    if len(layers) < 2:
        return None
    matrix = np.stack([evidence(det.statistic, per_layer[layer])[0] for layer in layers])
    try:
        p_value, row, at, raw = pooled_layer_pvalue(matrix, n_bootstrap=det.n_bootstrap, random_state=_seed(det))
    except DataError as err:
        logger.debug("no pooled p-value: %s", err)
        return None
    layer = str(layers[at])
    own = next((t for t in tests if t["variant"] == "all-to-one" and t["layer"] == layer), None)
    ai = own["anomaly_indices"] if own is not None else np.full(len(problems), np.nan)
    return {"variant": "all-to-one", "layer": layer, "pooled_layers": list(layers), "p_value": p_value,
            "p_value_uncalibrated": raw, "anomaly_index": float(ai[row]), "source": None,
            "target": int(problems.targets[row]), "problem": row, "anomaly_indices": ai}


def decide(det: CEPA, tests: Sequence[Mapping[str, Any]]) -> tuple[int, float, bool]:
    """CEPA's decision over its m tests (Section 3.1: the most extreme one): ``(index of the chosen test, its
    Sidak-corrected p-value 1 - (1 - p)^m, detected)``. ``inference="p-value"`` takes the smallest p-value (ties:
    the smaller uncalibrated one, then the larger anomaly index) and detects below ``significance``;
    ``inference="mad"`` takes the largest anomaly index and detects above ``anomaly_threshold``."""
    m = len(tests)
    if det.inference == "p-value":
        best = min(range(m), key=lambda i: (tests[i]["p_value"], tests[i]["p_value_uncalibrated"],
                                            -_finite(tests[i]["anomaly_index"])))
    else:
        best = max(range(m), key=lambda i: (_finite(tests[i]["anomaly_index"]), -tests[i]["p_value"]))
    p_value = sidak_correction(tests[best]["p_value"], m)
    detected = (p_value < det.significance if det.inference == "p-value"
                else tests[best]["anomaly_index"] > det.anomaly_threshold)
    return best, float(p_value), bool(detected)


def _finite(value: float) -> float:
    """NaN sorts below every number."""
    return -np.inf if np.isnan(value) else float(value)
