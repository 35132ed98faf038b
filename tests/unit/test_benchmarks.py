"""Benchmark plumbing: registry errors, report rendering, figure saving, and one tiny real run."""

from __future__ import annotations

import json

import numpy as np
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
    with pytest.raises(InvalidParameterError, match="per_class is accepted by: .*ad-statistics"):
        run_benchmark("survey", per_class=5)
    for bad in (1, 2.5, True):
        with pytest.raises(InvalidParameterError, match="per_class must be an int >= 2"):
            run_benchmark("ad-statistics", per_class=bad)


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
    assert rows[0]["peak RSS +MiB (batched)"] >= 0 and rows[0]["peak RSS +MiB (sequential)"] >= 0
    assert report.seconds > 0


def test_survey_benchmark_tiny_run(monkeypatch):
    from art_backdoor_ext.benchmarks import survey

    monkeypatch.setitem(survey.PROFILES, "fast", {"dataset": "digits", "models": 1, "train": 300, "test": 120,
                                                  "epochs": 3})
    monkeypatch.setattr(survey, "ATTACKS", ("badnets",))
    report = run_benchmark("survey", profile="fast")
    detection, repair, victims = report.tables.values()
    assert [r["detector"] for r in detection] == ["strip", "art-strip", "feature-squeezing"]
    assert all(0 <= r[k] <= 1 for r in detection for k in ("FAR", "FRR", "F1"))
    assert {"BA before", "ASR pruned", "ASR fine-pruned", "channels pruned"} <= set(repair[0])
    assert len(victims) == 1 and "ValueError" in report.notes[0]  # ART's STRIP on logits, recorded
    json.dumps(report.to_dict())


def test_sdrm_benchmark_tiny_run(monkeypatch):
    from art_backdoor_ext.benchmarks import sdrm

    monkeypatch.setitem(sdrm.PROFILES, "fast", {**sdrm.PROFILES["fast"], "attacks": ["badnets"], "nb_epochs": 12,
                                                "train": 400, "n_eval": [20], "mmd_size": 10, "speed_rounds": 1,
                                                "speed_epochs": 2})
    report = run_benchmark("sdrm", profile="fast")
    tables = report.tables
    summary = next(rows for title, rows in tables.items() if title.startswith("summary"))
    assert [r["mode"] for r in summary] == ["RBT", "SDRM-L", "SDRM-A"]
    victims = tables["victims"]
    assert len(victims) == 3 and all(0 <= r["benign_accuracy"] <= 1 for r in victims)
    best = next(rows for title, rows in tables.items() if title.startswith("detection, best F1"))
    assert {(r["detector"], r["level"]) for r in best} == {(d, lv) for d in ("ac", "ss", "sr")
                                                          for lv in ("relu1", "relu2", "relu3")}
    assert all(0 <= r[m] <= 1 for r in best for m in ("RBT", "SDRM-L", "SDRM-A"))
    speed = tables["speed: seconds per epoch, interleaved runs, median"]
    assert speed[0]["vs_RBT"] == 1.0 and speed[2]["epochs_timed"] == 1
    json.dumps(report.to_dict())


def test_mbds_benchmark_tiny_run(monkeypatch):
    from art_backdoor_ext.benchmarks import mbds

    monkeypatch.setitem(mbds.PROFILES, "fast", {**mbds.PROFILES["fast"], "victims": 2, "shadows": 2, "sweep": (1,),
                                                "shadow_epochs": 5, "meta_epochs": 3, "victim_epochs": 2,
                                                "speed_models": 2, "test": 60, "victim_init_shadows": 2,
                                                "min_asr": 1.01, "redraws": 1})  # no ASR reaches it: all redraw
    report = run_benchmark("mbds", profile="fast")
    means, sweep, speed, per_victim, victims = report.tables.values()
    assert len(victims) == 6 and len(per_victim) == 36  # 3 attacks x 2 victims x (5 MBDS sources + the baseline)
    assert [(r["attack"], r["feature source"]) for r in means] == [(a, s) for a in mbds.ATTACKS for s in mbds.SOURCES]
    for row in means:  # each mean row is the mean of its victims' rows
        group = [r for r in per_victim if r["attack"] == row["attack"] and r["feature source"] == row["feature source"]]
        assert row["victims"] == 2 and row["F2"] == pytest.approx(np.mean([r["F2"] for r in group]))
        assert row["fit s"] > 0
    assert [r["shadow models"] for r in sweep] == [1, 2]
    for attack in ("BadNets", "Blended", "Jumbo"):  # the main shadow count's sweep row is the means table's F2
        for source in ("shadow", "victim"):
            mean = next(r for r in means if r["attack"] == attack and r["feature source"] == source)
            assert sweep[1][f"F2 {source} {attack}"] == pytest.approx(mean["F2"])
    # shadow-mode scores do not depend on the victim: same trigger, same fitted detector -> same FRR
    badnets = [r for r in per_victim if r["attack"] == "BadNets" and r["feature source"] == "shadow"]
    assert badnets[0]["FRR"] == badnets[1]["FRR"]
    # a Jumbo victim is poisoned at its own setting's rate (Algorithm 1 appends p * N copies), the others at 5%
    from art_backdoor_ext.attacks.jumbo import JumboDistribution

    for victim in victims:
        if victim["attack"] == "Jumbo":
            p = JumboDistribution().sample((1, 8, 8), nb_classes=10, random_state=victim["seed"]).rate
            assert victim["poison rate"] == pytest.approx(p / (1 + p))
        else:
            assert victim["poison rate"] == 0.05
    # every victim was drawn twice (ASR < 1.01) and the draw kept is the one with the higher ASR, whose seed
    # every per-victim row carries
    for i, victim in enumerate(victims):
        base = 100 + 10 * (i // 2) + i % 2
        asrs = [float(a) for a in victim["ASR per draw"].split(" / ")]
        assert victim["draws"] == 2 and len(asrs) == 2
        assert victim["ASR"] == pytest.approx(max(asrs), abs=1e-3)
        assert victim["seed"] == base + mbds.REDRAW_STRIDE * int(np.argmax(asrs))
        assert {r["seed"] for r in per_victim if r["attack"] == victim["attack"]} >= {victim["seed"]}
    assert all(0.0 <= r["AUROC"] <= 1.0 for r in per_victim)
    # the threshold's spread is stated: 50 calibration images at 5% -> the 2nd highest, expected 2 / 51
    assert any(note.startswith("threshold: rank 2 from the top of 50 ") and "expected FRR 0.039" in note
               for note in report.notes)
    json.dumps(report.to_dict())


def test_ad_statistics_benchmark_tiny_run(monkeypatch, tmp_path):
    from art_backdoor_ext.benchmarks import ad, ad_statistics
    from art_backdoor_ext.datasets import sample_per_class

    monkeypatch.setitem(ad.PROFILES, "fast", {**ad.PROFILES["fast"], "epochs": 2})
    monkeypatch.setitem(ad_statistics.SETTINGS, "fast", {"models": 1, "spaces": ("input",)})
    sampled = []

    def recording_sample(x, y, per_class, **kwargs):
        sampled.append(per_class)
        return sample_per_class(x, y, per_class, **kwargs)

    monkeypatch.setattr(ad_statistics, "sample_per_class", recording_sample)
    report = run_benchmark("ad-statistics", profile="fast", per_class=4)  # the --per-class override
    assert sampled == [4] * 4 and ad.PROFILES["fast"]["per_class"] == 20  # the profile itself is not changed
    assert any("--per-class 4" in note for note in report.notes)
    rows, victims = report.tables.values()
    default = "source-normalised-distance, source by smallest size (default)"
    expected = []
    for norm in ("L2", "L1"):
        for s_ in ad_statistics.STATISTICS:
            for n in ad_statistics.NULLS:
                if (s_, n) not in ad_statistics.EXCLUDED:
                    expected.append((f"input {norm}", s_, n))
                if (s_, n) == ad_statistics.DEFAULT:
                    expected.append((f"input {norm}", default, n))
    assert [(r["space and norm"], r["statistic"], r["null"]) for r in rows] == expected
    for norm in ("L2", "L1"):  # the source rule changes the named source only: same p-values, same clean verdicts
        plain, named = ([r for r in rows if r["space and norm"] == f"input {norm}" and r["statistic"] == s_
                         and r["null"] == ad_statistics.DEFAULT[1]][0]
                        for s_ in ("source-normalised-distance", default))
        assert (named["Clean"], named["min p clean"], named["max p attacked"]) == (
            plain["Clean"], plain["min p clean"], plain["max p attacked"])
    assert [v["group"] for v in victims] == ["BD-P-S", "BD-G-S", "BD-G-M", "Clean"]
    for r in rows:
        assert r["mean over groups"] == pytest.approx(np.mean([r[g] for g in ad.GROUPS]))
        assert all(r[g] in (0.0, 1.0) for g in ad.GROUPS)  # one victim per group
        assert (r["Clean"] == 1.0) == (r["min p clean"] >= ad_statistics.THETA)
    for v in victims:  # ASR and the true pair's rank among the 90 pairs: None exactly for the clean model
        ranks = [v["true pair rank (input L2, size (paper))"], v["true pair rank (input L2, asymmetry)"]]
        if v["group"] == "Clean":
            assert v["ASR"] is None and ranks == [None, None]
        else:
            assert 0 <= v["ASR"] <= 1 and all(1 <= rank <= 90 for rank in ranks)
    json.dumps(report.to_dict())
    # every victim's statistic matrices are kept for offline study, and saved without pickle
    assert len(report.arrays) == 4 * 2 * len(ad_statistics.STATISTICS)
    path = report.save_arrays(tmp_path)
    with np.load(path, allow_pickle=False) as saved:
        assert sorted(saved.files) == sorted(report.arrays)
        for v in victims:
            matrix = saved[f"{v['group']}/{v['seed']}/input L2/size (paper)"]
            assert matrix.shape == (10, 10) and np.isnan(np.diag(matrix)).all()
            if v["target"] is not None:  # the stored matrix is the one the recorded rank came from
                assert ad.pair_ranks(matrix, v["target"], json.loads(v["sources"])) == v[
                    "true pair rank (input L2, size (paper))"]


def test_ad_benchmark_tiny_run_has_the_derived_rows(monkeypatch):
    """bench ad derives the asymmetry and the normalised/size-null rows from each variant's own scan."""
    from art_backdoor_ext.benchmarks import ad

    monkeypatch.setitem(ad.PROFILES, "fast", {**ad.PROFILES["fast"], "models": 1, "per_class": 4, "epochs": 2,
                                              "variants": ["AD-J-P (input)"], "speed": False})
    monkeypatch.setattr(ad, "_neural_cleanse", lambda: None)
    report = run_benchmark("ad", profile="fast")
    strict, loose, victims = report.tables.values()
    assert [r["detector"] for r in strict] == ["AD-J-P (input)", "AD-J-P (input) + asymmetry",
                                               "AD-J-P (input) + normalised, size null",
                                               "AD-J-P (input) + normalised, size null, combined"]
    for at_05, at_001 in zip(strict, loose):
        assert at_05["detector"] == at_001["detector"] and at_05["min p clean"] == at_001["min p clean"]
        assert (at_05["Clean"] == 1.0) == (at_05["min p clean"] >= 0.05)
        assert (at_001["Clean"] == 1.0) == (at_001["min p clean"] >= 1e-3)
    assert [v["group"] for v in victims] == list(ad.GROUPS)
    json.dumps(report.to_dict())


def test_bench_ad_variants_that_differ_in_inference_share_one_optimisation(monkeypatch, fresh_classifier):
    from art_backdoor_ext.benchmarks import ad
    from art_backdoor_ext.datasets import load_dataset, sample_per_class
    from art_backdoor_ext.defences.model.order_statistic import OrderStatisticDetector

    class Quick(OrderStatisticDetector):
        def __init__(self, clf, **kw):
            super().__init__(clf, **{**kw, "max_iter": 3})

    layers = []
    real = OrderStatisticDetector._optimise
    monkeypatch.setattr(OrderStatisticDetector, "_optimise",
                        lambda det, *a: layers.append(det.layer) or real(det, *a))
    monkeypatch.setattr(ad, "OrderStatisticDetector", Quick)
    data = load_dataset("digits")
    x, y = sample_per_class(data.x_test, data.y_test, 3, random_state=0)
    names = ["AD-J-P (first conv)", "AD-J-P (input)", "AD-J-C (input)", "AD-J-P-L1 (input)"]
    reports = ad._ad_reports(fresh_classifier, x, y, {n: ad.VARIANTS[n] for n in names})
    assert list(reports) == names and sorted(layers, key=str) == [None, "auto"]  # two optimisations for four
    assert reports["AD-J-P-L1 (input)"].settings["norm"] == "l1"
    assert reports["AD-J-C (input)"].settings["confusion_correction"] is True
    np.testing.assert_array_equal(reports["AD-J-P-L1 (input)"].sizes, reports["AD-J-P (input)"].sizes_by_norm["l1"])


def test_pair_ranks_counts_smaller_off_diagonal_pairs():
    from art_backdoor_ext.benchmarks.ad import pair_ranks

    sizes = np.array([[np.nan, 5.0, 1.0], [4.0, np.nan, 3.0], [2.0, 0.5, np.nan]])
    assert pair_ranks(sizes, 2, [0]) == 2  # pair (0 -> 2) = 1.0; only (2 -> 1) = 0.5 is smaller
    assert pair_ranks(sizes, 2, [0, 1]) == 2  # the best of the sources counts
    assert pair_ranks(sizes, 1, [2]) == 1
    assert pair_ranks(sizes, 0, [1]) == 5
    assert pair_ranks(sizes, None, []) is None


def test_machine_description_names_cpu_model_and_kernel_level(monkeypatch):
    import torch

    from art_backdoor_ext.benchmarks import _cpu_model, machine_description

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX-TEST")
    text = machine_description()
    assert f"CPU {_cpu_model()} (" in text and "AVX-TEST kernels" in text and torch.__version__ in text


def test_cepa_benchmark_tiny_run_reports_the_premise_check(monkeypatch):
    from art_backdoor_ext.benchmarks import cepa

    monkeypatch.setitem(cepa.PROFILES, "fast", {**cepa.PROFILES["fast"], "models": 1, "epochs": 2, "max_iter": 3,
                                                "eq3_samples": 20, "speed_iter": 2, "references": 3})
    report = run_benchmark("cepa", profile="fast")
    rows, _speed, victims = report.tables.values()
    # the tiny victims' attacks: some took (patch), some did not (2 epochs), so both branches below are exercised
    assert {v["gt_asr"] >= cepa.MIN_TOOK_ASR for v in victims if v["group"] != "clean"} == {True, False}
    assert [r["attack"] for r in rows] == list(cepa.GROUPS)
    for row, victim in zip(rows, victims):
        assert row["attack"] == victim["group"]
        if victim["group"] == "clean":
            assert victim["GT ratio / Eq.1 median"] is None and row["GT ratio / Eq.1 median"] is None
        else:  # the ground-truth trigger's ratio over the median of the scan's statistics at the chosen layer
            stats = victim["GT ratio (best layer)"] / victim["GT ratio / Eq.1 median"]
            assert victim["premise layer"] in ("conv1", "relu1", "relu2", "relu3") and stats > 0
            assert row["GT ratio / Eq.1 median"] == pytest.approx(victim["GT ratio / Eq.1 median"])
        # the joint-layer decision of the same scan: found = its p below 0.05 with the right target
        p_text, target_text = victim["joint layers (p -> target)"].split(" -> ")
        if victim["group"] == "clean":
            assert row["false detection (joint layers)"] == float(float(p_text) < 0.05)
        else:
            found = float(p_text) < 0.05 and int(target_text) == victim["target"]
            assert row["target found (joint layers)"] == float(found)
        if victim["group"] == "clean":
            assert row["target found (attack took)"] is None and row["attacks that took"] is None
        else:  # one victim per group: counted in the column only when its attack took
            took = victim["gt_asr"] >= cepa.MIN_TOOK_ASR
            assert row["attacks that took"] == int(took)
            assert row["target found (attack took)"] == (row["target found"] if took else None)
        for label, *_ in cepa.ALTERNATIVES:  # the other decisions of the same scan, per victim and per group
            detected, found_target = victim[f"{label} (detected -> target)"].split(" -> ")
            if victim["group"] == "clean":
                assert row[f"{label}: false detection"] == float(detected == "True")
            else:
                assert row[f"{label}: target found"] == float(detected == "True"
                                                              and int(found_target) == victim["target"])
        for name in cepa.SAVED_STATISTICS:  # every victim's per-target statistics, per layer
            assert report.arrays[f"{victim['group']}/{victim['seed']}/relu3/{name}"].shape == (10,)
    assert any("decided by statistic='sigma' (CEPA's default)" in note for note in report.notes)
    assert any("against 3 clean reference models" in note for note in report.notes)
    for row, victim in zip(rows, victims):  # the reference test's columns agree with each victim's p -> class
        p_text, found = victim["reference (p -> target)"].split(" -> ")
        if victim["group"] == "clean":
            assert row["reference: false detection"] == float(float(p_text) < 0.05)
        elif victim["gt_asr"] >= cepa.MIN_TOOK_ASR:
            assert row["reference: target found (attack took)"] == float(float(p_text) < 0.05
                                                                          and int(found) == victim["target"])
        else:
            assert row["reference: target found (attack took)"] is None
    json.dumps(report.to_dict())


def test_cepa_reference_rows_count_found_targets_and_false_alarms():
    from art_backdoor_ext.benchmarks.cepa import _reference_rows
    from art_backdoor_ext.defences.model.cepa_reference import ReferenceTest

    def result(p: float, target: int) -> ReferenceTest:
        return ReferenceTest(p < 0.05, p, target, "conv1", {"conv1": np.zeros(10)}, 8, 0.05)

    victims = [{"group": "patch", "target": 3, "gt_asr": 0.9}, {"group": "patch", "target": 5, "gt_asr": 0.9},
               {"group": "patch", "target": 1, "gt_asr": 0.1}, {"group": "clean", "target": None, "gt_asr": None},
               {"group": "clean", "target": None, "gt_asr": None}]
    tests = [result(0.001, 3), result(0.001, 4), result(0.001, 1), result(0.3, 8), result(0.01, 8)]
    rows = [{"attack": "patch"}, {"attack": "clean"}]
    note = _reference_rows(rows, victims, tests, 8)
    assert "against 8 clean reference models" in note
    # found: right class and detected; the wrong class (victim 2) is a miss; the attack that did not take is not
    # counted; one of two clean models flagged
    assert rows[0]["reference: target found (attack took)"] == 0.5
    assert rows[1]["reference: false detection"] == 0.5
    assert victims[1]["reference (p -> target)"] == "0.001 -> 4"
    assert "not run" in _reference_rows([{"attack": "clean"}], victims[3:], None, 2)


def test_cepa_per_layer_column_ranks_the_true_target_by_the_detection_statistic():
    from types import SimpleNamespace

    from art_backdoor_ext.benchmarks.cepa import _per_layer

    ratio = np.array([0.9, 0.5, 0.7, np.nan])  # consensus: small = extreme; NaN (never reached) ranks last
    norm = np.array([1.0, 3.0, 2.0, np.nan])  # norm: large = extreme
    stats = {"all-to-one": {"a": {"ratio": ratio, "mu_norm": norm}}}
    tests = [{"variant": "all-to-one", "layer": "a", "p_value": 0.0123, "target": 1}]
    consensus = SimpleNamespace(tests=tests, statistics=stats, statistic="consensus")
    assert _per_layer(consensus, 2) == "a: p 0.012 -> 1 (true #2)"
    assert _per_layer(consensus, 3) == "a: p 0.012 -> 1 (true #4)"
    assert _per_layer(consensus, None) == "a: p 0.012 -> 1"
    by_norm = SimpleNamespace(tests=tests, statistics=stats, statistic="norm")
    assert _per_layer(by_norm, 0) == "a: p 0.012 -> 1 (true #3)"
    assert _per_layer(by_norm, 3) == "a: p 0.012 -> 1 (true #4)"
    calibrated = SimpleNamespace(tests=[{**tests[0], "p_value": 0.05, "p_value_uncalibrated": 0.0012}],
                                 statistics=stats, statistic="consensus")
    assert _per_layer(calibrated, 1) == "a: p 0.05 (uncalibrated 0.0012) -> 1 (true #1)"


def test_cepa_alternative_decisions_come_from_the_scan_statistics(fresh_classifier, monkeypatch):
    from art_backdoor_ext.benchmarks.cepa import ALTERNATIVES, _variants
    from art_backdoor_ext.defences.model.cepa import CEPA
    from art_backdoor_ext.defences.model.perturbation import Problems

    det = CEPA(fresh_classifier, layers=["relu1", "relu2"], random_state=0)
    rng = np.random.default_rng(0)
    problems = Problems(np.zeros((10, 1), dtype=np.int64), np.arange(10), np.full(10, -1))
    width = {name: int(np.prod(det._output_shape(name))) for name in ("relu1", "relu2")}

    def layer(name, mu_norm, sigma):
        return {"mu": np.zeros((10, width[name])), "mu_norm": mu_norm, "sigma": sigma, "ratio": sigma / mu_norm,
                "misclassification": np.ones(10)}

    def decisions(stats):
        monkeypatch.setattr(CEPA, "optimise", lambda self, x, y, layers=None: {"all-to-one": (problems, stats)})
        reports = det.scan_variants(np.zeros((1, 1, 8, 8), np.float32), np.zeros(1, np.int64), _variants())
        return {label: (r.detected, r.target) for label, r in reports.items()}

    monkeypatch.setattr(CEPA, "_check_clean_set", lambda self, x, y: (x, y))
    flat_sigma = rng.uniform(0.9, 1.1, 10)
    # relu1: target 3 has a far larger ||mu|| and a sigma that grows with it (an ordinary sigma/||mu||);
    # relu2: nothing stands out
    big = rng.uniform(0.9, 1.1, 10)
    big[3] = 40.0
    out = decisions({"relu1": layer("relu1", big, flat_sigma * big),
                     "relu2": layer("relu2", rng.uniform(0.9, 1.1, 10), flat_sigma)})
    assert list(out) == ["default"] + [label for label, *_ in ALTERNATIVES]
    assert out["||mu||, p-value"] == (True, 3) and out["||mu||, MAD > 2"] == (True, 3)
    assert out["sigma/||mu||, MAD > 2"][0] is False  # the ratio is flat at both layers
    assert out["sigma, p-value"][0] is False  # target 3's sigma is the largest, not the smallest
    # the default (sigma, the layers tested together) and sigma pooled: no putative target's spread stands out
    assert out["default"][0] is False and out["sigma, layers pooled"][0] is False
    # a consensual outlier (small sigma/||mu||) at relu2 only: the MAD rule on the ratio finds it, the norm does not
    tight = rng.uniform(0.9, 1.1, 10)
    tight[7] = 0.02
    out = decisions({"relu1": layer("relu1", rng.uniform(0.9, 1.1, 10), flat_sigma),
                     "relu2": layer("relu2", np.ones(10), tight)})
    assert out["sigma/||mu||, MAD > 2"] == (True, 7) and out["sigma, p-value"] == (True, 7)
    assert out["||mu||, p-value"][0] is False and out["||mu||, MAD > 2"][0] is False


def test_cli_bench_passes_per_class_and_reports_a_clear_error(capsys):
    from art_backdoor_ext.cli import main

    assert main(["bench", "survey", "--per-class", "5"]) == 2  # survey has no clean set to resize
    assert "per_class is accepted by: " in capsys.readouterr().err
    assert main(["bench", "ad", "--per-class", "1"]) == 2  # checked before any victim is trained
    assert "per_class must be an int >= 2, got 1" in capsys.readouterr().err


_NO_DATA = type("NoData", (), {"x_test": None, "y_test": None})()


def _scripted_victims(monkeypatch, asrs):
    """Replace victim training in bench ad by a script of ASRs; record each draw's seed and trigger."""
    from types import SimpleNamespace

    from art_backdoor_ext.benchmarks import ad

    calls = []

    def fake_train(clf, x, y, x_test, y_test, trigger, *, random_state, **kw):
        calls.append({"seed": random_state, "clf": clf, "trigger": trigger(np.zeros((1, 1, 8, 8), np.float32))})
        return SimpleNamespace(attack_success_rate=asrs[len(calls) - 1])

    monkeypatch.setattr(ad, "seeded_victim_setup", lambda seed, data, cfg: (object(), None, None))
    monkeypatch.setattr(ad, "train_victim", fake_train)
    return ad, calls


def test_victim_redraws_until_the_backdoor_takes(monkeypatch):
    """Below min_asr the attacker draws a new trigger and training seed; it stops at the first success."""
    ad, calls = _scripted_victims(monkeypatch, [0.2, 0.5, 0.95, 0.99])
    cfg = {**ad.PROFILES["fast"], "min_asr": 0.9, "redraws": 3}
    clf, target, sources, asr, draws = ad._victim("BD-P-S", 7, _NO_DATA, cfg)
    assert (asr, draws, len(calls)) == (0.95, 3, 3)
    assert [c["seed"] for c in calls] == [7, 7 + ad.REDRAW_STRIDE, 7 + 2 * ad.REDRAW_STRIDE]
    assert not np.array_equal(calls[0]["trigger"], calls[1]["trigger"])  # a new sparse pattern
    assert clf is calls[2]["clf"] and calls[0]["clf"] is not calls[2]["clf"]  # a fresh model per draw
    assert target not in sources and len(sources) == 1


def test_victim_keeps_the_best_draw_when_none_takes_and_never_redraws_without_min_asr(monkeypatch):
    ad, calls = _scripted_victims(monkeypatch, [0.1, 0.3, 0.2, 0.4, 0.05])
    cfg = {**ad.PROFILES["fast"], "min_asr": 0.9, "redraws": 2}
    clf, *_, asr, draws = ad._victim("BD-G-S", 3, _NO_DATA, cfg)
    assert (asr, draws, len(calls)) == (0.3, 3, 3) and clf is calls[1]["clf"]
    calls.clear()
    assert ad._victim("BD-G-M", 3, _NO_DATA, {**cfg, "min_asr": None})[3:] == (0.1, 1)
    assert [c["seed"] for c in calls] == [3]


def test_successful_only_table_drops_failed_attacks_and_keeps_clean_models():
    from art_backdoor_ext.benchmarks.ad_statistics import _accuracy_table

    by_group = {"BD-P-S": [(True, 0.01, True), (False, 0.6, False)], "BD-G-S": [(False, 0.2, False)],
                "BD-G-M": [(True, 0.001, True), (False, 0.3, True)], "Clean": [(True, 0.7, True), (False, 0.02, True)]}
    (everything,) = _accuracy_table({("input L2", "s", "n"): by_group}, successful_only=False)
    (successful,) = _accuracy_table({("input L2", "s", "n"): by_group}, successful_only=True)
    assert (everything["BD-P-S"], everything["BD-G-S"], everything["max p attacked"]) == (0.5, 0.0, 0.6)
    assert (successful["BD-P-S"], successful["BD-G-S"], successful["max p attacked"]) == (1.0, None, 0.3)
    assert successful["victims kept"] == "1 / 0 / 2 / 2" and "victims kept" not in everything
    assert successful["Clean"] == everything["Clean"] == 0.5 and successful["min p clean"] == 0.02
    assert successful["mean over groups"] == (1.0 + 0.5 + 0.5) / 3


def test_bench_ad_successful_only_rows_drop_failed_attacks():
    from art_backdoor_ext.benchmarks.ad import _accuracy_rows, is_successful

    def r(p, found, target, successful, source=1):
        return {"p": p, "detected": None, "found": found, "source": source, "target": target, "sources": [1],
                "seconds": 1.0, "successful": successful}

    outcomes = {"AD": {"BD-P-S": [r(0.01, 2, 2, True), r(0.5, 2, 2, False)], "BD-G-S": [r(0.9, 3, 2, False)],
                       "BD-G-M": [r(0.01, 2, 2, True, source=4)], "Clean": [r(0.2, 0, None, True)]}}
    (everything,) = _accuracy_rows(outcomes, 0.05)
    (successful,) = _accuracy_rows(outcomes, 0.05, successful_only=True)
    assert (everything["BD-P-S"], everything["BD-G-S"], everything["max p attacked"]) == (0.5, 0.0, 0.9)
    assert (successful["BD-P-S"], successful["BD-G-S"], successful["max p attacked"]) == (1.0, None, 0.01)
    assert successful["BD-G-M"] == 0.0 and successful["BD-G-M target-only"] == 1.0  # right target, not a source
    assert successful["victims kept"] == "1 / 0 / 1 / 1" and "victims kept" not in everything
    assert [is_successful(a, m) for a, m in ((None, 0.9), (0.5, None), (0.89, 0.9), (0.9, 0.9))] == [
        True, True, False, True]


def test_bench_ad_default_row_names_the_source_as_the_detector_does():
    from art_backdoor_ext.benchmarks.ad import source_by_size
    from art_backdoor_ext.functional.size_null import size_order_statistic_pvalue

    rng = np.random.default_rng(0)
    sizes = rng.gamma(20.0, 0.5, size=(10, 10))
    np.fill_diagonal(sizes, np.nan)
    statistic = sizes.copy()
    statistic[4, 2], sizes[6, 2] = 0.5, 0.1  # the most extreme statistic is 4 -> 2, the smallest size 6 -> 2
    ost = size_order_statistic_pvalue(statistic)
    named = source_by_size(ost, sizes)
    assert (ost.source, ost.target) == (4, 2) and (named.source, named.target) == (6, 2)
    assert named.p_value == ost.p_value


def test_bench_ad_speed_rows_cover_each_clean_set_size(monkeypatch):
    """bench ad times the batched engine against the one-pair loop at several clean-set sizes on one victim; the
    loop reproduces the batched sizes at each."""
    from art_backdoor_ext.benchmarks import ad
    from art_backdoor_ext.defences.model.order_statistic import OrderStatisticDetector

    class Quick(OrderStatisticDetector):
        def __init__(self, clf, **kw):
            super().__init__(clf, **{**kw, "max_iter": 3})

    monkeypatch.setattr(ad, "OrderStatisticDetector", Quick)
    monkeypatch.setattr(ad, "_neural_cleanse", lambda: None)
    monkeypatch.setattr(ad, "_ad_reports", lambda *a: {})  # the detection tables are tested above
    monkeypatch.setitem(ad.PROFILES, "fast", {**ad.PROFILES["fast"], "models": 1, "per_class": 3, "epochs": 1,
                                              "variants": ["AD-J-P (input)"], "speed": True,
                                              "speed_per_class": (2, 3)})
    rows = run_benchmark("ad", profile="fast").tables[
        "speed: batched engine vs one pair at a time (input space, same stopping rule)"]
    assert [r["images per class"] for r in rows] == [2, 3]  # the profile's own size is not repeated
    for row in rows:
        assert row["pairs"] == 90 and row["torch threads"] >= 1
        assert row["speedup"] == pytest.approx(row["one_pair_loop_s"] / row["batched_s"])
        assert row["max_relative_difference"] < 1e-4
