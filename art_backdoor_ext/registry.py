"""Built-in entries of the evaluation registry (imported lazily by :mod:`art_backdoor_ext.evaluation`).

Attacks: ``badnets``, ``blend``, ``sig``, ``warp``, ``chessboard``, ``sparse``.
Defences: ART's own ``art-ac`` and ``art-ss`` exactly as ART users call them (last layer, defaults), and this
project's layer-selectable ``ac``, ``ss`` and ``sr`` (Subspace Reconstruction); model scanners ``ad``, ``nc``,
``cepa``, ``cepa-reference`` (CEPA against clean reference models the entry trains on the defender's clean data);
sample detectors ``mbds``, ``mbds-fused`` (white-box, victim-initialised shadows), ``strip``,
``art-strip`` (ART's STRIP on a copy of the classifier), ``feature-squeezing``, ``class-residual`` (white-box
baseline); the transformer ``fine-pruning``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any
from unittest import mock

import numpy as np

from art_backdoor_ext._seeding import numpy_global_seed
from art_backdoor_ext._torch import deepcopy_classifier
from art_backdoor_ext.attacks import triggers
from art_backdoor_ext.evaluation import DefenceOutcome, EvaluationContext, register_attack, register_defence


def _patch_size(input_shape: tuple[int, ...]) -> int:
    return max(2, input_shape[-1] // 7)


@register_attack("badnets", "BadNets white square patch in the bottom-right corner (Gu et al., 2017)")
def _badnets(input_shape: tuple[int, ...], random_state: int) -> triggers.Trigger:
    size = _patch_size(input_shape)
    return triggers.patch_trigger(pattern=np.ones((size, size), dtype=np.float32), location="bottom-right")


@register_attack("blend", "Blended random-noise image, alpha 0.2 (Chen et al., 2017)")
def _blend(input_shape: tuple[int, ...], random_state: int) -> triggers.Trigger:
    return triggers.blend_trigger(alpha=0.2, random_state=random_state)


@register_attack("sig", "SIG horizontal sinusoid (Barni et al., 2019)")
def _sig(input_shape: tuple[int, ...], random_state: int) -> triggers.Trigger:
    return triggers.sig_trigger(delta=0.2, frequency=6)


@register_attack("warp", "WaNet smooth warping field (Nguyen & Tran, 2021)")
def _warp(input_shape: tuple[int, ...], random_state: int) -> triggers.Trigger:
    return triggers.warp_trigger(grid_size=4, strength=1.0, random_state=random_state)


@register_attack("chessboard", "global chessboard additive pattern, L2 norm 1 (Xiang et al., 2020)")
def _chessboard(input_shape: tuple[int, ...], random_state: int) -> triggers.Trigger:
    return triggers.chessboard_trigger(l2_norm=1.0 if input_shape[-1] <= 8 else 2.0)


@register_attack("sparse", "sparse pixels additive pattern (Xiang et al., 2020)")
def _sparse(input_shape: tuple[int, ...], random_state: int) -> triggers.Trigger:
    return triggers.sparse_pixel_trigger(n_pixels=4, l2_norm=1.0, random_state=random_state)


def _one_hot(y: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((len(y), k), dtype=np.float32)
    out[np.arange(len(y)), y] = 1.0
    return out


def _flags_from_is_clean(is_clean: list[int] | np.ndarray) -> np.ndarray:
    return np.asarray(is_clean, dtype=int) == 0


@register_defence("art-ac", "poison-filter", "ART's ActivationDefence with its defaults (last layer)")
def _art_ac(context: EvaluationContext) -> list[DefenceOutcome]:
    from art.defences.detector.poison import ActivationDefence

    clf, data = context.victim.classifier, context.victim.data
    defence = ActivationDefence(clf, data.x, _one_hot(data.y, clf.nb_classes))
    with numpy_global_seed(context.random_state):  # ART's k-means draws from NumPy's global state
        _, is_clean = defence.detect_poison(nb_clusters=2, nb_dims=10, reduce="PCA")
    return [DefenceOutcome(layer="last (ART)", is_flagged=_flags_from_is_clean(is_clean))]


@register_defence("art-ss", "poison-filter", "ART's SpectralSignatureDefense with its defaults (last layer)")
def _art_ss(context: EvaluationContext) -> list[DefenceOutcome]:
    from art.defences.detector.poison import SpectralSignatureDefense

    clf, data = context.victim.classifier, context.victim.data
    defence = SpectralSignatureDefense(clf, data.x, _one_hot(data.y, clf.nb_classes))
    _, is_clean = defence.detect_poison()
    return [DefenceOutcome(layer="last (ART)", is_flagged=_flags_from_is_clean(is_clean))]


def _multilayer(context: EvaluationContext, cls: type, **kwargs: Any) -> list[DefenceOutcome]:
    clf, data = context.victim.classifier, context.victim.data
    defence = cls(clf, data.x, data.y, layers=context.layers or None, **kwargs)
    results = defence.detect_poison_by_layer()
    return [DefenceOutcome(layer=name, is_flagged=np.asarray(r.is_poison, dtype=bool)) for name, r in results.items()]


@register_defence("ac", "poison-filter", "layer-selectable Activation Clustering (this project)")
def _ac(context: EvaluationContext) -> list[DefenceOutcome]:
    from art_backdoor_ext.defences.activation import MultiLayerActivationDefence

    return _multilayer(context, MultiLayerActivationDefence)


@register_defence("ss", "poison-filter", "layer-selectable Spectral Signatures (this project)")
def _ss(context: EvaluationContext) -> list[DefenceOutcome]:
    from art_backdoor_ext.defences.activation import MultiLayerSpectralSignature

    return _multilayer(context, MultiLayerSpectralSignature)


@register_defence("sr", "poison-filter",
                  "Subspace Reconstruction from 10 clean images per class, 90% energy (SDRM's SR, this project)")
def _sr(context: EvaluationContext) -> list[DefenceOutcome]:
    from art_backdoor_ext.defences.activation import SubspaceReconstruction

    x_ref, y_ref = _clean_set(context, per_class=10)
    return _multilayer(context, SubspaceReconstruction, x_clean=x_ref, y_clean=y_ref)


def _clean_set(context: EvaluationContext, per_class: int = 20) -> tuple[np.ndarray, np.ndarray]:
    from art_backdoor_ext.datasets import sample_per_class

    return sample_per_class(context.x_clean, context.y_clean, per_class, random_state=context.random_state)


def _ad_outcome(context: EvaluationContext, **kwargs: Any) -> list[DefenceOutcome]:
    from art_backdoor_ext.defences import OrderStatisticDetector

    report = OrderStatisticDetector(context.victim.classifier, **kwargs).scan(*_clean_set(context))
    return [
        DefenceOutcome(
            layer=str(report.settings["resolved_layer"] or "input"),
            detected=report.detected,
            found_target=report.target if report.detected else None,
            extra={"p_value": report.p_value},
        )
    ]


@register_defence("ad", "model-scanner",
                  "AD order-statistic detector, input space, source-and-distance-normalised statistic, Gamma null "
                  "on sizes, one and K - 1 values set aside (this project's default)")
def _ad(context: EvaluationContext) -> list[DefenceOutcome]:
    return _ad_outcome(context)


@register_defence("ad-paper", "model-scanner", "AD order-statistic detector as in the paper (AD-J-P, input space)")
def _ad_paper(context: EvaluationContext) -> list[DefenceOutcome]:
    return _ad_outcome(context, statistic="size", null="reciprocal", source_rule="most-extreme", exclusion="k-1")


@register_defence("ad-asymmetry", "model-scanner",
                  "AD with the asymmetry statistic and the paper's null (this project's previous default)")
def _ad_asymmetry(context: EvaluationContext) -> list[DefenceOutcome]:
    return _ad_outcome(context, statistic="asymmetry", null="reciprocal", source_rule="most-extreme",
                       exclusion="k-1")


@register_defence("nc", "model-scanner", "Neural Cleanse for PyTorch, MAD anomaly index > 2")
def _nc(context: EvaluationContext) -> list[DefenceOutcome]:
    from art_backdoor_ext.defences import PyTorchNeuralCleanse

    report = PyTorchNeuralCleanse(context.victim.classifier, random_state=context.random_state).scan(
        *_clean_set(context)
    )
    return [
        DefenceOutcome(layer="input", detected=report.detected, found_target=report.target if report.detected else None)
    ]


def defender_split(context: EvaluationContext) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the defender's half of the clean data (its reserve) and of the held-out half (evaluation)."""
    order = np.random.default_rng(context.random_state).permutation(len(context.x_clean))
    return order[: len(order) // 2], order[len(order) // 2 :]


def _sample_detector_outcome(
    context: EvaluationContext, layer: str, fit_and_detect: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> list[DefenceOutcome]:
    """Run ``fit_and_detect(reserve_indices, x_eval) -> is_backdoor`` on the held-out clean images plus triggered
    copies of their non-target ones (the positives); the truth goes into ``extra["is_backdoor_truth"]``."""
    victim = context.victim
    reserve, held_out = defender_split(context)
    x_eval, y_eval = context.x_clean[held_out], context.y_clean[held_out]
    x_triggered = victim.data.trigger(x_eval[y_eval != victim.data.target]).astype(np.float32)
    x_all = np.concatenate([x_eval, x_triggered])
    truth = np.concatenate([np.zeros(len(x_eval), bool), np.ones(len(x_triggered), bool)])
    is_backdoor = fit_and_detect(reserve, x_all)
    return [DefenceOutcome(layer=layer, is_flagged=np.asarray(is_backdoor, bool), extra={"is_backdoor_truth": truth})]


@register_defence("mbds", "sample-detector", "MBDS meta-classifier on 16 jumbo shadow models (black-box features)")
def _mbds(context: EvaluationContext) -> list[DefenceOutcome]:
    from art_backdoor_ext.defences import MBDS

    detector = MBDS(context.victim.classifier, n_shadow_models=16, random_state=context.random_state)

    def run(reserve: np.ndarray, x_all: np.ndarray) -> np.ndarray:
        detector.fit(context.x_clean[reserve], context.y_clean[reserve])
        return detector.detect(x_all)[1]

    return _sample_detector_outcome(context, detector._resolve_layer(), run)


@register_defence("mbds-fused", "sample-detector",
                  "MBDS white-box: 16 shadow models fine-tuned from the victim, meta-classifier score or class "
                  "residual (feature_source='victim+residual')")
def _mbds_fused(context: EvaluationContext) -> list[DefenceOutcome]:
    import copy

    from art_backdoor_ext.defences import MBDS

    template = copy.deepcopy(context.victim.classifier.model).cpu()
    detector = MBDS(context.victim.classifier, model_factory=lambda _i: copy.deepcopy(template), n_shadow_models=16,
                    feature_source="victim+residual", random_state=context.random_state)

    def run(reserve: np.ndarray, x_all: np.ndarray) -> np.ndarray:
        detector.fit(context.x_clean[reserve], context.y_clean[reserve])
        return detector.detect(x_all)[1]

    return _sample_detector_outcome(context, detector._resolve_layer(), run)


@register_defence("class-residual", "sample-detector",
                  "class-conditional feature residual at the penultimate layer, FRR 5% (white-box baseline)")
def _class_residual(context: EvaluationContext) -> list[DefenceOutcome]:
    from art_backdoor_ext.defences import ClassResidualDetector

    detector = ClassResidualDetector(context.victim.classifier, random_state=context.random_state)

    def run(reserve: np.ndarray, x_all: np.ndarray) -> np.ndarray:
        detector.fit(context.x_clean[reserve], context.y_clean[reserve])
        return detector.detect(x_all)[1]

    return _sample_detector_outcome(context, detector._resolve_layer(), run)


@register_defence("cepa", "model-scanner", "CEPA consensus embedded perturbation analysis (Li et al., 2024)")
def _cepa(context: EvaluationContext) -> list[DefenceOutcome]:
    from art_backdoor_ext.defences import CEPA

    report = CEPA(context.victim.classifier, random_state=context.random_state).scan(*_clean_set(context, 10))
    return [
        DefenceOutcome(
            layer=report.layer,
            detected=report.detected,
            found_target=report.target if report.detected else None,
            extra={"p_value": report.p_value, "variant": report.variant},
        )
    ]


#: Clean reference models the ``cepa-reference`` entry trains (once per run and architecture) and the CEPA settings
#: of its scans (empty: CEPA's defaults, as the ``cepa`` entry).
CEPA_REFERENCE_MODELS = 8
CEPA_REFERENCE_SETTINGS: dict[str, Any] = {}
_CEPA_REFERENCES: dict[tuple[Any, ...], Any] = {}


def _cepa_references(context: EvaluationContext, detector: Any) -> Any:
    """Clean models of the victim's architecture (fresh weights, seeds 10000 + i) trained on the defender's clean
    data with the victims' schedule and scanned with ``detector``'s settings; kept for the rest of the process, per
    architecture, clean data and settings."""
    import torch

    from art_backdoor_ext._torch import reset_parameters
    from art_backdoor_ext.defences import CEPAReference
    from art_backdoor_ext.evaluation import training_schedule
    from art_backdoor_ext.training import fit_classifier

    x, y = context.x_clean, context.y_clean
    # the architecture and the settings fix the scanned layers (layers=None picks them from the architecture)
    key = (type(context.victim.classifier.model).__name__, x.shape, float(np.sum(x)), context.dataset,
           CEPA_REFERENCE_MODELS, repr(sorted(CEPA_REFERENCE_SETTINGS.items())))
    if key not in _CEPA_REFERENCES:
        name = context.dataset or ("digits" if x.shape[-1] <= 8 else "other")
        epochs, learning_rate = training_schedule(name)
        models = []
        for i in range(CEPA_REFERENCE_MODELS):
            clf = deepcopy_classifier(context.victim.classifier)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(10_000 + i)
                reset_parameters(clf.model)
            fit_classifier(clf, x, y, nb_epochs=epochs, learning_rate=learning_rate, random_state=10_000 + i)
            models.append(clf)
        _CEPA_REFERENCES[key] = CEPAReference.scan_references(detector, models, *_clean_set(context, 10))
    return _CEPA_REFERENCES[key]


@register_defence("cepa-reference", "model-scanner",
                  "CEPA's per-class test against clean reference models trained on the defender's clean data")
def _cepa_reference(context: EvaluationContext) -> list[DefenceOutcome]:
    from art_backdoor_ext.defences import CEPA

    detector = CEPA(context.victim.classifier, random_state=context.random_state, **CEPA_REFERENCE_SETTINGS)
    references = _cepa_references(context, detector)
    result = references.test(detector.scan(*_clean_set(context, 10)))
    return [DefenceOutcome(layer=result.layer, detected=result.detected,
                           found_target=result.target if result.detected else None,
                           extra={"p_value": result.p_value, "n_references": result.n_references})]


def _calibrated_outcome(context: EvaluationContext, detector: Any) -> list[DefenceOutcome]:
    """A :class:`~art_backdoor_ext.defences.sample._calibrated.CalibratedDetector` fitted on the reserve."""

    def run(reserve: np.ndarray, x_all: np.ndarray) -> np.ndarray:
        detector.fit(context.x_clean[reserve])
        return detector.detect(x_all)[1]

    return _sample_detector_outcome(context, "output", run)


@register_defence("strip", "sample-detector", "STRIP, mean entropy of 100 superimposed copies, FRR 1% (Gao et al.)")
def _strip(context: EvaluationContext) -> list[DefenceOutcome]:
    from art_backdoor_ext.defences import STRIP

    return _calibrated_outcome(context, STRIP(context.victim.classifier, random_state=context.random_state))


def _art_strip_progress(verbose: bool) -> contextlib.AbstractContextManager[Any]:
    """ART 1.20.1's STRIP shows a tqdm bar in ``mitigate`` whatever the caller asked; quiet unless ``verbose``."""
    if verbose:
        return contextlib.nullcontext()
    from art.estimators.poison_mitigation.strip import strip as art_strip_module
    from tqdm.auto import tqdm

    return mock.patch.object(art_strip_module, "tqdm", functools.partial(tqdm, disable=True))


def art_strip_flags(classifier: Any, x_clean: np.ndarray, x: np.ndarray, *, seed: int | None,
                    softmax: bool = True, verbose: bool = False) -> np.ndarray:
    """ART's STRIP (defaults: 20 copies, ``false_acceptance_rate=0.01``) on a *copy* of ``classifier``.

    ART 1.20.1's STRIP swaps the class of the classifier it is given, so it gets a deep copy; with ``softmax`` the
    copy's model ends in a softmax (ART's entropy of logits is NaN and ``mitigate`` raises ``ValueError``). ART draws
    from NumPy's global random state: it is seeded with ``seed`` for the call and restored afterwards. An input is
    flagged when ART abstains (an all-zero prediction row). ART's progress bar shows only with ``verbose``.
    """
    from art.defences.transformer.poisoning import STRIP as ARTStrip
    from torch import nn

    from art_backdoor_ext.models import make_classifier

    clone = deepcopy_classifier(classifier)
    if softmax:
        clone = make_classifier(nn.Sequential(clone.model, nn.Softmax(dim=1)), input_shape=clone.input_shape,
                                nb_classes=clone.nb_classes, clip_values=clone.clip_values)
    with numpy_global_seed(seed), _art_strip_progress(verbose):  # ART's STRIP draws from the global state only
        defended = ARTStrip(clone)()
        defended.mitigate(x_clean)
        predictions = defended.predict(x)
    return np.asarray(~np.asarray(predictions).any(axis=1), dtype=bool)


@register_defence("art-strip", "sample-detector", "ART's STRIP (defaults) on a softmax copy of the classifier")
def _art_strip(context: EvaluationContext) -> list[DefenceOutcome]:
    def run(reserve: np.ndarray, x_all: np.ndarray) -> np.ndarray:
        return art_strip_flags(context.victim.classifier, context.x_clean[reserve], x_all, seed=context.random_state,
                               verbose=context.verbose)

    return _sample_detector_outcome(context, "output", run)


@register_defence("feature-squeezing", "sample-detector",
                  "feature-squeezing detector, 1-bit depth + 2x2 median, max L1, FRR 5% (Xu et al.)")
def _feature_squeezing(context: EvaluationContext) -> list[DefenceOutcome]:
    from art_backdoor_ext.defences import FeatureSqueezingDetector

    return _calibrated_outcome(context, FeatureSqueezingDetector(context.victim.classifier))


@register_defence("fine-pruning", "transformer",
                  "Fine-Pruning: last conv layer, 4% accuracy drop, 10 epochs Adam 1e-2 (Liu et al.); BA/ASR held out")
def _fine_pruning(context: EvaluationContext) -> list[DefenceOutcome]:
    from art_backdoor_ext.defences import FinePruning
    from art_backdoor_ext.training import evaluate_attack

    victim = context.victim
    reserve, held_out = defender_split(context)
    defence = FinePruning(victim.classifier, random_state=context.random_state)
    repaired = defence(context.x_clean[reserve], context.y_clean[reserve])
    x_eval, y_eval = context.x_clean[held_out], context.y_clean[held_out]
    stages = {}
    for stage, clf in (("before", victim.classifier), ("pruned", defence.pruned_classifier_),
                       ("fine-pruned", repaired)):
        ba, asr = evaluate_attack(clf, x_eval, y_eval, victim.data.trigger, target=victim.data.target,
                                  sources=victim.data.sources)
        stages[stage] = {"benign_accuracy": ba, "attack_success_rate": asr}
    report = defence.report_
    return [
        DefenceOutcome(
            layer=report.layer,
            extra={"repaired_benign_accuracy": stages["fine-pruned"]["benign_accuracy"],
                   "repaired_attack_success_rate": stages["fine-pruned"]["attack_success_rate"],
                   "stages": stages, "n_pruned": report.n_pruned, "n_channels": report.n_channels},
        )
    ]
