import json

import numpy as np
import pytest
import torch

from art_backdoor_ext.datasets import sample_per_class
from art_backdoor_ext.defences import OrderStatisticDetector
from art_backdoor_ext.exceptions import DataError, EstimatorError, InvalidParameterError
from art_backdoor_ext.models import DigitsCNN, make_classifier


@pytest.fixture(scope="module")
def clean_set(digits):
    return sample_per_class(digits.x_test, digits.y_test, 8, random_state=1)


@pytest.fixture(scope="module")
def chessboard_victim(digits):
    """Single-source (1 -> 0) global chessboard backdoor, L2 norm 1: the paper's BD-G-S setting on digits."""
    from art_backdoor_ext.attacks.triggers import chessboard_trigger
    from art_backdoor_ext.training import train_victim

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        clf = make_classifier(DigitsCNN(), device_type="cpu")
    victim = train_victim(clf, digits.x_train, digits.y_train, digits.x_test, digits.y_test,
                          chessboard_trigger(l2_norm=1.0), target=0, mode="one-to-one", sources=[1], count=60,
                          nb_epochs=20, learning_rate=3e-3, random_state=0)
    assert victim.attack_success_rate > 0.9
    return victim


@pytest.fixture(scope="module")
def ad_report(chessboard_victim, digits):
    x, y = sample_per_class(digits.x_test, digits.y_test, 20, random_state=0)
    return OrderStatisticDetector(chessboard_victim.classifier).scan(x, y)


def test_detects_the_single_source_backdoor_pair(ad_report):
    """Default: input space, source-and-distance-normalised statistic, Gamma null on the sizes."""
    assert ad_report.detected and ad_report.p_value < 0.05
    assert (ad_report.source, ad_report.target) == (1, 0)
    assert ad_report.settings["resolved_layer"] is None
    assert ad_report.settings["statistic"] == "source-normalised-distance" and ad_report.settings["null"] == "size"
    s = ad_report.statistics
    assert s.shape == (10, 10) and np.all(np.isnan(np.diag(s))) and np.all(np.isfinite(s[~np.eye(10, dtype=bool)]))
    # the tested pair has the smallest statistic (the size null tests the minimum); the named source has the
    # smallest size into the detected target (source_rule="smallest-size")
    assert s[ad_report.extreme_source, ad_report.target] == np.nanmin(s)
    assert ad_report.sizes[ad_report.source, ad_report.target] == np.nanmin(ad_report.sizes[:, ad_report.target])
    assert ad_report.settings["source_rule"] == "smallest-size"
    assert ad_report.estimated_pattern.shape == (1, 8, 8)


def test_paper_statistic_and_default_come_from_the_same_sizes(ad_report, chessboard_victim, digits):
    from art_backdoor_ext.functional.null_exclusion import order_statistic_with_exclusion
    from art_backdoor_ext.functional.pair_normalisation import class_mean_distances, source_normalised_statistics
    from art_backdoor_ext.functional.size_null import size_order_statistic_pvalue

    x, y = sample_per_class(digits.x_test, digits.y_test, 20, random_state=0)
    paper = OrderStatisticDetector(chessboard_victim.classifier, statistic="size", null="reciprocal",
                                   exclusion="k-1").scan(x, y)
    np.testing.assert_array_equal(paper.sizes, ad_report.sizes)  # same scan, only the statistic differs
    off = ~np.eye(10, dtype=bool)
    np.testing.assert_array_equal(paper.statistics[off], paper.sizes[off])
    assert paper.null["variable"] == "reciprocal" and paper.detected and (paper.source, paper.target) == (1, 0)
    expected = source_normalised_statistics(ad_report.sizes) / class_mean_distances(x, y)
    np.testing.assert_allclose(ad_report.statistics[off], expected[off])
    assert ad_report.null["variable"] == "size"
    combined, _ = order_statistic_with_exclusion(size_order_statistic_pvalue, expected, "combined")
    assert ad_report.p_value == combined.p_value  # the default tests with one and with K - 1 values set aside


def test_source_normalised_statistics_come_from_the_same_sizes(ad_report, chessboard_victim, digits):
    """Both source normalisations reuse the scan's sizes (one extra forward pass for the margins); the plain one
    singles out the backdoor pair of this victim."""
    from art_backdoor_ext.functional.pair_normalisation import clean_margins

    x, y = sample_per_class(digits.x_test, digits.y_test, 20, random_state=0)
    clf = chessboard_victim.classifier
    off = ~np.eye(10, dtype=bool)
    rel = OrderStatisticDetector(clf, statistic="source-normalised", null="reciprocal").scan(x, y)
    np.testing.assert_array_equal(rel.sizes, ad_report.sizes)
    d = ad_report.sizes
    for s, t in [(1, 0), (0, 1), (7, 3)]:  # size over the median of the source's other eight pairs
        others = [d[s, u] for u in range(10) if u not in (s, t)]
        assert rel.statistics[s, t] == pytest.approx(d[s, t] / np.median(others))
    margin = OrderStatisticDetector(clf, statistic="source-normalised-margin", null="reciprocal").scan(x, y)
    expected = rel.statistics / np.sqrt(clean_margins(clf.predict(x), y))
    np.testing.assert_allclose(margin.statistics[off], expected[off], rtol=1e-6)
    assert rel.detected and (rel.source, rel.target) == (1, 0)
    # the margin scaling moves this victim's extreme pair to another source of the same target (4 -> 0); the
    # default source rule still names the true source, the smallest size into the target
    assert margin.target == 0 and margin.statistics[margin.extreme_source, 0] == np.nanmin(margin.statistics)
    assert (margin.extreme_source, margin.source) == (4, 1)


def test_asymmetry_statistic_with_the_paper_null(ad_report, chessboard_victim, digits):
    """The previous default: size over the reverse pair's size, Gamma null on the reciprocals."""
    x, y = sample_per_class(digits.x_test, digits.y_test, 20, random_state=0)
    r = OrderStatisticDetector(chessboard_victim.classifier, statistic="asymmetry", null="reciprocal").scan(x, y)
    off = ~np.eye(10, dtype=bool)
    np.testing.assert_allclose(r.statistics[off], (ad_report.sizes / ad_report.sizes.T)[off])
    assert r.null["variable"] == "reciprocal" and r.detected and (r.source, r.target) == (1, 0)
    assert json.loads(json.dumps(r.to_dict(), allow_nan=False))["null"]["variable"] == "reciprocal"


def test_first_conv_feature_space(chessboard_victim, digits):
    x, y = sample_per_class(digits.x_test, digits.y_test, 10, random_state=0)
    r = OrderStatisticDetector(chessboard_victim.classifier, layer="auto", statistic="size").scan(x, y)
    assert r.settings["resolved_layer"] == "relu1" and r.estimated_pattern.shape == (16, 8, 8)
    assert (r.source, r.target) == (1, 0)


def test_both_norms_come_from_the_same_perturbations(ad_report, chessboard_victim, digits):
    """``sizes_by_norm`` holds the L2 and L1 sizes of the scan's perturbations; an L1 scan measures the same
    perturbations, so its sizes are the L2 scan's L1 sizes, and they are the L1 norm of the estimated pattern."""
    by_norm = ad_report.sizes_by_norm
    np.testing.assert_array_equal(by_norm["l2"], ad_report.sizes)
    off = ~np.eye(10, dtype=bool)
    assert np.all(by_norm["l1"][off] >= by_norm["l2"][off] - 1e-9)  # |v|_1 >= |v|_2
    assert np.all(np.isnan(np.diag(by_norm["l1"])))
    assert np.abs(ad_report.estimated_pattern).sum() == pytest.approx(
        by_norm["l1"][ad_report.source, ad_report.target], rel=1e-4)
    x, y = sample_per_class(digits.x_test, digits.y_test, 20, random_state=0)
    l1 = OrderStatisticDetector(chessboard_victim.classifier, norm="l1").scan(x, y)
    np.testing.assert_allclose(l1.sizes, by_norm["l1"], rtol=1e-6)


def test_report_json_round_trip(ad_report):
    d = json.loads(json.dumps(ad_report.to_dict(), allow_nan=False))
    assert d["target"] == 0 and d["statistics"][0][0] is None and len(d["statistics"]) == 10
    assert set(d["null"]) >= {"shape", "scale"}
    assert set(d["sizes_by_norm"]) == {"l1", "l2"} and d["sizes_by_norm"]["l1"][0][0] is None


def test_deterministic(badnets_victim, clean_set):
    x, y = clean_set
    det = OrderStatisticDetector(badnets_victim.classifier, layer=None, step_size=0.01, max_iter=60, max_size=0.3)
    a, b = det.scan(x, y), det.scan(x, y)
    np.testing.assert_array_equal(a.statistics, b.statistics)
    assert a.p_value == b.p_value


def test_variants_run(badnets_victim, clean_set):
    x, y = clean_set
    for kw in ({"objective": "Jp", "norm": "l1"}, {"objective": "Jc", "confusion_correction": True}):
        r = OrderStatisticDetector(badnets_victim.classifier, step_size=0.02, max_iter=100, **kw).scan(x, y)
        assert 0 <= r.p_value <= 1 and r.settings["objective"] == kw["objective"]


def test_scan_variants_decide_like_separate_scans_from_one_optimisation(badnets_victim, clean_set, monkeypatch):
    from art_backdoor_ext.defences.model import order_statistic

    x, y = clean_set
    fast = {"step_size": 0.02, "max_iter": 60}
    det = OrderStatisticDetector(badnets_victim.classifier, **fast)
    variants = {"default": {}, "paper": {"statistic": "size", "null": "reciprocal"}, "L1": {"norm": "l1"},
                "corrected": {"statistic": "size", "confusion_correction": True, "significance": 0.01},
                "k-1": {"exclusion": "k-1"}, "one, paper null": {"exclusion": "one", "null": "reciprocal"}}
    runs = []
    real = order_statistic.PerturbationEngine.run
    monkeypatch.setattr(order_statistic.PerturbationEngine, "run",
                        lambda engine, *a, **kw: runs.append(1) or real(engine, *a, **kw))
    x_before = x.copy()
    reports = det.scan_variants(x, y, variants)
    assert len(runs) == 1 and list(reports) == list(variants)  # one optimisation for the four decisions
    np.testing.assert_array_equal(x, x_before)
    for name, overrides in variants.items():
        alone = OrderStatisticDetector(badnets_victim.classifier, **fast, **overrides).scan(x, y)
        shared = reports[name]
        np.testing.assert_array_equal(shared.statistics, alone.statistics)
        np.testing.assert_array_equal(shared.sizes, alone.sizes)
        assert (shared.p_value, shared.source, shared.target, shared.detected) == (
            alone.p_value, alone.source, alone.target, alone.detected)
        assert shared.settings == alone.settings and shared.seconds > 0
    assert not np.array_equal(reports["L1"].sizes, reports["default"].sizes)
    assert reports["k-1"].null["n_exclude"] == 9 and reports["one, paper null"].null["n_exclude"] == 1
    from art_backdoor_ext.functional.size_null import size_order_statistic_pvalue

    default = reports["default"]  # exclusion="combined": both tests on the same statistics, Sidak for two
    p_many, p_one = (size_order_statistic_pvalue(default.statistics, n_exclude=n).p_value for n in (9, 1))
    assert default.p_value == pytest.approx(1 - (1 - min(p_many, p_one)) ** 2, rel=1e-12)
    assert default.null["n_exclude"] == (1 if p_one < p_many else 9)
    with pytest.raises(InvalidParameterError, match=r"variant 'x' overrides \['layer'\], which change the opt"):
        det.scan_variants(x, y, {"x": {"layer": "auto"}})
    with pytest.raises(InvalidParameterError, match="norm"):
        det.scan_variants(x, y, {"x": {"norm": "l3"}})
    with pytest.raises(InvalidParameterError, match="variants is empty"):
        det.scan_variants(x, y, {})


def test_scan_variants_read_smaller_pi_off_one_optimisation(badnets_victim, clean_set, monkeypatch):
    """Fig. 11 of the paper (detection against pi) from one run: the largest pi optimised, the others read off its
    trace; each equals a scan run with that pi, estimated pattern included."""
    from art_backdoor_ext.defences.model import order_statistic

    x, y = clean_set
    fast = {"step_size": 0.02, "max_iter": 60}
    det = OrderStatisticDetector(badnets_victim.classifier, **fast)
    variants = {"default": {}, "pi 0.5": {"target_misclassification": 0.5},
                "pi 0.9 corrected": {"target_misclassification": 0.9, "confusion_correction": True,
                                     "statistic": "size"}}
    runs = []
    real = order_statistic.PerturbationEngine.run
    monkeypatch.setattr(order_statistic.PerturbationEngine, "run",
                        lambda engine, x_, y_, problems: runs.append(len(problems)) or real(engine, x_, y_, problems))
    reports = det.scan_variants(x, y, variants)
    # one optimisation of the 90 pairs at pi 0.9; the two smaller pi re-optimise only their detected pair's pattern
    assert runs == [90, 1, 1]
    for name, overrides in variants.items():
        alone = OrderStatisticDetector(badnets_victim.classifier, **fast, **overrides).scan(x, y)
        shared = reports[name]
        np.testing.assert_allclose(shared.sizes, alone.sizes, rtol=1e-6)
        np.testing.assert_allclose(shared.statistics, alone.statistics, rtol=1e-6)
        np.testing.assert_array_equal(shared.misclassification, alone.misclassification)
        np.testing.assert_array_equal(shared.reached, alone.reached)
        assert (shared.source, shared.target, shared.detected) == (alone.source, alone.target, alone.detected)
        assert shared.p_value == pytest.approx(alone.p_value, rel=1e-5)
        np.testing.assert_allclose(shared.estimated_pattern, alone.estimated_pattern, atol=1e-5)
        assert shared.settings == alone.settings
    assert np.nanmean(reports["pi 0.5"].sizes) < np.nanmean(reports["default"].sizes)


def test_source_rule_names_the_smallest_size_into_the_detected_target(clean_set):
    """A collateral-damage layout: 9 -> 5 is the most extreme normalised pair (row 9 is hard to move elsewhere),
    7 -> 5 the smaller common perturbation into the same target. The p-value and target do not depend on the rule."""
    from art_backdoor_ext.defences.model.perturbation import EngineResult, pair_problems

    x, y = clean_set
    with torch.random.fork_rng(devices=[]):
        clf = make_classifier(DigitsCNN(), device_type="cpu")
    problems = pair_problems(y, 10)
    size = np.where(problems.sources == 9, 40.0, 10.0)
    size[(problems.sources == 9) & (problems.targets == 5)] = 3.5
    size[(problems.sources == 7) & (problems.targets == 5)] = 3.0
    p = len(problems)
    result = EngineResult(
        problems=problems, size_l1=size * 8, size_l2=size, misclassification=np.full(p, 0.8),
        initial_misclassification=np.zeros(p), reached=np.ones(p, dtype=bool), iterations=np.full(p, 10),
        perturbations=np.arange(p, dtype=float)[:, None, None, None] * np.ones((p, 1, 8, 8)),
        trace_size_l1=np.full((1, p), np.nan), trace_size_l2=np.full((1, p), np.nan),
        trace_misclassification=np.full((1, p), np.nan))
    reports = {rule: OrderStatisticDetector(clf, source_rule=rule)._report(x, y, 1.0, problems, result, 0.0)
               for rule in ("most-extreme", "smallest-size")}
    extreme, smallest = reports["most-extreme"], reports["smallest-size"]
    assert (extreme.source, extreme.target, extreme.extreme_source) == (9, 5, 9)
    assert (smallest.source, smallest.target, smallest.extreme_source) == (7, 5, 9)
    assert smallest.p_value == extreme.p_value and smallest.detected == extreme.detected
    pair_75 = int(np.flatnonzero((problems.sources == 7) & (problems.targets == 5))[0])
    assert np.all(smallest.estimated_pattern == pair_75)  # the pattern of the named pair
    assert json.loads(json.dumps(smallest.to_dict()))["extreme_source"] == 9
    with pytest.raises(InvalidParameterError, match="source_rule"):
        OrderStatisticDetector(clf, source_rule="largest")


def test_bad_input(badnets_victim, clean_set):
    x, y = clean_set
    clf = badnets_victim.classifier
    det = OrderStatisticDetector(clf)
    with pytest.raises(EstimatorError):
        OrderStatisticDetector(object())
    with pytest.raises(DataError, match="channels-first"):
        det.scan(np.transpose(x, (0, 2, 3, 1)), y)
    with pytest.raises(DataError, match="one-hot"):
        det.scan(x, np.eye(10)[y])
    with pytest.raises(DataError, match=r"no samples of class\(es\) \[9\]"):
        det.scan(x[y != 9], y[y != 9])
    keep = np.concatenate([np.flatnonzero(y != 4), np.flatnonzero(y == 4)[:1]])
    with pytest.raises(DataError, match="at least 2 samples per class"):
        det.scan(x[keep], y[keep])
    with pytest.raises(DataError, match="valid labels 0..9"):
        det.scan(x, np.where(y == 9, 10, y))
    with pytest.raises(DataError, match="float64"):
        det.scan(x.astype(np.float64), y)
    with pytest.raises(InvalidParameterError, match="unknown layer 'nope'.*relu1"):
        OrderStatisticDetector(clf, layer="nope")
    with pytest.raises(InvalidParameterError, match="objective must be one of"):
        OrderStatisticDetector(clf, objective="K")
    with pytest.raises(InvalidParameterError, match="null must be one of"):
        OrderStatisticDetector(clf, null="gamma")
    with torch.random.fork_rng(devices=[]):
        two = make_classifier(DigitsCNN(nb_classes=2), device_type="cpu")
    with pytest.raises(DataError, match="at least 3 classes"):
        OrderStatisticDetector(two).scan(x[y < 2], y[y < 2])


class _Evil:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_scan_cli_writes_report_and_plot(chessboard_victim, digits, tmp_path, capsys):
    from art_backdoor_ext import cli

    weights, data = tmp_path / "model.pt", tmp_path / "clean.npz"
    torch.save(chessboard_victim.classifier.model.state_dict(), weights)
    x, y = sample_per_class(digits.x_test, digits.y_test, 20, random_state=0)
    np.savez(data, x=x, y=y)
    out = tmp_path / "out"
    code = cli.main(["scan", "--arch", "digits-cnn", "--weights", str(weights), "--data", str(data),
                     "--output", str(out), "--quiet", "--source-rule", "smallest-size", "--exclusion", "combined"])
    assert code == 0 and "BACKDOOR DETECTED" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert (report["source"], report["target"]) == (1, 0) and report["detected"]
    assert report["settings"]["source_rule"] == "smallest-size" and report["settings"]["exclusion"] == "combined"
    assert report["null"]["n_exclude"] in (1, 9)
    assert (out / "statistics.png").stat().st_size > 1000


def test_scan_cli_refuses_code_in_weights(tmp_path, capsys, monkeypatch):
    from art_backdoor_ext import cli

    monkeypatch.chdir(tmp_path)
    torch.save({"conv1.weight": _Evil()}, tmp_path / "evil.pt")
    np.savez(tmp_path / "clean.npz", x=np.zeros((30, 1, 8, 8), np.float32), y=np.repeat(np.arange(10), 3))
    code = cli.main(["scan", "--arch", "digits-cnn", "--weights", "evil.pt", "--data", "clean.npz"])
    assert code == 2 and "weights_only=True" in capsys.readouterr().err
    assert not (tmp_path / "PWNED").exists()
