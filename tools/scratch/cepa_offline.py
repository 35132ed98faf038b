"""Re-decide CEPA scans offline with other per-target statistics (no optimisation), from saved ``bench cepa`` runs.

Usage: ``.venv/bin/python tools/scratch/cepa_offline.py [--sigma | --spreads] RUN_DIR [RUN_DIR ...]`` (``--sigma``:
only the paper's ratio and the sigma statistic, Sidak and joint: a quarter of the time; ``--spreads``: sigma
against the spreads kept since 2026-12-02, ``landing_sigma`` and ``class_sigma``, and sigma with the layers
pooled, ``CEPA(layer_pooling="pooled")``)

Each RUN_DIR holds ``cepa-<profile>.json`` and ``cepa-<profile>-arrays.npz`` (written by
``art-backdoor-ext bench cepa ... --output RUN_DIR`` since 2026-12-02: every victim's all-to-one statistics per
layer under ``group/seed/layer/name``). Every statistic below is "large = backdoor" and is decided as CEPA decides
its own: per layer the bootstrap-calibrated order-statistic p-value of the largest of the K values (null fitted to
the K - 1 others, 199 simulated sets, seeded with the victim's seed as the benchmark does), Sidak over the layers,
detected below 0.05 (``(joint layers)``: the layers tested together, CEPA's ``layer_pooling="joint"``;
``(MAD > 2)``: the largest Neural Cleanse anomaly index over the layers, on the low side of 1 / statistic (sigma
for ``1/sigma``, as ``CEPA(inference="mad")``), above 2; printed as p 0 or 1).
The statistic the run's CEPA decided with (``1/sigma`` since 2026-12-02, ``consensus`` before: read from the
report's notes) is checked against the run's own verdict.
Prints one line per victim (p -> target, true target's best rank over the layers) and the fraction per group
(attacked: detected with the right target; clean: flagged).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from art_backdoor_ext.functional.bootstrap_calibration import calibrated_max_statistic_pvalue
from art_backdoor_ext.functional.cepa_math import sidak_correction
from art_backdoor_ext.functional.layer_pooling import joint_layer_pvalue, pooled_layer_pvalue
from art_backdoor_ext.functional.robust import mad_anomaly_index

GROUPS = ("patch", "blend", "warp", "chessboard", "clean")
STATISTICS = {
    "consensus ||mu||/sigma": lambda s: s["mu_norm"] / s["sigma"],
    "norm ||mu||": lambda s: s["mu_norm"],
    "amplification ||mu||/|delta|": lambda s: s["mu_norm"] / s["delta_norm"],
    "consensus x amplification": lambda s: s["mu_norm"] ** 2 / (s["sigma"] * s["delta_norm"]),
    "1/sigma": lambda s: 1.0 / s["sigma"],
    "1/|delta|": lambda s: 1.0 / s["delta_norm"],
    "1/sigma (joint layers)": lambda s: 1.0 / s["sigma"],
    "1/sigma (MAD > 2)": lambda s: 1.0 / s["sigma"],
    "consensus ||mu||/sigma (joint layers)": lambda s: s["mu_norm"] / s["sigma"],
    # the diagnostics kept since 2026-12-02 (runs without them are skipped for these statistics)
    "class-relative class_sigma/sigma": lambda s: s["class_sigma"] / s["sigma"],
    "landing 1/landing_sigma": lambda s: 1.0 / s["landing_sigma"],
    "landing-relative class_sigma/landing_sigma": lambda s: s["class_sigma"] / s["landing_sigma"],
    "per-unit |delta|/sigma": lambda s: s["delta_norm"] / s["sigma"],
    "1/sigma (layers pooled)": lambda s: 1.0 / s["sigma"],
}
NEEDS_DIAGNOSTICS = ("class-relative class_sigma/sigma", "landing 1/landing_sigma",
                     "landing-relative class_sigma/landing_sigma")


def load(run_dir: Path) -> tuple[list[dict], dict[str, np.ndarray]]:
    (report_path,) = run_dir.glob("cepa-*[!s].json")
    report = json.loads(report_path.read_text())
    with np.load(report_path.with_name(report_path.stem + "-arrays.npz"), allow_pickle=False) as saved:
        arrays = {k: saved[k] for k in saved.files}
    return report["tables"]["victims"], arrays


def statistic_of(run_dir: str) -> str:
    """The statistic the run's own CEPA decided with: its notes say so since 2026-12-02 (the runs that first kept
    ``class_sigma``, started before that note, used ``"sigma"``); ``"consensus"`` before."""
    (report_path,) = Path(run_dir).glob("cepa-*[!s].json")
    notes = " ".join(json.loads(report_path.read_text()).get("notes", []))
    if "decided by statistic='sigma'" in notes:
        return "sigma"
    if "decided by statistic=" in notes:
        return "consensus"
    with np.load(report_path.with_name(report_path.stem + "-arrays.npz"), allow_pickle=False) as saved:
        return "sigma" if any(k.endswith("/class_sigma") for k in saved.files) else "consensus"


def _floored(values: np.ndarray) -> np.ndarray:
    values = np.where(np.isfinite(values) & (values > 0), values, np.nan)
    return np.nan_to_num(values, nan=0.5 * np.nanmin(values))


def decide(values_by_layer: dict[str, np.ndarray], seed: int, joint: bool = False, mad: bool = False,
           pooled: bool = False) -> tuple[float, int, dict]:
    """(Sidak-corrected p, target of the most extreme layer, per-layer ranking of every target: 1 = largest);
    ``joint``: the layers tested together instead (``layer_pooling="joint"``)."""
    ranks = {layer: np.argsort(np.argsort(-_floored(v))) + 1 for layer, v in values_by_layer.items()}
    if mad:  # CEPA(inference="mad"): the largest anomaly index over the layers, reported as 0 (above 2) or 1
        best = max((float(np.max(a)), int(np.argmax(a))) for a in
                   (mad_anomaly_index(1.0 / _floored(v), side="low") for v in values_by_layer.values()))
        return (0.0 if best[0] > 2.0 else 1.0), best[1], ranks
    if pooled:  # CEPA(layer_pooling="pooled")
        p, row, _, _ = pooled_layer_pvalue(np.stack([_floored(v) for v in values_by_layer.values()]),
                                           n_bootstrap=199, random_state=seed)
        return p, int(row), ranks
    if joint:
        p, row, _ = joint_layer_pvalue(np.stack([_floored(v) for v in values_by_layer.values()]), n_bootstrap=199,
                                       random_state=seed)
        return p, int(row), ranks
    tests = []
    for values in values_by_layer.values():
        values = _floored(values)
        p, row, raw = calibrated_max_statistic_pvalue(values, n_bootstrap=199, random_state=seed)
        tests.append((p, raw, row))
    p, _, row = min(tests)
    return sidak_correction(p, len(tests)), int(row), ranks


def pooled_default(run_dir: str) -> bool:
    """Whether the run's default decided with the layers pooled (``layer_pooling="auto"``, since 2026-12-03)."""
    (report_path,) = Path(run_dir).glob("cepa-*[!s].json")
    return "layer_pooling='auto'" in report_path.read_text()


SIGMA_ONLY = ("consensus ||mu||/sigma", "1/sigma", "1/sigma (joint layers)", "consensus ||mu||/sigma (joint layers)")
SPREADS = ("consensus ||mu||/sigma", "1/sigma", "1/sigma (layers pooled)", "per-unit |delta|/sigma") + NEEDS_DIAGNOSTICS


def main(run_dirs: list[str], names: tuple[str, ...] = tuple(STATISTICS)) -> None:
    verdicts: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for run_dir in run_dirs:
        victims, arrays = load(Path(run_dir))
        run_statistic, run_pooled = statistic_of(run_dir), pooled_default(run_dir)  # read once per run
        for v in victims:
            group, seed, target = v["group"], v["seed"], v["target"]
            layers = sorted({k.split("/")[2] for k in arrays if k.startswith(f"{group}/{seed}/")})
            line = [f"{group} {seed} (target {target})"]
            saved = {k.split("/")[3] for k in arrays if k.startswith(f"{group}/{seed}/")}
            default = "1/sigma" if run_statistic == "sigma" else "consensus ||mu||/sigma"
            if default == "1/sigma" and run_pooled:  # runs since 2026-12-03 decide pooled
                default = "1/sigma (layers pooled)"
            for name, statistic in ((n, STATISTICS[n]) for n in names):
                if name in NEEDS_DIAGNOSTICS and "class_sigma" not in saved:
                    continue
                stats = {layer: statistic({n: arrays[f"{group}/{seed}/{layer}/{n}"] for n in saved})
                         for layer in layers}
                p, found, ranks = decide(stats, seed, joint=name.endswith("(joint layers)"),
                                         mad=name.endswith("(MAD > 2)"), pooled=name.endswith("(layers pooled)"))
                detected = p < 0.05
                right = detected if target is None else bool(detected and found == target)
                verdicts[name][group].append(right)
                if name == default and (detected != v["detected"] or found != v["found_target"]):
                    raise SystemExit(f"{group} {seed}: the default does not reproduce the run's verdict")
                best = "-" if target is None else min(int(r[target]) for r in ranks.values())
                tag = "(j)" if "joint" in name else "(mad)" if "MAD" in name else "(pool)" if "pooled" in name else ""
                line.append(f"{name.split()[0]}{tag} {p:.2g}->{found} #{best}")
            print(" | ".join(line))
    print("\n| statistic | " + " | ".join(GROUPS) + " |")
    print("|---|" + "---|" * len(GROUPS))
    for name, by_group in verdicts.items():
        cells = [f"{sum(by_group[g])}/{len(by_group[g])}" for g in GROUPS]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\n(attacked: detected with the right target; clean: flagged)")


if __name__ == "__main__":
    if not sys.argv[1:]:
        raise SystemExit(__doc__)
    args = sys.argv[1:]
    if args[0] == "--sigma":
        main(args[1:], SIGMA_ONLY)
    elif args[0] == "--spreads":
        main(args[1:], SPREADS)
    else:
        main(args)
