"""Benchmark plumbing: registry errors, report rendering, figure saving, and one tiny real run."""

from __future__ import annotations

import json

import pytest

from art_backdoor_ext.benchmarks import BenchmarkReport, available_benchmarks, run_benchmark
from art_backdoor_ext.exceptions import InvalidParameterError


def test_registry_lists_and_rejects():
    names = available_benchmarks()
    assert {"acss", "ad", "cepa", "mbds", "ensemble"} <= set(names)
    with pytest.raises(InvalidParameterError, match="unknown benchmark 'nope'; available: .*ad"):
        run_benchmark("nope")
    with pytest.raises(InvalidParameterError, match="profile must be 'fast' or 'full'"):
        run_benchmark("ad", profile="huge")


def test_report_markdown_json_and_figures(tmp_path):
    report = BenchmarkReport("demo", "fast", {"t": [{"a": 1, "b": 0.001234, "c": None}]}, notes=["n1"])
    text = report.to_markdown()
    assert "| a | b | c |" in text and "| 1 | 0.00123 | - |" in text and "- n1" in text
    assert json.loads(json.dumps(report.to_dict()))["tables"]["t"][0]["a"] == 1
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report.figures["bars"] = plt.figure()
    paths = report.save_figures(tmp_path / "out")
    assert [p.split("/")[-1] for p in paths] == ["demo-fast-bars.png"]
    assert (tmp_path / "out" / "demo-fast-bars.png").stat().st_size > 0
    assert "figures" not in report.to_dict()


def test_ensemble_benchmark_tiny_run(monkeypatch):
    from art_backdoor_ext.benchmarks import ensemble

    monkeypatch.setitem(ensemble.PROFILES, "fast", {**ensemble.PROFILES["fast"], "images": 32, "epochs": 1,
                                                    "sizes": (2,), "batch_sizes": (16,)})
    report = run_benchmark("ensemble", profile="fast")
    (rows,) = report.tables.values()
    assert len(rows) == 1 and rows[0]["models"] == 2
    assert rows[0]["speedup"] == pytest.approx(rows[0]["sequential s"] / rows[0]["batched s"])
    assert report.seconds > 0
