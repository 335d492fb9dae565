"""tools/issue_bars.py: the real-photos issue's bars for one yardstick row against another."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _row(gender, ethnicity, mae, old, frl_gender, utk_c_gender):
    canonical = {
        "gender_acc": gender,
        "ethnicity_acc": ethnicity,
        "age_mae": mae,
        "age_signed_error_by_decade": {"0-9": 1.0, "60-69": old[0], "70+": old[1]},
    }
    # The clean cell is far off on purpose: the bar reads the mean over the corruptions.
    utk_c = {
        "clean": {"gender_acc": 0.0, "ethnicity_acc": 0.0},
        "jpeg/1": {"gender_acc": 0.0, "ethnicity_acc": 0.0},
        "mean_over_corruptions": {"gender_acc": utk_c_gender - 0.01, "ethnicity_acc": utk_c_gender - 0.11},
    }
    return {
        "canonical": canonical,
        "utk_c": utk_c,
        "frl244": {"gender_acc": frl_gender, "ethnicity_acc": frl_gender - 0.05},
    }


def _run(tmp_path, rows, candidate, against):
    wild = tmp_path / "wild.json"
    wild.write_text(json.dumps({"variants": rows}))
    out = tmp_path / "bars.json"
    cmd = [sys.executable, "tools/issue_bars.py", "--wild", str(wild), "--candidate", candidate, "--against", against]
    done = subprocess.run([*cmd, "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    return done, (json.loads(out.read_text()) if out.exists() else None)


def test_a_candidate_passes_only_when_every_bar_holds(tmp_path):
    ref = _row(0.90, 0.79, 6.1, (-9.9, -11.9), 0.946, 0.90)
    good = _row(0.93, 0.84, 5.6, (-3.7, -4.8), 0.955, 0.92)
    ties_frl = _row(0.93, 0.84, 5.6, (-3.7, -4.8), 0.946, 0.92)  # equal is not "beats"
    old_bias = _row(0.93, 0.84, 5.6, (-5.3, -4.8), 0.955, 0.92)  # 60-69 not halved
    rows = {"ref/val": ref, "good/val": good, "tie/val": ties_frl, "old/val": old_bias, "good/test": good}
    done, record = _run(tmp_path, rows, "good/val", "ref/val")
    assert done.returncode == 0 and record["all_pass"]
    assert record["bars"]["UTK-C mean gender_acc above"]["value"] == pytest.approx(0.91)
    done, record = _run(tmp_path, rows, "tie/val", "ref/val")
    assert not record["all_pass"] and not record["bars"]["frl244 gender_acc above"]["pass"]
    done, record = _run(tmp_path, rows, "old/val", "ref/val")
    failed = [name for name, bar in record["bars"].items() if not bar["pass"]]
    assert failed == ["signed error 60-69, magnitude at most half"]
    # Each floor and ceiling, missed on its own (the UTK-C row moves gender and ethnicity together).
    for row, bars in (
        (_row(0.905, 0.84, 5.6, (-3.7, -4.8), 0.955, 0.92), ["canonical gender_acc at least"]),
        (_row(0.93, 0.775, 5.6, (-3.7, -4.8), 0.955, 0.92), ["canonical ethnicity_acc at least"]),
        (_row(0.93, 0.84, 6.05, (-3.7, -4.8), 0.955, 0.92), ["canonical age_mae at most"]),
        (_row(0.93, 0.84, 5.6, (-3.7, -6.0), 0.955, 0.92), ["signed error 70+, magnitude at most half"]),
        (
            _row(0.93, 0.84, 5.6, (-3.7, -4.8), 0.955, 0.89),
            ["UTK-C mean gender_acc above", "UTK-C mean ethnicity_acc above"],
        ),
    ):
        done, record = _run(tmp_path, {**rows, "x/val": row}, "x/val", "ref/val")
        assert [name for name, b in record["bars"].items() if not b["pass"]] == bars and not record["all_pass"]


def test_unknown_rows_and_mixed_splits_are_one_line_errors(tmp_path):
    rows = {"ref/val": _row(0.9, 0.79, 6.1, (-9.9, -11.9), 0.946, 0.9)}
    done, record = _run(tmp_path, rows, "nope/val", "ref/val")
    assert done.returncode == 1 and "no row 'nope/val'" in done.stderr and len(done.stderr.splitlines()) == 1
    rows["ref/test"] = rows["ref/val"]
    done, record = _run(tmp_path, rows, "ref/test", "ref/val")
    assert done.returncode == 1 and "same split" in done.stderr and record is None
    rows["teacher/val"] = {**rows["ref/val"], "canonical": None}  # a probe row scores no canonical faces
    done, record = _run(tmp_path, rows, "teacher/val", "ref/val")
    assert done.returncode == 1 and "has no canonical scores" in done.stderr and len(done.stderr.splitlines()) == 1
