"""End to end through the command line: `faceattr run` on the embedded sample with a shrunken
config, `faceattr train age --from`, and config errors as one-line messages."""

import json

import pytest

from faceattr.cli import main
from faceattr.train import load_checkpoint

TINY = ["--set", "epochs=1", "--set", "width=4", "--set", "threads=1", "--set", "device=cpu"]


def test_run_on_the_embedded_sample_prepares_and_trains_both_models(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *TINY]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["faces_read"] == 1604 and summary["data"]["skipped"]["total"] == 0
    assert summary["data"]["duplicates"]["near_pairs"] > 0
    assert set(summary["multitask"]["test"]) >= {"gender", "ethnicity", "score"}
    assert "age" in summary["age"]["test"] and summary["age"]["test"]["age"]["mae"] > 0
    # The age model reuses the multitask backbone and carries all three tasks.
    age = load_checkpoint(out / "age" / "best.pt")
    assert age["tasks"] == ["gender", "ethnicity", "age"]
    assert age["config"]["init_from"].endswith("multitask/best.pt")
    assert (out / "data" / "data_report.md").is_file()


def test_train_age_from_a_multitask_run(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *TINY]) == 0
    code = main(
        [
            "train",
            "age",
            "--data",
            str(out / "data"),
            "--from",
            str(out / "multitask"),
            "--runs",
            str(tmp_path / "runs"),
            "--set",
            "age_head=direct",
            *TINY,
        ]
    )
    assert code == 0
    assert load_checkpoint(tmp_path / "runs" / "age" / "best.pt")["age"]["head"] == "direct"


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
