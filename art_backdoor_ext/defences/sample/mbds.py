"""
MBDS: a sample-level backdoor detector trained on shadow models (Wu et al., Meta Backdoor Defense System).

:class:`MBDS` (an ART ``EvasionDetector``) learns, from a small clean reserve only, to tell backdoored inputs
from clean ones: it draws ``n_shadow_models`` backdoor settings from the jumbo distribution, trains one shadow
model of the victim's architecture on each shadow dataset (:func:`~art_backdoor_ext.ensemble.train_ensemble`,
vectorised), reads the shadow models' feature maps before the first fully connected layer, keeps the samples
that pass the paper's two filters, and trains a meta-classifier (two 1x1 convolutions, three fully connected
layers, BCE-with-logits) on ``feature map -> is_poison``. :class:`MBDSPoisonFilter` exposes a fitted detector
as an ART ``PoisonFilteringDefence`` over a training set.

Choices this implementation makes where the paper is silent (each documented in docs/mbds.md):

- The reserve is split (stratified) into three disjoint parts: shadow training (jumbo datasets are built from
  it), meta training (its clean samples and their triggered copies are passed through each trained shadow model,
  so meta features come from inputs the shadow model has not been trained on, like test-time inputs) and
  calibration (clean samples only; the threshold is their ``k``-th highest score, ``k = floor((n + 1)
  target_frr)``, so that the expected FRR on new clean inputs is at most ``target_frr`` (split-conformal rank),
  computed separately for each feature source; ``fit_report_["calibration_frr"]`` gives the spread of the FRR one
  fit realises).
- Feature maps are standardised per channel with the clean meta-training statistics of their extractor (each
  shadow model, or the victim), so that the meta-classifier sees comparable scales from every extractor.
- ``feature_source="shadow"`` (black-box, the paper's setting) scores an input by the mean meta-classifier
  probability over every shadow extractor; ``"victim"`` (white-box) uses the classifier's own feature map.
  ``"victim+residual"`` (white-box, not in the paper) flags an input when either the ``"victim"`` score or the
  class residual of the victim's penultimate features (:class:`~art_backdoor_ext.defences.sample.
  ClassResidualDetector`, class statistics from the reserve outside the calibration part) is above its own
  split-conformal threshold at half the target FRR on the calibration part (a Bonferroni union,
  :mod:`~art_backdoor_ext.functional.score_fusion`). The meta-classifier finds global blended triggers the
  residual misses; the residual finds local patches the meta-classifier misses (docs/mbds.md).
- Files written by :meth:`MBDS.save` hold only tensors, lists and one JSON string; :meth:`MBDS.load` reads them
  with ``torch.load(weights_only=True)`` and refuses any file that holds pickled objects.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from art.defences.detector.evasion.evasion_detector import EvasionDetector
from art.estimators.classification import PyTorchClassifier
from torch import nn

from art_backdoor_ext._progress import progress
from art_backdoor_ext._torch import classifier_device, layer_names, preprocess, reset_parameters, resolve_layers
from art_backdoor_ext._validation import (
    Instance,
    Interval,
    Options,
    ParamsMixin,
    check_class_counts,
    check_images,
    check_labels,
    check_pytorch_classifier,
)
from art_backdoor_ext.attacks.jumbo import JumboContamination, JumboDistribution
from art_backdoor_ext.defences.base import to_builtin
from art_backdoor_ext.defences.sample._mbds_fusion import ResidualFusion, fit_residual_fusion, fusion_report
from art_backdoor_ext.defences.sample._mbds_io import load_mbds, save_mbds
from art_backdoor_ext.defences.sample._meta import (
    MetaClassifier,
    feature_shape,
    find_feature_layer,
    meta_probabilities,
    module_features,
    probe_model,
    train_meta_classifier,
)
from art_backdoor_ext.ensemble import train_ensemble, train_sequential
from art_backdoor_ext.exceptions import DataError, InvalidParameterError, NotFittedError
from art_backdoor_ext.functional.detection import calibration_frr_summary, threshold_at_frr

logger = logging.getLogger(__name__)

__all__ = ["MBDS", "MetaClassifier"]

_EPS = 1e-6
_MIN_META, _MIN_CAL = 10, 10
SOURCES = ("shadow", "victim", "victim+residual")


class MBDS(ParamsMixin, EvasionDetector):
    """
    Implementation of the Meta Backdoor Defense System (Wu, Hu, Ji, Zhou and Jiang, 2024): a meta-classifier over
    shadow models' feature maps detects backdoored inputs, trained without knowing the attack.

    | Paper: "Defending Against Backdoor Attacks on Deep Neural Networks by Meta Backdoor Analysis" (MBDS)

    :param classifier: The (possibly backdoored) ART ``PyTorchClassifier``; inputs NCHW in its ``clip_values``.
    :param model_factory: ``i -> nn.Module``, a fresh shadow model of the victim's architecture; ``None``: a
        deep copy of ``classifier.model`` with every ``reset_parameters()`` called (seeded per model).
    :param n_shadow_models: Number of shadow models (paper: many; >= 1).
    :param feature_layer: Layer whose output is the feature map; ``None``: the last module with a 4-D output
        before the first ``nn.Linear`` (``"pool"`` for ``DigitsCNN``). A 2-D output ``(N, D)`` is used as
        ``(D, 1, 1)``.
    :param feature_source: ``"shadow"`` (black-box: mean score over the shadow extractors), ``"victim"``
        (white-box: the classifier's own feature map at ``feature_layer``) or ``"victim+residual"`` (white-box:
        ``"victim"`` or the class residual of the penultimate features, each at half the target FRR; see the
        module doc).
    :param target_frr: Bound on the expected false rejection rate on new clean inputs: the threshold is the
        ``floor((n + 1) target_frr)``-th highest score of the ``n`` held-out clean calibration samples.
    :param distribution: The :class:`JumboDistribution` of backdoor settings (``None``: MNTD's defaults).
    :param shadow_epochs: Training epochs of each shadow model.
    :param shadow_batch_size: Mini-batch size of shadow training.
    :param shadow_learning_rate: Adam learning rate of shadow training.
    :param meta_epochs: Training epochs of the meta-classifier.
    :param meta_batch_size: Mini-batch size of the meta-classifier.
    :param meta_learning_rate: Adam learning rate of the meta-classifier.
    :param meta_fraction: Share of the reserve used to build meta-training samples.
    :param calibration_fraction: Share of the reserve used to calibrate the threshold.
    :param models_per_chunk: Shadow models trained together (memory bound).
    :param shadow_trainer: ``"batched"`` (:func:`~art_backdoor_ext.ensemble.train_ensemble`, vectorised) or
        ``"sequential"`` (:func:`~art_backdoor_ext.ensemble.train_sequential`: the same models up to float rounding,
        one at a time; faster on a CPU for 28x28 CNNs, see docs/ensemble.md).
    :param checkpoint_dir: Folder for shadow-model checkpoints (a rerun resumes); ``None``: none.
    :param batch_size: Inference batch size.
    :param random_state: Seed or generator; drives the reserve split, jumbo settings, shadow and meta training.
    :param verbose: Progress bars.

    Example::

        mbds = MBDS(classifier, n_shadow_models=64, random_state=0)
        mbds.fit(x_reserved, y_reserved)          # small clean reserve, NCHW float32 in [0, 1]
        report, is_backdoor = mbds.detect(x)      # is_backdoor[i] True: x[i] judged backdoored
        scores = mbds.score(x)                    # in [0, 1], higher = more likely backdoored
    """

    _estimator_requirements = (PyTorchClassifier,)
    _parameter_constraints: dict[str, list[Any]] = {
        "model_factory": [Instance(callable), None],
        "n_shadow_models": [Interval(int, 1, None)],
        "feature_layer": [Instance(str), None],
        "feature_source": [Options(SOURCES)],
        "target_frr": [Interval(float, 0, 1, closed="neither")],
        "distribution": [Instance(JumboDistribution), None],
        "shadow_epochs": [Interval(int, 1, None)],
        "shadow_batch_size": [Interval(int, 1, None)],
        "shadow_learning_rate": [Interval(float, 0, None, closed="neither")],
        "meta_epochs": [Interval(int, 1, None)],
        "meta_batch_size": [Interval(int, 1, None)],
        "meta_learning_rate": [Interval(float, 0, None, closed="neither")],
        "cross_settings": [Interval(int, 0, None)],
        "meta_fraction": [Interval(float, 0, 1, closed="neither")],
        "calibration_fraction": [Interval(float, 0, 1, closed="neither")],
        "models_per_chunk": [Interval(int, 1, None)],
        "shadow_trainer": [Options(("batched", "sequential"))],
        "checkpoint_dir": [Instance((str, os.PathLike)), None],
        "batch_size": [Interval(int, 1, None)],
        "random_state": [Interval(int, 0, None), Instance(np.random.Generator), None],
        "verbose": [Instance(bool)],
    }
    defence_params = list(_parameter_constraints)

    def __init__(
        self,
        classifier: PyTorchClassifier,
        model_factory: Callable[[int], nn.Module] | None = None,
        n_shadow_models: int = 64,
        feature_layer: str | None = None,
        feature_source: str = "shadow",
        target_frr: float = 0.05,
        random_state: int | np.random.Generator | None = None,
        verbose: bool = False,
        *,
        distribution: JumboDistribution | None = None,
        shadow_epochs: int = 20,
        shadow_batch_size: int = 32,
        shadow_learning_rate: float = 1e-3,
        meta_epochs: int = 30,
        meta_batch_size: int = 128,
        meta_learning_rate: float = 1e-3,
        cross_settings: int = 0,
        meta_fraction: float = 0.3,
        calibration_fraction: float = 0.2,
        models_per_chunk: int = 16,
        checkpoint_dir: str | os.PathLike | None = None,
        batch_size: int = 256,
        shadow_trainer: str = "batched",
    ) -> None:
        EvasionDetector.__init__(self)
        check_pytorch_classifier(classifier, type(self))
        self.classifier = classifier
        self.model_factory = model_factory
        self.n_shadow_models = n_shadow_models
        self.feature_layer = feature_layer
        self.feature_source = feature_source
        self.target_frr = target_frr
        self.distribution = distribution
        self.shadow_epochs = shadow_epochs
        self.shadow_batch_size = shadow_batch_size
        self.shadow_learning_rate = shadow_learning_rate
        self.meta_epochs = meta_epochs
        self.meta_batch_size = meta_batch_size
        self.meta_learning_rate = meta_learning_rate
        self.cross_settings = cross_settings
        self.meta_fraction = meta_fraction
        self.calibration_fraction = calibration_fraction
        self.models_per_chunk = models_per_chunk
        self.shadow_trainer = shadow_trainer
        self.checkpoint_dir = checkpoint_dir
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose
        self._fitted = False
        self._split_seed: int | None = None
        self._fusion: ResidualFusion | str = "not fitted"
        self._reserve_digest: str | None = None
        self._check_params()

    def _check_params(self) -> None:
        super()._check_params()
        if self.meta_fraction + self.calibration_fraction >= 1:
            raise InvalidParameterError(
                f"MBDS: meta_fraction + calibration_fraction must be < 1 (the rest trains the shadow models), got "
                f"{self.meta_fraction} + {self.calibration_fraction}")

    # ------------------------------------------------------------------ public API
    def fit(self, x: np.ndarray, y: np.ndarray, batch_size: int | None = None, nb_epochs: int | None = None,
            **kwargs: Any) -> None:
        """
        Train the shadow models and the meta-classifier on the defender's clean reserve, then calibrate.

        :param x: Clean reserve, NCHW float32 in the classifier's ``clip_values``.
        :param y: Integer labels ``(N,)`` (or one-hot).
        :param batch_size: Meta-classifier batch size (``None``: ``meta_batch_size``).
        :param nb_epochs: Meta-classifier epochs (``None``: ``meta_epochs``).
        :param kwargs: Hyper-parameters to set first (validated).
        :raises DataError: a reserve too small for the split, NHWC or out-of-range data, bad labels.
        :raises InvalidParameterError: an unknown layer, a factory whose models do not fit the classifier.
        """
        if kwargs:
            self.set_params(**kwargs)
        start = time.perf_counter()
        k = int(self.classifier.nb_classes)
        x = self._check_x(x, "x")
        y = check_labels(y, n_samples=len(x), nb_classes=k, name="y", allow_one_hot=True)
        seeds = self._seeds()
        layer = self._resolve_layer()
        shape = feature_shape(self.classifier.model, self._input_shape, layer)
        factory = self._factory()
        self._check_factory(factory, layer, shape)
        idx_shadow, idx_meta, idx_cal = self._split(y, seeds[0])
        device = classifier_device(self.classifier)

        jumbo = JumboContamination(distribution=self.distribution, nb_classes=k, channels_first=True,
                                   clip_values=self._clip, random_state=seeds[1])
        datasets = list(jumbo.generate_shadow_datasets(x[idx_shadow], y[idx_shadow], self.n_shadow_models))
        trainer = train_ensemble if self.shadow_trainer == "batched" else train_sequential
        shadow = trainer(factory, datasets, nb_epochs=self.shadow_epochs, batch_size=self.shadow_batch_size,
                         learning_rate=self.shadow_learning_rate, device=device,
                         models_per_chunk=self.models_per_chunk, checkpoint_dir=self.checkpoint_dir,
                         random_state=seeds[2], verbose=self.verbose)
        shadow = [m.to(device).eval() for m in shadow]

        xm, ym = x[idx_meta], y[idx_meta]
        feats, labels, means, stds = [], [], [], []
        counts = {"clean": 0, "clean_kept": 0, "poison": 0, "poison_target_label_dropped": 0, "poison_kept": 0}
        shadow_acc, shadow_asr = [], []
        pairs = enumerate(zip(shadow, datasets))
        for index, (model, data) in progress(pairs, verbose=self.verbose, desc="MBDS features", total=len(shadow)):
            target = int(data.setting.target)
            f_clean, p_clean = module_features(model, xm, layer, batch_size=self.batch_size, device=device)
            mean, std = _channel_stats(f_clean)
            sources = ym != target  # filter 2: a poisoned copy of a target-class sample is not a backdoor sample
            x_poison = data.setting.apply(xm[sources], channels_first=True)
            f_poison, p_poison = module_features(model, x_poison, layer, batch_size=self.batch_size, device=device)
            keep_clean = p_clean == ym  # filter 1: the shadow model must classify clean samples correctly ...
            keep_poison = p_poison == target  # ... and send poisoned ones to the target
            shadow_acc.append(float(keep_clean.mean()))
            shadow_asr.append(float(keep_poison.mean()) if len(keep_poison) else 0.0)
            counts["clean"] += len(ym)
            counts["clean_kept"] += int(keep_clean.sum())
            counts["poison"] += len(ym)
            counts["poison_target_label_dropped"] += int((~sources).sum())
            counts["poison_kept"] += int(keep_poison.sum())
            means.append(mean)
            stds.append(std)
            feats += [_normalise(f_clean[torch.as_tensor(keep_clean)], mean, std),
                      _normalise(f_poison[torch.as_tensor(keep_poison)], mean, std)]
            labels += [np.zeros(int(keep_clean.sum())), np.ones(int(keep_poison.sum()))]
            for j in range(1, min(self.cross_settings, len(datasets) - 1) + 1):
                other = datasets[(index + j) % len(datasets)].setting  # a trigger this model has not learnt
                f_other, _ = module_features(model, other.apply(xm[ym != other.target], channels_first=True), layer,
                                             batch_size=self.batch_size, device=device)
                feats.append(_normalise(f_other, mean, std))
                labels.append(np.ones(len(f_other)))
        features, is_poison = torch.cat(feats), np.concatenate(labels)
        balanced = _balance(is_poison, np.random.default_rng(seeds[3]))
        if len(balanced) == 0:
            raise DataError(
                f"no poisoned shadow sample survived the filters ({counts['poison_kept']} poisoned, "
                f"{counts['clean_kept']} clean kept): the shadow models did not learn their backdoors; raise "
                "shadow_epochs, the reserve size or n_shadow_models")
        meta = train_meta_classifier(
            features[torch.as_tensor(balanced)], is_poison[balanced], shape=shape,
            nb_epochs=self.meta_epochs if nb_epochs is None else int(nb_epochs),
            batch_size=self.meta_batch_size if batch_size is None else int(batch_size),
            learning_rate=self.meta_learning_rate, seed=seeds[4], device=device)

        self._layer, self._shape, self._shadow, self._meta = layer, shape, shadow, meta.to(device)
        self._shadow_mean, self._shadow_std = torch.stack(means), torch.stack(stds)
        self._split_seed, self._reserve_digest = seeds[0], _digest(x)
        self._fitted = True
        self._thresholds = {"shadow": _threshold(self._score(x[idx_cal], "shadow"), self.target_frr)}
        self._calibrate_victim(x, y, idx_meta, idx_cal)
        counts["meta_training_samples"] = int(len(balanced))
        self.fit_report_ = to_builtin({
            "feature_layer": layer, "feature_shape": list(shape), "n_shadow_models": len(shadow),
            "reserve_split": {"shadow": len(idx_shadow), "meta": len(idx_meta), "calibration": len(idx_cal)},
            "filters": counts, "shadow_clean_accuracy_mean": float(np.mean(shadow_acc)),
            "shadow_attack_success_mean": float(np.mean(shadow_asr)), "thresholds": dict(self._thresholds),
            "calibration_frr": calibration_frr_summary(len(idx_cal), self.target_frr),
            "victim+residual": fusion_report(self._fusion), "seconds": time.perf_counter() - start})
        logger.info("MBDS fitted: %s", self.fit_report_)

    def score(self, x: np.ndarray, *, feature_source: str | None = None) -> np.ndarray:
        """
        Backdoor score of each input, higher = more likely backdoored: a probability in ``[0, 1]``, or for
        ``"victim+residual"`` the margin above the nearer of the two scores' thresholds, in units of each score's
        clean spread (positive = flagged; :func:`~art_backdoor_ext.functional.score_fusion.union_margin`).

        :param x: Inputs NCHW float32 in the classifier's ``clip_values``.
        :param feature_source: Override ``self.feature_source`` (one of ``"shadow"``, ``"victim"``,
            ``"victim+residual"``).
        :return: float64 ``(N,)``.
        :raises NotFittedError: before :meth:`fit` / :meth:`load`.
        """
        self._require_fitted()
        source = self._source(feature_source)
        return self._score(self._check_x(x, "x"), source)

    def detect(self, x: np.ndarray, batch_size: int = 128, **kwargs: Any) -> tuple[dict[str, Any], np.ndarray]:
        """
        Flag backdoored inputs (ART's ``EvasionDetector`` contract).

        :param x: Inputs NCHW float32 in the classifier's ``clip_values``.
        :param batch_size: Unused (``self.batch_size`` is the inference batch size); kept for ART's signature.
        :param kwargs: ``feature_source`` to override the detector's.
        :return: ``(report, is_backdoor)``: a JSON-serialisable dict and a boolean ``(N,)`` array, True for inputs
            judged backdoored.
        """
        unknown = set(kwargs) - {"feature_source"}
        if unknown:
            raise InvalidParameterError(f"MBDS.detect got unknown argument(s) {sorted(unknown)}; "
                                        "only feature_source is accepted")
        source = self._source(kwargs.get("feature_source"))
        scores = self.score(x, feature_source=source)
        threshold = self._thresholds[source]
        is_backdoor = np.asarray(scores > threshold, dtype=bool)
        report = to_builtin({
            "defence": "MBDS", "feature_source": source, "feature_layer": self._layer, "threshold": threshold,
            "target_frr": self.target_frr, "n_samples": len(scores), "n_flagged": int(is_backdoor.sum()),
            "scores": scores})
        return report, is_backdoor

    def for_classifier(self, classifier: PyTorchClassifier, x: np.ndarray, y: np.ndarray) -> MBDS:
        """
        This fitted detector for another classifier of the same architecture, without retraining anything.

        The shadow models, the meta-classifier and the shadow-mode threshold do not depend on the victim (the
        paper's black-box setting), so one fit serves every model a defender screens. Only the victim-mode
        feature statistics and threshold are recomputed, on the same meta/calibration parts of the reserve.

        :param classifier: ART ``PyTorchClassifier`` with the same input shape, class count and feature layer.
        :param x: The clean reserve given to :meth:`fit` (the split is redrawn from the same seed).
        :param y: Its labels.
        :return: A new detector sharing the shadow models and meta-classifier (``self`` is unchanged).
        :raises DataError: a classifier of another input shape, class count or feature shape; a reserve other
            than the fitted one; a detector loaded from a file written before the split seed was stored.
        """
        self._require_fitted()
        check_pytorch_classifier(classifier, type(self))
        if tuple(classifier.input_shape) != self._input_shape or classifier.nb_classes != self.classifier.nb_classes:
            raise DataError(f"the detector was fitted for input shape {self._input_shape} and "
                            f"{self.classifier.nb_classes} classes, the classifier has "
                            f"{tuple(classifier.input_shape)} and {classifier.nb_classes}")
        resolve_layers(classifier.model, [self._layer])
        shape = feature_shape(classifier.model, self._input_shape, self._layer)
        if tuple(shape) != tuple(self._shape):
            raise DataError(f"layer {self._layer!r} of the classifier outputs {shape}, the detector was fitted on "
                            f"{tuple(self._shape)}: use a classifier of the same architecture")
        split_seed = self._split_seed
        if split_seed is None:
            raise DataError("this detector does not know its reserve split (a file written by an older version); "
                            "fit it again")
        other = copy.copy(self)
        other.classifier = classifier
        other._thresholds = dict(self._thresholds)
        x = other._check_x(x, "x")
        y = check_labels(y, n_samples=len(x), nb_classes=int(classifier.nb_classes), name="y", allow_one_hot=True)
        if self._reserve_digest is not None and _digest(x) != self._reserve_digest:
            raise DataError("x is not the reserve this detector was fitted on; for_classifier needs the same "
                            "reserve to rebuild the meta/calibration split")
        _, idx_meta, idx_cal = other._split(y, split_seed)
        other._calibrate_victim(x, y, idx_meta, idx_cal)
        return other

    @property
    def thresholds(self) -> dict[str, float]:
        """Calibrated thresholds per feature source."""
        self._require_fitted()
        return dict(self._thresholds)

    @property
    def shadow_models(self) -> list[nn.Module]:
        """The trained shadow models (feature extractors)."""
        self._require_fitted()
        return list(self._shadow)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """
        Write the fitted detector to ``path``: ``torch.save`` of tensors, lists of tensors and a JSON config
        string only (no pickled Python objects). ``model_factory`` and ``distribution`` are not stored.
        """
        save_mbds(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, classifier: PyTorchClassifier, *,
             model_factory: Callable[[int], nn.Module] | None = None) -> MBDS:
        """
        Read a detector written by :meth:`save`, for ``classifier``.

        :param model_factory: Builds the shadow architecture (``None``: a copy of ``classifier.model``).
        :raises DataError: a file holding pickled objects (refused, nothing is executed), a wrong format, or a
            classifier whose input shape / class count differ from the saved ones.
        """
        return load_mbds(cls, path, classifier, model_factory=model_factory)

    # ------------------------------------------------------------------ steps
    @property
    def _input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.classifier.input_shape)

    @property
    def _clip(self) -> tuple[float, float]:
        clip = self.classifier.clip_values
        return (0.0, 1.0) if clip is None else (float(clip[0]), float(clip[1]))

    def _require_fitted(self) -> None:
        if not self._fitted:
            raise NotFittedError("MBDS is not fitted: call fit(x_reserved, y_reserved) or MBDS.load(path, classifier)")

    def _source(self, source: str | None) -> str:
        source = self.feature_source if source is None else source
        if source not in SOURCES:
            raise InvalidParameterError(f"feature_source must be one of {', '.join(map(repr, SOURCES))}, got "
                                        f"{source!r}")
        if self._fitted and source not in self._thresholds:
            raise DataError(f"this detector has no {source!r} mode ({self._fusion})")
        return source

    def _check_x(self, x: Any, name: str) -> np.ndarray:
        return check_images(x, name=name, input_shape=self._input_shape, clip_values=self.classifier.clip_values)

    def _seeds(self) -> list[int]:
        rs = self.random_state
        base = int(rs.integers(2**63)) if isinstance(rs, np.random.Generator) else rs
        return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(base).spawn(5)]

    def _resolve_layer(self) -> str:
        model = self.classifier.model
        if self.feature_layer is None:
            return find_feature_layer(model, self._input_shape)
        resolve_layers(model, [self.feature_layer])
        return self.feature_layer

    def _factory(self) -> Callable[[int], nn.Module]:
        if self.model_factory is not None:
            return self.model_factory
        template = copy.deepcopy(self.classifier.model).cpu()
        return lambda _i: reset_parameters(copy.deepcopy(template))

    def _check_factory(self, factory: Callable[[int], nn.Module], layer: str, shape: tuple[int, int, int]) -> None:
        with torch.random.fork_rng(devices=[]):
            model = factory(0)
        if not isinstance(model, nn.Module):
            raise InvalidParameterError(f"model_factory(0) must return an nn.Module, got {type(model).__name__}")
        names = layer_names(model)
        if layer not in names:
            raise InvalidParameterError(f"the shadow models from model_factory have no layer {layer!r} (the feature "
                                        f"layer of the classifier); their layers are: {', '.join(names)}")
        k = int(self.classifier.nb_classes)
        try:
            shapes, out = probe_model(model, self._input_shape, [layer])
        except Exception as err:
            raise InvalidParameterError(f"model_factory's model does not accept the classifier's input shape "
                                        f"{self._input_shape}: {type(err).__name__}: {err}") from err
        if out != (1, k):
            raise InvalidParameterError(f"model_factory's model outputs shape {out[1:]} per input but the classifier "
                                        f"has {k} classes; shadow models must share the victim's architecture")
        got = shapes.get(layer)
        got_chw = (got[1], got[2], got[3]) if got is not None and len(got) == 4 else \
            (int(np.prod(got[1:])), 1, 1) if got is not None else None
        if got_chw != shape:
            raise InvalidParameterError(f"layer {layer!r} of the shadow models outputs {got_chw} but the classifier's "
                                        f"outputs {shape}; shadow models must share the victim's architecture")

    def _split(self, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        parts: list[list[np.ndarray]] = [[], [], []]
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            n_cal = int(round(self.calibration_fraction * len(idx)))
            n_meta = int(round(self.meta_fraction * len(idx)))
            parts[2].append(idx[:n_cal])
            parts[1].append(idx[n_cal:n_cal + n_meta])
            parts[0].append(idx[n_cal + n_meta:])
        shadow, meta, cal = (np.sort(np.concatenate(p)).astype(np.int64) for p in parts)
        k = int(self.classifier.nb_classes)
        if len(shadow) < 2 * k or len(meta) < _MIN_META or len(cal) < _MIN_CAL:
            raise DataError(
                f"the reserve of {len(y)} samples is too small for the requested split: MBDS splits it into shadow "
                f"training ({len(shadow)}, needs >= {2 * k}), meta training ({len(meta)}, needs >= {_MIN_META}) and "
                f"calibration ({len(cal)}, needs >= {_MIN_CAL}) with meta_fraction={self.meta_fraction} and "
                f"calibration_fraction={self.calibration_fraction}; give a larger reserve")
        # a class absent from the reserve is absent from every shadow model and from the calibration
        check_class_counts(y, nb_classes=k, min_per_class=1, name="y (the reserve)")
        return shadow, meta, cal

    def _calibrate_victim(self, x: np.ndarray, y: np.ndarray, idx_meta: np.ndarray, idx_cal: np.ndarray) -> None:
        """Victim-mode standardisation (clean meta-training statistics) and threshold (calibration part); the
        class-residual statistics (the reserve outside the calibration part) and the fused mode's threshold."""
        f_victim, _ = self._victim_features(x[idx_meta])
        self._victim_mean, self._victim_std = _channel_stats(f_victim)
        victim_cal = self._score(x[idx_cal], "victim")
        self._thresholds["victim"] = _threshold(victim_cal, self.target_frr)
        self._fusion = fit_residual_fusion(self.classifier, x, y, idx_cal, victim_cal, self.target_frr,
                                           self.batch_size)
        self._thresholds.pop("victim+residual", None)
        if isinstance(self._fusion, ResidualFusion):
            self._thresholds["victim+residual"] = self._fusion.threshold

    def _victim_features(self, x: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        classifier = self.classifier
        return module_features(classifier.model, x, self._layer, batch_size=self.batch_size,
                               device=classifier_device(classifier),
                               forward=lambda m, t: m(preprocess(classifier, t)))

    def _score(self, x: np.ndarray, source: str) -> np.ndarray:
        device = classifier_device(self.classifier)
        if source == "victim+residual" and isinstance(self._fusion, ResidualFusion):
            return self._fusion.score(self._score(x, "victim"), x)
        if source == "victim":
            feats, _ = self._victim_features(x)
            return meta_probabilities(self._meta, _normalise(feats, self._victim_mean, self._victim_std),
                                      batch_size=self.batch_size)
        total = np.zeros(len(x))
        for i, model in enumerate(self._shadow):
            feats, _ = module_features(model, x, self._layer, batch_size=self.batch_size, device=device)
            total += meta_probabilities(self._meta, _normalise(feats, self._shadow_mean[i], self._shadow_std[i]),
                                        batch_size=self.batch_size)
        return total / len(self._shadow)


def _digest(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x, dtype=np.float32).tobytes()).hexdigest()[:32]


def _channel_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = features.transpose(0, 1).reshape(features.shape[1], -1).double()
    return flat.mean(1).float(), flat.std(1, unbiased=False).float()


def _normalise(features: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (features - mean[None, :, None, None]) / (std[None, :, None, None] + _EPS)


def _balance(is_poison: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of an equal number of clean and poisoned samples (the larger class subsampled)."""
    clean, poison = np.flatnonzero(is_poison == 0), np.flatnonzero(is_poison == 1)
    n = min(len(clean), len(poison))
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate([rng.choice(clean, n, replace=False), rng.choice(poison, n, replace=False)]))


def _threshold(clean_scores: np.ndarray, target_frr: float) -> float:
    """The calibration score whose rank bounds the expected FRR on new clean inputs by ``target_frr``."""
    return threshold_at_frr(clean_scores, target_frr, method="conformal")
