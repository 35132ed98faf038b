"""Paper-table and speed benchmarks, each with a ``fast`` and a ``full`` profile.

``art-backdoor-ext bench NAME --profile fast|full`` runs one; results are :class:`BenchmarkReport` objects
(Markdown tables plus JSON). Library code never imports this package.
"""

from __future__ import annotations

import datetime as _dt
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from art_backdoor_ext.exceptions import InvalidParameterError

__all__ = [
    "BenchmarkReport",
    "BENCHMARKS",
    "register_benchmark",
    "run_benchmark",
    "available_benchmarks",
    "machine_description",
    "memory_columns",
]


def machine_description() -> str:
    """CPU/GPU and library versions, for the record. On CPU it names the processor model and the vector
    instruction level torch's kernels use (``AVX2``, ``AVX512``, ...): float results, and hence trained models,
    can differ between CPU types."""
    import torch

    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "unknown")()
        device = f"CPU {_cpu_model()} ({torch.get_num_threads()} threads, {capability} kernels)"
    return f"{platform.machine()} {device}, torch {torch.__version__}, python {platform.python_version()}"


def _cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux, ``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@dataclass
class BenchmarkReport:
    """Tables (title -> list of row dicts) plus notes, with the profile, machine and date."""

    name: str
    profile: str
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    machine: str = field(default_factory=machine_description)
    date: str = field(default_factory=lambda: _dt.date.today().isoformat())
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)  # name -> matplotlib Figure; not part of to_dict()
    #: name -> numeric array (for example each victim's statistic matrix), for offline study; not part of
    #: to_dict(), written by :meth:`save_arrays` as an ``.npz`` that ``np.load`` reads without pickle.
    arrays: dict[str, Any] = field(default_factory=dict)

    def save_arrays(self, folder: str | Any) -> str | None:
        """Write :attr:`arrays` as ``<folder>/<benchmark>-<profile>-arrays.npz`` (None when there are none);
        read it back with ``np.load(path, allow_pickle=False)``."""
        from pathlib import Path

        import numpy as np

        if not self.arrays:
            return None
        path = Path(folder) / f"{self.name}-{self.profile}-arrays.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        named: dict[str, Any] = {k: np.asarray(v, dtype=np.float64) for k, v in self.arrays.items()}
        np.savez_compressed(path, **named)
        return str(path)

    def save_figures(self, folder: str | Any) -> list[str]:
        """Write every figure as ``<folder>/<benchmark>-<profile>-<name>.png``; returns the paths."""
        from pathlib import Path

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for fig_name, fig in self.figures.items():
            path = out / f"{self.name}-{self.profile}-{fig_name}.png"
            fig.savefig(path, dpi=110)
            paths.append(str(path))
        return paths

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "profile": self.profile,
            "tables": self.tables,
            "notes": self.notes,
            "machine": self.machine,
            "date": self.date,
            "seconds": self.seconds,
        }

    def to_markdown(self) -> str:
        out = [
            f"## bench {self.name} ({self.profile} profile)",
            "",
            f"Machine: {self.machine}; date {self.date}; {self.seconds:.0f} s in all.",
            "",
        ]
        for title, rows in self.tables.items():
            out += [f"### {title}", "", _table(rows), ""]
        out += [f"- {n}" for n in self.notes]
        return "\n".join(out)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 and value != 0 else f"{value:.3f}"
    return str(value)


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def seeded_victim_setup(seed: int, data: Any, cfg: dict[str, Any]) -> tuple[Any, Any, Any]:
    """A fresh reference classifier seeded by ``seed`` and the training data (a seeded subset of
    ``cfg["train"]`` images when set): the start every benchmark victim shares."""
    import numpy as np
    import torch

    from art_backdoor_ext.models import build_model, make_classifier

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clf = make_classifier(build_model(cfg["arch"], random_state=seed))
    x, y = data.x_train, data.y_train
    if cfg.get("train") is not None:
        keep = np.random.default_rng(seed).choice(len(x), size=cfg["train"], replace=False)
        x, y = x[keep], y[keep]
    return clf, x, y


BENCHMARKS: dict[str, Callable[..., BenchmarkReport]] = {}


def register_benchmark(name: str) -> Callable[[Callable[..., BenchmarkReport]], Callable[..., BenchmarkReport]]:
    def decorate(fn: Callable[..., BenchmarkReport]) -> Callable[..., BenchmarkReport]:
        BENCHMARKS[name] = fn
        return fn

    return decorate


def memory_columns(batched: Any, sequential: Any) -> dict[str, float | None]:
    """Peak resident-memory increase of two ``profile_training`` calls, MiB (CPU memory, sampled)."""

    def mib(profile: Any) -> float | None:
        return None if profile.peak_rss_increase_bytes is None else profile.peak_rss_increase_bytes / 2**20

    return {"peak RSS +MiB (batched)": mib(batched), "peak RSS +MiB (sequential)": mib(sequential)}


def _load_all() -> None:
    from art_backdoor_ext.benchmarks import (  # noqa: F401  (importing registers them)
        acss,
        ad,
        ad_statistics,
        cepa,
        ensemble,
        mbds,
        sdrm,
        survey,
    )


def available_benchmarks() -> list[str]:
    """Names of the registered benchmarks."""
    _load_all()
    return list(BENCHMARKS)


def run_benchmark(
    name: str, *, profile: str = "fast", random_state: int = 0, verbose: bool = False, models: int | None = None,
    per_class: int | None = None,
) -> BenchmarkReport:
    """Run a registered benchmark by name; ``models`` overrides the profile's number of victims per group and
    ``per_class`` its number of clean images per class given to the detector (only benchmarks with a
    ``per_class`` parameter accept it)."""
    import inspect
    import time

    _load_all()
    if name not in BENCHMARKS:
        raise InvalidParameterError(f"unknown benchmark {name!r}; available: {', '.join(BENCHMARKS)}")
    if profile not in ("fast", "full"):
        raise InvalidParameterError(f"profile must be 'fast' or 'full', got {profile!r}")
    start = time.perf_counter()
    extra: dict[str, int] = {} if models is None else {"models": models}
    if per_class is not None:
        accepting = [n for n, f in BENCHMARKS.items() if "per_class" in inspect.signature(f).parameters]
        if name not in accepting:
            raise InvalidParameterError(f"benchmark {name!r} has no clean-set size to override; per_class is "
                                        f"accepted by: {', '.join(accepting)}")
        if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 2:
            raise InvalidParameterError(f"per_class must be an int >= 2, got {per_class!r}")
        extra["per_class"] = per_class
    report = BENCHMARKS[name](profile=profile, random_state=random_state, verbose=verbose, **extra)
    if models is not None:
        report.notes.append(f"victims per group overridden on the command line: --models {models}")
    if per_class is not None:
        report.notes.append(f"clean images per class overridden on the command line: --per-class {per_class}")
    report.seconds = time.perf_counter() - start
    return report
