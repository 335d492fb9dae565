"""The run-folder layout: what ``faceattr train`` writes into ``runs/<name>/`` and how any
command turns "a run folder or a checkpoint file" into the two paths it needs. Paths only; no
file is read here."""

from __future__ import annotations

from pathlib import Path

BEST = "best.pt"  # the weights chosen on validation: what a run folder means
LAST = "last.pt"  # the latest epoch, for --resume
CALIBRATION = "calibration.json"  # temperatures and age ranges fitted by faceattr evaluate
CONFIG = "config.yaml"
HISTORY = "history.csv"
METRICS = "metrics.json"


def checkpoint_path(path: str | Path) -> Path:
    """The checkpoint a path names: a run folder's best.pt, or the file itself."""
    path = Path(path)
    return path / BEST if path.is_dir() else path


def run_folder(path: str | Path) -> Path:
    """The run folder a path belongs to: the folder itself, or the folder holding the file."""
    path = Path(path)
    return path if path.is_dir() else path.parent
