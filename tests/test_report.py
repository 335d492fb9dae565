"""The evaluation report end to end on a tiny trained run: what metrics.json, calibration.json
and report.html hold, that the HTML is self-contained, that the report folder is replaced
whole, the optional sections from other tools, and the command line's one-line errors."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceattr.cache import Prepared, load_prepared, save_prepared
from faceattr.checkpoint import age_spec, load_checkpoint, model_from_checkpoint
from faceattr.cli import main
from faceattr.evaluation import apply_temperature
from faceattr.inputerror import InputError
from faceattr.report import evaluate_run
from faceattr.train import evaluate

HEADLINE = {
    "gender_accuracy",
    "gender_roc_auc",
    "ethnicity_accuracy",
    "ethnicity_macro_f1",
    "age_mae",
    "age_cs5",
    "age_mae_hard",
    "age_cs5_hard",
}


def _quiet(*_: object) -> None:
    pass


@pytest.fixture(scope="module")
def report(tiny_report: dict) -> dict:
    return tiny_report


def _img_sources(page: str) -> list[str]:
    return re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)


def test_metrics_json_holds_every_part_of_the_report(tiny_run, report):
    saved = json.loads((tiny_run / "report" / "metrics.json").read_text())
    assert saved["split"] == "test" and saved["n"] == 90 and saved["config_name"] == "tiny-age"
    assert saved["split_hash"] == load_checkpoint(tiny_run / "best.pt")["split_hash"]
    assert Path(saved["data_dir"]) == tiny_run.parent / "data"
    assert set(saved["headline"]) == HEADLINE
    for name, cell in saved["headline"].items():
        lo, hi = cell["ci"]
        assert lo <= cell["value"] <= hi, name
    assert saved["dataset"]["split"]["test"] == 90
    assert set(saved["gender"]["per_class"]) == {"male", "female"}
    assert np.sum(saved["ethnicity"]["confusion"]) == 90
    assert np.allclose(
        np.sum(saved["ethnicity"]["confusion_normalized"], 1)[np.sum(saved["ethnicity"]["confusion"], 1) > 0], 1
    )
    for task in ("gender", "ethnicity"):
        cal = saved["calibration"][task]
        assert cal["temperature"] > 0
        assert {"ece_before", "ece_after", "nll_before", "nll_after"} <= set(cal["val"]) & set(cal["eval"])
        # T minimises the validation NLL, so it cannot make it worse.
        assert cal["val"]["nll_after"] <= cal["val"]["nll_before"] + 1e-9
    assert len(saved["age"]["cumulative_score"]) == 21 and saved["age"]["cumulative_score"] == sorted(
        saved["age"]["cumulative_score"]
    )
    assert "bin_confusion" in saved["age_hard_routing"]
    for grouping, n_groups in (("ethnicity", 5), ("gender", 2), ("age_band", 9)):
        table = saved["fairness"][grouping]
        assert len(table["groups"]) == n_groups
        assert sum(g["n"] for g in table["groups"].values()) == 90
        assert set(table["gaps"]) == set(table["metrics"])
    assert "ethnicity_macro_f1" not in saved["fairness"]["ethnicity"]["metrics"]
    assert "ethnicity_macro_f1" in saved["fairness"]["gender"]["metrics"]


def test_report_numbers_match_the_training_engine(tiny_run, report):
    """The report reuses faceattr.metrics and faceattr.age: same numbers as train.evaluate."""
    ckpt = load_checkpoint(tiny_run / "best.pt")
    pre = ckpt["preprocessing"]
    ref = evaluate(
        model_from_checkpoint(ckpt),
        load_prepared(tiny_run.parent / "data"),
        "test",
        pre["mean"],
        pre["std"],
        "cpu",
        age_spec(ckpt),
    )
    assert report["gender"]["accuracy"] == pytest.approx(ref["gender"]["accuracy"])
    assert report["headline"]["gender_accuracy"]["value"] == pytest.approx(ref["gender"]["accuracy"])
    assert report["headline"]["gender_roc_auc"]["value"] == pytest.approx(ref["gender"]["roc_auc"])
    assert report["headline"]["ethnicity_macro_f1"]["value"] == pytest.approx(ref["ethnicity"]["macro_f1"])
    assert report["headline"]["age_mae"]["value"] == pytest.approx(ref["age"]["mae"], rel=1e-5)
    assert report["headline"]["age_mae_hard"]["value"] == pytest.approx(ref["age_hard_routing"]["mae"], rel=1e-5)
    assert report["age"]["bin_accuracy"] == pytest.approx(ref["age"]["bin_accuracy"])


def test_report_html_is_self_contained_and_embeds_every_plot(tiny_run, report):
    out = tiny_run / "report"
    page = (out / "report.html").read_text()
    plots = sorted((out / "plots").glob("*.png"))
    assert len(plots) >= 12
    for png in plots:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert Image.open(png).size[0] > 100
    sources = _img_sources(page)
    assert len(sources) == len(plots) + 1  # and the figure of the fake explain section
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r'(src|href)="(?!data:|#)', page)  # nothing fetched from disk or network
    for heading in (
        "Headline metrics",
        "Dataset",
        "Calibration",
        "Age",
        "Fairness: metrics by group",
        "Training curves",
    ):
        assert f">{heading}</h2>" in page
    assert "largest gap" in page and "hard routing" in page


def test_calibration_json_holds_the_validation_temperatures(tiny_run, report):
    cal = json.loads((tiny_run / "calibration.json").read_text())
    assert cal["fitted_on"] == "val"
    assert set(cal["temperature"]) == {"gender", "ethnicity"}
    for task, t in cal["temperature"].items():
        assert t == pytest.approx(report["calibration"][task]["temperature"])
    # Age ranges, fitted on validation, checked on the report's split.
    ai = cal["age_interval"]
    assert ai["coverage"] == 0.8 and len(ai["half_width"]) == len(report["age"]["bin_labels"])
    assert ai["half_width"] == report["age_interval"]["half_width"]
    assert 0 <= report["age_interval"]["check"]["coverage"] <= 1
    # The contract: probabilities are softmax(log p / T); T = 1 leaves them unchanged.
    p = np.array([[0.7, 0.3], [0.2, 0.8]])
    assert np.allclose(apply_temperature(p, 1.0), p)


def test_cli_evaluate_then_a_new_report_replaces_the_old_folder_whole(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("report", "explain"))
    data = tiny_run.parent / "data"
    assert main(["evaluate", str(run), "--data", str(data), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "test (n=90): gender_accuracy" in printed and "report.html" in printed
    assert (tmp_path / "out" / "report.html").is_file() and (run / "calibration.json").is_file()
    (tmp_path / "out" / "stale.txt").write_text("from an older report")
    metrics = evaluate_run(run, data, split="val", out_dir=tmp_path / "out", log=_quiet, n_boot=50)
    assert metrics["split"] == "val" and metrics["n"] == 90
    assert not (tmp_path / "out" / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]  # no temp folders left behind
    # A folder that is not a report is never replaced.
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a faceattr report folder"):
        evaluate_run(run, data, out_dir=other, log=_quiet, n_boot=50)
    assert (other / "notes.txt").read_text() == "keep me"


def test_sections_from_other_tools_are_embedded(tiny_run, report):
    """The shared report was made with a fake RUN/explain/index.json (see conftest)."""
    page = (tiny_run / "report" / "report.html").read_text()
    assert ">Grad-CAM &lt;maps&gt;</h2>" in page  # the title is escaped
    assert "<p>Second paragraph &amp; more.</p>" in page and "heat maps of ten faces" in page
    assert "Error clusters" not in page  # no clusters/index.json, no section


def test_a_section_whose_figure_is_missing_is_a_one_line_error(tiny_run, tmp_path, fake_section):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("report", "explain"))
    fake_section(run / "clusters", figure="../../best.pt")
    with pytest.raises(InputError, match=r"clusters/index.json: figures\[0\]\.path '../../best.pt': no such file"):
        evaluate_run(run, tiny_run.parent / "data", log=_quiet, n_boot=50)
    assert not (run / "report").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing-run"], "missing-run: no such run folder"),
        (["{run}", "--split", "holdout"], "--split 'holdout': expected one of train, val, test"),
        (["{run}", "--split", "excluded"], "--split 'excluded': expected one of train, val, test"),
        (["{run}", "--data", "{tmp}"], "not a prepared data folder"),
        (["{run}", "--out", "{run}"], "holds the run or the current folder"),
    ],
)
def test_bad_inputs_are_one_line_errors(tiny_run, tmp_path, capsys, args, message):
    argv = ["evaluate"] + [a.format(run=tiny_run, tmp=tmp_path) for a in args]
    if args[0] == "missing-run":
        argv[1] = str(tmp_path / "missing-run")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_data_of_another_split_is_refused(tiny_run, tmp_path, capsys):
    """Evaluating on data split differently could score the model on its own training faces."""
    data = load_prepared(tiny_run.parent / "data")
    shuffled = data.split[np.random.default_rng(1).permutation(len(data.split))]
    other = tmp_path / "other"
    other.mkdir()
    save_prepared(other, Prepared(data.data, shuffled, data.group, data.sha, data.manifest))
    assert main(["evaluate", str(tiny_run), "--data", str(other), "--out", str(tmp_path / "r")]) == 2
    assert "differs from the one the model was trained on" in capsys.readouterr().err


def test_a_run_whose_data_cannot_be_found_needs_data(tiny_run, tmp_path, monkeypatch, capsys):
    run = tmp_path / "lonely" / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("report", "explain"))
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", str(run)]) == 2
    assert "pass --data PREPARED_DIR" in capsys.readouterr().err
