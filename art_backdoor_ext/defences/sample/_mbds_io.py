"""Persistence of :class:`~art_backdoor_ext.defences.sample.mbds.MBDS`: tensors and one JSON string, no pickle."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from art.estimators.classification import PyTorchClassifier
from torch import nn

from art_backdoor_ext._torch import classifier_device
from art_backdoor_ext._validation import check_pytorch_classifier
from art_backdoor_ext.defences.base import to_builtin
from art_backdoor_ext.defences.sample._mbds_fusion import ResidualFusion
from art_backdoor_ext.defences.sample._meta import MetaClassifier, state_to_cpu, to_plain
from art_backdoor_ext.defences.sample.class_residual import ClassResidualDetector
from art_backdoor_ext.exceptions import DataError

if TYPE_CHECKING:
    from art_backdoor_ext.defences.sample.mbds import MBDS

_FORMAT = "art_backdoor_ext.mbds/1"


def save_mbds(detector: MBDS, path: str | os.PathLike) -> None:
    """Write a fitted MBDS (see :meth:`MBDS.save`)."""
    detector._require_fitted()
    params = {k: v for k, v in detector.get_params().items() if k not in ("model_factory", "distribution")}
    params["checkpoint_dir"] = None if detector.checkpoint_dir is None else os.fspath(detector.checkpoint_dir)
    params["random_state"] = detector.random_state if isinstance(detector.random_state, int) else None
    config = {"format": _FORMAT, "params": to_plain(params), "feature_layer": detector._layer,
              "feature_shape": list(detector._shape), "meta": detector._meta.config, "thresholds": detector._thresholds,
              "input_shape": list(detector._input_shape), "nb_classes": int(detector.classifier.nb_classes),
              "has_model_factory": detector.model_factory is not None, "split_seed": detector._split_seed,
              "reserve_digest": detector._reserve_digest}
    blob = {"config": json.dumps(to_builtin(config)), "meta_state": state_to_cpu(detector._meta),
            "shadow_states": [state_to_cpu(m) for m in detector._shadow],
            "shadow_mean": detector._shadow_mean.cpu(), "shadow_std": detector._shadow_std.cpu(),
            "victim_mean": detector._victim_mean.cpu(), "victim_std": detector._victim_std.cpu()}
    fusion = detector._fusion  # the fused mode: class statistics and the two thresholds with their units, if any
    if isinstance(fusion, ResidualFusion):
        layer, means, scale = fusion.residual.statistics
        blob["residual_layer"] = json.dumps(layer)
        blob["residual_means"], blob["residual_scale"] = torch.from_numpy(means), torch.from_numpy(scale)
        blob["fusion_thresholds"] = torch.from_numpy(np.asarray(fusion.thresholds, dtype=np.float64))
        blob["fusion_scales"] = torch.from_numpy(np.asarray(fusion.scales, dtype=np.float64))
    else:
        blob["fusion_unavailable"] = json.dumps(fusion)
    torch.save(blob, os.fspath(path))


def load_mbds(cls: type[MBDS], path: str | os.PathLike, classifier: PyTorchClassifier, *,
          model_factory: Callable[[int], nn.Module] | None = None) -> MBDS:
    """Read a file written by :func:`save_mbds` (see :meth:`MBDS.load`)."""
    try:
        blob = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # torch raises UnpicklingError / RuntimeError for disallowed globals
        raise DataError(f"refused to load {os.fspath(path)!r}: MBDS files hold only tensors and a JSON config, "
                        f"but this one needs pickled Python objects or is corrupt ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''})") from None
    keys = {"config", "meta_state", "shadow_states", "shadow_mean", "shadow_std", "victim_mean", "victim_std"}
    if not isinstance(blob, dict) or not keys <= set(blob) or not isinstance(blob["config"], str):
        raise DataError(f"{os.fspath(path)!r} is not an MBDS file (expected the keys {sorted(keys)})")
    config = json.loads(blob["config"])
    if config.get("format") != _FORMAT:
        raise DataError(f"{os.fspath(path)!r} has format {config.get('format')!r}, expected {_FORMAT!r}")
    check_pytorch_classifier(classifier, cls)
    if tuple(config["input_shape"]) != tuple(classifier.input_shape) or \
            config["nb_classes"] != int(classifier.nb_classes):
        raise DataError(f"the file was fitted for input shape {tuple(config['input_shape'])} and "
                        f"{config['nb_classes']} classes, the classifier has {tuple(classifier.input_shape)} "
                        f"and {classifier.nb_classes}")
    params = dict(config["params"])
    det = cls(classifier, model_factory=model_factory, **params)
    device = classifier_device(classifier)
    factory = det._factory()
    shadow = []
    for i, state in enumerate(blob["shadow_states"]):
        with torch.random.fork_rng(devices=[]):
            model = factory(i)
        model.load_state_dict(state)
        shadow.append(model.to(device).eval())
    meta_cfg = config["meta"]
    meta = MetaClassifier(meta_cfg["in_channels"], meta_cfg["height"], meta_cfg["width"],
                          tuple(meta_cfg["conv_channels"]), tuple(meta_cfg["hidden"]))
    meta.load_state_dict(blob["meta_state"])
    det._layer, det._shape = config["feature_layer"], tuple(config["feature_shape"])
    det._shadow, det._meta = shadow, meta.to(device).eval()
    det._shadow_mean, det._shadow_std = blob["shadow_mean"], blob["shadow_std"]
    det._victim_mean, det._victim_std = blob["victim_mean"], blob["victim_std"]
    det._thresholds = {k: float(v) for k, v in config["thresholds"].items()}
    det._split_seed, det._reserve_digest = config.get("split_seed"), config.get("reserve_digest")
    if "residual_means" in blob:  # files written before the fused mode have no residual (that mode then refuses)
        residual = ClassResidualDetector.from_statistics(
            classifier, json.loads(blob["residual_layer"]), blob["residual_means"].numpy(),
            blob["residual_scale"].numpy(), batch_size=det.batch_size)
        det._fusion = ResidualFusion(residual, blob["fusion_thresholds"].numpy(), blob["fusion_scales"].numpy())
    else:
        det._fusion = json.loads(blob["fusion_unavailable"]) if "fusion_unavailable" in blob else \
            "the file was saved before this mode existed: fit the detector again"
    det._fitted = True
    return det
