"""Benchmark ``ad``: the AD paper's four groups (Xiang et al., 2020, Table 2) on our data, plus speed.

Groups: single-source sparse-pixel (BD-P-S), single-source global chessboard (BD-G-S), multi-source chessboard
(BD-G-M, three sources) and clean. Each victim draws its own source/target classes and trigger from its seed.
Detectors: the paper's AD variants in input space (J, Jp, Jc, confusion-corrected, L1), this project's
AD in the feature space of the first convolution, AD with the ratio statistic, the asymmetry statistic computed
from the same scans (``+ asymmetry``), the source-and-distance-normalised statistic under the Gamma null on sizes
from the same scans (``+ normalised, size null``; ``..., combined``: the detector's default since 2026-12-07, two
exclusion rules combined), and Neural Cleanse.

Speed: the batched engine (all K(K-1) pairs at once) against a faithful one-pair-at-a-time loop with the same
stopping rule, on the same model and clean set, in the same run; the statistics must agree.

fast: digits, 3 victims per group, 20 clean images per class. full: Fashion-MNIST (20,000 training images,
4 epochs at learning rate 3e-3), 10 victims per group, 30 clean images per class; the single-source victims get
600 poisoned copies, the multi-source ones 300 per source (the paper: 1000, and 100 from each of 9 sources): with
300 copies and learning rate 1e-3 most sparse-pixel victims never learnt their four-pixel trigger (ASR
0.02-0.04), see docs/benchmarks.md. The chessboard has L2 norm 1 (2 until 2026-12-03; the paper, Fig. 5, takes
the smallest norm at which the attack succeeds, 0.2 on CIFAR-10; on our victims most chessboard attacks at 0.5
fail, see docs/benchmarks.md "The global trigger's norm"). In the full profile an attacked
victim whose ASR stays below 0.9 is drawn again (new trigger and poisoned subset, up to 3 times, column
``draws``): the paper evaluates successful attacks only (ASR 0.97-0.99, its Table 1), and a further table
counts only those (ASR >= 0.9 after the redraws; every clean model kept).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from art_backdoor_ext.attacks.triggers import chessboard_trigger, sparse_pixel_trigger
from art_backdoor_ext.benchmarks import BenchmarkReport, register_benchmark, seeded_victim_setup
from art_backdoor_ext.datasets import load_dataset, sample_per_class
from art_backdoor_ext.defences.model.order_statistic import INFERENCE_PARAMETERS, OrderStatisticDetector
from art_backdoor_ext.functional.null_exclusion import order_statistic_with_exclusion
from art_backdoor_ext.functional.pair_normalisation import normalised_statistics, smallest_size_source
from art_backdoor_ext.functional.robust import asymmetry_statistics, order_statistic_pvalue, reciprocal_statistics
from art_backdoor_ext.functional.size_null import size_order_statistic_pvalue
from art_backdoor_ext.training import fit_classifier, train_victim

logger = logging.getLogger(__name__)

PROFILES: dict[str, dict[str, Any]] = {
    "fast": {
        "dataset": "digits",
        "models": 3,
        "per_class": 20,
        "train": None,
        "epochs": 20,
        "lr": 3e-3,
        "arch": "digits-cnn",
        "sparse_norm": 1.0,
        "global_norm": 1.0,
        "count": 60,
        "single_source_count": 60,
        "variants": None,
        "speed": True,
        "speed_per_class": (5, 10),  # and the profile's per_class: the ratio against the clean-set size
        "min_asr": None,
        "redraws": 0,
    },
    "full": {
        "dataset": "fashion-mnist",
        "models": 10,
        "per_class": 30,
        "train": 20000,
        "epochs": 4,
        "lr": 3e-3,
        "arch": "badnets-cnn",
        "sparse_norm": 2.0,
        "global_norm": 1.0,
        "count": 300,
        "single_source_count": 600,
        "variants": ["AD-J-P (input)", "AD-J-P-L1 (input)", "AD-J-C (input)", "AD-J-P (first conv)"],
        "speed": False,
        "speed_per_class": (5, 10),
        "min_asr": 0.9,
        "redraws": 3,
    },
}

_PAPER = {"layer": None, "statistic": "size", "null": "reciprocal", "source_rule": "most-extreme", "exclusion": "k-1"}
VARIANTS: dict[str, dict[str, Any]] = {
    "AD-J-P (input)": _PAPER,
    "AD-Jp-P (input)": {**_PAPER, "objective": "Jp"},
    "AD-Jc-P (input)": {**_PAPER, "objective": "Jc"},
    "AD-J-C (input)": {**_PAPER, "confusion_correction": True},
    "AD-J-P-L1 (input)": {**_PAPER, "norm": "l1"},
    "AD-J-P ratio (input)": {**_PAPER, "statistic": "ratio"},
    "AD-J-P (first conv)": {**_PAPER, "layer": "auto"},
    "AD-J-P-L1 (first conv)": {**_PAPER, "layer": "auto", "norm": "l1"},
}
GROUPS = ("BD-P-S", "BD-G-S", "BD-G-M", "Clean")
#: Variants whose sizes also feed the derived statistics below.
ASYMMETRY_FROM = ("AD-J-P (input)", "AD-J-P-L1 (input)", "AD-J-P (first conv)", "AD-J-P-L1 (first conv)")
#: Statistics and nulls computed from a scan's sizes and clean set: the asymmetry statistic (size over the
#: reverse pair's size) under the paper's null, and the source-and-distance-normalised statistic under the
#: Gamma null on sizes with the source named by the smallest size into the detected target, as the detector's
#: default does (:mod:`~art_backdoor_ext.functional.pair_normalisation`,
#: :mod:`~art_backdoor_ext.functional.size_null`).
#: ``combined`` sets aside one and K - 1 statistics in two tests, the smaller p Sidak-corrected (the detector's
#: default since 2026-12-07, :mod:`~art_backdoor_ext.functional.null_exclusion`); the row without it sets aside
#: K - 1 (the default until then).
DERIVED: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], Any]] = {
    "asymmetry": lambda d, x, y: order_statistic_pvalue(reciprocal_statistics(asymmetry_statistics(d))),
    "normalised, size null": lambda d, x, y: source_by_size(size_order_statistic_pvalue(
        normalised_statistics(d, "source-normalised-distance", x=x, y=y)), d),
    "normalised, size null, combined": lambda d, x, y: source_by_size(order_statistic_with_exclusion(
        size_order_statistic_pvalue, normalised_statistics(d, "source-normalised-distance", x=x, y=y),
        "combined")[0], d),
}


def source_by_size(ost: Any, sizes: np.ndarray) -> Any:
    """``ost`` with its source named as ``OrderStatisticDetector(source_rule="smallest-size")`` names it: the class
    with the smallest size into the detected target (p-value and target unchanged)."""
    return dataclasses.replace(ost, source=smallest_size_source(sizes, ost.target))


#: Seed offset between an attacker's successive draws (larger than any victim seed of a benchmark run).
REDRAW_STRIDE = 10007


def _victim(group: str, seed: int, data: Any, cfg: dict[str, Any]
            ) -> tuple[Any, int | None, list[int], float | None, int]:
    """The seeded victim, its target and sources, its attack success rate on source-class test images, and the
    number of draws the attacker needed.

    With ``cfg["min_asr"]`` set, an attacker whose backdoor does not take (ASR below it) draws again, up to
    ``cfg["redraws"]`` times: a new trigger (sparse-pixel) and a new poisoned subset and training order, from
    the same initial model and training images. When no draw reaches ``min_asr`` the one with the highest ASR
    is kept. The AD paper evaluates only successful attacks (ASR 0.97-0.99,
    Table 1: "all backdoor attacks are successful"); the first draw is the victim of a run without ``min_asr``.
    """
    rng = np.random.default_rng(1000 + seed)
    target = int(rng.integers(10))
    others = [c for c in range(10) if c != target]
    if group == "Clean":
        clf, x, y = seeded_victim_setup(seed, data, cfg)
        fit_classifier(clf, x, y, nb_epochs=cfg["epochs"], learning_rate=cfg["lr"], random_state=seed)
        return clf, None, [], None, 1
    n_sources = 3 if group == "BD-G-M" else 1
    sources = sorted(int(s) for s in rng.choice(others, size=n_sources, replace=False))
    min_asr = cfg.get("min_asr")
    draws = 1 if min_asr is None else 1 + int(cfg.get("redraws", 0))
    tried: list[tuple[float, Any]] = []  # (ASR, classifier) per draw
    for draw in range(draws):
        draw_seed = seed + REDRAW_STRIDE * draw
        clf, x, y = seeded_victim_setup(seed, data, cfg)
        trigger = (
            sparse_pixel_trigger(n_pixels=4, l2_norm=cfg["sparse_norm"], random_state=draw_seed)
            if group == "BD-P-S"
            else chessboard_trigger(l2_norm=cfg["global_norm"])
        )
        victim = train_victim(
            clf,
            x,
            y,
            data.x_test,
            data.y_test,
            trigger,
            target=target,
            mode="one-to-one" if n_sources == 1 else "multi-source",
            sources=sources,
            count=cfg["single_source_count"] if n_sources == 1 else cfg["count"] * n_sources,
            nb_epochs=cfg["epochs"],
            learning_rate=cfg["lr"],
            random_state=draw_seed,
        )
        asr = float(victim.attack_success_rate)
        tried.append((asr, clf))
        if min_asr is None or asr >= min_asr:
            break
        logger.info("victim %s seed %d: ASR %.3f < %.2f on draw %d", group, seed, asr, min_asr, draw + 1)
    best_asr, best_clf = max(tried, key=lambda t: t[0])
    return best_clf, target, sources, best_asr, len(tried)


def is_successful(asr: float | None, min_asr: float | None) -> bool:
    """Whether a victim counts as a successful attack: a clean model (``asr`` None) always does, an attacked one
    when no ``min_asr`` is set or its ASR reached it (the AD paper evaluates successful attacks only)."""
    return asr is None or min_asr is None or asr >= min_asr


def pair_ranks(statistics: np.ndarray, target: int | None, sources: list[int]) -> int | None:
    """Rank (1 = smallest) of the best true (source, target) pair among the K(K-1) off-diagonal statistics: 1
    means the statistic singles the backdoor out and only the inference can miss it; more means natural pairs
    are smaller. None for clean models."""
    if target is None:
        return None
    values = np.asarray(statistics, dtype=float)
    off = values[~np.eye(len(values), dtype=bool)]
    best = min(values[s, target] for s in sources)
    return int(np.sum(off < best)) + 1


def _neural_cleanse() -> Any:
    try:
        from art_backdoor_ext.defences.model.neural_cleanse import PyTorchNeuralCleanse
    except ImportError:  # pragma: no cover - NC not installed in this build
        return None
    return PyTorchNeuralCleanse


def _speed_rows(clf: Any, data: Any, seed: int, sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    """The speed comparison at each clean-set size (images per class) on the same victim: the one-pair loop's time
    is mostly per-iteration work that batching removes, so the ratio falls as the images per pair grow."""
    rows = []
    for per_class in sizes:
        x, y = sample_per_class(data.x_test, data.y_test, per_class, random_state=seed)
        rows.append({"images per class": per_class, "torch threads": torch.get_num_threads(), **_speed(clf, x, y)})
    return rows


def _speed(clf: Any, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    det = OrderStatisticDetector(clf, layer=None, statistic="size")
    engine = det.engine(det._scale(x))
    from art_backdoor_ext.defences.model.perturbation import pair_problems

    problems = pair_problems(y, clf.nb_classes)
    start = time.perf_counter()
    batched = engine.run(x, y, problems)
    t_batched = time.perf_counter() - start
    start = time.perf_counter()
    single = [engine.run(x, y, problems.subset(np.array([i]))).size_l2[0] for i in range(len(problems))]
    t_loop = time.perf_counter() - start
    diff = float(np.max(np.abs(np.array(single) - batched.size_l2) / np.maximum(batched.size_l2, 1e-12)))
    return {
        "pairs": len(problems),
        "batched_s": t_batched,
        "one_pair_loop_s": t_loop,
        "speedup": t_loop / t_batched,
        "max_relative_difference": diff,
    }


THETAS = (0.05, 1e-3)


def _verdict(r: dict[str, Any], theta: float) -> tuple[bool, bool]:
    """(right pair, right target) at threshold theta; for clean models both mean 'not flagged'."""
    detected = r["detected"] if r["p"] is None else r["p"] < theta
    if r["target"] is None:
        return not detected, not detected
    ok_target = bool(detected and r["found"] == r["target"])
    return ok_target and (r["source"] is None or r["source"] in r["sources"]), ok_target


def _accuracy_rows(outcomes: dict[str, dict[str, list[dict[str, Any]]]], theta: float,
                   successful_only: bool = False) -> list[dict[str, Any]]:
    """One row per detector; ``successful_only`` keeps the outcomes marked ``successful`` (attacks whose ASR
    reached the profile's ``min_asr``, and every clean model)."""
    rows = []
    for name, all_by_group in outcomes.items():
        by_group = {g: [r for r in all_by_group[g] if r["successful"] or not successful_only] for g in GROUPS}
        row: dict[str, Any] = {"detector": name}
        for group in GROUPS:
            verdicts = [_verdict(r, theta) for r in by_group[group]]
            row[group] = float(np.mean([v[0] for v in verdicts])) if verdicts else None
            if group != "Clean":
                row[f"{group} target-only"] = float(np.mean([v[1] for v in verdicts])) if verdicts else None
        if successful_only:
            row["victims kept"] = " / ".join(str(len(by_group[g])) for g in GROUPS)
        attacked = [r["p"] for g in GROUPS[:3] for r in by_group[g] if r["p"] is not None]
        clean = [r["p"] for r in by_group["Clean"] if r["p"] is not None]
        row["median p attacked"] = float(np.median(attacked)) if attacked else None
        row["max p attacked"] = float(np.max(attacked)) if attacked else None
        row["min p clean"] = float(np.min(clean)) if clean else None
        row["seconds/model"] = float(np.mean([r["seconds"] for g in GROUPS for r in by_group[g]]))
        rows.append(row)
    return rows


def _ad_reports(clf: Any, x: np.ndarray, y: np.ndarray, variants: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every AD variant's report, in ``variants``' order; variants that differ only in inference parameters share
    one optimisation (:meth:`~art_backdoor_ext.defences.model.order_statistic.OrderStatisticDetector.scan_variants`),
    so their seconds include that shared optimisation."""
    by_engine: dict[tuple[tuple[str, Any], ...], dict[str, dict[str, Any]]] = defaultdict(dict)
    for name, kw in variants.items():
        engine_kw = tuple(sorted((k, v) for k, v in kw.items() if k not in INFERENCE_PARAMETERS))
        by_engine[engine_kw][name] = {k: v for k, v in kw.items() if k in INFERENCE_PARAMETERS}
    reports: dict[str, Any] = {}
    for engine_kw, group in by_engine.items():
        reports.update(OrderStatisticDetector(clf, **dict(engine_kw)).scan_variants(x, y, group))
    return {name: reports[name] for name in variants}


@register_benchmark("ad")
def bench_ad(*, profile: str, random_state: int, verbose: bool, models: int | None = None,
             per_class: int | None = None) -> BenchmarkReport:
    cfg = dict(PROFILES[profile])
    if models is not None:
        cfg["models"] = models
    if per_class is not None:
        cfg["per_class"] = per_class
    variants = {k: v for k, v in VARIANTS.items() if cfg["variants"] is None or k in cfg["variants"]}
    data = load_dataset(cfg["dataset"])
    nc_cls = _neural_cleanse()
    outcomes: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    victims = []
    speed_rows: list[dict[str, Any]] = []
    for group in GROUPS:
        for m in range(cfg["models"]):
            seed = random_state + 100 * GROUPS.index(group) + m
            clf, target, sources, asr, draws = _victim(group, seed, data, cfg)
            successful = is_successful(asr, cfg.get("min_asr"))
            victim_row: dict[str, Any] = {"group": group, "seed": seed, "target": target, "sources": str(sources),
                                          "ASR": asr, "draws": draws}
            victims.append(victim_row)
            x, y = sample_per_class(data.x_test, data.y_test, cfg["per_class"], random_state=seed)
            if not speed_rows and cfg["speed"]:
                speed_rows = _speed_rows(clf, data, seed, tuple(sorted({*cfg["speed_per_class"], cfg["per_class"]})))
            reports = _ad_reports(clf, x, y, variants)
            if nc_cls is not None:
                reports["NC-L1 (MAD > 2)"] = nc_cls(clf, random_state=seed).scan(x, y)
            logger.info("bench ad: %s seed %d", group, seed)
            for name, report in reports.items():
                truth = {"target": target, "sources": sources, "seconds": report.seconds, "successful": successful}
                outcomes[name][group].append(
                    {"p": report.p_value, "detected": report.detected, "source": report.source,
                     "found": report.target, **truth}
                )
                if name == "AD-J-P (input)":
                    victim_row["true pair rank (size)"] = pair_ranks(report.sizes, target, sources)
                    victim_row["true pair rank (asymmetry)"] = pair_ranks(
                        asymmetry_statistics(report.sizes), target, sources)
                if name in ASYMMETRY_FROM:  # statistics derived from the same scan (no extra optimisation)
                    for suffix, infer in DERIVED.items():
                        ost = infer(report.sizes, x, y)
                        outcomes[f"{name} + {suffix}"][group].append(
                            {"p": ost.p_value, "detected": ost.p_value < 0.05, "source": ost.source,
                             "found": ost.target, **truth}
                        )
    title = "detection accuracy at theta = {:g} (attacked: right source and target; clean: not flagged)"
    tables = {title.format(theta): _accuracy_rows(outcomes, theta) for theta in THETAS}
    if cfg.get("min_asr") is not None:
        tables[f"{title.format(THETAS[0])}, successful attacks only (ASR >= {cfg['min_asr']:g} after redraws, "
               "as in the paper)"] = _accuracy_rows(outcomes, THETAS[0], successful_only=True)
    report = BenchmarkReport(
        "ad",
        profile,
        {
            **tables,
            **(
                {"speed: batched engine vs one pair at a time (input space, same stopping rule)": speed_rows}
                if speed_rows
                else {}
            ),
            "victims": victims,
        },
    )
    report.notes += [
        f"dataset {data.name}, {cfg['models']} victims per group, {cfg['per_class']} clean images "
        "per class from the test split",
        "paper anchor (CIFAR-10, Table 2): AD-J-P 0.92 / 0.92 / 1.00 / 1.00; NC-L1-1.5 0.36 / 0.16 / 1.00 / 0.84",
        "AD variants that differ only in norm, confusion correction, statistic or null share one optimisation "
        "(OrderStatisticDetector.scan_variants); each one's seconds/model is that optimisation plus its own inference",
        "victims: ASR on triggered source-class test images; true pair rank: where the best (source, target) pair "
        "of the backdoor ranks among the 90 pairs of the AD-J-P (input) scan, 1 = smallest (by size, and by the "
        "asymmetry statistic of the same scan)",
    ]
    return report
