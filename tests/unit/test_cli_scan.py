"""``art-backdoor-ext scan`` with each detector: options reach the detector, report and figure are written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from art_backdoor_ext import cli
from art_backdoor_ext.datasets import sample_per_class

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def saved(badnets_victim, digits, tmp_path_factory):
    folder = tmp_path_factory.mktemp("scan")
    weights, data = folder / "model.pt", folder / "clean.npz"
    torch.save(badnets_victim.classifier.model.state_dict(), weights)
    x, y = sample_per_class(digits.x_test, digits.y_test, 10, random_state=0)
    np.savez(data, x=x, y=y)
    return str(weights), str(data)


def _scan(saved, out, *options):
    weights, data = saved
    return cli.main(["scan", "--arch", "digits-cnn", "--weights", weights, "--data", data, "--output", str(out),
                     "--quiet", *options])


def test_neural_cleanse_scan_writes_report_and_bars(saved, tmp_path, capsys):
    code = _scan(saved, tmp_path, "--detector", "nc", "--max-iter", "30", "--seed", "3")
    assert code == 0
    assert "flagged targets" in capsys.readouterr().out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["settings"]["max_iter"] == 30 and report["settings"]["random_state"] == 3
    assert len(report["statistics"]) == 10 and report["source"] is None
    assert (tmp_path / "statistics.png").stat().st_size > 1000


def test_cepa_scan_passes_layers_and_variant(saved, tmp_path, capsys):
    code = _scan(saved, tmp_path, "--detector", "cepa", "--layer", "relu3", "--variant", "all-to-one",
                 "--max-iter", "15", "--significance", "0.01", "--calibration", "none")
    assert code == 0
    assert "layer relu3" in capsys.readouterr().out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["layer"] == "relu3" and report["variant"] == "all-to-one"
    assert report["settings"]["max_iter"] == 15 and report["significance"] == 0.01
    assert report["settings"]["calibration"] == "none"
    assert report["tests"][0]["p_value"] == report["tests"][0]["p_value_uncalibrated"]
    assert (tmp_path / "statistics.png").stat().st_size > 1000


def test_cepa_scan_against_a_reference_file(saved, tmp_path, capsys):
    from art_backdoor_ext.defences import CEPAReference

    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.5, 2.0, (3, 1, 10))  # three references' all-to-one sigma at relu3 (only the file matters)
    reference = CEPAReference(["relu3"], 1.0 / sigma, settings={"max_iter": 15})
    reference.save(tmp_path / "refs.npz")
    code = _scan(saved, tmp_path / "out", "--detector", "cepa", "--layer", "relu3", "--variant", "all-to-one",
                 "--max-iter", "15", "--reference", str(tmp_path / "refs.npz"))
    assert code == 0
    assert "against 3 clean reference models" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    scanned = 1.0 / np.asarray(report["statistics"]["all-to-one"]["relu3"]["sigma"])
    expected = reference.test(_as_report(report, scanned))
    assert report["reference"]["p_value"] == pytest.approx(expected.p_value)
    assert report["reference"]["target"] == expected.target and report["reference"]["n_references"] == 3
    assert (tmp_path / "out" / "reference.png").stat().st_size > 1000
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    assert _scan(saved, tmp_path / "bad", "--detector", "cepa", "--reference", str(tmp_path / "bad.npz")) == 2
    assert "not a CEPA reference file" in capsys.readouterr().err
    assert _scan(saved, tmp_path / "nc", "--detector", "nc", "--reference", str(tmp_path / "refs.npz")) == 2


def _as_report(saved_report, inverse_sigma):
    from art_backdoor_ext.defences import CEPAReport

    stats = {"all-to-one": {"relu3": {"sigma": 1.0 / inverse_sigma}}}
    return CEPAReport(detected=False, p_value=1.0, anomaly_index=0.0, target=0, source=None, variant="all-to-one",
                      layer="relu3", mu=np.zeros(1), misclassification=1.0, statistic="sigma", layers=["relu3"],
                      statistics=stats, tests=[], significance=0.05, seconds=0.0, settings=saved_report["settings"])


@pytest.mark.parametrize(("detector", "option", "value"), [("nc", "--statistic", "size"), ("nc", "--layer", "relu1"),
                                                             ("cepa", "--norm", "l1"), ("ad", "--variant", "pairs"),
                                                             ("ad", "--calibration", "none"),
                                                             ("nc", "--layer-pooling", "joint"),
                                                             ("cepa", "--source-rule", "smallest-size"),
                                                             ("nc", "--exclusion", "one")])
def test_options_of_another_detector_are_refused(saved, tmp_path, capsys, detector, option, value):
    code = _scan(saved, tmp_path, "--detector", detector, option, value)
    assert code == 2
    assert f"{option} applies to --detector" in capsys.readouterr().err
    assert not (tmp_path / "report.json").exists()


def test_unknown_cepa_layer_lists_the_valid_names(saved, tmp_path, capsys):
    code = _scan(saved, tmp_path, "--detector", "cepa", "--layer", "relu3,nope", "--max-iter", "2")
    assert code == 2
    err = capsys.readouterr().err
    assert "nope" in err and "relu1" in err
