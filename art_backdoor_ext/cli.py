"""Command line: ``art-backdoor-ext demo | evaluate | bench``.

A thin shim over the public API; it is the only place that prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path


def _split(text: str | None) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()] if text else []


def _cmd_demo(args: argparse.Namespace) -> int:
    from art_backdoor_ext.evaluation import run_grid

    layers = _split(args.layers)
    print(
        f"Training a DigitsCNN on scikit-learn digits poisoned with a BadNets patch "
        f"(rate {args.rate}, target 0, through ART's PoisoningAttackBackdoor)..."
    )
    result = run_grid(
        ["badnets"],
        ["art-ac", "art-ss", "ac", "ss"],
        dataset="digits",
        layers=layers,
        rate=args.rate,
        nb_epochs=args.epochs,
        random_state=args.seed,
        verbose=True,
    )
    first = result.rows[0]
    print(f"benign accuracy {first.benign_accuracy:.3f}, attack success rate {first.attack_success_rate:.3f}\n")
    print("Poison detection on the training set (positive = poisoned sample):")
    print(result.to_markdown(["defence", "layer", "precision", "recall", "f1", "seconds"]))
    if args.output:
        Path(args.output).write_text(result.to_json())
        print(f"\nrows written to {args.output}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from art_backdoor_ext.evaluation import ATTACKS, DEFENCES, _ensure_registered, run_grid

    _ensure_registered()
    if args.list:
        print("attacks:")
        for spec in ATTACKS.values():
            print(f"  {spec.name:12s} {spec.description}")
        print("defences:")
        for d in DEFENCES.values():
            print(f"  {d.name:12s} [{d.kind}] {d.description}")
        return 0
    result = run_grid(
        _split(args.attacks),
        _split(args.defences),
        dataset=args.dataset,
        n_models=args.models,
        layers=_split(args.layers),
        rate=args.rate,
        nb_epochs=args.epochs,
        random_state=args.seed,
        verbose=not args.quiet,
    )
    text = {"markdown": result.to_markdown, "csv": result.to_csv, "json": result.to_json}[args.format]()
    if args.output:
        Path(args.output).write_text(text)
        print(f"written to {args.output}")
    else:
        print(text)
    return 0


def _cmd_scan(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from art_backdoor_ext.defences import OrderStatisticDetector
    from art_backdoor_ext.exceptions import DataError
    from art_backdoor_ext.models import build_model, make_classifier
    from art_backdoor_ext.plotting import plot_order_statistic

    model = build_model(args.arch, nb_classes=args.classes)
    try:
        state = torch.load(args.weights, map_location="cpu", weights_only=True)  # never runs code from the file
    except Exception as err:  # noqa: BLE001 - any unpickling refusal or I/O error is reported plainly
        raise DataError(f"cannot load weights from {args.weights} as a state_dict (weights_only=True): {err}") from err
    if not isinstance(state, dict):
        raise DataError(f"{args.weights} does not hold a state_dict (got {type(state).__name__})")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise DataError(f"{args.weights} does not match architecture {args.arch!r}: {err}") from err
    with np.load(args.data, allow_pickle=False) as data:
        if "x" not in data or "y" not in data:
            raise DataError(f"{args.data} must be an .npz file with arrays 'x' (N, C, H, W) and 'y' (N,)")
        x, y = data["x"].astype(np.float32), data["y"]
    layer = None if args.layer == "input" else args.layer
    detector = OrderStatisticDetector(
        make_classifier(model),
        layer=layer,
        norm=args.norm,
        objective=args.objective,
        statistic=args.statistic,
        significance=args.significance,
        verbose=not args.quiet,
    )
    report = detector.scan(x, y)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=2))
    plot_order_statistic(report, out / "statistics.png")
    verdict = "BACKDOOR DETECTED" if report.detected else "no backdoor detected"
    print(f"{verdict}: p = {report.p_value:.3g}, most extreme pair {report.source} -> {report.target}")
    print(f"report: {out / 'report.json'}, plot: {out / 'statistics.png'}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from art_backdoor_ext.benchmarks import available_benchmarks, run_benchmark

    names = available_benchmarks() if args.name == "all" else [args.name]
    for name in names:
        report = run_benchmark(
            name, profile=args.profile, random_state=args.seed, verbose=not args.quiet, models=args.models
        )
        print(report.to_markdown())
        if args.output:
            out = Path(args.output)
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{name}-{args.profile}.json").write_text(json.dumps(report.to_dict(), indent=2))
            for path in report.save_figures(out):
                print(f"figure: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="art-backdoor-ext", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="BadNets on digits; ART's AC/SS against the layer-selectable versions")
    demo.add_argument("--layers", default="relu1,relu2,relu3", help="internal layers for our AC/SS (comma separated)")
    demo.add_argument("--rate", type=float, default=0.05, help="poisoned fraction of the training set")
    demo.add_argument("--epochs", type=int, default=20)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--output", help="write the rows as JSON here")
    demo.set_defaults(func=_cmd_demo)

    ev = sub.add_parser("evaluate", help="run the attack x defence grid")
    ev.add_argument("--list", action="store_true", help="list registered attacks and defences")
    ev.add_argument("--attacks", default="badnets")
    ev.add_argument("--defences", default="art-ac,art-ss,ac,ss")
    ev.add_argument("--dataset", default="digits", choices=["digits", "fashion-mnist"])
    ev.add_argument("--models", type=int, default=1, help="victims per attack")
    ev.add_argument("--layers", default="", help="layers for layer-selectable defences")
    ev.add_argument("--rate", type=float, default=0.05)
    ev.add_argument("--epochs", type=int, default=None)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--format", choices=["markdown", "csv", "json"], default="markdown")
    ev.add_argument("--output")
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(func=_cmd_evaluate)

    scan = sub.add_parser("scan", help="scan a saved model for a backdoor with AD")
    scan.add_argument(
        "--arch", required=True, help="reference architecture: digits-cnn, badnets-cnn, cifar-cnn, resnet18"
    )
    scan.add_argument("--weights", required=True, help="state_dict file (loaded with weights_only=True)")
    scan.add_argument("--data", required=True, help=".npz with clean x (N, C, H, W) float in [0, 1] and labels y")
    scan.add_argument("--classes", type=int, default=10)
    scan.add_argument("--layer", default="input", help="'input' (default), 'auto' (first conv) or a layer name")
    scan.add_argument("--statistic", choices=["asymmetry", "size", "ratio"], default="asymmetry",
                      help="'asymmetry' (default: size over the reverse pair's size) or 'size' (the paper)")
    scan.add_argument("--norm", choices=["l1", "l2"], default="l2")
    scan.add_argument("--objective", choices=["J", "Jp", "Jc"], default="J")
    scan.add_argument("--significance", type=float, default=0.05)
    scan.add_argument("--output", default="scan-output", help="folder for report.json and statistics.png")
    scan.add_argument("--quiet", action="store_true")
    scan.set_defaults(func=_cmd_scan)

    bench = sub.add_parser("bench", help="paper-table and speed benchmarks")
    bench.add_argument("name", help="benchmark name, or 'all'")
    bench.add_argument("--profile", choices=["fast", "full"], default="fast")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--models", type=int, default=None, help="override the profile's victims per group")
    bench.add_argument("--output", help="folder for JSON results and figures")
    bench.add_argument("--quiet", action="store_true")
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    from art_backdoor_ext.exceptions import ArtBackdoorExtError

    try:
        return int(args.func(args))
    except ArtBackdoorExtError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
