"""Command line: ``art-backdoor-ext demo | evaluate | scan | bench``.

A thin shim over the public API; it is the only place that prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from art_backdoor_ext.evaluation import EvaluationResult


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
    from art_backdoor_ext.evaluation import ATTACKS, DEFENCES, EvaluationResult, _ensure_registered
    from art_backdoor_ext.exceptions import InvalidParameterError

    _ensure_registered()
    if args.list:
        print("attacks:")
        for spec in ATTACKS.values():
            print(f"  {spec.name:12s} {spec.description}")
        print(f"  {'clean':12s} control: no attack (clean victims; model scanners and transformers only)")
        print("defences:")
        for d in DEFENCES.values():
            print(f"  {d.name:12s} [{d.kind}] {d.description}")
        return 0
    if args.from_rows:
        parts = []
        for path in _split(args.from_rows):
            try:
                parts.append(EvaluationResult.from_dict(json.loads(Path(path).read_text())))
            except (OSError, json.JSONDecodeError) as err:
                raise InvalidParameterError(f"cannot read saved rows {path!r}: {err}") from err
        if len({part.dataset for part in parts}) != 1:
            raise InvalidParameterError(f"--from-rows files hold different datasets: "
                                        f"{sorted({part.dataset for part in parts})}")
        result = EvaluationResult([row for part in parts for row in part.rows], parts[0].dataset)
    else:
        result = _run_grid(args)
        if args.save_rows:
            Path(args.save_rows).write_text(result.to_json())
    text = {"markdown": result.to_markdown, "csv": result.to_csv, "json": result.to_json,
            "summary": result.to_summary}[args.format]()
    if args.output:
        Path(args.output).write_text(text)
        print(f"written to {args.output}")
    else:
        print(text)
    return 0


def _run_grid(args: argparse.Namespace) -> EvaluationResult:
    from art_backdoor_ext.evaluation import run_grid

    return run_grid(
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


def _cmd_bench(args: argparse.Namespace) -> int:
    from art_backdoor_ext.benchmarks import available_benchmarks, run_benchmark

    names = available_benchmarks() if args.name == "all" else [args.name]
    for name in names:
        report = run_benchmark(
            name, profile=args.profile, random_state=args.seed, verbose=not args.quiet, models=args.models,
            per_class=args.per_class,
        )
        print(report.to_markdown())
        if args.output:
            out = Path(args.output)
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{name}-{args.profile}.json").write_text(json.dumps(report.to_dict(), indent=2))
            for path in report.save_figures(out):
                print(f"figure: {path}")
            arrays = report.save_arrays(out)
            if arrays:
                print(f"arrays: {arrays}")
    return 0


def _cmd_scan(args: argparse.Namespace) -> int:
    from art_backdoor_ext._cli_scan import run_scan

    for line in run_scan(args):
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from art_backdoor_ext._cli_scan import add_scan_parser

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
    ev.add_argument("--format", choices=["markdown", "csv", "json", "summary"], default="markdown",
                    help="'markdown', 'csv', 'json': one row per attack, model, defence and layer; 'summary': one "
                         "table, a row per defence and a column per attack, over the models")
    ev.add_argument("--output")
    ev.add_argument("--save-rows", help="also write every row as JSON here (re-render later with --from-rows)")
    ev.add_argument("--from-rows", help="render saved --save-rows / --format json files (comma-separated: their rows "
                                        "in that order) instead of running")
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(func=_cmd_evaluate)

    add_scan_parser(sub, _cmd_scan)

    bench = sub.add_parser("bench", help="paper-table and speed benchmarks")
    bench.add_argument("name", help="benchmark name, or 'all'")
    bench.add_argument("--profile", choices=["fast", "full"], default="fast")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--models", type=int, default=None, help="override the profile's victims per group")
    bench.add_argument("--per-class", type=int, default=None,
                       help="override the clean images per class given to the detector (ad, ad-statistics)")
    bench.add_argument("--output", help="folder for JSON results and figures")
    bench.add_argument("--quiet", action="store_true")
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    from art_backdoor_ext.allocator import OPT_OUT_ENV, retain_freed_memory
    from art_backdoor_ext.exceptions import ArtBackdoorExtError

    if os.environ.get(OPT_OUT_ENV) != "1":  # batched scans and shadow training reuse freed memory (allocator.py)
        retain_freed_memory()

    try:
        return int(args.func(args))
    except ArtBackdoorExtError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
