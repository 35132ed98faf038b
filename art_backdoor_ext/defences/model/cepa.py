"""Implementation of CEPA, consensus embedded perturbation analysis (Li, Wang, Miller & Kesidis, 2024).

| Paper link: ../shared/papers/cepa-universal-post-training-defense.md ("Universal post-training
  reverse-engineering defense against backdoors in deep neural networks")

For every putative (source, target) class pair, and for every target with all other classes pooled (the
all-to-one variant), CEPA looks for *sample-wise* input perturbations ``delta_x`` that send the source samples to
the target while inducing a *common* shift ``mu`` of an internal layer's features (Eq. 1)::

    1/|D_s| sum_x [ -log p_t(x + delta_x) + lambda ||f(x + delta_x) - f(x) - mu||^2 ]

minimised by alternating a gradient step on every ``delta_x`` (clipped so that ``x + delta_x`` stays in the
valid range) with the closed-form ``mu`` (Eq. 2: the mean embedded shift). A backdoor makes the shifts of its
pair agree (small ``sigma``) on a large ``mu`` (backdoor overfitting); the paper's consensus statistic
``sigma / ||mu||`` (or ``||mu||`` alone) of the backdoor pair is an outlier among all pairs. This library's
default tests ``sigma`` alone (the paper's first condition): on digits and Fashion-MNIST the backdoor target's
``||mu||`` is small, not large, and dividing by it hides the small ``sigma`` (docs/cepa.md). Inference is by the
order-statistic p-value of AD (robust truncated-Gamma null) or by the MAD anomaly index of Neural Cleanse. Given
the detected ``mu``, :meth:`CEPA.estimate_trigger` solves Eq. 3 for new samples.

Batching: all problems (class pairs, pooled targets) times candidate layers are optimised together, their
samples stacked into one forward pass per iteration with one hook per candidate layer; each problem keeps its own
lambda, stopping state and Adam moments (:class:`~art_backdoor_ext.defences.model.perturbation.SampleWiseShift`),
so a problem's result does not depend on which problems share its chunk. The shared
:class:`~art_backdoor_ext.defences.model.perturbation.PerturbationEngine` loop cannot express the feature penalty
and closed-form ``mu``, so the loop lives here; it reuses the engine's :class:`Problems`, :func:`pair_problems`,
:func:`target_problems` and its chunking rule.

Choices and deviations (see docs/cepa.md):

- The gradient steps on the deltas are Adam steps (per problem, see ``SampleWiseShift``) of ``learning_rate``
  times the ``clip_values`` range. lambda is the paper's: raw feature units, starting at ``lam``, multiplied by
  1.5 after 5 consecutive iterations at or above ``target_misclassification`` and divided by 1.5 after 5 below
  (Section 4.1). The step must let a problem reach the target in a few tens of iterations, or lambda shrinks
  too far for the consensus term to matter (measured on digits: 0.05 works, 0.01 does not).
- A problem stops when the mean norm of its deltas has not decreased for ``stop_patience`` consecutive
  iterations at or above the target (Section 4.1; ``stop_patience=0`` is Section 3's "stop as soon as the
  target is reached"), or at ``max_iter``. Its statistics (and deltas) are those of its last iteration at or
  above the target (of its last iteration if it never got there, reported with ``reached`` False).
- ``layer_penalty="separate"`` (default) runs Eq. 1 once per candidate layer (one copy of every problem per
  layer, all copies in the same forward pass); ``"joint"`` sums the variance terms of all layers (raw units, each
  layer with its own closed-form ``mu``) in one optimisation, which costs one copy instead of one per layer.
- Several layers and variants are several tests: with ``layer_pooling="sidak"`` the decision uses the most
  extreme one (Section 3.1) and the reported p-value is Sidak-corrected for their number m,
  ``1 - (1 - p_min)^m``. The default (``"auto"``) decides the all-to-one layers by one test: since 2026-12-07 the
  joint test (``"joint"``, this project's, docs/cepa.md: a target's evidence summed over the layers; before, their
  median-relative statistics pooled, ``"pooled"``), reported at the layer where the target's own test is extreme.
- The all-to-one variant has K statistics: its p-value is the order statistic of the largest of K under a Gamma
  null fitted to the K - 1 others, truncated at the largest (AD's robust null with one value excluded), then
  calibrated by a parametric bootstrap from that null (``calibration="bootstrap"``; this project's addition).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from art_backdoor_ext._progress import progress
from art_backdoor_ext._torch import (
    batch_slices,
    capture,
    classifier_device,
    clip_to_range,
    eval_mode,
    frozen,
    layer_names,
    preprocess,
    resolve_layers,
    scan_model,
    to_tensor,
)
from art_backdoor_ext._validation import Instance, Interval, Options
from art_backdoor_ext.defences.base import ModelScanner, variant_detectors
from art_backdoor_ext.defences.model.cepa_inference import decide, joint_test, layer_test, pooled_test
from art_backdoor_ext.defences.model.cepa_layers import candidate_layers
from art_backdoor_ext.defences.model.cepa_report import CEPAReport
from art_backdoor_ext.defences.model.cepa_spreads import class_spreads, feature_spread
from art_backdoor_ext.defences.model.cepa_trigger import estimate_trigger
from art_backdoor_ext.defences.model.perturbation import Problems, SampleWiseShift, pair_problems, target_problems
from art_backdoor_ext.exceptions import InvalidParameterError
from art_backdoor_ext.functional.cepa_math import (
    sidak_correction,
    update_norm_plateau,
    update_penalty_weight,
)

__all__ = ["CEPA", "CEPAReport", "INFERENCE_PARAMETERS", "candidate_layers"]

logger = logging.getLogger(__name__)

VARIANTS = {"pairs": ("pairs",), "all-to-one": ("all-to-one",), "both": ("pairs", "all-to-one")}
#: The parameters that only decide (they do not change the perturbations): :meth:`CEPA.scan_variants` varies them.
INFERENCE_PARAMETERS = ("significance", "statistic", "inference", "anomaly_threshold", "calibration", "n_bootstrap",
                        "layer_pooling")
LAMBDA_PATIENCE = 5
LAMBDA_FACTOR = 1.5


class CEPA(ModelScanner):
    """
    Implementation of CEPA, consensus embedded perturbation analysis (Li, Wang, Miller & Kesidis, 2024).

    | Paper link: ../shared/papers/cepa-universal-post-training-defense.md

    :param classifier: ART ``PyTorchClassifier`` with ``clip_values`` (used as it is, preprocessing applied).
    :param layers: Internal layer name(s) f(.) of Eq. 1; None picks three activation layers spread through the
        network and, in front of them, the first linear layer (:func:`candidate_layers` with ``first_linear=True``,
        the default since 2026-12-07: an additive trigger moves every image alike there). The decision uses the
        layer with the most extreme statistic.
    :param target_misclassification: Fraction of a problem's samples that must go to the target (0.9).
    :param lam: Initial lambda of Eq. 1 (0.01 in the paper), adapted per problem during the optimisation.
    :param significance: Detected when the corrected p-value is below it.
    :param variant: ``"all-to-one"`` (one problem per putative target, the other classes pooled, as in the
        paper's experiments), ``"pairs"`` (one per (source, target)) or ``"both"``. The default is all-to-one
        because the pair variant flagged every clean digits model it was run on (docs/cepa.md).
    :param statistic: ``"sigma"`` (default: the spread of the embedded shifts about ``mu`` alone, small for a
        backdoor: the paper's first detection condition, "unusually small variance about the common embedded
        perturbation"; it measured best on digits and Fashion-MNIST, docs/cepa.md), ``"consensus"`` (the paper's
        example statistic sigma / ||mu||, small) or ``"norm"`` (||mu||, large).
    :param inference: ``"p-value"`` (order statistic, robust Gamma null) or ``"mad"`` (anomaly index).
    :param anomaly_threshold: Detection threshold of the MAD anomaly index (``inference="mad"``).
    :param calibration: ``"bootstrap"`` (default) calibrates the all-to-one p-value by a parametric bootstrap from
        its own fitted null (:func:`~art_backdoor_ext.functional.bootstrap_calibration.calibrated_max_statistic_pvalue`:
        uncalibrated, it falls below 0.05 for about a quarter of clean i.i.d. sets of ten statistics); ``"none"``
        keeps the uncalibrated order-statistic p-value. The pair variant is never calibrated.
    :param n_bootstrap: Simulated sets of the calibration (smallest attainable p-value ``1 / (n_bootstrap + 1)``).
    :param layer_pooling: ``"auto"`` (default: ``"joint"`` when the all-to-one variant is decided by the
        bootstrap-calibrated p-value over two layers or more, ``"sidak"`` otherwise; ``"pooled"`` resolved it from
        2026-12-03 to 2026-12-07, when ``"joint"`` found more held-out backdoors, docs/cepa.md),
        ``"sidak"`` (each layer tested on its own, the smallest p-value corrected for the number of tests; the
        default until 2026-12-03), ``"joint"`` (the all-to-one layers tested together, a target's evidence summed
        over them, calibrated with their correlation: ``functional.layer_pooling.joint_layer_pvalue``) or
        ``"pooled"`` (their median-relative statistics pooled under one null; more power than one null per layer,
        assuming the layers' relative spreads comparable: ``functional.layer_pooling.pooled_layer_pvalue``). Both
        need the bootstrap calibration and count as one test; ``report.joint`` and ``report.pooled`` hold them.
    :param layer_penalty: ``"separate"`` (Eq. 1 once per layer) or ``"joint"`` (one optimisation, the layers'
        variance terms summed in raw units).
    :param learning_rate: Adam step on the deltas, relative to the ``clip_values`` range.
    :param stop_patience: Stop once the mean delta norm has not decreased for this many consecutive iterations
        at or above the target (50 in the paper; 0 stops as soon as the target is reached).
    :param max_iter: Iteration cap per problem (also the iterations of :meth:`estimate_trigger`).
    :param max_samples_per_target: Subsample each all-to-one problem's pooled samples (None: all).
    :param batch_size: Images per forward pass (problems are chunked to respect it); None (default): 512 on CPU,
        4096 on a GPU.
    :param random_state: Seeds the subsampling and the calibration (None: seed 0); the optimisation is deterministic.
    :param verbose: Progress bars.

    Example::

        det = CEPA(classifier, random_state=0)
        report = det.scan(x_clean, y_clean)           # (N, C, H, W) float32, e.g. 10 images per class
        report.detected, report.target, report.layer
        delta = det.estimate_trigger(x_test, report)   # Eq. 3: x_test + delta goes to report.target
    """

    _parameter_constraints: dict[str, list[Any]] = {
        "layers": [Instance((str, list, tuple), "a layer name or a list of layer names"), None],
        "target_misclassification": [Interval(float, 0, 1, closed="right")],
        "lam": [Interval(float, 0, None, closed="neither")],
        "significance": [Interval(float, 0, 1, closed="neither")],
        "variant": [Options(tuple(VARIANTS))],
        "statistic": [Options(("consensus", "norm", "sigma"))],
        "inference": [Options(("p-value", "mad"))],
        "anomaly_threshold": [Interval(float, 0, None, closed="neither")],
        "calibration": [Options(("bootstrap", "none"))],
        "n_bootstrap": [Interval(int, 1, None)],
        "layer_pooling": [Options(("auto", "sidak", "joint", "pooled"))],
        "layer_penalty": [Options(("separate", "joint"))],
        "learning_rate": [Interval(float, 0, None, closed="neither")],
        "stop_patience": [Interval(int, 0, None)],
        "max_iter": [Interval(int, 1, None)],
        "max_samples_per_target": [Interval(int, 2, None), None],
        "batch_size": [Interval(int, 1, None), None],
        "random_state": [Interval(int, 0, None), None],
        "verbose": [Instance(bool)],
    }
    min_classes = 3

    def __init__(
        self,
        classifier: Any,
        *,
        layers: str | Sequence[str] | None = None,
        target_misclassification: float = 0.9,
        lam: float = 0.01,
        significance: float = 0.05,
        variant: str = "all-to-one",
        statistic: str = "sigma",
        inference: str = "p-value",
        anomaly_threshold: float = 2.0,
        calibration: str = "bootstrap",
        n_bootstrap: int = 199,
        layer_pooling: str = "auto",
        layer_penalty: str = "separate",
        learning_rate: float = 0.05,
        stop_patience: int = 50,
        max_iter: int = 200,
        max_samples_per_target: int | None = None,
        batch_size: int | None = None,
        random_state: int | None = None,
        verbose: bool = False,
    ) -> None:
        super().__init__(classifier)
        self.layers = layers
        self.target_misclassification = target_misclassification
        self.lam = lam
        self.significance = significance
        self.variant = variant
        self.statistic = statistic
        self.inference = inference
        self.anomaly_threshold = anomaly_threshold
        self.calibration = calibration
        self.n_bootstrap = n_bootstrap
        self.layer_pooling = layer_pooling
        self.layer_penalty = layer_penalty
        self.learning_rate = learning_rate
        self.stop_patience = stop_patience
        self.max_iter = max_iter
        self.max_samples_per_target = max_samples_per_target
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose
        self._check_params()

    def _check_params(self) -> None:
        super()._check_params()
        n_layers = len(self._resolved_layers())
        m = n_layers * len(VARIANTS[self.variant])  # tests Sidak counts; "pooled" and "joint" decide all-to-one by one
        if "all-to-one" in VARIANTS[self.variant] and self.resolved_layer_pooling() in ("pooled", "joint"):
            m -= n_layers - 1
        if self.layer_pooling not in ("auto", "sidak") and (self.calibration != "bootstrap"
                                                            or self.inference != "p-value"):
            raise InvalidParameterError(f"layer_pooling={self.layer_pooling!r} tests the layers with the "
                                        "bootstrap-calibrated p-value: it needs calibration='bootstrap' and "
                                        "inference='p-value'")
        if self.calibration != "bootstrap" or self.inference != "p-value":
            return
        smallest = sidak_correction(1.0 / (self.n_bootstrap + 1), m)
        if smallest >= self.significance:
            need = int(np.ceil(m / self.significance))
            tests = f"{m} test" + "s" * (m > 1)
            raise InvalidParameterError(
                f"n_bootstrap={self.n_bootstrap} cannot reach significance={self.significance} over {tests} (the "
                f"smallest corrected p-value is {smallest:.3g}); use n_bootstrap >= {need}")

    def resolved_layer_pooling(self, layers: Sequence[str] | None = None) -> str:
        """The layer decision a scan uses: ``layer_pooling`` itself, or for ``"auto"`` ``"joint"`` when the
        all-to-one variant is decided by the bootstrap-calibrated p-value over two layers or more (``layers``;
        None: the detector's own), else ``"sidak"``."""
        if self.layer_pooling != "auto":
            return self.layer_pooling
        n_layers = len(self._resolved_layers() if layers is None else layers)
        across = ("all-to-one" in VARIANTS[self.variant] and self.calibration == "bootstrap"
                  and self.inference == "p-value" and n_layers >= 2)
        return "joint" if across else "sidak"

    def _resolved_layers(self) -> list[str]:
        if self.layers is None:
            return candidate_layers(self.classifier.model, first_linear=True)
        names = [self.layers] if isinstance(self.layers, str) else list(self.layers)
        if not names:
            raise InvalidParameterError(f"layers must name at least one layer (or be None); the model's layers "
                                        f"are: {', '.join(layer_names(self.classifier.model))}")
        if len(set(names)) != len(names):
            raise InvalidParameterError(f"layers has duplicates: {names}")
        resolve_layers(self.classifier.model, names)
        return names

    @property
    def _value_range(self) -> tuple[float, float]:
        low, high = (float(v) for v in self.classifier.clip_values)
        return low, high

    def _parametrisation(self) -> SampleWiseShift:
        low, high = self._value_range
        return SampleWiseShift(self.learning_rate * (high - low))

    # ------------------------------------------------------------------------------------------------ scan
    def scan_variants(self, x_clean: np.ndarray, y_clean: np.ndarray,
                      variants: Mapping[str, Mapping[str, Any]]) -> dict[str, CEPAReport]:
        """One optimisation, several decisions: the reports :meth:`scan` would give for this detector with each
        variant's parameters, from a single run of Eq. 1 (e.g. the paper's ratio beside the default sigma).

        :param x_clean: Clean images, as for :meth:`scan`.
        :param y_clean: Their integer labels, as for :meth:`scan`.
        :param variants: name -> overrides of :data:`INFERENCE_PARAMETERS` (``{}``: this detector's own settings),
            e.g. ``{"sigma": {}, "paper": {"statistic": "consensus"}, "mad": {"inference": "mad"}}``.
        :return: name -> report. Each report's ``seconds`` is the shared optimisation's time plus its own
            inference's.
        :raises InvalidParameterError: no variant, an override outside :data:`INFERENCE_PARAMETERS` (it would change
            the perturbations: use another detector) or an invalid value; checked before any optimisation.
        """
        detectors = variant_detectors(self, variants, INFERENCE_PARAMETERS)
        x, y = self._check_clean_set(x_clean, y_clean)
        start = time.perf_counter()
        layers = self._resolved_layers()
        results = self.optimise(x, y, layers)
        shared = time.perf_counter() - start
        return {name: det._report(results, layers, time.perf_counter() - shared) for name, det in detectors.items()}

    def _scan(self, x: np.ndarray, y: np.ndarray) -> CEPAReport:
        start = time.perf_counter()
        layers = self._resolved_layers()
        return self._report(self.optimise(x, y, layers), layers, start)

    def _report(self, results: Mapping[str, tuple[Problems, dict[str, dict[str, np.ndarray]]]],
                layers: list[str], start: float) -> CEPAReport:
        """The report of a finished optimisation (:meth:`optimise`) under this detector's inference parameters;
        ``seconds`` counts from ``start`` (``time.perf_counter()``)."""
        k = int(self.classifier.nb_classes)
        statistics: dict[str, dict[str, dict[str, np.ndarray]]] = {}
        tests: list[dict[str, Any]] = []
        for kind, (problems, per_layer) in results.items():
            statistics[kind] = {
                layer: {name: _arrange(problems, values, k, kind) for name, values in per_layer[layer].items()
                        if name not in ("mu", "deltas")} for layer in layers}
            tests += [layer_test(self, kind, layer, problems, per_layer[layer], k) for layer in layers]
        joint = None
        if "all-to-one" in results and self.inference == "p-value" and self.calibration == "bootstrap":
            joint = joint_test(self, *results["all-to-one"], layers, tests)
        pooling = self.resolved_layer_pooling(layers)
        pooled = None
        if "all-to-one" in results and pooling == "pooled":
            pooled = pooled_test(self, *results["all-to-one"], layers, tests)
        for test in tests:
            problems = results[test["variant"]][0]
            statistics[test["variant"]][test["layer"]]["anomaly_index"] = _arrange(
                problems, test.pop("anomaly_indices"), k, test["variant"])
        decisive = tests
        across = {"joint": joint, "pooled": pooled}.get(pooling)
        if across is not None:  # the all-to-one layers decided by one test over them all
            decisive = [t for t in tests if t["variant"] != "all-to-one"] + [across]
        best, p_value, detected = decide(self, decisive)
        chosen = decisive[best]
        problems, per_layer = results[chosen["variant"]]
        row = chosen["problem"]
        for t in tests:
            t.pop("problem", None)
        for extra in (joint, pooled):
            if extra is not None:
                extra.pop("anomaly_indices", None)
                extra.pop("problem", None)
        shape = self._output_shape(chosen["layer"])
        report = CEPAReport(
            detected=bool(detected),
            p_value=float(np.clip(p_value, 0.0, 1.0)),
            anomaly_index=float(chosen["anomaly_index"]),
            target=int(chosen["target"]),
            source=chosen["source"],
            variant=chosen["variant"],
            layer=chosen["layer"],
            mu=per_layer[chosen["layer"]]["mu"][row].reshape(shape).copy(),
            misclassification=float(per_layer[chosen["layer"]]["misclassification"][row]),
            statistic=self.statistic,
            layers=layers,
            statistics=statistics,
            tests=tests,
            joint=joint,
            pooled=pooled,
            significance=self.significance,
            seconds=time.perf_counter() - start,
            settings={**{k_: v for k_, v in self.get_params().items() if k_ != "verbose"},
                      "resolved_layers": layers, "resolved_layer_pooling": pooling},
        )
        logger.info("CEPA: p=%.3g %s target %d (source %s) at %s in %.1fs", report.p_value, report.variant,
                    report.target, report.source, report.layer, report.seconds)
        return report

    # ------------------------------------------------------------------------------------------ optimisation
    def optimise(self, x: np.ndarray, y: np.ndarray, layers: Sequence[str] | None = None,
                 variants: Sequence[str] | None = None, problems: Mapping[str, Problems] | None = None,
                 ) -> dict[str, tuple[Problems, dict[str, dict[str, np.ndarray]]]]:
        """Minimise Eq. 1 for every problem; public so benchmarks can time batched against one problem at a time.

        :param x: Clean images (N, C, H, W) float32 in ``clip_values`` (checked like :meth:`scan`).
        :param y: Their labels (N,), every class present.
        :param layers: Layer names (default: the resolved ``layers``).
        :param variants: Subset of ``("pairs", "all-to-one")`` (default: from ``variant``).
        :param problems: Explicit problems per variant (default: all pairs / all targets).
        :return: ``{variant: (problems, {layer: {"mu": (P, D), "sigma", "mu_norm", "ratio", "misclassification",
            "reached", "iterations", "delta_norm", "lam", "landing_sigma", "class_sigma": (P,)}})}``.
        """
        x, y = self._check_clean_set(x, y)
        layers = list(self._resolved_layers() if layers is None else layers)
        resolve_layers(self.classifier.model, layers)
        k = int(self.classifier.nb_classes)
        kinds = VARIANTS[self.variant] if variants is None else tuple(variants)
        device = classifier_device(self.classifier)
        model = scan_model(self.classifier.model, device)  # on CPU a channels-last copy (faster convolutions)
        x_t = to_tensor(x, device)
        out: dict[str, tuple[Problems, dict[str, dict[str, np.ndarray]]]] = {}
        with eval_mode(model), frozen(model):
            f0 = self._clean_features(model, x_t, layers)
            groups = [[layer] for layer in layers] if self.layer_penalty == "separate" else [layers]
            for kind in kinds:
                if problems is not None and kind in problems:
                    probs = problems[kind]
                elif kind == "pairs":
                    probs = pair_problems(y, k)
                else:
                    probs = target_problems(y, k, max_samples=self.max_samples_per_target,
                                            random_state=self.random_state)
                out[kind] = (probs, self._run(model, x_t, f0, probs, groups, layers, y, k))
        return out

    def _clean_features(self, model: nn.Module, x_t: torch.Tensor, layers: Sequence[str]
                        ) -> dict[str, torch.Tensor]:
        """Flattened clean features f(x) (N, D) of every layer, one forward pass per batch."""
        parts: dict[str, list[torch.Tensor]] = {layer: [] for layer in layers}
        with torch.no_grad(), capture(model, layers, flatten=True) as feats:
            for sl in batch_slices(len(x_t), self._batch_images):
                model(preprocess(self.classifier, x_t[sl]))
                for layer in layers:
                    parts[layer].append(feats[layer].detach().clone())
        return {layer: torch.cat(parts[layer]) for layer in layers}

    def _output_shape(self, layer: str) -> tuple[int, ...]:
        model = self.classifier.model
        x0 = torch.full((1,) + tuple(self.classifier.input_shape), self._value_range[0],
                        device=classifier_device(self.classifier))
        with eval_mode(model), torch.no_grad(), capture(model, [layer]) as raw:
            model(preprocess(self.classifier, x0))
            return tuple(raw[layer].shape[1:])

    def _run(self, model: nn.Module, x_t: torch.Tensor, f0: dict[str, torch.Tensor], problems: Problems,
             groups: list[list[str]], layers: list[str], y: np.ndarray, k: int) -> dict[str, dict[str, np.ndarray]]:
        """Optimise every (problem, layer group) copy, in chunks of at most ``batch_size`` images."""
        n_max = problems.indices.shape[1]
        class_sigma = {layer: class_spreads(f0[layer], y, k)
                       for layer in layers}
        copies = [(p, g) for p in range(len(problems)) for g in range(len(groups))]
        per_chunk = max(1, self._batch_images // max(1, n_max))
        chunks = [copies[i:i + per_chunk] for i in range(0, len(copies), per_chunk)]
        parts = [self._run_chunk(model, x_t, f0, problems, groups, chunk)
                 for chunk in progress(chunks, verbose=self.verbose, desc="CEPA chunks")]
        result: dict[str, dict[str, np.ndarray]] = {}
        for layer in layers:
            g_of = next(g for g, members in enumerate(groups) if layer in members)
            picks = [(part, pos, prob) for part, chunk in zip(parts, chunks)
                     for pos, (prob, g) in enumerate(chunk) if g == g_of]
            picks.sort(key=lambda item: item[2])
            entry = {name: np.stack([part["per_copy"][name][pos] for part, pos, _ in picks])
                     for name in parts[0]["per_copy"]}
            entry.update({name: np.stack([part["per_layer"][name][layer][pos] for part, pos, _ in picks])
                          for name in ("mu", "sigma", "mu_norm", "landing_sigma")})
            entry["reached"] = entry["reached"].astype(bool)
            entry["iterations"] = entry["iterations"].astype(int)
            with np.errstate(divide="ignore", invalid="ignore"):
                entry["ratio"] = np.where(entry["mu_norm"] > 0, entry["sigma"] / entry["mu_norm"], np.inf)
            entry["class_sigma"] = class_sigma[layer][problems.targets]
            result[layer] = entry
        return result

    def _run_chunk(self, model: nn.Module, x_t: torch.Tensor, f0: dict[str, torch.Tensor], problems: Problems,
                   groups: list[list[str]], chunk: list[tuple[int, int]]) -> dict[str, Any]:
        """The batched alternating minimisation of Eq. 1 for the copies of one chunk (all in one forward pass)."""
        device = x_t.device
        low, high = self._value_range
        a = len(chunk)
        prob_rows = np.array([p for p, _ in chunk])
        idx = torch.as_tensor(problems.indices[prob_rows], device=device)
        valid = idx >= 0
        validf = valid.float()
        counts = valid.sum(1).clamp_min(1)
        n = idx.shape[1]
        x_groups = x_t[idx.clamp_min(0)]  # (A, n, C, H, W)
        targets = torch.as_tensor(problems.targets[prob_rows], device=device)
        chunk_layers = [layer for layer in f0 if any(layer in groups[g] for _, g in chunk)]
        # per layer: which copies of the chunk penalise it (A,), and the clean features of their samples
        rows = {layer: torch.as_tensor([i for i, (_, g) in enumerate(chunk) if layer in groups[g]], device=device,
                                       dtype=torch.long) for layer in chunk_layers}
        f0g = {layer: f0[layer][idx[rows[layer]].clamp_min(0)] for layer in chunk_layers}  # (A_layer, n, D)

        param = self._parametrisation()
        params = param.init(a, tuple(x_groups.shape[1:]), device)
        lam = np.full(a, float(self.lam))
        above, below = np.zeros(a, dtype=np.int64), np.zeros(a, dtype=np.int64)
        best, stall = np.full(a, np.inf), np.zeros(a, dtype=np.int64)
        active, ever = np.ones(a, dtype=bool), np.zeros(a, dtype=bool)
        # the state kept for each copy: its last iteration at or above the target (its last one if never)
        snap = {name: np.zeros(a) for name in ("misclassification", "iterations", "delta_norm", "lam", "reached")}
        snap_delta = torch.zeros_like(params[0], requires_grad=False)
        snap_layer = {"mu": {layer: torch.zeros((a, f0[layer].shape[1]), device=device) for layer in chunk_layers},
                      "sigma": {layer: torch.full((a,), float("nan"), device=device) for layer in chunk_layers},
                      "mu_norm": {layer: torch.full((a,), float("nan"), device=device) for layer in chunk_layers},
                      "landing_sigma": {layer: torch.full((a,), float("nan"), device=device)
                                        for layer in chunk_layers}}
        for it in range(self.max_iter + 1):
            act = np.flatnonzero(active)
            if len(act) == 0:
                break
            act_t = torch.as_tensor(act, device=device)
            delta = params[0][act_t]
            perturbed = clip_to_range(x_groups[act_t] + delta, low, high)
            with capture(model, chunk_layers, flatten=True) as feats:
                logits = model(preprocess(self.classifier, perturbed.flatten(0, 1))).view(len(act), n, -1)
            w, cnt = validf[act_t], counts[act_t]
            nll = -torch.log_softmax(logits, -1).gather(-1, targets[act_t].view(-1, 1, 1).expand(-1, n, 1))[..., 0]
            ce = (nll * w).sum(1) / cnt
            hits = ((logits.argmax(-1) == targets[act_t, None]) & valid[act_t]).sum(1)
            rate = hits.cpu().numpy() / cnt.cpu().numpy()  # float64: 81 / 90 must equal 0.9
            dnorm = ((delta.detach().flatten(2).norm(dim=-1) * w).sum(1) / cnt).cpu().numpy()
            penalty = torch.zeros(len(act), device=device)
            pos_of = torch.full((a,), -1, dtype=torch.long, device=device)
            pos_of[act_t] = torch.arange(len(act), device=device)
            now: dict[str, tuple[torch.Tensor, ...]] = {}
            for layer in chunk_layers:
                pos = pos_of[rows[layer]]
                keep = pos >= 0
                if not bool(keep.any()):
                    continue
                r, pos = rows[layer][keep], pos[keep]
                shift = feats[layer].view(len(act), n, -1)[pos] - f0g[layer][keep]  # f(x + delta) - f(x)
                wl, cl = validf[r], counts[r]
                mu = ((shift * wl[..., None]).sum(1) / cl[:, None]).detach()  # Eq. 2 for the current deltas
                var = ((shift - mu[:, None]).pow(2).sum(-1) * wl).sum(1) / cl
                penalty = penalty.index_add(0, pos, var)
                landing = feature_spread(shift.detach() + f0g[layer][keep], wl, cl)  # spread of f(x + delta)
                now[layer] = (r, mu, var.detach().sqrt(), mu.norm(dim=1), landing)

            reached = rate >= self.target_misclassification
            ever[act] |= reached
            record = reached | ~ever[act]
            if record.any():
                kept = act[record]
                snap["misclassification"][kept], snap["iterations"][kept] = rate[record], it
                snap["delta_norm"][kept], snap["lam"][kept] = dnorm[record], lam[kept]
                snap["reached"][kept] = reached[record]
                rows_t, rec_t = torch.as_tensor(kept, device=device), torch.as_tensor(record, device=device)
                snap_delta[rows_t] = delta.detach()[rec_t]
                rec_full = torch.zeros(a, dtype=torch.bool, device=device)
                rec_full[rows_t] = True
                for layer, (r, mu, sigma, mu_norm, landing) in now.items():
                    take = rec_full[r]
                    snap_layer["mu"][layer][r[take]] = mu[take]
                    snap_layer["sigma"][layer][r[take]] = sigma[take]
                    snap_layer["mu_norm"][layer][r[take]] = mu_norm[take]
                    snap_layer["landing_sigma"][layer][r[take]] = landing[take]

            best[act], stall[act], stop = update_norm_plateau(best[act], stall[act], dnorm, reached,
                                                              patience=self.stop_patience)
            if it == self.max_iter:
                stop[:] = True
            if (~stop).any():
                go = torch.as_tensor(~stop, device=device)
                lam_t = torch.as_tensor(lam[act], dtype=ce.dtype, device=device)
                ((ce + lam_t * penalty) * go).sum().backward()  # Eq. 1 (per copy, summed over copies)
                move = torch.zeros(a, dtype=torch.bool, device=device)
                move[act_t[go]] = True
                param.update(params, move, move)
                param.project(params, x_groups, (low, high))
            lam[act], above[act], below[act] = update_penalty_weight(
                lam[act], above[act], below[act], reached, patience=LAMBDA_PATIENCE, factor=LAMBDA_FACTOR)
            active[act[stop]] = False
        return {"per_copy": {**snap, "deltas": snap_delta.cpu().numpy()},
                "per_layer": {name: {layer: t.cpu().numpy() for layer, t in by_layer.items()}
                              for name, by_layer in snap_layer.items()}}

    # ---------------------------------------------------------------------------------------- trigger (Eq. 3)
    def trigger_consensus(self, x: np.ndarray, x_triggered: np.ndarray,
                          layers: str | Sequence[str] | None = None) -> dict[str, dict[str, float]]:
        """For a known trigger: ``sigma / ||mu||`` of ``f(x_triggered) - f(x)`` per layer (lower is more
        consensual), a bound on what Eq. 1 can reach for its target, to compare with
        ``report.statistics[variant][layer]["ratio"]``; see
        :func:`~art_backdoor_ext.defences.model.cepa_consensus.trigger_consensus`."""
        from art_backdoor_ext.defences.model.cepa_consensus import trigger_consensus

        return trigger_consensus(self, x, x_triggered, layers)

    def estimate_trigger(self, x: np.ndarray, report: CEPAReport | Mapping[str, Any], *, v: float = 0.0,
                         max_iter: int | None = None) -> np.ndarray:
        """Eq. 3: per-sample input perturbations that reproduce the detected embedded shift ``mu``.

        ``delta_x = argmin ||f(x + delta) - (f(x) + mu)||^2 + v ||delta||^2`` at ``report.layer``, by Adam from
        zero with ``x + delta`` clipped to ``clip_values`` (the paper uses ``v = 0``).

        :param x: Images (N, C, H, W) float32 in ``clip_values``.
        :param report: A :class:`CEPAReport` or its ``to_dict()`` (e.g. read back from JSON).
        :param v: Weight of the squared L2 norm of delta.
        :param max_iter: Gradient steps (default: ``self.max_iter``).
        :return: ``delta`` (N, C, H, W) float32; ``x + delta`` stays in ``clip_values``.
        """
        return estimate_trigger(self, x, report, v=v, max_iter=max_iter)


def _arrange(problems: Problems, values: np.ndarray, k: int, kind: str) -> np.ndarray:
    """(P,) values -> (K, K) matrix (row source, column target) for pairs, (K,) by target for all-to-one."""
    values = np.asarray(values, dtype=float)
    out: np.ndarray = np.full((k, k) if kind == "pairs" else (k,), np.nan)
    if kind == "pairs":
        out[problems.sources, problems.targets] = values
    else:
        out[problems.targets] = values
    return out
