import csv
import io
import json

import numpy as np
import pytest
import torch

from art_backdoor_ext import cli
from art_backdoor_ext.evaluation import (
    ATTACKS,
    DEFENCES,
    EvaluationContext,
    EvaluationResult,
    ResultRow,
    _ensure_registered,
    run_grid,
)
from art_backdoor_ext.exceptions import InvalidParameterError


def _row(**kw):
    base = dict(attack="badnets", model_seed=0, defence="ac", kind="poison-filter", layer="relu3",
                benign_accuracy=0.9, attack_success_rate=1.0, precision=0.5, recall=1.0, f1=2 / 3, detected=None,
                found_target=None, true_target=0, seconds=1.5)
    base.update(kw)
    return ResultRow(**base)


def test_exporters():
    res = EvaluationResult([_row(), _row(defence="ss", f1=None)], "digits")
    assert json.loads(res.to_json())["rows"][1]["defence"] == "ss"
    rows = list(csv.DictReader(io.StringIO(res.to_csv())))
    assert rows[0]["layer"] == "relu3" and len(rows) == 2
    md = res.to_markdown().splitlines()
    assert md[0].startswith("| attack | defence") and "0.667" in md[2] and "| - |" in md[3]


def test_summary_is_one_table_of_defences_by_attacks():
    rows = [_row(defence="fp", kind="transformer", layer="conv2", attack="blend", f1=None),  # listed last: by kind
            _row(model_seed=0, f1=0.5), _row(model_seed=1, f1=1.0, attack_success_rate=0.8),
            _row(attack="blend", f1=None),
            _row(defence="ad", kind="model-scanner", layer="input", f1=None, detected=True, found_target=0),
            _row(defence="ad", kind="model-scanner", layer="input", model_seed=1, f1=None, detected=True,
                 found_target=3, attack_success_rate=0.8),
            _row(defence="ad", kind="model-scanner", layer="relu1", attack="blend", f1=None, detected=False,
                 found_target=None),
            _row(defence="fp", kind="transformer", layer="conv2", f1=None, repaired_attack_success_rate=0.1,
                 repaired_benign_accuracy=0.9),
            _row(defence="fp", kind="transformer", layer="conv2", model_seed=1, f1=None,
                 repaired_attack_success_rate=0.3, repaired_benign_accuracy=0.8, attack_success_rate=0.8)]
    lines = EvaluationResult(rows, "digits").to_summary().splitlines()
    assert lines[0] == "| defence | kind | layer | blend | badnets |"
    assert lines[2] == "| victims (BA / ASR) | - | - | 0.900 / 1.000 | 0.900 / 0.900 |"
    assert lines[3] == "| ac | poison-filter | relu3 | - | 0.750 |"  # mean F1 over the two badnets models
    # the wrong target is not a find; a scanner is one row whatever layer each model's decision landed on
    assert lines[4] == "| ad | model-scanner | input, relu1 | 0/1 | 1/2 (+1 wrong) |"
    assert lines[5] == "| fp | transformer | conv2 | - | ASR 0.200, BA 0.850 |"  # no repaired BA/ASR for blend
    assert len(lines) == 6


def test_clean_control_runs_only_scanners_and_transformers(monkeypatch):
    from art_backdoor_ext.evaluation import CLEAN, DefenceOutcome, DefenceSpec

    _ensure_registered()
    seen = []

    def scanner(ctx):
        seen.append(("scanner", int(ctx.victim.data.is_poison.sum()), ctx.victim.data.mode))
        return [DefenceOutcome(layer="input", detected=True, found_target=3)]

    def poison_filter(ctx):
        seen.append(("filter",))
        return [DefenceOutcome(layer="x", is_flagged=np.zeros(len(ctx.victim.data.y), bool))]

    monkeypatch.setitem(DEFENCES, "fake-scanner", DefenceSpec("fake-scanner", "model-scanner", scanner, ""))
    monkeypatch.setitem(DEFENCES, "fake-filter", DefenceSpec("fake-filter", "poison-filter", poison_filter, ""))
    result = run_grid([CLEAN], ["fake-filter", "fake-scanner"], nb_epochs=1)
    assert seen == [("scanner", 0, "clean")]  # nothing poisoned; the filter is not run on a clean victim
    (row,) = result.rows
    assert row.attack == CLEAN and row.benign_accuracy > 0.5 and 0 <= row.attack_success_rate < 0.5
    assert result.to_summary().splitlines()[3] == "| fake-scanner | model-scanner | input | 1/1 flagged |"
    with pytest.raises(InvalidParameterError, match="'clean' \\(no attack\\)"):
        run_grid(["nope"], ["fake-scanner"])


def test_registry_has_builtins():
    _ensure_registered()
    assert {"badnets", "blend", "sig", "warp", "chessboard", "sparse"} <= set(ATTACKS)
    assert {"art-ac", "art-ss", "ac", "ss"} <= set(DEFENCES)


def test_unknown_names_raise():
    with pytest.raises(InvalidParameterError, match="unknown defence"):
        run_grid(["badnets"], ["magic"])


def test_defences_on_a_trained_victim(badnets_victim, digits):
    """ART's AC/SS and ours run on the same victim and give scores in range; ours on relu2 find the poison."""
    _ensure_registered()
    ctx = EvaluationContext(badnets_victim, digits.x_test, digits.y_test, digits.x_test, digits.y_test,
                            ["relu2"], 0)
    from art_backdoor_ext.evaluation import _row as make_row

    rows = []
    for name in ("art-ac", "art-ss", "ac", "ss"):
        spec = DEFENCES[name]
        rows += [make_row("badnets", 0, spec, o, badnets_victim, 0.0) for o in spec.run(ctx)]
    by_name = {r.defence: r for r in rows}
    assert by_name["ac"].layer == "relu2" and by_name["art-ac"].layer == "last (ART)"
    assert all(0 <= r.f1 <= 1 for r in rows)
    assert by_name["ac"].f1 > 0.8


def test_art_ac_row_is_reproducible_whatever_the_global_numpy_state(badnets_victim, digits):
    """ART's k-means draws from NumPy's global state (on this victim, global seeds 1 and 2 flag 477 and 461
    samples); the registry seeds it from the run's random_state, so the same run flags the same samples, and
    the caller's global state is put back."""
    _ensure_registered()
    ctx = EvaluationContext(badnets_victim, digits.x_test, digits.y_test, digits.x_test, digits.y_test, [], 0)
    flags = []
    for global_seed in (1, 2):
        np.random.seed(global_seed)  # noqa: NPY002
        flags.append(DEFENCES["art-ac"].run(ctx)[0].is_flagged)
        after = np.random.rand()  # noqa: NPY002
        np.random.seed(global_seed)  # noqa: NPY002
        assert after == np.random.rand()  # noqa: NPY002 (the block left the global state where it found it)
    np.testing.assert_array_equal(flags[0], flags[1])


def test_art_strip_progress_bar_only_when_verbose(badnets_victim, digits, capfd):
    """ART 1.20.1's STRIP draws a tqdm bar in mitigate() whatever its caller wants; ours shows it only verbose."""
    from art_backdoor_ext.registry import art_strip_flags

    x = digits.x_test[:30]
    capfd.readouterr()
    quiet = art_strip_flags(badnets_victim.classifier, x, x, seed=0)
    assert "it/s" not in capfd.readouterr().err
    loud = art_strip_flags(badnets_victim.classifier, x, x, seed=0, verbose=True)
    assert "it/s" in capfd.readouterr().err
    np.testing.assert_array_equal(quiet, loud)  # same seed, same flags: only the bar differs


def test_art_strip_after_art_ac_on_the_same_victim(badnets_victim, digits):
    """`evaluate --defences art-ac,art-strip` crashed: ART's AC leaves non-leaf tensors on the classifier and
    art-strip deep-copies it."""
    _ensure_registered()
    ctx = EvaluationContext(badnets_victim, digits.x_test, digits.y_test, digits.x_test, digits.y_test, [], 0)
    DEFENCES["art-ac"].run(ctx)
    (outcome,) = DEFENCES["art-strip"].run(ctx)
    assert outcome.is_flagged.dtype == bool and outcome.is_flagged.size > 0


def test_cli_lists_registry(capsys):
    assert cli.main(["evaluate", "--list"]) == 0
    out = capsys.readouterr().out
    assert "badnets" in out and "art-ac" in out


def test_cli_summary_format_and_saved_rows(tmp_path, capsys):
    out, rows = tmp_path / "summary.md", tmp_path / "rows.json"
    assert cli.main(["evaluate", "--attacks", "badnets", "--defences", "ss", "--epochs", "1", "--format", "summary",
                     "--output", str(out), "--save-rows", str(rows), "--quiet"]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "| defence | kind | layer | badnets |" and lines[3].startswith("| ss | poison-filter | ")
    saved = EvaluationResult.from_dict(json.loads(rows.read_text()))
    assert len(saved.rows) == 1 and saved.rows[0].defence == "ss" and saved.dataset == "digits"
    capsys.readouterr()
    assert cli.main(["evaluate", "--from-rows", str(rows), "--format", "summary"]) == 0  # no training
    assert capsys.readouterr().out.strip() == out.read_text().strip()
    other = EvaluationResult([_row(attack="blend", defence="ss", layer=saved.rows[0].layer)], "digits")
    (tmp_path / "other.json").write_text(other.to_json())
    assert cli.main(["evaluate", "--from-rows", f"{rows},{tmp_path / 'other.json'}", "--format", "summary"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "| defence | kind | layer | badnets | blend |"  # merged
    (tmp_path / "fashion.json").write_text(EvaluationResult([_row()], "fashion-mnist").to_json())
    assert cli.main(["evaluate", "--from-rows", f"{rows},{tmp_path / 'fashion.json'}"]) == 2
    assert "different datasets" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text('{"rows": [{"attack": 1}]}')
    assert cli.main(["evaluate", "--from-rows", str(tmp_path / "bad.json")]) == 2
    assert "not an evaluation result" in capsys.readouterr().err


def test_cli_reports_library_errors(capsys):
    assert cli.main(["evaluate", "--defences", "magic"]) == 2
    assert "unknown defence" in capsys.readouterr().err


def test_model_scanner_and_sample_detector_rows(badnets_victim, digits):
    """AD and MBDS run through the registry and produce rows of their kind."""
    _ensure_registered()
    from art_backdoor_ext.evaluation import _row as make_row

    ctx = EvaluationContext(badnets_victim, digits.x_test, digits.y_test, digits.x_test, digits.y_test, [], 0)
    ad = DEFENCES["ad"]
    (outcome,) = ad.run(ctx)
    row = make_row("badnets", 0, ad, outcome, badnets_victim, 0.0)
    assert row.kind == "model-scanner" and isinstance(row.detected, bool) and row.f1 is None
    assert 0 <= outcome.extra["p_value"] <= 1
    assert "mbds" in DEFENCES and DEFENCES["mbds"].kind == "sample-detector"


def test_survey_defences_rows(badnets_victim, digits):
    """STRIP, ART's STRIP, feature squeezing, the class-residual baseline and Fine-Pruning run through the registry
    on the same victim; ART's STRIP gets a copy (the victim keeps its class); Fine-Pruning rows carry the repaired
    model's BA/ASR."""
    _ensure_registered()
    from art.estimators.classification import PyTorchClassifier

    from art_backdoor_ext.evaluation import _row as make_row

    ctx = EvaluationContext(badnets_victim, digits.x_test, digits.y_test, digits.x_test, digits.y_test, [], 0)
    rows = {}
    for name in ("strip", "art-strip", "feature-squeezing", "class-residual", "fine-pruning"):
        spec = DEFENCES[name]
        (outcome,) = spec.run(ctx)
        rows[name] = (outcome, make_row("badnets", 0, spec, outcome, badnets_victim, 0.0))
    assert type(badnets_victim.classifier) is PyTorchClassifier
    for name in ("strip", "art-strip", "feature-squeezing", "class-residual"):
        outcome, row = rows[name]
        assert row.kind == "sample-detector" and len(outcome.is_flagged) == len(outcome.extra["is_backdoor_truth"])
        assert 0 <= row.f1 <= 1
    assert rows["strip"][1].f1 > 0.9 > rows["art-strip"][1].f1  # measured 1.0 against 0.0 on this victim
    assert rows["class-residual"][1].f1 > 0.8 and rows["class-residual"][0].layer == "relu3"
    outcome, row = rows["fine-pruning"]
    assert row.kind == "transformer" and row.f1 is None
    assert row.repaired_attack_success_rate == outcome.extra["stages"]["fine-pruned"]["attack_success_rate"]
    assert set(outcome.extra["stages"]) == {"before", "pruned", "fine-pruned"}
    assert 0 < outcome.extra["n_pruned"] < outcome.extra["n_channels"] == 32
    json.loads(EvaluationResult([row], "digits").to_json())


def test_mbds_fused_entry_flags_the_patch_and_leaves_the_victim_alone(badnets_victim, digits):
    """The white-box fused MBDS (shadow models fine-tuned from copies of the victim) through the registry."""
    _ensure_registered()
    from art_backdoor_ext.evaluation import _row as make_row

    ctx = EvaluationContext(badnets_victim, digits.x_test, digits.y_test, digits.x_test, digits.y_test, [], 0)
    before = {k: v.clone() for k, v in badnets_victim.classifier.model.state_dict().items()}
    spec = DEFENCES["mbds-fused"]
    (outcome,) = spec.run(ctx)
    row = make_row("badnets", 0, spec, outcome, badnets_victim, 0.0)
    assert row.kind == "sample-detector" and len(outcome.is_flagged) == len(outcome.extra["is_backdoor_truth"])
    assert row.f1 > 0.8  # the class residual alone reaches it on this victim (test above)
    after = badnets_victim.classifier.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the shadows trained copies, not the victim


def test_cepa_reference_entry_trains_references_once_and_decides_with_their_test(badnets_victim, digits,
                                                                                  monkeypatch):
    """The entry trains clean models of the victim's architecture on the defender's clean data (not the victim),
    scans them with its own settings once per run, and reports the reference test's verdict."""
    _ensure_registered()
    from art_backdoor_ext import registry, training

    monkeypatch.setattr(registry, "CEPA_REFERENCE_MODELS", 3)
    monkeypatch.setattr(registry, "CEPA_REFERENCE_SETTINGS", {"max_iter": 5, "layers": ["relu3"]})
    monkeypatch.setattr(registry, "_CEPA_REFERENCES", {})
    fitted = []
    real_fit = training.fit_classifier

    def counting_fit(clf, x, y, **kwargs):
        fitted.append((clf, len(x), kwargs["nb_epochs"]))
        return real_fit(clf, x, y, **{**kwargs, "nb_epochs": 1})

    monkeypatch.setattr(training, "fit_classifier", counting_fit)
    before = {k: v.clone() for k, v in badnets_victim.classifier.model.state_dict().items()}
    ctx = EvaluationContext(badnets_victim, digits.x_test, digits.y_test, digits.x_test, digits.y_test, [], 0,
                            dataset="digits")
    spec = DEFENCES["cepa-reference"]
    (outcome,) = spec.run(ctx)
    assert spec.kind == "model-scanner" and outcome.layer == "relu3"
    assert len(fitted) == 3 and all(n == len(digits.x_test) and epochs == 20 for _, n, epochs in fitted)
    assert all(clf is not badnets_victim.classifier for clf, _, _ in fitted)
    assert outcome.extra["n_references"] == 3
    assert outcome.detected == (outcome.extra["p_value"] < 0.05)
    assert (outcome.found_target is None) == (not outcome.detected)
    (again,) = spec.run(ctx)  # the same run's next victim: the references are reused, not retrained
    assert len(fitted) == 3 and again.extra["p_value"] == outcome.extra["p_value"]
    after = badnets_victim.classifier.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
