"""Wall-clock time of a finished run folder, from its files: config.yaml is written when a run
starts and metrics.json when it ends (after the test evaluation). Covers runs made before
train() recorded its own wall time.

python tools/run_wall_time.py runs/cpu60 results/multitask_cpu60_wall.json
"""

import json
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

from faceattr.atomic import write_json


def main(run: str, out: str) -> None:
    run_dir = Path(run)
    start = (run_dir / "config.yaml").stat().st_mtime
    end = (run_dir / "metrics.json").stat().st_mtime
    metrics = json.loads((run_dir / "metrics.json").read_text())
    write_json(
        {
            "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
            "run": str(run_dir),
            "started_utc": datetime.fromtimestamp(start, UTC).isoformat(timespec="seconds"),
            "finished_utc": datetime.fromtimestamp(end, UTC).isoformat(timespec="seconds"),
            "wall_minutes": round((end - start) / 60, 2),
            "train_loop_minutes": metrics["train_minutes"],
        },
        Path(out),
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
