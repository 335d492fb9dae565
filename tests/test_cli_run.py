"""End to end through the command line: `faceattr run` on the embedded sample with a shrunken
config, `faceattr train age --from`, and config errors as one-line messages."""

import json
from importlib import resources

import pytest

from faceattr.checkpoint import load_checkpoint
from faceattr.cli import SAMPLE_NAME, main

TINY = ["--set", "epochs=1", "--set", "width=4", "--set", "threads=1", "--set", "device=cpu"]


def test_run_on_the_embedded_sample_prepares_trains_and_reports(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *TINY]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["faces_read"] == 1604 and summary["data"]["skipped"]["total"] == 0
    assert summary["data"]["duplicates"]["near_pairs"] > 0
    assert set(summary["model"]["test"]) >= {"gender", "ethnicity", "age", "score"}
    assert summary["model"]["test"]["age"]["mae"] > 0
    # One checkpoint carries all three tasks, trained together from scratch.
    ckpt = load_checkpoint(out / "model" / "best.pt")
    assert ckpt["tasks"] == ["gender", "ethnicity", "age"] and not ckpt["config"]["init_from"]
    assert (out / "data" / "data_report.md").is_file()
    html = (out / "report" / "report.html").read_text()
    assert "<img" in html and 'src="data:image/png;base64,' in html
    assert summary["report"]["gender_accuracy"]["value"] == pytest.approx(
        summary["model"]["test"]["gender"]["accuracy"]
    )
    # Running the same command again reuses the finished model: no further training.
    history = (out / "model" / "history.csv").read_text()
    assert main(["run", "--out", str(out), *TINY]) == 0
    assert (out / "model" / "history.csv").read_text() == history


def test_train_age_fine_tunes_a_multitask_run(tmp_path):
    out = tmp_path / "run"
    sample = resources.files("faceattr.sample").joinpath(SAMPLE_NAME)
    assert main(["prepare", str(sample), "--out", str(out / "data")]) == 0
    runs = tmp_path / "runs"
    assert main(["train", "multitask", "--data", str(out / "data"), "--runs", str(runs), "--name", "mt", *TINY]) == 0
    code = main(
        [
            "train",
            "age",
            "--data",
            str(out / "data"),
            "--from",
            str(runs / "mt"),
            "--runs",
            str(runs),
            "--set",
            "age_head=direct",
            *TINY,
        ]
    )
    assert code == 0
    ckpt = load_checkpoint(runs / "age" / "best.pt")
    assert ckpt["age"]["head"] == "direct" and ckpt["config"]["init_from"].endswith("mt/best.pt")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "widht=3"], "unknown config key 'widht'"),
        (["--set", "width=wide"], "width = 'wide': expected int"),
        (["--set", "stem=s9"], "config stem = 's9': expected one of"),
        (["--set", "nokey"], "expected key=value"),
    ],
)
def test_config_mistakes_are_one_line_errors(tmp_path, capsys, args, message):
    code = main(["train", "multitask", "--data", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_training_on_a_folder_that_is_not_prepared_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "multitask", "--data", str(tmp_path)]) == 2
    assert "not a prepared data folder" in capsys.readouterr().err
