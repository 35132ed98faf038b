import json

import numpy as np
import pytest
import torch

from art_backdoor_ext._torch import extract_features
from art_backdoor_ext.datasets import sample_per_class
from art_backdoor_ext.defences.model.cepa import CEPA, candidate_layers
from art_backdoor_ext.exceptions import DataError, EstimatorError, InvalidParameterError
from art_backdoor_ext.models import DigitsCNN, make_classifier

FAST = {"max_iter": 40, "layers": ["relu3"]}


@pytest.fixture(scope="module")
def warp_victim(digits):
    """All-to-one (target 0) WaNet-style warping backdoor on digits, 10% poisoned."""
    from art_backdoor_ext.attacks.triggers import warp_trigger
    from art_backdoor_ext.training import train_victim

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        clf = make_classifier(DigitsCNN(), device_type="cpu")
    victim = train_victim(clf, digits.x_train, digits.y_train, digits.x_test, digits.y_test,
                          warp_trigger(grid_size=4, strength=1.0, random_state=0), target=0, rate=0.1,
                          nb_epochs=12, learning_rate=3e-3, random_state=0)
    assert victim.attack_success_rate > 0.9
    return victim


@pytest.fixture(scope="module")
def clean_set(digits):
    return sample_per_class(digits.x_test, digits.y_test, 10, random_state=0)


@pytest.fixture(scope="module")
def detector(warp_victim):
    # the paper's statistic and its decision (each layer on its own, the most extreme one, Sidak-corrected)
    return CEPA(warp_victim.classifier, variant="all-to-one", max_iter=100, statistic="consensus",
                layer_pooling="sidak")


@pytest.fixture(scope="module")
def report(detector, clean_set):
    return detector.scan(*clean_set)


def test_detects_the_all_to_one_target(report):
    # the uncalibrated order statistic (calibration="none") flags target 0 at the 0.05 level, Sidak over the layers
    m = len(report.layers)
    best = min(report.tests, key=lambda t: t["p_value_uncalibrated"])
    assert best["target"] == 0 and -np.expm1(m * np.log1p(-best["p_value_uncalibrated"])) < 0.05
    # the bootstrap calibration (default) only raises each layer's p-value, to a multiple of 1 / (199 + 1)
    for t in report.tests:
        assert t["p_value"] >= t["p_value_uncalibrated"]
        assert round(t["p_value"] * 200) == pytest.approx(t["p_value"] * 200)
    assert report.p_value == pytest.approx(-np.expm1(m * np.log1p(-min(t["p_value"] for t in report.tests))))
    assert report.detected == (report.p_value < 0.05)
    assert report.target == 0 and report.source is None and report.variant == "all-to-one"
    assert report.layers == ["conv1", "relu1", "relu2", "relu3"] and report.layer in report.layers
    shapes = {"conv1": (16, 8, 8), "relu1": (16, 8, 8), "relu2": (32, 8, 8), "relu3": (64,)}
    assert report.mu.shape == shapes[report.layer]
    stats = report.statistics["all-to-one"][report.layer]
    # the detected target has the smallest consensus ratio sigma / ||mu|| at the chosen layer
    assert np.argmin(stats["ratio"]) == 0
    assert report.misclassification >= 0.9 and stats["reached"][0] == 1
    assert len(report.tests) == m and min(t["p_value"] for t in report.tests) <= report.p_value


def test_estimate_trigger_sends_test_samples_to_the_target(detector, report, digits):
    x = digits.x_test[digits.y_test != 0][:150]
    before = x.copy()
    delta = detector.estimate_trigger(x, report, max_iter=100)
    np.testing.assert_array_equal(x, before)
    assert delta.shape == x.shape and delta.dtype == np.float32
    assert (x + delta).min() >= -1e-6 and (x + delta).max() <= 1 + 1e-6
    clf = detector.classifier
    asr = float(np.mean(clf.predict(x + delta).argmax(1) == 0))
    # control: the same per-sample norms in random directions barely move anything to the target
    rng = np.random.default_rng(0)
    noise = rng.normal(size=delta.shape).astype(np.float32)
    noise *= (np.linalg.norm(delta.reshape(len(x), -1), axis=1) / np.linalg.norm(noise.reshape(len(x), -1),
                                                                                  axis=1))[:, None, None, None]
    control = float(np.mean(clf.predict(np.clip(x + noise, 0, 1)).argmax(1) == 0))
    assert asr > 0.5 and asr > control + 0.4


def test_report_json_round_trip(detector, report, digits):
    d = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert d["detected"] is report.detected and d["target"] == 0 and d["source"] is None
    assert d["settings"]["calibration"] == "bootstrap" and d["tests"][0]["p_value_uncalibrated"] > 0
    ratio = d["statistics"]["all-to-one"][report.layer]["ratio"]
    assert len(ratio) == 10 and all(isinstance(v, float) for v in ratio)
    assert set(d["settings"]) >= {"lam", "target_misclassification", "resolved_layers"}
    x = digits.x_test[digits.y_test != 0][:5]
    # estimate_trigger accepts the report read back from JSON
    np.testing.assert_allclose(detector.estimate_trigger(x, d, max_iter=5),
                               detector.estimate_trigger(x, report, max_iter=5), atol=1e-6)


def test_closed_form_mu_is_the_mean_embedded_shift(warp_victim, clean_set):
    """The mu and sigma the batched loop reports are those of its own deltas (Eq. 2), for every layer."""
    x, y = clean_set
    clf = warp_victim.classifier
    det = CEPA(clf, layers=["relu2", "relu3"], variant="pairs", max_iter=15)
    problems, per_layer = det.optimise(x, y)["pairs"]
    for layer in ("relu2", "relu3"):
        st = per_layer[layer]
        for p in (0, 41, 89):
            idx = problems.indices[p][problems.indices[p] >= 0]
            moved = np.clip(x[idx] + st["deltas"][p][: len(idx)], 0, 1).astype(np.float32)
            shifts = extract_features(clf, moved, [layer])[layer] - extract_features(clf, x[idx], [layer])[layer]
            np.testing.assert_allclose(st["mu"][p], shifts.mean(0), rtol=1e-4, atol=1e-4)
            sigma = np.sqrt(np.mean(np.sum((shifts - shifts.mean(0)) ** 2, axis=1)))
            np.testing.assert_allclose(st["sigma"][p], sigma, rtol=1e-4)
            rate = np.mean(clf.predict(moved).argmax(1) == problems.targets[p])
            assert st["misclassification"][p] == pytest.approx(rate)
            landed = extract_features(clf, moved, [layer])[layer]
            landing = np.sqrt(np.mean(np.sum((landed - landed.mean(0)) ** 2, axis=1)))
            np.testing.assert_allclose(st["landing_sigma"][p], landing, rtol=1e-4)
            own = extract_features(clf, x[y == problems.targets[p]], [layer])[layer]
            spread = np.sqrt(np.mean(np.sum((own - own.mean(0)) ** 2, axis=1)))
            np.testing.assert_allclose(st["class_sigma"][p], spread, rtol=1e-4)


def test_batched_equals_one_problem_at_a_time(warp_victim, clean_set):
    x, y = clean_set
    det = CEPA(warp_victim.classifier, variant="pairs", **FAST)
    problems, all_at_once = det.optimise(x, y)["pairs"]
    chosen = np.array([3, 40, 77])
    for i in chosen:
        _, alone = det.optimise(x, y, problems={"pairs": problems.subset(np.array([i]))})["pairs"]
        for name in ("ratio", "mu_norm", "misclassification", "iterations"):
            np.testing.assert_allclose(alone["relu3"][name][0], all_at_once["relu3"][name][i], rtol=1e-4)


def test_deterministic_and_hygienic(warp_victim, clean_set):
    x, y = clean_set
    clf = warp_victim.classifier
    model = clf.model
    model.train()
    hooks = sum(len(m._forward_hooks) for m in model.modules())
    det = CEPA(clf, variant="both", random_state=0, max_samples_per_target=30, **FAST)
    a = det.scan(x, y).to_dict()
    assert model.training and sum(len(m._forward_hooks) for m in model.modules()) == hooks
    assert all(p.requires_grad for p in model.parameters())
    model.eval()
    b = det.scan(x, y).to_dict()
    a.pop("seconds"), b.pop("seconds")
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert {t["variant"] for t in a["tests"]} == {"pairs", "all-to-one"}
    assert np.asarray(a["statistics"]["pairs"]["relu3"]["ratio"], dtype=float).shape == (10, 10)


def test_candidate_layers_and_joint_penalty(warp_victim, clean_set):
    clf = warp_victim.classifier
    assert candidate_layers(clf.model) == ["relu1", "relu2", "relu3"]
    assert candidate_layers(clf.model, n=2) == ["relu1", "relu3"]
    assert candidate_layers(clf.model, first_linear=True) == ["conv1", "relu1", "relu2", "relu3"]
    x, y = clean_set
    r = CEPA(clf, layers=["relu2", "relu3"], layer_penalty="joint", variant="all-to-one", max_iter=20).scan(x, y)
    assert set(r.statistics["all-to-one"]) == {"relu2", "relu3"} and 0 <= r.p_value <= 1


def test_candidate_layers_first_linear_is_the_linear_map_before_the_first_activation():
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16),
                              torch.nn.ReLU(), torch.nn.Linear(16, 10))
    assert candidate_layers(mlp, first_linear=True) == ["1", "2", "4"]
    assert candidate_layers(mlp, n=1, first_linear=True) == ["1", "2"]
    gated_first = torch.nn.Sequential(torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(64, 10), torch.nn.ReLU())
    assert candidate_layers(gated_first, first_linear=True) == ["0", "3"]  # no linear map before the first gate
    no_activation = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.Linear(32, 10))
    assert candidate_layers(no_activation, first_linear=True) == ["0", "1"]  # the leaf fallback starts earlier


def test_bad_input(warp_victim, clean_set):
    x, y = clean_set
    clf = warp_victim.classifier
    det = CEPA(clf, **FAST)
    with pytest.raises(EstimatorError):
        CEPA(object())
    with pytest.raises(InvalidParameterError, match="unknown layer 'nope'.*relu1, conv2, relu2"):
        CEPA(clf, layers=["relu3", "nope"])
    with pytest.raises(InvalidParameterError, match="at least one layer"):
        CEPA(clf, layers=[])
    with pytest.raises(InvalidParameterError, match="target_misclassification"):
        CEPA(clf, target_misclassification=1.5)
    with pytest.raises(InvalidParameterError, match="variant must be one of"):
        CEPA(clf, variant="one-to-one")
    with pytest.raises(InvalidParameterError, match="calibration must be one of"):
        CEPA(clf, calibration="exact")
    # 4 layers tested one by one: the smallest corrected bootstrap p-value with 99 draws is 1 - (1 - 1/100)^4 =
    # 0.0394 > 0.01; the default pools them into one test, whose smallest p-value is 1/100 (not < 0.01) or 1/101
    with pytest.raises(InvalidParameterError, match=r"n_bootstrap=99 cannot reach significance=0.01 over 4 tests.*"
                                                    r">= 400"):
        CEPA(clf, significance=0.01, n_bootstrap=99, layer_pooling="sidak")
    assert CEPA(clf, significance=0.01, n_bootstrap=400, layer_pooling="sidak").n_bootstrap == 400
    with pytest.raises(InvalidParameterError, match=r"n_bootstrap=99 cannot reach significance=0.01 over 1 test "):
        CEPA(clf, significance=0.01, n_bootstrap=99)
    for pooling in ("auto", "pooled", "joint"):
        assert CEPA(clf, significance=0.01, n_bootstrap=100, layer_pooling=pooling).n_bootstrap == 100
    # both variants: the four pair tests and the one all-to-one test
    with pytest.raises(InvalidParameterError, match=r"over 5 tests"):
        CEPA(clf, significance=0.01, n_bootstrap=400, variant="both")
    assert CEPA(clf, significance=0.01, n_bootstrap=99, calibration="none").calibration == "none"
    with pytest.raises(InvalidParameterError, match="unknown parameter"):
        det.set_params(lambda_=1.0)
    with pytest.raises(DataError, match="channels-first"):
        det.scan(np.transpose(x, (0, 2, 3, 1)), y)
    with pytest.raises(DataError, match=r"no samples of class\(es\) \[9\]"):
        det.scan(x[y != 9], y[y != 9])
    keep = np.concatenate([np.flatnonzero(y != 4), np.flatnonzero(y == 4)[:1]])
    with pytest.raises(DataError, match="at least 2 samples per class"):
        det.scan(x[keep], y[keep])
    with pytest.raises(DataError, match="channels-first"):
        det.estimate_trigger(np.transpose(x, (0, 2, 3, 1)), {"layer": "relu3", "mu": np.zeros(64)})
    with pytest.raises(DataError, match="outputs 64 per sample"):
        det.estimate_trigger(x, {"layer": "relu3", "mu": np.zeros(10)})
    with pytest.raises(DataError, match="'layer' and 'mu'"):
        det.estimate_trigger(x, {"mu": np.zeros(64)})
    with pytest.raises(InvalidParameterError, match="unknown layer"):
        det.estimate_trigger(x, {"layer": "nope", "mu": np.zeros(64)})


def test_deltas_can_brighten_pixels_black_in_every_sample(badnets_victim, clean_set):
    """The 2x2 corner patch sits on pixels that are 0 in (almost) every digit: the sample-wise deltas start at
    zero there and must still move (torch.clamp's zero gradient at the bound froze them)."""
    x, y = clean_set
    det = CEPA(badnets_victim.classifier, variant="all-to-one", layers=["relu3"], max_iter=30)
    problems, per_layer = det.optimise(x, y)["all-to-one"]
    row = int(np.flatnonzero(problems.targets == 0)[0])
    valid = problems.indices[row] >= 0
    black = (x[problems.indices[row][valid]][..., -2:, -2:] == 0).reshape(int(valid.sum()), -1)
    corner = per_layer["relu3"]["deltas"][row][valid][..., -2:, -2:].reshape(int(valid.sum()), -1)
    assert black.mean() > 0.5
    assert np.abs(corner[black]).mean() > 0.05


def test_joint_layer_pooling_decides_with_one_test(detector, report, clean_set, monkeypatch):
    # the default (Sidak over the per-layer tests) still reports the joint test over the three layers
    joint = report.joint
    assert joint is not None and joint["pooled_layers"] == report.layers and joint["target"] == 0
    assert joint["layer"] in report.layers and round(joint["p_value"] * 200) == pytest.approx(joint["p_value"] * 200)
    pooled = CEPA(detector.classifier, variant="all-to-one", max_iter=100, layer_pooling="joint",
                  statistic="consensus")
    results = detector.optimise(*clean_set)
    monkeypatch.setattr(pooled, "optimise", lambda x, y, layers: results)  # the same optimisation, re-decided
    decided = pooled.scan(*clean_set)
    assert decided.tests == report.tests and decided.joint == joint
    assert decided.p_value == pytest.approx(joint["p_value"])  # one test: no correction for the layers
    assert decided.detected == (joint["p_value"] < 0.05) and decided.target == 0 and decided.layer == joint["layer"]
    np.testing.assert_allclose(decided.mu.ravel(), results["all-to-one"][1][joint["layer"]]["mu"][0])
    with pytest.raises(InvalidParameterError, match="layer_pooling"):
        CEPA(detector.classifier, layer_pooling="mean")
    for other in ({"calibration": "none"}, {"inference": "mad"}):
        with pytest.raises(InvalidParameterError, match="needs calibration='bootstrap'"):
            CEPA(detector.classifier, layer_pooling="joint", **other)
    one_layer = CEPA(detector.classifier, variant="all-to-one", layers="relu3", max_iter=5).scan(*clean_set)
    assert one_layer.joint is None  # nothing to pool


def test_sigma_statistic_tests_the_spread_about_mu_alone(detector, clean_set, monkeypatch):
    """statistic="sigma": the paper's first condition (small variance about mu) without dividing by ||mu||."""
    from art_backdoor_ext.functional.bootstrap_calibration import calibrated_max_statistic_pvalue

    results = detector.optimise(*clean_set)
    by_sigma = CEPA(detector.classifier, variant="all-to-one", max_iter=100)
    assert by_sigma.statistic == "sigma"  # the default since 2026-12-02
    monkeypatch.setattr(by_sigma, "optimise", lambda x, y, layers: results)  # the same optimisation, re-decided
    decided = by_sigma.scan(*clean_set)
    per_layer = results["all-to-one"][1]
    for test in decided.tests:
        sigma = per_layer[test["layer"]]["sigma"]
        assert test["target"] == int(np.argmin(sigma))
        assert test["p_value"] == calibrated_max_statistic_pvalue(1.0 / sigma, n_bootstrap=199, random_state=0)[0]
        ai = decided.statistics["all-to-one"][test["layer"]]["anomaly_index"]
        assert np.nanargmax(ai) == np.argmin(sigma)  # the MAD index is taken on the low side of sigma
    assert decided.statistic == "sigma" and decided.settings["statistic"] == "sigma"
    with pytest.raises(InvalidParameterError, match="statistic"):
        CEPA(detector.classifier, statistic="variance")


def test_scan_variants_decides_one_optimisation_several_ways(detector, report, clean_set, monkeypatch):
    x, y = clean_set
    x_before, y_before = x.copy(), y.copy()
    calls = []
    real = CEPA.optimise

    def counted(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(CEPA, "optimise", counted)
    variants = {"paper": {}, "sigma": {"statistic": "sigma"}, "mad": {"inference": "mad"},
                "joint": {"layer_pooling": "joint"}}
    reports = detector.scan_variants(x, y, variants)
    assert len(calls) == 1 and list(reports) == list(variants)
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(y, y_before)
    # the detector's own settings give what its separate scan gave
    same = reports["paper"]
    assert (same.p_value, same.target, same.layer, same.detected) == (report.p_value, report.target, report.layer,
                                                                       report.detected)
    assert same.tests == report.tests and same.joint == report.joint
    np.testing.assert_allclose(same.mu, report.mu)
    # every other variant equals a scan of a detector with those settings on the same optimisation
    results = real(detector, x, y)
    for name, overrides in variants.items():
        other = CEPA(detector.classifier, **{**detector.get_params(), **overrides})
        monkeypatch.setattr(other, "optimise", lambda x_, y_, layers: results)
        alone = other.scan(x, y)
        got = reports[name]
        assert (got.p_value, got.target, got.layer, got.detected, got.statistic) == (
            alone.p_value, alone.target, alone.layer, alone.detected, alone.statistic), name
        np.testing.assert_allclose(got.anomaly_index, alone.anomaly_index)
        np.testing.assert_allclose(got.mu, alone.mu)
        assert got.seconds > 0
    assert reports["sigma"].statistic == "sigma" and reports["mad"].settings["inference"] == "mad"
    assert not np.shares_memory(reports["paper"].mu, reports["sigma"].mu)
    # anything that changes the perturbations, or nothing at all, is refused before optimising
    for bad, match in (({"v": {"lam": 0.1}}, "change the optimisation"), ({}, "variants is empty"),
                       ({"v": {"variant": "pairs"}}, "change the optimisation"),
                       ({"v": {"statistic": "variance"}}, "statistic")):
        calls.clear()
        with pytest.raises(InvalidParameterError, match=match):
            detector.scan_variants(x, y, bad)
        assert not calls


def test_pooled_layer_pooling_decides_with_the_pooled_test(detector, report, clean_set, monkeypatch):
    from art_backdoor_ext.functional.layer_pooling import pooled_layer_pvalue

    assert report.pooled is None  # only computed when it decides
    pooled = CEPA(detector.classifier, variant="all-to-one", max_iter=100, layer_pooling="pooled")
    results = detector.optimise(*clean_set)
    monkeypatch.setattr(pooled, "optimise", lambda x, y, layers: results)  # the same optimisation, re-decided
    decided = pooled.scan(*clean_set)
    sigma = np.stack([results["all-to-one"][1][layer]["sigma"] for layer in decided.layers]).astype(float)
    p, target, at, raw = pooled_layer_pvalue(1.0 / sigma, n_bootstrap=199, random_state=0)
    assert decided.pooled["p_value"] == p and decided.pooled["p_value_uncalibrated"] == raw
    assert decided.p_value == pytest.approx(p)  # one test: no correction for the layers
    assert decided.target == target == 0 and decided.layer == decided.layers[at] == decided.pooled["layer"]
    assert decided.detected == (p < 0.05)
    np.testing.assert_allclose(decided.mu.ravel(), results["all-to-one"][1][decided.layer]["mu"][0])
    json.dumps(decided.to_dict())
    with pytest.raises(InvalidParameterError, match="needs calibration='bootstrap'"):
        CEPA(detector.classifier, layer_pooling="pooled", inference="mad")


def test_auto_layer_pooling_tests_the_calibrated_all_to_one_layers_together_only(detector, clean_set, monkeypatch):
    """The default, ``layer_pooling="auto"``: the joint test where it applies, each layer on its own elsewhere."""
    results = detector.optimise(*clean_set)
    decisions = {}
    for pooling in ("auto", "joint", "pooled", "sidak"):
        det = CEPA(detector.classifier, variant="all-to-one", max_iter=100, layer_pooling=pooling)
        monkeypatch.setattr(det, "optimise", lambda x, y, layers: results)  # the same optimisation, re-decided
        decisions[pooling] = det.scan(*clean_set)
    auto, joint, pooled, sidak = (decisions[k] for k in ("auto", "joint", "pooled", "sidak"))
    assert CEPA(detector.classifier).layer_pooling == "auto"  # the default
    assert auto.joint == joint.joint and auto.joint is not None and auto.pooled is None and pooled.pooled is not None
    assert (auto.p_value, auto.target, auto.layer) == (joint.p_value, joint.target, joint.layer)
    assert auto.p_value == pytest.approx(auto.joint["p_value"])  # one test: no correction for the layers
    assert auto.settings["layer_pooling"] == "auto" and auto.settings["resolved_layer_pooling"] == "joint"
    assert sidak.settings["resolved_layer_pooling"] == "sidak"
    # where the joint test does not apply, auto is the per-layer decision (and no error, unlike "joint")
    clf = detector.classifier
    assert CEPA(clf, inference="mad").resolved_layer_pooling() == "sidak"
    assert CEPA(clf, calibration="none").resolved_layer_pooling() == "sidak"
    assert CEPA(clf, layers="relu3").resolved_layer_pooling() == "sidak"  # one layer: nothing to pool
    assert CEPA(clf, variant="pairs").resolved_layer_pooling() == "sidak"
    assert CEPA(clf, variant="both").resolved_layer_pooling() == "joint"  # its all-to-one half
    assert CEPA(clf, layer_pooling="joint").resolved_layer_pooling() == "joint"
