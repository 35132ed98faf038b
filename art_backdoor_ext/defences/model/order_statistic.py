"""Implementation of the order-statistic backdoor detector AD (Xiang, Miller & Kesidis, 2020).

| Paper link: https://arxiv.org/abs/1908.10498

For every (source, target) class pair the smallest common perturbation that sends a fraction ``pi`` of the
source's clean samples to the target is estimated (Algorithm 1; all K(K-1) pairs in one batched problem,
see :mod:`~art_backdoor_ext.defences.model.perturbation`). The reciprocals of the perturbation sizes are the
statistics; a Gamma null is fitted to the (K-1)^2 smallest, truncated at the smallest of the K-1 largest, and
the largest reciprocal gets the order-statistic p-value p = 1 - G(r_max)^(K(K-1)) (Eq. 4). The model is
flagged when p < ``significance``; the pair of r_max is the inferred (source, target). That is the paper's
AD-J-P: ``statistic="size", null="reciprocal", exclusion="k-1", source_rule="most-extreme"``. This project's
default, ``statistic="source-normalised-distance", null="size", exclusion="combined", source_rule="smallest-size"``
(below), measures best on digits and Fashion-MNIST (docs/order-statistic.md).

``statistic="ratio"`` (this project's variant, see docs/order-statistic.md) divides each pair's common
perturbation size by the mean size of the *individual* perturbations that move each of its samples on its
own (measured with the same engine, one problem per sample). Naturally confusable classes need small
perturbations both in common and individually, a backdoored pair only in common.

``statistic="asymmetry"`` (this project's variant) divides each pair's size by the size of the reverse pair
(:func:`~art_backdoor_ext.functional.robust.asymmetry_statistics`): confusable classes are close in both
directions, a backdoor shortens only one. It costs nothing beyond the paper's scan.

``statistic="source-normalised"`` (this project's variant) divides each size by the median size of its source's
row (:func:`~art_backdoor_ext.functional.pair_normalisation.source_normalised_statistics`): some sources are easy
to move to any target (on Fashion-MNIST, the mostly dark sneaker images), a backdoor shortens only its own pair.
``"source-normalised-margin"`` also divides by the square root of the pair's median clean logit margin
(:func:`~art_backdoor_ext.functional.pair_normalisation.clean_margins`, one forward pass): naturally close pairs
have small margins on clean data, a backdoor pair does not. ``"source-normalised-distance"`` divides instead by
the L2 distance of the two classes' mean clean images
(:func:`~art_backdoor_ext.functional.pair_normalisation.class_mean_distances`): a model-free closeness.

``null="size"`` (this project's variant) fits the Gamma to the sizes instead of their reciprocals and tests the
smallest (:func:`~art_backdoor_ext.functional.size_null.size_order_statistic_pvalue`).

``source_rule="smallest-size"`` (this project's default) names as source the class whose common perturbation to the
detected target is smallest, instead of the most extreme statistic's own source (``"most-extreme"``, the paper): a
global trigger also moves classes that look like its source (the paper's "collateral damage", Fig. 7), and the
normalised statistics can make such a class the most extreme. Detection (p-value, target) is unchanged.

:meth:`OrderStatisticDetector.scan_variants` optimises once and decides several times: the parameters in
:data:`INFERENCE_PARAMETERS` (norm, confusion correction, statistic, null, theta, source rule) do not change the
perturbations, so variants that differ only in them share one run of the engine. The target misclassification
fraction ``pi`` (:data:`TRACE_PARAMETERS`) may vary too: each pair's steps do not depend on ``pi`` until it stops,
so one run at the largest ``pi`` gives every smaller one from its per-iteration trace (the paper's Fig. 11,
detection against ``pi``, from one optimisation instead of one per value).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from art_backdoor_ext._validation import Instance, Interval, Options
from art_backdoor_ext.defences.base import ModelScanner, to_builtin, variant_detectors
from art_backdoor_ext.defences.model.perturbation import (
    Additive,
    EngineResult,
    PerturbationEngine,
    Problems,
    pair_problems,
)
from art_backdoor_ext.exceptions import DataError
from art_backdoor_ext.functional.null_exclusion import EXCLUSIONS, order_statistic_with_exclusion
from art_backdoor_ext.functional.pair_normalisation import (
    NORMALISED_STATISTICS,
    normalised_statistics,
    smallest_size_source,
)
from art_backdoor_ext.functional.robust import (
    asymmetry_statistics,
    confusion_correction,
    order_statistic_pvalue,
    reciprocal_statistics,
)
from art_backdoor_ext.functional.size_null import size_order_statistic_pvalue

__all__ = ["OrderStatisticDetector", "OrderStatisticReport"]

#: Accepted ``statistic`` values: the paper's, then this project's normalisations (see the module doc).
STATISTICS = ("size", "ratio", "asymmetry", *NORMALISED_STATISTICS)
#: Accepted ``null`` values: the paper's Gamma on reciprocals (Eq. 4), or this project's Gamma on sizes.
NULLS = ("reciprocal", "size")
#: Accepted ``source_rule`` values: the most extreme pair's source (the paper), or the smallest size into the
#: detected target (this project).
SOURCE_RULES = ("most-extreme", "smallest-size")

logger = logging.getLogger(__name__)


@dataclass
class OrderStatisticReport:
    """Result of :meth:`OrderStatisticDetector.scan`.

    :ivar detected: True when the p-value is below the significance level.
    :ivar statistics: (K, K) perturbation sizes d(v_st) (row source, column target), NaN diagonal; with
        ``statistic="ratio"`` or ``"asymmetry"`` the normalised sizes.
    :ivar source: The inferred source class (``source_rule``); ``extreme_source`` is the source of the most
        extreme statistic, the pair the p-value tests (the same pair under the paper's rule).
    :ivar estimated_pattern: The optimised perturbation of the inferred (source, target) pair (the putative
        backdoor).
    :ivar sizes_by_norm: ``{"l1": (K, K), "l2": (K, K)}``: both sizes of the same perturbations, before any
        confusion correction (the optimisation does not depend on ``norm``; only the size read from it does).
    """

    detected: bool
    p_value: float
    source: int
    target: int
    statistics: np.ndarray
    sizes: np.ndarray
    misclassification: np.ndarray
    reached: np.ndarray
    estimated_pattern: np.ndarray
    null: dict[str, Any]
    significance: float
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)
    sizes_by_norm: dict[str, np.ndarray] = field(default_factory=dict)
    extreme_source: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return to_builtin(
            {
                "detected": self.detected,
                "p_value": self.p_value,
                "source": self.source,
                "target": self.target,
                "statistics": self.statistics,
                "sizes": self.sizes,
                "misclassification": self.misclassification,
                "reached": self.reached,
                "estimated_pattern": self.estimated_pattern,
                "null": self.null,
                "significance": self.significance,
                "seconds": self.seconds,
                "settings": self.settings,
                "sizes_by_norm": self.sizes_by_norm,
                "extreme_source": self.extreme_source,
            }
        )


#: Parameters that only change what is inferred from the optimised perturbations (not the perturbations), so
#: :meth:`OrderStatisticDetector.scan_variants` may vary them over one optimisation.
INFERENCE_PARAMETERS = ("norm", "confusion_correction", "statistic", "null", "exclusion", "significance",
                        "source_rule")
#: Parameters that change only where each pair stops: one optimisation at the largest value gives every smaller
#: one from its trace (:meth:`~art_backdoor_ext.defences.model.perturbation.EngineResult.at_fraction`).
TRACE_PARAMETERS = ("target_misclassification",)


class OrderStatisticDetector(ModelScanner):
    """
    Implementation of the AD order-statistic backdoor detector (Xiang, Miller & Kesidis, 2020).

    | Paper link: https://arxiv.org/abs/1908.10498

    :param classifier: ART ``PyTorchClassifier`` (used as it is, preprocessing applied).
    :param target_misclassification: pi, the fraction of a source's samples to send to the target (0.8).
    :param norm: ``"l2"`` or ``"l1"``: the size d(v) used as statistic.
    :param objective: ``"J"`` (Eq. 3), ``"Jp"`` (Eq. 5) or ``"Jc"`` (Eq. 6).
    :param confusion_correction: Add the Eq. 7 compensation d0 (polynomial of order 3) to each size.
    :param layer: None (default: the paper's principal input-space variant, clipped to the valid range),
        ``"auto"`` (the activation after the first convolution, Eq. 10 with f1 the first convolutional layer)
        or a layer name of the model.
    :param statistic: ``"source-normalised-distance"`` (default, this project: size over the median size of
        the source's other pairs, over the distance of the two classes' mean clean images; measures best on
        digits and Fashion-MNIST with ``null="size"``, see docs/order-statistic.md), ``"size"`` (the paper),
        ``"asymmetry"`` (size over the reverse pair's size; the previous default), ``"ratio"`` (size over the
        mean individual size), ``"source-normalised"`` (size over the source's other pairs' median) or
        ``"source-normalised-margin"`` (that, over the square root of the pair's clean margin); see the module
        doc.
    :param null: ``"size"`` (default, this project: Gamma fitted to the size-like statistics, the smallest one
        tested, see :mod:`~art_backdoor_ext.functional.size_null`) or ``"reciprocal"`` (the paper's Eq. 4:
        Gamma fitted to the reciprocals, the largest one tested).
    :param exclusion: How many of the most extreme statistics the null's fit sets aside: ``"combined"`` (default
        since 2026-12-07, this project: one and K - 1 in two tests, the smaller p-value Sidak-corrected for two;
        measured on Fashion-MNIST, docs/order-statistic.md), ``"k-1"`` (the paper: an attack may have up to
        K - 1 sources) or ``"one"``; see :mod:`~art_backdoor_ext.functional.null_exclusion`. The report's
        ``null["n_exclude"]`` says which test gave the p-value.
    :param significance: theta; detected when p < theta.
    :param source_rule: How the source is named once the most extreme statistic has found the target:
        ``"smallest-size"`` (default, this project: the source whose common perturbation to the detected target is
        smallest, in ``norm``; measured on Fashion-MNIST, docs/order-statistic.md) or ``"most-extreme"`` (the
        paper: that statistic's own source). The two agree with ``statistic="size"``; the p-value, the target and
        ``detected`` do not depend on the rule. See
        :func:`~art_backdoor_ext.functional.pair_normalisation.smallest_size_source`.
    :param step_size: L2 length of each normalised gradient step, relative to the scale of the space
        (sqrt(D) times the clip range in input space; the mean L2 norm of the clean features at ``layer``).
    :param max_iter: Iteration cap per pair.
    :param max_size: Size cap relative to the same scale (the paper's upper bound).
    :param batch_size: Images per forward pass (pairs are chunked to respect it); None (default): 512 on CPU,
        4096 on a GPU (on CPU, convolutions cost more per image beyond a few hundred images).
    :param random_state: Unused by the deterministic engine; kept for the common API.
    :param verbose: Progress bars.

    Example::

        det = OrderStatisticDetector(classifier)   # input space, normalised statistic, Gamma null on sizes
        paper = OrderStatisticDetector(classifier, statistic="size", null="reciprocal", exclusion="k-1",
                                       source_rule="most-extreme")  # the paper's AD-J-P
        report = det.scan(x_clean, y_clean)   # e.g. 10-100 clean images per class
        report.detected, report.p_value, (report.source, report.target)
    """

    _parameter_constraints: dict[str, list[Any]] = {
        "target_misclassification": [Interval(float, 0, 1, closed="right")],
        "norm": [Options(("l1", "l2"))],
        "objective": [Options(("J", "Jp", "Jc"))],
        "confusion_correction": [Instance(bool)],
        "layer": [Instance(str), None],
        "statistic": [Options(STATISTICS)],
        "null": [Options(NULLS)],
        "exclusion": [Options(EXCLUSIONS)],
        "significance": [Interval(float, 0, 1, closed="neither")],
        "source_rule": [Options(SOURCE_RULES)],
        "step_size": [Interval(float, 0, 1, closed="right")],
        "max_iter": [Interval(int, 1, None)],
        "max_size": [Interval(float, 0, None, closed="neither")],
        "batch_size": [Interval(int, 1, None), None],
        "random_state": [Interval(int, 0, None), None],
        "verbose": [Instance(bool)],
    }
    min_classes = 3

    def __init__(
        self,
        classifier: Any,
        *,
        target_misclassification: float = 0.8,
        norm: str = "l2",
        objective: str = "J",
        confusion_correction: bool = False,
        layer: str | None = None,
        statistic: str = "source-normalised-distance",
        null: str = "size",
        exclusion: str = "combined",
        significance: float = 0.05,
        source_rule: str = "smallest-size",
        step_size: float = 0.002,
        max_iter: int = 500,
        max_size: float = 1.0,
        batch_size: int | None = None,
        random_state: int | None = None,
        verbose: bool = False,
    ) -> None:
        super().__init__(classifier)
        self.target_misclassification = target_misclassification
        self.norm = norm
        self.objective = objective
        self.confusion_correction = confusion_correction
        self.layer = layer
        self.statistic = statistic
        self.null = null
        self.exclusion = exclusion
        self.significance = significance
        self.source_rule = source_rule
        self.step_size = step_size
        self.max_iter = max_iter
        self.max_size = max_size
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose
        self._check_params()

    def _check_params(self) -> None:
        super()._check_params()
        self._resolved_layer()

    def _resolved_layer(self) -> str | None:
        from art_backdoor_ext._torch import first_conv_activation, resolve_layers

        if self.layer == "auto":
            return first_conv_activation(self.classifier.model)
        if self.layer is not None:
            resolve_layers(self.classifier.model, [self.layer])
        return self.layer

    # ------------------------------------------------------------------------------------------------
    def _scale(self, x: np.ndarray) -> float:
        layer = self._resolved_layer()
        if layer is None:
            low, high = (float(v) for v in self.classifier.clip_values)
            return float(np.sqrt(np.prod(x.shape[1:])) * (high - low))
        from art_backdoor_ext._torch import extract_features

        feats = extract_features(self.classifier, x, [layer], batch_size=self._batch_images)[layer]
        return float(np.mean(np.linalg.norm(feats, axis=1)))

    def engine(self, scale: float) -> PerturbationEngine:
        """The configured engine (public so benchmarks can run the same engine one pair at a time)."""
        return PerturbationEngine(
            self.classifier,
            Additive(self.step_size * scale),
            target_misclassification=self.target_misclassification,
            objective=self.objective,
            layer=self._resolved_layer(),
            max_iter=self.max_iter,
            max_size_l2=self.max_size * scale,
            max_batch_images=self._batch_images,
            verbose=self.verbose,
        )

    def _pair_sizes(self, result: EngineResult, k: int) -> np.ndarray:
        sizes = result.sizes(self.norm).copy()
        if self.confusion_correction:
            traces_d, traces_rho = result.trace_sizes(self.norm), result.trace_misclassification
            for p in range(len(sizes)):
                if result.initial_misclassification[p] > 0:
                    d, rho = traces_d[:, p], traces_rho[:, p]
                    keep = ~np.isnan(d)
                    try:
                        sizes[p] += confusion_correction(
                            d[keep], rho[keep], order=3, target_fraction=self.target_misclassification
                        )
                    except (DataError, ValueError) as err:
                        logger.debug("no confusion correction for pair %d: %s", p, err)
        return _to_matrix(result.problems, sizes, k)

    def _individual_sizes(self, engine: PerturbationEngine, x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
        """Mean size of per-sample perturbations for each (source, target): one problem per (sample, target)."""
        n = len(y)
        pairs = [(i, t) for i in range(n) for t in range(k) if t != y[i]]
        problems = Problems(
            np.array([[i] for i, _ in pairs]), np.array([t for _, t in pairs]), np.array([y[i] for i, _ in pairs])
        )
        engine.target_misclassification = 1.0
        result = engine.run(x, y, problems)
        sizes = result.sizes(self.norm)
        out = np.full((k, k), np.nan)
        for s in range(k):
            for t in range(k):
                if s != t:
                    out[s, t] = np.mean(sizes[(problems.sources == s) & (problems.targets == t)])
        return out

    def scan_variants(self, x_clean: np.ndarray, y_clean: np.ndarray,
                      variants: Mapping[str, Mapping[str, Any]]) -> dict[str, OrderStatisticReport]:
        """One optimisation, several decisions: the reports :meth:`scan` would give for this detector with each
        variant's parameters, from a single run of the engine.

        :param x_clean: Clean images, as for :meth:`scan`.
        :param y_clean: Their integer labels, as for :meth:`scan`.
        :param variants: name -> overrides of :data:`INFERENCE_PARAMETERS` and :data:`TRACE_PARAMETERS` (``{}``: this
            detector's own settings), e.g. ``{"paper": {"statistic": "size", "null": "reciprocal"}, "L1": {"norm":
            "l1"}, "pi 0.6": {"target_misclassification": 0.6}}``. The engine runs once, at the largest
            ``target_misclassification`` of the variants; the others are read off its trace, and their
            ``estimated_pattern`` comes from optimising the detected pair alone at their own ``pi``.
        :return: name -> report. Each report's ``seconds`` is the shared optimisation's time plus its own
            inference's.
        :raises InvalidParameterError: no variant, an override outside those two lists (it would change the
            perturbations: use another detector) or an invalid value; checked before any optimisation.
        """
        detectors = variant_detectors(self, variants, INFERENCE_PARAMETERS + TRACE_PARAMETERS)
        x, y = self._check_clean_set(x_clean, y_clean)
        start = time.perf_counter()
        largest = max(detectors.values(), key=lambda det: det.target_misclassification)
        scale, problems, result = largest._optimise(x, y)
        shared = time.perf_counter() - start
        return {name: det._report(x, y, scale, problems, det._own_stops(result, scale, largest),
                                  time.perf_counter() - shared)
                for name, det in detectors.items()}

    def _own_stops(self, result: EngineResult, scale: float, runner: OrderStatisticDetector) -> EngineResult:
        """``runner``'s result as this detector's engine would have stopped it (``runner``'s ``pi`` is the larger)."""
        if self.target_misclassification == runner.target_misclassification:
            return result
        return result.at_fraction(self.target_misclassification, self.max_size * scale, self.max_iter)

    def _optimise(self, x: np.ndarray, y: np.ndarray) -> tuple[float, Problems, EngineResult]:
        scale = self._scale(x)
        problems = pair_problems(y, int(self.classifier.nb_classes))
        return scale, problems, self.engine(scale).run(x, y, problems)

    def _scan(self, x: np.ndarray, y: np.ndarray) -> OrderStatisticReport:
        start = time.perf_counter()
        scale, problems, result = self._optimise(x, y)
        return self._report(x, y, scale, problems, result, start)

    def _report(self, x: np.ndarray, y: np.ndarray, scale: float, problems: Problems, result: EngineResult,
                start: float) -> OrderStatisticReport:
        """The report of a finished optimisation under this detector's inference parameters; ``seconds`` counts
        from ``start`` (``time.perf_counter()``)."""
        k = int(self.classifier.nb_classes)
        sizes = self._pair_sizes(result, k)
        statistics = sizes
        if self.statistic == "ratio":
            statistics = sizes / np.maximum(self._individual_sizes(self.engine(scale), x, y, k), 1e-12)
        elif self.statistic == "asymmetry":
            statistics = asymmetry_statistics(np.maximum(sizes, 1e-12))
        elif self.statistic in NORMALISED_STATISTICS:
            outputs = (self.classifier.predict(x, batch_size=min(self._batch_images, 1024))
                       if self.statistic == "source-normalised-margin" else None)
            statistics = normalised_statistics(sizes, self.statistic, x=x, y=y, outputs=outputs)
        statistics = np.where(np.eye(k, dtype=bool), np.nan, statistics)
        if self.null == "size":
            ost, n_exclude = order_statistic_with_exclusion(size_order_statistic_pvalue, statistics, self.exclusion)
        else:
            ost, n_exclude = order_statistic_with_exclusion(order_statistic_pvalue, reciprocal_statistics(statistics),
                                                            self.exclusion)
        source = int(ost.source) if self.source_rule == "most-extreme" else smallest_size_source(sizes, ost.target)
        pair_index = int(np.flatnonzero((problems.sources == source) & (problems.targets == ost.target))[0])
        pattern = result.perturbations[pair_index]
        if np.isnan(pattern).all():  # stops read off a trace (scan_variants): optimise the detected pair alone
            pattern = self.engine(scale).run(x, y, problems.subset(np.array([pair_index]))).perturbations[0]
        report = OrderStatisticReport(
            detected=bool(ost.p_value < self.significance),
            p_value=float(ost.p_value),
            source=source,
            target=int(ost.target),
            statistics=statistics,
            sizes=sizes,
            misclassification=_to_matrix(problems, result.misclassification, k),
            reached=_to_matrix(problems, result.reached.astype(float), k) == 1,
            estimated_pattern=pattern,
            null={**ost.null.to_dict(), "n_exclude": n_exclude},
            significance=self.significance,
            seconds=time.perf_counter() - start,
            settings={
                **{k_: v for k_, v in self.get_params().items() if k_ != "verbose"},
                "resolved_layer": self._resolved_layer(),
            },
            sizes_by_norm={norm: _to_matrix(problems, result.sizes(norm), k) for norm in ("l1", "l2")},
            extreme_source=int(ost.source),
        )
        logger.info("AD: p=%.3g pair (%d -> %d) in %.1fs", report.p_value, report.source, report.target, report.seconds)
        return report


def _to_matrix(problems: Problems, values: np.ndarray, k: int) -> np.ndarray:
    out = np.full((k, k), np.nan)
    out[problems.sources, problems.targets] = values
    return out
