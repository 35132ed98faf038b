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
