"""MBDS: fit on a tiny digits reserve, both feature sources, persistence, safety, determinism, errors."""

import json
import os
import pickle

import numpy as np
import pytest
import torch

from art_backdoor_ext.defences.sample import MBDS, ClassResidualDetector, MBDSPoisonFilter
from art_backdoor_ext.exceptions import DataError, InvalidParameterError, NotFittedError
from art_backdoor_ext.models import DigitsCNN

FAST = {"n_shadow_models": 12, "shadow_epochs": 40, "shadow_learning_rate": 3e-3, "meta_epochs": 60}


def white_patch(x):
    out = x.copy()
    out[..., -2:, -2:] = 1.0
    return out


@pytest.fixture(scope="module")
def split(digits):
    """Reserve: 300 test images (disjoint from the victim's training set); evaluation: the other 150."""
    return (digits.x_test[:300], digits.y_test[:300]), (digits.x_test[300:], digits.y_test[300:])


@pytest.fixture(scope="module")
def fitted(badnets_victim, split):
    (xr, yr), _ = split
    mbds = MBDS(badnets_victim.classifier, random_state=0, **FAST)
    mbds.fit(xr, yr)
    return mbds


def test_fit_report_and_layer(fitted):
    r = fitted.fit_report_
    assert r["feature_layer"] == "pool" and r["feature_shape"] == [32, 4, 4]
    assert r["reserve_split"] == {"shadow": 150, "meta": 90, "calibration": 60}
    # the victim gets every class right at least twice: no class's residual statistics use all its samples
    assert r["victim+residual"] == {"residual_layer": "relu3", "classes_with_all_samples": []}
    f = r["filters"]
    assert 0 < f["clean_kept"] <= f["clean"] and 0 < f["poison_kept"] <= f["poison"] - f["poison_target_label_dropped"]
    assert f["meta_training_samples"] == 2 * min(f["clean_kept"], f["poison_kept"])
    # 60 calibration images at 5%: the floor(61 * 0.05) = 3rd highest score, expected FRR 3 / 61
    cal = r["calibration_frr"]
    assert cal["n_calibration"] == 60 and cal["rank"] == 3 and cal["expected"] == pytest.approx(3 / 61)
    assert cal["interval_90"][0] < cal["expected"] < cal["interval_90"][1]
    json.dumps(r)


def test_threshold_is_the_conformal_rank_of_the_calibration_scores(fitted, split):
    (xr, yr), _ = split
    _, _, idx_cal = fitted._split(yr, fitted._split_seed)
    for source in ("shadow", "victim"):
        scores = np.sort(fitted.score(xr[idx_cal], feature_source=source))
        assert fitted.thresholds[source] == scores[-3]  # two calibration scores above it, not three


def test_triggered_inputs_score_higher_and_frr_near_target(fitted, split):
    _, (xe, ye) = split
    x_trig = white_patch(xe[ye != 0])
    clean, trig = fitted.score(xe), fitted.score(x_trig)
    assert clean.shape == (150,) and np.all((clean >= 0) & (clean <= 1))
    # ranking quality (Mann-Whitney AUC, computed here): a broken feature path or flipped labels gives <= 0.5;
    # 12 shadow models on a 150-image shadow split reach about 0.77 (the benchmark measures detection rates)
    auc = np.mean(trig[:, None] > clean[None, :]) + 0.5 * np.mean(trig[:, None] == clean[None, :])
    assert auc >= 0.65
    report, is_backdoor = fitted.detect(xe)
    assert is_backdoor.dtype == bool and is_backdoor.shape == (150,)
    assert is_backdoor.mean() <= fitted.target_frr + 0.1  # FRR on unseen clean inputs near the target
    assert report["n_flagged"] == int(is_backdoor.sum()) and report["feature_source"] == "shadow"
    json.dumps(report)


def test_victim_feature_source_runs(fitted, split):
    _, (xe, _) = split
    report, is_backdoor = fitted.detect(xe, feature_source="victim")
    assert report["feature_source"] == "victim" and is_backdoor.shape == (150,)
    assert report["threshold"] == fitted.thresholds["victim"]
    assert is_backdoor.mean() <= fitted.target_frr + 0.15
    with pytest.raises(InvalidParameterError, match="unknown argument"):
        fitted.detect(xe, foo=1)


def test_fused_source_flags_inputs_above_either_scores_threshold_at_half_the_target(fitted, split,
                                                                                      badnets_victim):
    (xr, yr), (xe, ye) = split
    _, _, idx_cal = fitted._split(yr, fitted._split_seed)
    outside = np.setdiff1d(np.arange(len(yr)), idx_cal)
    residual = ClassResidualDetector(badnets_victim.classifier)
    residual.fit_statistics(xr[outside], yr[outside])
    cal = [fitted.score(xr[idx_cal], feature_source="victim"), residual.score(xr[idx_cal])]
    x_trig = white_patch(xe[ye != 0])
    new = [fitted.score(x_trig, feature_source="victim"), residual.score(x_trig)]
    # written out here: each score's threshold at half the 5% target on 60 calibration images is its highest
    # calibration score (k = floor(61 * 0.025) = 1), its unit the threshold's distance above the calibration
    # median; the fused score is the larger margin
    thresholds = np.array([np.sort(c)[-1] for c in cal])
    scales = thresholds - np.array([np.median(c) for c in cal])
    expected = np.max([(v - t) / u for v, t, u in zip(new, thresholds, scales)], axis=0)
    np.testing.assert_allclose(fitted.score(x_trig, feature_source="victim+residual"), expected)
    assert fitted.thresholds["victim+residual"] == 0.0
    _, flagged = fitted.detect(x_trig, feature_source="victim+residual")
    np.testing.assert_array_equal(flagged, (new[0] > thresholds[0]) | (new[1] > thresholds[1]))
    # the residual finds the 2x2 patch the meta-classifier misses: fused recall at least the better of the two
    _, flagged_victim = fitted.detect(x_trig, feature_source="victim")
    assert flagged.mean() >= 0.8 and flagged.mean() >= flagged_victim.mean()
    _, clean_flagged = fitted.detect(xe, feature_source="victim+residual")
    assert clean_flagged.mean() <= fitted.target_frr + 0.15


def test_save_load_round_trip(fitted, split, badnets_victim, tmp_path):
    _, (xe, _) = split
    path = tmp_path / "mbds.pt"
    fitted.save(path)
    loaded = MBDS.load(path, badnets_victim.classifier)
    for source in ("shadow", "victim", "victim+residual"):
        np.testing.assert_array_equal(loaded.score(xe, feature_source=source), fitted.score(xe, feature_source=source))
    assert loaded.thresholds == fitted.thresholds and loaded.get_params()["n_shadow_models"] == 12
    # a file written before the fused mode existed loads, and refuses that mode with a clear error
    blob = torch.load(path, weights_only=True)
    for key in ("residual_layer", "residual_means", "residual_scale", "fusion_thresholds", "fusion_scales"):
        del blob[key]
    config = json.loads(blob["config"])
    del config["thresholds"]["victim+residual"]
    blob["config"] = json.dumps(config)
    torch.save(blob, tmp_path / "old.pt")
    old = MBDS.load(tmp_path / "old.pt", badnets_victim.classifier)
    np.testing.assert_array_equal(old.score(xe, feature_source="victim"), fitted.score(xe, feature_source="victim"))
    with pytest.raises(DataError, match="fit the detector again"):
        old.detect(xe, feature_source="victim+residual")


def test_fused_mode_unavailable_on_a_reserve_too_small_for_class_statistics(badnets_victim, digits, tmp_path):
    """A class with a single sample outside the calibration part gives no residual spread: the fused mode is
    refused with the reason, the other modes work, and the reason survives save/load."""
    x, y = digits.x_test, digits.y_test
    keep = np.flatnonzero(y != 3)[:200]
    threes = np.flatnonzero(y == 3)[:2]  # one lands in the calibration part, one outside it
    xr, yr = x[np.r_[keep, threes]], y[np.r_[keep, threes]]
    mbds = MBDS(badnets_victim.classifier, random_state=0, **{**FAST, "n_shadow_models": 2, "shadow_epochs": 5,
                                                              "meta_epochs": 3, "calibration_fraction": 0.5})
    mbds.fit(xr, yr)
    assert "unavailable" in mbds.fit_report_["victim+residual"] and "victim+residual" not in mbds.thresholds
    _, flagged = mbds.detect(x[300:], feature_source="victim")
    assert flagged.shape == (len(x) - 300,)
    with pytest.raises(DataError, match="no 'victim\\+residual' mode .*at least 2 clean samples"):
        mbds.detect(x[300:], feature_source="victim+residual")
    mbds.save(tmp_path / "small.pt")
    loaded = MBDS.load(tmp_path / "small.pt", badnets_victim.classifier)
    with pytest.raises(DataError, match="at least 2 clean samples"):
        loaded.detect(x[300:], feature_source="victim+residual")


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['MBDS_PWNED']}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_file_refused(tmp_path, badnets_victim, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("MBDS_PWNED", str(marker))
    path = tmp_path / "evil.pt"
    torch.save({"config": "{}", "payload": _Evil()}, path)
    with pytest.raises(DataError, match="refused to load"):
        MBDS.load(path, badnets_victim.classifier)
    assert not marker.exists()
    with open(tmp_path / "plain.pkl", "wb") as fh:
        pickle.dump(_Evil(), fh)
    with pytest.raises(DataError, match="refused to load"):
        MBDS.load(tmp_path / "plain.pkl", badnets_victim.classifier)
    assert not marker.exists()


def test_deterministic_and_input_not_mutated(badnets_victim, split):
    (xr, yr), (xe, _) = split
    xr_before, yr_before, xe_before = xr.copy(), yr.copy(), xe.copy()
    params = {**FAST, "n_shadow_models": 2, "shadow_epochs": 5, "meta_epochs": 5}
    a = MBDS(badnets_victim.classifier, random_state=3, **params)
    b = MBDS(badnets_victim.classifier, random_state=3, **params)
    a.fit(xr, yr)
    b.fit(xr, yr)
    np.testing.assert_allclose(a.score(xe), b.score(xe), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(xr, xr_before)
    np.testing.assert_array_equal(yr, yr_before)
    np.testing.assert_array_equal(xe, xe_before)
    model = badnets_victim.classifier.model
    was_training = model.training
    model.train()
    try:
        a.score(xe, feature_source="victim")
        assert model.training  # mode restored
    finally:
        model.train(was_training)


def test_sequential_shadow_trainer_gives_the_same_detector(badnets_victim, split, monkeypatch):
    import art_backdoor_ext.defences.sample.mbds as mbds_module

    (xr, yr), (xe, _) = split
    params = {**FAST, "n_shadow_models": 2, "shadow_epochs": 5, "meta_epochs": 5}
    batched = MBDS(badnets_victim.classifier, random_state=3, **params)
    sequential = MBDS(badnets_victim.classifier, random_state=3, shadow_trainer="sequential", **params)
    batched.fit(xr, yr)
    calls = []
    real = mbds_module.train_sequential
    monkeypatch.setattr(mbds_module, "train_sequential", lambda *a, **k: calls.append(1) or real(*a, **k))
    sequential.fit(xr, yr)
    assert calls == [1]
    for a, b in zip(batched._shadow, sequential._shadow):
        for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
            torch.testing.assert_close(pa, pb, rtol=1e-3, atol=1e-4, msg=name)
    np.testing.assert_allclose(batched.score(xe), sequential.score(xe), atol=1e-3)
    with pytest.raises(InvalidParameterError, match="shadow_trainer"):
        MBDS(badnets_victim.classifier, shadow_trainer="parallel")


def test_poison_filter_adapter(fitted, badnets_victim, split):
    _, (xe, ye) = split
    x = np.concatenate([xe[:40], white_patch(xe[ye != 0][:10])])
    y = np.concatenate([ye[:40], np.zeros(10, np.int64)])
    is_clean_true = np.r_[np.ones(40, int), np.zeros(10, int)]
    flt = MBDSPoisonFilter(badnets_victim.classifier, x, y, mbds=fitted)
    report, is_clean = flt.detect_poison()
    assert len(is_clean) == 50 and set(is_clean) <= {0, 1}
    assert report["n_flagged"] == 50 - sum(is_clean)
    conf = json.loads(flt.evaluate_defence(is_clean_true))
    assert set(conf) == {f"class_{c}" for c in range(10)}


def test_errors(badnets_victim, split, fitted):
    (xr, yr), (xe, _) = split
    clf = badnets_victim.classifier
    with pytest.raises(NotFittedError, match="not fitted"):
        MBDS(clf).score(xe)
    with pytest.raises(DataError, match="too small"):
        MBDS(clf, n_shadow_models=1).fit(xr[:40], yr[:40])
    keep = yr != 3  # a reserve without class 3 (large enough for the split otherwise)
    with pytest.raises(DataError, match=r"no samples of class\(es\) \[3\]"):
        MBDS(clf, n_shadow_models=1).fit(xr[keep], yr[keep])
    with pytest.raises(InvalidParameterError, match="unknown layer 'nope'.*conv1, relu1"):
        MBDS(clf, feature_layer="nope", n_shadow_models=1).fit(xr, yr)
    with pytest.raises(InvalidParameterError, match="outputs shape \\(7,\\).*10 classes"):
        MBDS(clf, model_factory=lambda i: DigitsCNN(nb_classes=7), n_shadow_models=1).fit(xr, yr)
    with pytest.raises(InvalidParameterError, match="outputs \\(16, 4, 4\\)"):
        MBDS(clf, model_factory=lambda i: DigitsCNN(width=8), n_shadow_models=1).fit(xr, yr)
    with pytest.raises(DataError, match="channels-last"):
        fitted.score(np.transpose(xe, (0, 2, 3, 1)))
    with pytest.raises(InvalidParameterError, match="feature_source"):
        MBDS(clf, feature_source="gray")
    with pytest.raises(InvalidParameterError, match="meta_fraction \\+ calibration_fraction"):
        MBDS(clf, meta_fraction=0.6, calibration_fraction=0.5)
    with pytest.raises(InvalidParameterError, match="unknown parameter"):
        MBDS(clf).set_params(bogus=1)


def test_for_classifier_reuses_shadows_and_recalibrates_victim(fitted, split, badnets_victim, fresh_classifier):
    (xr, yr), (xe, _) = split
    before = fitted.thresholds
    same = fitted.for_classifier(badnets_victim.classifier, xr, yr)
    # same classifier: the victim-mode statistics and threshold computed again equal those of fit
    assert same.thresholds == before
    np.testing.assert_array_equal(same.score(xe, feature_source="victim"), fitted.score(xe, feature_source="victim"))
    other = fitted.for_classifier(fresh_classifier, xr, yr)
    assert other.shadow_models[0] is fitted.shadow_models[0]  # nothing retrained
    np.testing.assert_array_equal(other.score(xe), fitted.score(xe))  # shadow mode does not depend on the victim
    assert other.thresholds["shadow"] == before["shadow"] and other.thresholds["victim"] != before["victim"]
    # the fused mode's residual statistics and scores are the new classifier's
    assert not np.allclose(other._fusion.residual._means, fitted._fusion.residual._means)
    assert not np.allclose(other.score(xe, feature_source="victim+residual"),
                           fitted.score(xe, feature_source="victim+residual"))
    np.testing.assert_array_equal(same.score(xe, feature_source="victim+residual"),
                                  fitted.score(xe, feature_source="victim+residual"))
    assert other.classifier is fresh_classifier and fitted.classifier is badnets_victim.classifier
    assert fitted.thresholds == before  # the fitted detector is unchanged
    with pytest.raises(DataError, match="not the reserve"):
        fitted.for_classifier(fresh_classifier, xr[::-1].copy(), yr[::-1].copy())
    with pytest.raises(InvalidParameterError, match="unknown layer"):
        fitted.for_classifier(make_other_arch(), xr, yr)
    with pytest.raises(NotFittedError):
        MBDS(fresh_classifier).for_classifier(fresh_classifier, xr, yr)


def make_other_arch():
    from art_backdoor_ext.models import make_classifier

    return make_classifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)), input_shape=(1, 8, 8),
                           nb_classes=10)


def test_meta_probabilities_do_not_saturate_for_confident_logits():
    """Logits of 18-30 all round to 1.0 under a float32 sigmoid; the scores must stay ordered and below 1."""
    from art_backdoor_ext.defences.sample._meta import meta_probabilities

    class FirstValue(torch.nn.Module):  # stands in for a confident meta-classifier: logit = the first feature
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return x.flatten(1)[:, 0]

    logits = torch.tensor([18.0, 22.0, 26.0, 30.0]).reshape(4, 1, 1, 1)
    scores = meta_probabilities(FirstValue(), logits, batch_size=2)
    assert scores.dtype == np.float64
    assert np.all(np.diff(scores) > 0) and np.all(scores < 1.0)
