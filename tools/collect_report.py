"""Copy the report metrics of a `faceattr run` output folder into a result file, with the
command that produced them (from the folder's summary.json, followed by any later commands that
changed the model or rewrote the report, given as further arguments):
`python tools/collect_report.py runs/run-cpu60 results/report_cpu60.json`.

A folder that `faceattr run` did not write (no summary.json: a `faceattr train` run evaluated by
`faceattr evaluate RUN --out FOLDER/report`) takes its whole command chain from the arguments."""

import json
import sys
from pathlib import Path

from faceattr.atomic import write_json


def main() -> None:
    out_dir, target, later = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    summary = out_dir / "summary.json"
    first = [json.loads(summary.read_text())["command"]] if summary.is_file() else []
    if not first and not later:
        sys.exit(f"{out_dir}: no summary.json; give the commands that made the model and its report")
    metrics = json.loads((out_dir / "report" / "metrics.json").read_text())
    write_json({"command": " && ".join([*first, *later]), **metrics}, target)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
