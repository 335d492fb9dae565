"""Copy the report metrics of a `faceattr run` output folder into a result file, with the
command that produced them (from the folder's summary.json, followed by any later commands that
changed the model or rewrote the report, given as further arguments):
`python tools/collect_report.py runs/run-cpu60 results/report_cpu60.json`."""

import json
import sys
from pathlib import Path

from faceattr.atomic import write_json


def main() -> None:
    out_dir, target, later = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    summary = json.loads((out_dir / "summary.json").read_text())
    metrics = json.loads((out_dir / "report" / "metrics.json").read_text())
    write_json({"command": " && ".join([summary["command"], *later]), **metrics}, target)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
