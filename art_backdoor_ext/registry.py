"""Built-in entries of the evaluation registry (imported lazily by :mod:`art_backdoor_ext.evaluation`).

Attacks: ``badnets``, ``blend``, ``sig``, ``warp``, ``chessboard``, ``sparse``.
Defences: ART's own ``art-ac`` and ``art-ss`` exactly as ART users call them (last layer, defaults), and this
project's layer-selectable ``ac`` and ``ss``.
"""

from __future__ import annotations

import numpy as np

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
    _, is_clean = defence.detect_poison(nb_clusters=2, nb_dims=10, reduce="PCA")
    return [DefenceOutcome(layer="last (ART)", is_flagged=_flags_from_is_clean(is_clean))]


@register_defence("art-ss", "poison-filter", "ART's SpectralSignatureDefense with its defaults (last layer)")
def _art_ss(context: EvaluationContext) -> list[DefenceOutcome]:
    from art.defences.detector.poison import SpectralSignatureDefense

    clf, data = context.victim.classifier, context.victim.data
    defence = SpectralSignatureDefense(clf, data.x, _one_hot(data.y, clf.nb_classes))
    _, is_clean = defence.detect_poison()
    return [DefenceOutcome(layer="last (ART)", is_flagged=_flags_from_is_clean(is_clean))]


def _multilayer(context: EvaluationContext, cls: type) -> list[DefenceOutcome]:
    clf, data = context.victim.classifier, context.victim.data
    defence = cls(clf, data.x, data.y, layers=context.layers or None)
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


def _clean_set(context: EvaluationContext, per_class: int = 20) -> tuple[np.ndarray, np.ndarray]:
    from art_backdoor_ext.datasets import sample_per_class

    return sample_per_class(context.x_clean, context.y_clean, per_class, random_state=context.random_state)


@register_defence("ad", "model-scanner", "AD order-statistic detector, first-conv feature space (this project)")
def _ad(context: EvaluationContext) -> list[DefenceOutcome]:
    from art_backdoor_ext.defences import OrderStatisticDetector

    report = OrderStatisticDetector(context.victim.classifier).scan(*_clean_set(context))
    return [
        DefenceOutcome(
            layer=str(report.settings["resolved_layer"]),
            detected=report.detected,
            found_target=report.target if report.detected else None,
            extra={"p_value": report.p_value},
        )
    ]


@register_defence("nc", "model-scanner", "Neural Cleanse for PyTorch, MAD anomaly index > 2")
def _nc(context: EvaluationContext) -> list[DefenceOutcome]:
    from art_backdoor_ext.defences import PyTorchNeuralCleanse

    report = PyTorchNeuralCleanse(context.victim.classifier, random_state=context.random_state).scan(
        *_clean_set(context)
    )
    return [
        DefenceOutcome(layer="input", detected=report.detected, found_target=report.target if report.detected else None)
    ]


@register_defence("mbds", "sample-detector", "MBDS meta-classifier on 16 jumbo shadow models (black-box features)")
def _mbds(context: EvaluationContext) -> list[DefenceOutcome]:
    from art_backdoor_ext.defences import MBDS

    victim = context.victim
    rng = np.random.default_rng(context.random_state)
    order = rng.permutation(len(context.x_clean))
    reserve, held_out = order[: len(order) // 2], order[len(order) // 2 :]
    detector = MBDS(victim.classifier, n_shadow_models=16, random_state=context.random_state)
    detector.fit(context.x_clean[reserve], context.y_clean[reserve])
    x_eval, y_eval = context.x_clean[held_out], context.y_clean[held_out]
    non_target = y_eval != victim.data.target
    x_triggered = victim.data.trigger(x_eval[non_target]).astype(np.float32)
    x_all = np.concatenate([x_eval, x_triggered])
    truth = np.concatenate([np.zeros(len(x_eval), bool), np.ones(len(x_triggered), bool)])
    _, is_backdoor = detector.detect(x_all)
    return [
        DefenceOutcome(
            layer=detector._resolve_layer(),
            is_flagged=np.asarray(is_backdoor, bool),
            extra={"is_backdoor_truth": truth},
        )
    ]


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
