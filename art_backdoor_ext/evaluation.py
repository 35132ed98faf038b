"""Attack x defence evaluation grid: a registry, a runner, and result rows (JSON, CSV, Markdown).

Attacks are registered as trigger builders; defences as functions that take an :class:`EvaluationContext`
(a trained victim with its ground truth) and return :class:`DefenceOutcome` objects (one per layer where
a defence looks at a layer). Later methods register here with :func:`register_attack` /
:func:`register_defence`, and ``art-backdoor-ext evaluate`` exposes the runner.

Example::

    from art_backdoor_ext.evaluation import run_grid
    result = run_grid(attacks=["badnets"], defences=["art-ac", "ac"], dataset="digits", random_state=0)
    table = result.to_markdown()
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from art_backdoor_ext.exceptions import InvalidParameterError
from art_backdoor_ext.functional.metrics import f_beta, precision, recall
from art_backdoor_ext.training import VictimResult

__all__ = [
    "AttackSpec",
    "DefenceSpec",
    "DefenceOutcome",
    "EvaluationContext",
    "ResultRow",
    "EvaluationResult",
    "ATTACKS",
    "DEFENCES",
    "register_attack",
    "register_defence",
    "train_reference_victim",
    "run_grid",
]

logger = logging.getLogger(__name__)

TriggerBuilder = Callable[[tuple[int, ...], int], Callable[[np.ndarray], np.ndarray]]


@dataclass(frozen=True)
class AttackSpec:
    """A registered attack: ``build(input_shape, random_state) -> trigger function``."""

    name: str
    build: TriggerBuilder
    description: str


@dataclass
class EvaluationContext:
    """What a defence gets: the victim with its ground truth, clean data the defender holds, and options."""

    victim: VictimResult
    x_clean: np.ndarray
    y_clean: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    layers: list[str]
    random_state: int | None
    verbose: bool = False
    #: The dataset's name (``run_grid`` sets it): defences that train models of their own follow its schedule.
    dataset: str | None = None


@dataclass
class DefenceOutcome:
    """One defence's answer: per-sample flags for a filter or detector, or a model-level verdict."""

    layer: str
    is_flagged: np.ndarray | None = None  # True = flagged as poisoned/backdoored, aligned with the victim's data
    detected: bool | None = None  # model-level verdict for scanners
    found_target: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DefenceSpec:
    """A registered defence: ``run(context) -> list[DefenceOutcome]``; ``kind`` says what it outputs."""

    name: str
    kind: str  # "poison-filter" | "model-scanner" | "sample-detector" | "transformer"
    run: Callable[[EvaluationContext], list[DefenceOutcome]]
    description: str


ATTACKS: dict[str, AttackSpec] = {}
DEFENCES: dict[str, DefenceSpec] = {}
#: The control "attack": a victim trained on clean data. Only model scanners (a detection is a false alarm) and
#: transformers (the accuracy a repair costs) run on it; poison filters and sample detectors have no poison to find.
CLEAN = "clean"
_CLEAN_KINDS = ("model-scanner", "transformer")


def register_attack(name: str, description: str) -> Callable[[TriggerBuilder], TriggerBuilder]:
    """Decorator registering a trigger builder under ``name``."""

    def decorate(build: TriggerBuilder) -> TriggerBuilder:
        ATTACKS[name] = AttackSpec(name, build, description)
        return build

    return decorate


def register_defence(name: str, kind: str, description: str) -> Callable[[Any], Any]:
    """Decorator registering a defence runner under ``name``."""
    if kind not in ("poison-filter", "model-scanner", "sample-detector", "transformer"):
        raise InvalidParameterError(
            f"kind must be poison-filter, model-scanner, sample-detector or transformer, got {kind!r}")

    def decorate(run: Callable[[EvaluationContext], list[DefenceOutcome]]) -> Any:
        DEFENCES[name] = DefenceSpec(name, kind, run, description)
        return run

    return decorate


@dataclass
class ResultRow:
    """One (attack, model, defence, layer) cell of the grid. Plain Python values only."""

    attack: str
    model_seed: int
    defence: str
    kind: str
    layer: str
    benign_accuracy: float
    attack_success_rate: float
    precision: float | None
    recall: float | None
    f1: float | None
    detected: bool | None
    found_target: int | None
    true_target: int
    seconds: float
    # transformers (a repaired model): BA/ASR of the returned model, from DefenceOutcome.extra
    repaired_benign_accuracy: float | None = None
    repaired_attack_success_rate: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EvaluationResult:
    """All rows of a grid run, with exporters."""

    rows: list[ResultRow]
    dataset: str

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "rows": [r.to_dict() for r in self.rows]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_csv(self) -> str:
        buffer = io.StringIO()
        names = list(ResultRow.__dataclass_fields__)
        writer = csv.DictWriter(buffer, fieldnames=names)
        writer.writeheader()
        for row in self.rows:
            writer.writerow(row.to_dict())
        return buffer.getvalue()

    def to_markdown(self, columns: Sequence[str] | None = None) -> str:
        cols = list(columns) if columns else [
            "attack", "defence", "layer", "precision", "recall", "f1", "detected", "seconds"]

        def fmt(value: Any) -> str:
            if value is None:
                return "-"
            if isinstance(value, float):
                return f"{value:.3f}" if value < 100 else f"{value:.1f}"
            return str(value)

        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        for row in self.rows:
            d = row.to_dict()
            lines.append("| " + " | ".join(fmt(d[c]) for c in cols) + " |")
        return "\n".join(lines)

    def to_summary(self) -> str:
        """One Markdown table: a row per (defence, layer), grouped by kind, a column per attack, each cell over the
        attack's models.

        Poison filters and sample detectors: mean F1. Model scanners: ``k/n`` models detected with the right
        target (``+w wrong``: detections that name another target); in the ``clean`` column, ``f/n flagged``
        (false alarms). Transformers: the repaired model's mean ASR and BA. The first row gives the victims' mean
        BA / ASR (for clean victims: the share of non-target test images predicted as the target, untriggered).
        """
        attacks = list(dict.fromkeys(r.attack for r in self.rows))
        kinds = ("poison-filter", "model-scanner", "sample-detector", "transformer")
        keys = sorted(dict.fromkeys(_summary_key(r) for r in self.rows), key=lambda k: kinds.index(k[1]))
        victims = {a: {(r.model_seed, r.benign_accuracy, r.attack_success_rate) for r in self.rows if r.attack == a}
                   for a in attacks}
        lines = ["| defence | kind | layer | " + " | ".join(attacks) + " |", "|---|---|---|" + "---|" * len(attacks),
                 "| victims (BA / ASR) | - | - | " + " | ".join(
                     f"{np.mean([v[1] for v in victims[a]]):.3f} / {np.mean([v[2] for v in victims[a]]):.3f}"
                     for a in attacks) + " |"]
        for key in keys:
            group = [r for r in self.rows if _summary_key(r) == key]
            layer = ", ".join(sorted({r.layer for r in group}))
            cells = [_summary_cell(key[1], [r for r in group if r.attack == a], clean=a == CLEAN) for a in attacks]
            lines.append(f"| {key[0]} | {key[1]} | {layer} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationResult:
        """Rebuild a result from :meth:`to_dict` / :meth:`to_json` output (e.g. to summarise a saved run)."""
        try:
            return cls([ResultRow(**row) for row in data["rows"]], str(data["dataset"]))
        except (KeyError, TypeError) as err:
            raise InvalidParameterError(f"not an evaluation result (to_dict/to_json output): {err}") from err


def _summary_key(row: ResultRow) -> tuple[str, ...]:
    """A scanner's layer is where its decision landed (CEPA picks one per model): one row per scanner."""
    return (row.defence, row.kind) if row.kind == "model-scanner" else (row.defence, row.kind, row.layer)


def _summary_cell(kind: str, rows: list[ResultRow], *, clean: bool = False) -> str:
    if not rows:
        return "-"
    if kind == "model-scanner" and clean:
        return f"{sum(bool(r.detected) for r in rows)}/{len(rows)} flagged"
    if kind == "model-scanner":
        right = sum(bool(r.detected) and r.found_target == r.true_target for r in rows)
        wrong = sum(bool(r.detected) and r.found_target != r.true_target for r in rows)
        return f"{right}/{len(rows)}" + (f" (+{wrong} wrong)" if wrong else "")
    if kind == "transformer":
        asr = [r.repaired_attack_success_rate for r in rows if r.repaired_attack_success_rate is not None]
        ba = [r.repaired_benign_accuracy for r in rows if r.repaired_benign_accuracy is not None]
        return f"ASR {np.mean(asr):.3f}, BA {np.mean(ba):.3f}" if asr and ba else "-"
    f1 = [r.f1 for r in rows if r.f1 is not None]
    return f"{np.mean(f1):.3f}" if f1 else "-"


def training_schedule(dataset: str) -> tuple[int, float]:
    """(epochs, learning rate) of the reference network of ``dataset`` (the victims' and any model a defence
    trains like them)."""
    return (20, 3e-3) if dataset == "digits" else (5, 1e-3)


def train_reference_victim(
    attack: str, *, dataset: str = "digits", random_state: int = 0, rate: float = 0.05, target: int = 0,
    nb_epochs: int | None = None, data: Any = None, verbose: bool = False,
) -> tuple[VictimResult, Any]:
    """Train the reference network of ``dataset`` under a registered attack (or :data:`CLEAN`: no poisoning);
    return (victim, dataset)."""
    from art_backdoor_ext.datasets import load_dataset
    from art_backdoor_ext.models import build_model, make_classifier
    from art_backdoor_ext.training import train_victim

    _check_attacks([attack])
    data = data if data is not None else load_dataset(dataset)
    arch = {"digits": "digits-cnn", "fashion-mnist": "badnets-cnn", "mnist": "badnets-cnn"}.get(data.name, "cifar-cnn")
    epochs, learning_rate = training_schedule(data.name)
    epochs = nb_epochs if nb_epochs is not None else epochs
    classifier = make_classifier(build_model(arch, nb_classes=data.nb_classes, random_state=random_state))
    if attack == CLEAN:
        return _train_clean_victim(classifier, data, target, epochs, learning_rate, random_state, verbose), data
    trigger = ATTACKS[attack].build(data.input_shape, random_state)
    victim = train_victim(classifier, data.x_train, data.y_train, data.x_test, data.y_test, trigger, target=target,
                          rate=rate, nb_epochs=epochs, learning_rate=learning_rate,
                          random_state=random_state, verbose=verbose)
    return victim, data


def _train_clean_victim(classifier: Any, data: Any, target: int, nb_epochs: int, learning_rate: float,
                        random_state: int, verbose: bool) -> VictimResult:
    """The reference network trained on the clean training set (the same schedule as an attacked victim's)."""
    from art_backdoor_ext.training import PoisonedData, evaluate_attack, fit_classifier

    start = time.perf_counter()
    fit_classifier(classifier, data.x_train, data.y_train, nb_epochs=nb_epochs, learning_rate=learning_rate,
                   random_state=random_state, verbose=verbose)
    sources = [c for c in range(data.nb_classes) if c != target]
    ba, asr = evaluate_attack(classifier, data.x_test, data.y_test, np.copy, target=target, sources=sources)
    clean = PoisonedData(data.x_train.copy(), data.y_train.copy(), np.zeros(len(data.y_train), dtype=bool),
                         data.y_train.copy(), int(target), sources, "clean", np.copy)
    return VictimResult(classifier, clean, ba, asr, time.perf_counter() - start)


def _row(attack: str, seed: int, spec: DefenceSpec, outcome: DefenceOutcome, victim: VictimResult,
         seconds: float) -> ResultRow:
    p = r = f1 = None
    if outcome.is_flagged is not None:
        truth = victim.data.is_poison if spec.kind == "poison-filter" else outcome.extra["is_backdoor_truth"]
        p, r, f1 = precision(outcome.is_flagged, truth), recall(outcome.is_flagged, truth), f_beta(
            outcome.is_flagged, truth)
    return ResultRow(attack, seed, spec.name, spec.kind, outcome.layer, victim.benign_accuracy,
                     victim.attack_success_rate, p, r, f1, outcome.detected, outcome.found_target,
                     victim.data.target, seconds, outcome.extra.get("repaired_benign_accuracy"),
                     outcome.extra.get("repaired_attack_success_rate"))


def run_grid(
    attacks: Sequence[str],
    defences: Sequence[str],
    *,
    dataset: str = "digits",
    n_models: int = 1,
    layers: Sequence[str] | None = None,
    rate: float = 0.05,
    nb_epochs: int | None = None,
    random_state: int = 0,
    verbose: bool = False,
) -> EvaluationResult:
    """Train ``n_models`` victims per attack and run every defence on each; one row per defence and layer.

    ``attacks`` may include :data:`CLEAN` (victims trained without poison), on which only model scanners and
    transformers run.

    :param layers: Internal layers for layer-selectable defences (default: each defence's own default).
    """
    from art_backdoor_ext.datasets import load_dataset

    _ensure_registered()
    _check_attacks(attacks)  # before any training: a typo in the last attack must not cost the others' runs
    unknown = [d for d in defences if d not in DEFENCES]
    if unknown:
        raise InvalidParameterError(f"unknown defence(s) {unknown}; registered: {', '.join(sorted(DEFENCES))}")
    data = load_dataset(dataset)
    rows: list[ResultRow] = []
    for attack in attacks:
        for m in range(n_models):
            seed = random_state + m
            victim, _ = train_reference_victim(attack, data=data, random_state=seed, rate=rate,
                                               nb_epochs=nb_epochs, verbose=verbose)
            logger.info("%s seed %d: BA %.3f ASR %.3f", attack, seed, victim.benign_accuracy,
                        victim.attack_success_rate)
            context = EvaluationContext(victim, data.x_test, data.y_test, data.x_test, data.y_test,
                                        list(layers or []), seed, verbose, data.name)
            for name in defences:
                spec = DEFENCES[name]
                if attack == CLEAN and spec.kind not in _CLEAN_KINDS:
                    continue
                start = time.perf_counter()
                outcomes = spec.run(context)
                seconds = (time.perf_counter() - start) / max(1, len(outcomes))
                rows.extend(_row(attack, seed, spec, o, victim, seconds) for o in outcomes)
    return EvaluationResult(rows, data.name)


def _check_attacks(attacks: Sequence[str]) -> None:
    unknown = [a for a in attacks if a not in ATTACKS and a != CLEAN]
    if unknown:
        raise InvalidParameterError(f"unknown attack(s) {unknown}; registered: {', '.join(sorted(ATTACKS))} and "
                                    f"{CLEAN!r} (no attack)")


def _ensure_registered() -> None:
    """Import the modules whose import registers the built-in attacks and defences."""
    from art_backdoor_ext import registry  # noqa: F401
