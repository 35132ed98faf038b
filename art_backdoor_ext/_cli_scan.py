"""``art-backdoor-ext scan``: a post-training scan of a saved model with AD, CEPA or Neural Cleanse.

The weights are a ``state_dict`` loaded with ``torch.load(..., weights_only=True)`` (a file from a third party
never runs code); the clean data is an ``.npz`` read with ``allow_pickle=False``. The command writes the
detector's JSON report and its figure (AD: statistics with the fitted null; CEPA: one bar per putative target
and layer, and with ``--reference`` each class's z against the clean references in ``reference.png``; Neural
Cleanse: mask norms with anomaly indices).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

DETECTORS = ("ad", "cepa", "nc")
# options that only some detectors take: name -> detectors
_ONLY = {"statistic": ("ad",), "null": ("ad",), "norm": ("ad",), "objective": ("ad",), "source_rule": ("ad",),
         "exclusion": ("ad",),
         "significance": ("ad", "cepa"), "layer": ("ad", "cepa"), "variant": ("cepa",),
         "calibration": ("cepa",), "layer_pooling": ("cepa",), "reference": ("cepa",)}


def add_scan_parser(sub: Any, func: Any) -> None:
    """Register ``scan`` on the CLI's subparsers; ``func(args)`` runs it (the CLI prints :func:`run_scan`'s lines)."""
    scan = sub.add_parser("scan", help="scan a saved model for a backdoor (AD, CEPA or Neural Cleanse)")
    scan.add_argument(
        "--arch", required=True, help="reference architecture: digits-cnn, badnets-cnn, cifar-cnn, resnet18"
    )
    scan.add_argument("--weights", required=True, help="state_dict file (loaded with weights_only=True)")
    scan.add_argument("--data", required=True, help=".npz with clean x (N, C, H, W) float in [0, 1] and labels y")
    scan.add_argument("--classes", type=int, default=10)
    scan.add_argument("--detector", choices=DETECTORS, default="ad",
                      help="'ad' (order-statistic detector, default), 'cepa' or 'nc' (Neural Cleanse)")
    scan.add_argument("--layer", default=None,
                      help="AD: 'input' (default), 'auto' (first conv) or a layer name; CEPA: comma-separated "
                           "layer names (default: three picked automatically)")
    scan.add_argument("--statistic", choices=["asymmetry", "size", "ratio", "source-normalised",
                                                 "source-normalised-margin", "source-normalised-distance"],
                      default=None, help="AD: 'source-normalised-distance' (default), 'size' (the paper), "
                                         "'asymmetry' or another normalisation (docs/order-statistic.md)")
    scan.add_argument("--null", choices=["reciprocal", "size"], default=None,
                      help="AD: Gamma null on the sizes (default) or on the reciprocals (the paper's Eq. 4)")
    scan.add_argument("--exclusion", choices=["k-1", "one", "combined"], default=None,
                      help="AD: extreme statistics the null's fit sets aside: K - 1 (the paper), one, or both tests "
                           "combined (docs/order-statistic.md)")
    scan.add_argument("--norm", choices=["l1", "l2"], default=None, help="AD: perturbation norm (default l2)")
    scan.add_argument("--objective", choices=["J", "Jp", "Jc"], default=None, help="AD: objective (default J)")
    scan.add_argument("--source-rule", choices=["most-extreme", "smallest-size"], default=None,
                      help="AD: how the source is named once the target is found (see docs/order-statistic.md)")
    scan.add_argument("--variant", choices=["both", "pairs", "all-to-one"], default=None,
                      help="CEPA: all-to-one (default), class pairs or both")
    scan.add_argument("--calibration", choices=["bootstrap", "none"], default=None,
                      help="CEPA: bootstrap-calibrated all-to-one p-value (default) or the uncalibrated one")
    scan.add_argument("--layer-pooling", choices=["auto", "sidak", "joint", "pooled"], default=None,
                      help="CEPA: 'auto' (default: 'joint' for the calibrated all-to-one p-value over several "
                           "layers, else 'sidak'), decide layer by layer with a Sidak correction ('sidak'), test "
                           "the layers together ('joint'; report.json's 'joint' holds that test either way) or pool "
                           "their median-relative statistics under one null ('pooled')")
    scan.add_argument("--reference", default=None,
                      help="CEPA: a CEPAReference file (CEPAReference.save: clean reference models' statistics, "
                           "read without pickle); the scan is also tested against it, report.json gets "
                           "'reference' (scan with the references' layers and settings)")
    scan.add_argument("--significance", type=float, default=None, help="AD, CEPA: detection level (default 0.05)")
    scan.add_argument("--max-iter", type=int, default=None, help="iteration cap (default: the detector's)")
    scan.add_argument("--seed", type=int, default=0, help="random_state of the detector")
    scan.add_argument("--output", default="scan-output", help="folder for report.json and statistics.png")
    scan.add_argument("--quiet", action="store_true")
    scan.set_defaults(func=func)


def run_scan(args: argparse.Namespace) -> list[str]:
    """Scan, write ``report.json`` and ``statistics.png`` under ``args.output``; return the lines to show."""
    from art_backdoor_ext.exceptions import InvalidParameterError

    for option, detectors in _ONLY.items():
        if getattr(args, option) is not None and args.detector not in detectors:
            raise InvalidParameterError(
                f"--{option.replace('_', '-')} applies to --detector {' or '.join(detectors)}, not {args.detector!r}")
    classifier = _load_classifier(args.arch, args.classes, args.weights)
    x, y = _load_data(args.data)
    reference = None
    if args.reference is not None:  # read before the scan: a wrong file fails fast
        from art_backdoor_ext.defences import CEPAReference

        reference = CEPAReference.load(args.reference)
    detector = _build_detector(args, classifier)
    report = detector.scan(x, y)
    payload = report.to_dict()
    lines = [_verdict(args.detector, report)]
    if reference is not None:
        test = reference.test(report)
        payload["reference"] = test.to_dict()
        lines.append(f"against {test.n_references} clean reference models: "
                     f"{'BACKDOOR DETECTED' if test.detected else 'no backdoor detected'}: p = {test.p_value:.3g}, "
                     f"class {test.target} at layer {test.layer}")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(payload, indent=2))
    _plot(args.detector, report, out / "statistics.png")
    plots = f"plot: {out / 'statistics.png'}"
    if reference is not None:
        from art_backdoor_ext.plotting import plot_cepa_reference

        plot_cepa_reference(test, path=out / "reference.png")
        plots += f", {out / 'reference.png'}"
    return [*lines, f"report: {out / 'report.json'}, {plots}"]


def _load_classifier(arch: str, classes: int, weights: str) -> Any:
    import torch

    from art_backdoor_ext.exceptions import DataError
    from art_backdoor_ext.models import build_model, make_classifier

    model = build_model(arch, nb_classes=classes)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)  # never runs code from the file
    except Exception as err:  # noqa: BLE001 - any unpickling refusal or I/O error is reported plainly
        raise DataError(f"cannot load weights from {weights} as a state_dict (weights_only=True): {err}") from err
    if not isinstance(state, dict):
        raise DataError(f"{weights} does not hold a state_dict (got {type(state).__name__})")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise DataError(f"{weights} does not match architecture {arch!r}: {err}") from err
    return make_classifier(model)


def _load_data(path: str) -> tuple[Any, Any]:
    import numpy as np

    from art_backdoor_ext.exceptions import DataError

    with np.load(path, allow_pickle=False) as data:
        if "x" not in data or "y" not in data:
            raise DataError(f"{path} must be an .npz file with arrays 'x' (N, C, H, W) and 'y' (N,)")
        return data["x"].astype(np.float32), data["y"]


def _build_detector(args: argparse.Namespace, classifier: Any) -> Any:
    from art_backdoor_ext.defences import CEPA, OrderStatisticDetector, PyTorchNeuralCleanse

    common: dict[str, Any] = {"random_state": args.seed, "verbose": not args.quiet}
    if args.max_iter is not None:
        common["max_iter"] = args.max_iter
    given = {k: getattr(args, k) for k in ("statistic", "null", "norm", "objective", "significance", "variant",
                                           "calibration", "layer_pooling", "source_rule", "exclusion")
             if getattr(args, k) is not None}
    if args.detector == "ad":
        layer = None if args.layer in (None, "input") else args.layer
        return OrderStatisticDetector(classifier, layer=layer, **given, **common)
    if args.detector == "cepa":
        layers = [part.strip() for part in args.layer.split(",") if part.strip()] if args.layer else None
        return CEPA(classifier, layers=layers, **given, **common)
    return PyTorchNeuralCleanse(classifier, **common)


def _plot(detector: str, report: Any, path: Path) -> None:
    from art_backdoor_ext.plotting import plot_cepa_statistics, plot_neural_cleanse, plot_order_statistic

    if detector == "ad":
        plot_order_statistic(report, path=path)
    elif detector == "cepa":
        plot_cepa_statistics(report, path=path)
    else:
        plot_neural_cleanse(report, path=path)


def _verdict(detector: str, report: Any) -> str:
    verdict = "BACKDOOR DETECTED" if report.detected else "no backdoor detected"
    if detector == "ad":
        return f"{verdict}: p = {report.p_value:.3g}, most extreme pair {report.source} -> {report.target}"
    if detector == "cepa":
        pair = f"{report.source} -> {report.target}" if report.source is not None else f"all -> {report.target}"
        return (f"{verdict}: p = {report.p_value:.3g}, most extreme test {pair} ({report.variant}, layer "
                f"{report.layer})")
    return f"{verdict}: flagged targets {report.flagged} (anomaly index > {report.anomaly_threshold:g})"
