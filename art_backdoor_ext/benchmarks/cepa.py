"""Benchmark ``cepa``: CEPA (Li et al., 2024, Table 1 and Section 4.2) on our data, plus speed.

Groups: all-to-one backdoors with a BadNets patch, a blended noise image, a WaNet-style warp and a global
chessboard (the paper's four incorporation mechanisms), and clean models. Per group: the fraction of victims whose
target class CEPA finds (detected at ``significance`` and the right target), false detections on clean models,
the attack success rate of the Eq. 1 perturbations on the clean set and of the Eq. 3 perturbations
(:meth:`~art_backdoor_ext.defences.model.cepa.CEPA.estimate_trigger`, given the detected ``mu``) on held-out test
images, the ground-truth trigger's ASR, and the seconds per scan.

Reference test (opt-in, not in the paper): every victim's scan is also tested against ``references`` clean
models trained and scanned like the clean victims
(:class:`~art_backdoor_ext.defences.model.cepa_reference.CEPAReference`; fast 8, full 10).

Speed: the batched optimisation (all class pairs and candidate layers in one forward pass per iteration) against a
loop over one pair at a time with the same settings, on the same model and clean set, in the same run; the
statistics must agree.

fast: digits, 2 victims per group, 10 clean images per class, the all-to-one variant (the attacks are all-to-one),
200 iterations. full: Fashion-MNIST (20,000 training images, 4 epochs), 5 victims per group, 10 clean images per
class (as in the paper), the all-to-one variant, 200 iterations (the class-pair variant flagged every clean digits
model it was run on, docs/cepa.md). Poisoning rate 5% (fast: 10%), except the full profile's warp victims at 16%:
the paper poisons nine times as many images for WaNet (900 per source class against 100) "to achieve similarly
effective attacks"; at 5% our Fashion-MNIST warp victims reached ASR 0.10-0.48, at 16% 0.89-0.92
(tools/scratch/cepa_warp_victims.py).
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import time
from typing import Any

import numpy as np

from art_backdoor_ext.attacks import triggers
from art_backdoor_ext.benchmarks import BenchmarkReport, register_benchmark, seeded_victim_setup
from art_backdoor_ext.datasets import load_dataset
from art_backdoor_ext.defences.model.cepa import CEPA
from art_backdoor_ext.defences.model.cepa_reference import CEPAReference, ReferenceTest
from art_backdoor_ext.functional.reference_null import MIN_REFERENCES
from art_backdoor_ext.training import fit_classifier, train_victim

logger = logging.getLogger(__name__)

PROFILES: dict[str, dict[str, Any]] = {
    "fast": {"dataset": "digits", "models": 2, "per_class": 10, "train": None, "epochs": 12, "lr": 3e-3,
             "arch": "digits-cnn", "rate": 0.1, "warp_rate": 0.1, "patch": 2, "chessboard_norm": 1.0, "references": 8,
             "variant": "all-to-one",
             "max_iter": 200, "eq3_samples": 300, "speed_iter": 60},
    "full": {"dataset": "fashion-mnist", "models": 5, "per_class": 10, "train": 20000, "epochs": 4, "lr": 1e-3,
             "arch": "badnets-cnn", "rate": 0.05, "warp_rate": 0.16, "patch": 3, "chessboard_norm": 2.0,
             "references": 10,
             "variant": "all-to-one",
             "max_iter": 200, "eq3_samples": 1000, "speed_iter": 100},
}
GROUPS = ("patch", "blend", "warp", "chessboard", "clean")
#: The statistic every scan of the benchmark is decided by (CEPA's default); the report's notes record it.
DEFAULT_STATISTIC = inspect.signature(CEPA).parameters["statistic"].default
#: Other decisions computed from every scan's statistics, without optimising again:
#: (label, statistic, inference, layer_pooling).
ALTERNATIVES = (("sigma, p-value", "sigma", "p-value", "sidak"),
                ("sigma, layers pooled", "sigma", "p-value", "pooled"),
                ("sigma/||mu|| (paper), p-value", "consensus", "p-value", "sidak"),
                ("sigma, MAD > 2", "sigma", "mad", "sidak"),
                ("||mu||, p-value", "norm", "p-value", "sidak"), ("sigma/||mu||, MAD > 2", "consensus", "mad", "sidak"),
                ("||mu||, MAD > 2", "norm", "mad", "sidak"))
#: Ground-truth ASR at or above which an attack counts as one that took (the "target found (attack took)" column).
MIN_TOOK_ASR = 0.5
#: The per-target statistics of every victim kept in the report's arrays ("group/seed/layer/name").
SAVED_STATISTICS = ("ratio", "mu_norm", "sigma", "misclassification", "delta_norm", "landing_sigma", "class_sigma")


def _trigger(group: str, seed: int, cfg: dict[str, Any]) -> triggers.Trigger:
    if group == "patch":
        size = cfg["patch"]
        return triggers.patch_trigger(pattern=np.ones((size, size), np.float32), location="bottom-right")
    if group == "blend":
        return triggers.blend_trigger(alpha=0.2, random_state=seed)
    if group == "warp":
        return triggers.warp_trigger(grid_size=4, strength=1.0, random_state=seed)
    return triggers.chessboard_trigger(l2_norm=cfg["chessboard_norm"])


def _split(y: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the defender's clean set (per_class per class) and of the held-out rest."""
    rng = np.random.default_rng(seed)
    chosen = np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False)
                                     for c in np.unique(y)]))
    return chosen, np.setdiff1d(np.arange(len(y)), chosen)


def _victim(group: str, seed: int, data: Any, cfg: dict[str, Any]) -> tuple[Any, int | None, float | None]:
    clf, x, y = seeded_victim_setup(seed, data, cfg)
    if group == "clean":
        fit_classifier(clf, x, y, nb_epochs=cfg["epochs"], learning_rate=cfg["lr"], random_state=seed)
        return clf, None, None
    target = int(np.random.default_rng(1000 + seed).integers(data.nb_classes))
    victim = train_victim(clf, x, y, data.x_test, data.y_test, _trigger(group, seed, cfg), target=target,
                          rate=cfg["warp_rate" if group == "warp" else "rate"], nb_epochs=cfg["epochs"],
                          learning_rate=cfg["lr"], random_state=seed)
    return clf, target, victim.attack_success_rate


def _speed(det: CEPA, x: np.ndarray, y: np.ndarray, iters: int) -> dict[str, Any]:
    det = CEPA(det.classifier, **{**det.get_params(), "max_iter": iters, "verbose": False})
    start = time.perf_counter()
    problems, batched = det.optimise(x, y, variants=["pairs"])["pairs"]
    t_batched = time.perf_counter() - start
    start = time.perf_counter()
    single = [det.optimise(x, y, variants=["pairs"], problems={"pairs": problems.subset(np.array([i]))})["pairs"][1]
              for i in range(len(problems))]
    t_loop = time.perf_counter() - start
    diff = 0.0
    for layer, stats in batched.items():
        one = np.array([s[layer]["ratio"][0] for s in single])
        diff = max(diff, float(np.max(np.abs(one - stats["ratio"]) / np.maximum(np.abs(stats["ratio"]), 1e-12))))
    return {"pairs": len(problems), "layers": len(batched), "iterations": iters, "batched_s": t_batched,
            "one_pair_loop_s": t_loop, "speedup": t_loop / t_batched, "max_relative_difference": diff}


def _premise(det: CEPA, report: Any, group: str, seed: int, cfg: dict[str, Any], x: np.ndarray, y: np.ndarray,
             target: int | None) -> dict[str, Any]:
    """CEPA's premise on this victim: the ground-truth trigger's sigma / ||mu|| on the clean set's non-target
    images, per layer, over the median of the Eq. 1 statistics of the putative targets at that layer; the most
    favourable layer is kept. Well below 1: the true trigger is an outlier Eq. 1 could reach, so a miss is the
    optimisation's or the inference's; above 1: inconclusive (Eq. 1 may find another consensual route into the
    backdoor). The ratio is used whatever the detector's statistic: it does not depend on the trigger's strength,
    where sigma and ||mu|| grow with it (a strong trigger moves the features further than Eq. 1 needs to)."""
    if target is None:
        return {"GT ratio (best layer)": None, "GT ratio / Eq.1 median": None, "premise layer": None}
    xs = x[y != target]
    truth = det.trigger_consensus(xs, _trigger(group, seed, cfg)(xs).astype(np.float32))
    stats = report.statistics[report.variant]
    quotient = {layer: truth[layer]["ratio"] / float(np.nanmedian(stats[layer]["ratio"])) for layer in truth}
    best = min(quotient, key=quotient.__getitem__)
    return {"GT ratio (best layer)": truth[best]["ratio"], "GT ratio / Eq.1 median": quotient[best],
            "premise layer": best}


def _per_layer(report: Any, target: int | None) -> str:
    """Each layer's p-value (not Sidak-corrected; with the uncalibrated one when they differ), its most extreme
    putative target, and the true target's rank by the detection statistic (1 = most extreme): what the decision
    saw at every layer."""
    parts = []
    for test in report.tests:
        stats = report.statistics[test["variant"]][test["layer"]]
        text = f"{test['layer']}: p {test['p_value']:.2g}"
        if test.get("p_value_uncalibrated", test["p_value"]) != test["p_value"]:
            text += f" (uncalibrated {test['p_value_uncalibrated']:.2g})"
        text += f" -> {test['target']}"
        if target is not None and test["variant"] == "all-to-one":
            key, sign = {"norm": ("mu_norm", -1.0), "sigma": ("sigma", 1.0)}.get(report.statistic, ("ratio", 1.0))
            values = np.nan_to_num(sign * np.asarray(stats[key], dtype=float), nan=np.inf)
            text += f" (true #{int(np.sum(values < values[target])) + 1})"
        parts.append(text)
    return "; ".join(parts)


def _variants() -> dict[str, dict[str, Any]]:
    """The detector's own decision (``"default"``) and each of :data:`ALTERNATIVES`, as
    :meth:`CEPA.scan_variants` overrides (each layer on its own: p-value bootstrap-calibrated and Sidak-corrected
    over the layers; MAD: the largest anomaly index over the layers against the detector's threshold; "layers
    pooled": ``layer_pooling="pooled"``)."""
    return {"default": {}, **{label: {"statistic": statistic, "inference": inference, "layer_pooling": pooling}
                              for label, statistic, inference, pooling in ALTERNATIVES}}


def _scan_setup(clf: Any, seed: int, data: Any, cfg: dict[str, Any],
                verbose: bool) -> tuple[CEPA, np.ndarray, np.ndarray, np.ndarray]:
    """How the benchmark scans a model (victims and references alike): the detector, the defender's clean set
    (``per_class`` test images per class drawn with ``seed``) and the indices of the rest of the test split."""
    clean_idx, rest_idx = _split(data.y_test, cfg["per_class"], seed)
    det = CEPA(clf, variant=cfg["variant"], max_iter=cfg["max_iter"], random_state=seed, verbose=verbose)
    return det, data.x_test[clean_idx], data.y_test[clean_idx], rest_idx


def _references(cfg: dict[str, Any], data: Any, random_state: int, verbose: bool) -> CEPAReference | None:
    """``cfg["references"]`` clean models trained like the clean victims (seeds ``random_state + 500 + i``, never a
    victim's) and scanned like them: the references of the opt-in
    :class:`~art_backdoor_ext.defences.model.cepa_reference.CEPAReference` test; None when fewer than it needs."""
    if cfg.get("references", 0) < MIN_REFERENCES:
        return None
    reports = []
    for i in range(cfg["references"]):
        seed = random_state + 500 + i
        det, x, y, _ = _scan_setup(_victim("clean", seed, data, cfg)[0], seed, data, cfg, verbose)
        reports.append(det.scan(x, y))
    return CEPAReference.from_reports(reports)


def _reference_rows(rows: list[dict[str, Any]], victims: list[dict[str, Any]],
                    tests: list[ReferenceTest] | None, n_wanted: int) -> str:
    """The reference test's columns in ``rows`` (per group) and ``victims``, from each victim's
    :meth:`CEPAReference.test` (``tests``, in the order of ``victims``; None: not run); returns the report's note."""
    if tests is None:
        return (f"reference test: not run, it needs at least {MIN_REFERENCES} clean reference models (the profile "
                f"asks for {n_wanted})")
    outcomes: dict[str, list[bool]] = {}
    for test, victim in zip(tests, victims):
        group, target, gt_asr = victim["group"], victim["target"], victim["gt_asr"]
        victim["reference (p -> target)"] = f"{test.p_value:.2g} -> {test.target}"
        if group == "clean" or (gt_asr is not None and gt_asr >= MIN_TOOK_ASR):
            outcomes.setdefault(group, []).append(test.detected if group == "clean"
                                                  else test.detected and test.target == target)
    for row in rows:
        values = outcomes.get(row["attack"], [])
        key = "reference: false detection" if row["attack"] == "clean" else "reference: target found (attack took)"
        row[key] = float(np.mean(values)) if values else None
    n_refs = tests[0].n_references if tests else n_wanted
    return (f"reference: CEPAReference's test (opt-in, not in the paper) of each victim's scan against {n_refs} "
            "clean reference models trained and scanned like the clean victims (seeds random_state + 500 + i)")


def _draw(figures: dict[str, Any], group: str, report: Any, target: int | None, x_new: np.ndarray,
          delta: np.ndarray, seed: int, cfg: dict[str, Any]) -> None:
    """Fig. 1-4 (bars per putative target and layer) and Fig. 5 (estimated against true trigger) for the first
    victim of a group; skipped without matplotlib."""
    if importlib.util.find_spec("matplotlib") is None:
        logger.info("no CEPA figures: matplotlib is not installed")
        return
    from art_backdoor_ext.plotting import plot_cepa_statistics, plot_trigger_estimate

    figures[f"statistics-{group}"] = plot_cepa_statistics(report, true_target=target)
    true = None if group == "clean" else _trigger(group, seed, cfg)(x_new[:4]).astype(np.float32)
    figures[f"trigger-{group}"] = plot_trigger_estimate(x_new[:4], delta[:4], true, n=4)


@register_benchmark("cepa")
def bench_cepa(*, profile: str, random_state: int, verbose: bool, models: int | None = None) -> BenchmarkReport:
    cfg = dict(PROFILES[profile])
    if models is not None:
        cfg["models"] = models
    data = load_dataset(cfg["dataset"])
    rows: list[dict[str, Any]] = []
    victims: list[dict[str, Any]] = []
    speed_row: dict[str, Any] | None = None
    arrays: dict[str, np.ndarray] = {}
    report_figures: dict[str, Any] = {}
    scans: list[Any] = []
    for g, group in enumerate(GROUPS):
        outcomes = []
        for m in range(cfg["models"]):
            seed = random_state + 100 * g + m
            clf, target, gt_asr = _victim(group, seed, data, cfg)
            det, x, y, rest_idx = _scan_setup(clf, seed, data, cfg, verbose)
            reports: dict[str, Any] = det.scan_variants(x, y, _variants())
            report = reports["default"]
            pool = rest_idx[data.y_test[rest_idx] != report.target]
            pick = np.random.default_rng(seed).choice(pool, size=min(cfg["eq3_samples"], len(pool)), replace=False)
            x_new = data.x_test[pick]
            delta = det.estimate_trigger(x_new, report)
            eq3 = float(np.mean(clf.predict(x_new + delta).argmax(1) == report.target))
            found = bool(report.detected and report.target == target) if target is not None else None
            joint = report.joint or {"p_value": 1.0, "target": None}
            joint_detected = bool(joint["p_value"] < det.significance)
            joint_found = bool(joint_detected and joint["target"] == target) if target is not None else None
            premise = _premise(det, report, group, seed, cfg, x, y, target)
            others = {label: (reports[label].detected, reports[label].target) for label, *_ in ALTERNATIVES}
            for layer in report.layers:
                for name in SAVED_STATISTICS:
                    arrays[f"{group}/{seed}/{layer}/{name}"] = report.statistics["all-to-one"][layer][name]
            outcomes.append({"found": found, "detected": report.detected, "p": report.p_value,
                             "eq1": report.misclassification, "eq3": eq3, "gt": gt_asr, "seconds": report.seconds,
                             "premise": premise["GT ratio / Eq.1 median"], "joint_found": joint_found,
                             "joint_detected": joint_detected,
                             **{f"alt {label}": (det_ if target is None else bool(det_ and t_ == target))
                                for label, (det_, t_) in others.items()}})
            scans.append(report)
            if m == 0:
                _draw(report_figures, group, report, target, x_new, delta, seed, cfg)
            victims.append({"group": group, "seed": seed, "target": target, "detected": report.detected,
                            "found_target": report.target, "variant": report.variant, "layer": report.layer,
                            "p_value": report.p_value, "gt_asr": gt_asr, **premise,
                            "per layer (p -> target)": _per_layer(report, target),
                            "joint layers (p -> target)": f"{joint['p_value']:.2g} -> {joint['target']}",
                            **{f"{label} (detected -> target)": f"{d_} -> {t_}"
                               for label, (d_, t_) in others.items()}})
            if speed_row is None and group != "clean":
                speed_row = _speed(det, x, y, cfg["speed_iter"])

        def mean(key: str, rows_: list[dict[str, Any]] = outcomes) -> float | None:
            values = [o[key] for o in rows_ if o[key] is not None]
            return float(np.mean(values)) if values else None

        rows.append({
            "attack": group,
            "target found": mean("found") if group != "clean" else None,
            "target found (attack took)": (mean("found", [o for o in outcomes if o["gt"] >= MIN_TOOK_ASR])
                                           if group != "clean" else None),
            "attacks that took": (sum(o["gt"] >= MIN_TOOK_ASR for o in outcomes) if group != "clean" else None),
            "false detection (clean)": mean("detected") if group == "clean" else None,
            "target found (joint layers)": mean("joint_found") if group != "clean" else None,
            "false detection (joint layers)": mean("joint_detected") if group == "clean" else None,
            **{(f"{label}: target found" if group != "clean" else f"{label}: false detection"):
               mean(f"alt {label}") for label, *_ in ALTERNATIVES},
            "median p": float(np.median([o["p"] for o in outcomes])),
            "Eq.1 ASR (clean set)": mean("eq1"),
            "Eq.3 ASR (test)": mean("eq3"),
            "ground-truth ASR": mean("gt"),
            "GT ratio / Eq.1 median": mean("premise"),
            "seconds/model": mean("seconds"),
        })
    reference = _references(cfg, data, random_state, verbose)
    reference_note = _reference_rows(rows, victims, None if reference is None else [reference.test(r) for r in scans],
                                     int(cfg.get("references", 0)))
    report = BenchmarkReport("cepa", profile, {
        "CEPA detection (all-to-one attacks, significance 0.05)": rows,
        "speed: batched optimisation vs one pair at a time (same settings)": [speed_row or {}],
        "victims": victims})
    report.figures = report_figures
    report.arrays = arrays
    report.notes += [
        f"dataset {data.name}, {cfg['models']} victims per group, {cfg['per_class']} clean images per class from the "
        f"test split, CEPA variant {cfg['variant']!r}, {cfg['max_iter']} iterations, default layers, decided by "
        f"statistic={DEFAULT_STATISTIC!r} (CEPA's default)",
        f"target found (attack took): the attacked victims whose ground-truth ASR is at least {MIN_TOOK_ASR} "
        "(a backdoor that did not take is not one to find; 'target found' counts every victim)",
        "Eq. 3 ASR: test images outside the clean set and the detected target, perturbed by estimate_trigger with "
        "the reported mu; for clean models the 'target' is the most extreme putative one",
        "GT ratio / Eq.1 median: the ground-truth trigger's sigma / ||mu|| on the clean set's non-target images "
        "over the median Eq. 1 statistic of the putative targets, at the layer where it is lowest (well below 1: the "
        "trigger itself is a consensual outlier Eq. 1 could reach; above 1: inconclusive, Eq. 1 may find another "
        "route into the backdoor)",
        "joint layers: the decision of layer_pooling='joint' (report.joint, the all-to-one layers tested together) "
        "from the same scan, which is the default's (layer_pooling='auto') since 2026-12-07; 'per layer' lists "
        "each layer's own test, and 'sigma, p-value' decides with those, Sidak over the layers (the default until "
        "2026-12-03)",
        "sigma / ||mu|| / MAD columns: the same scans decided with CEPA(statistic='sigma') (the spread about mu "
        "alone, the paper's first condition; the default since 2026-12-02), statistic='consensus' (the paper's "
        "sigma / ||mu||), statistic='norm' (its Fig. 2 and 4 statistic) and with "
        "inference='mad' (anomaly index > 2, as Neural Cleanse), each layer on its own, and sigma with "
        "layer_pooling='pooled' (the layers' median-relative statistics under one null: the default's decision "
        "from 2026-12-03 to 2026-12-07); "
        "the "
        "per-target statistics of every victim are in the arrays file (group/seed/layer/name)",
        reference_note,
        "paper anchor (CIFAR-10 ResNet-18, Table 1): Eq.1 ASR 92/93/97/91%, Eq.3 ASR 91/89/81/93% for "
        "patch/blend/WaNet/chessboard; target class detected for all four",
    ]
    return report
