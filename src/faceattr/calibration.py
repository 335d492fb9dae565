"""The calibration file, owned here: ``RUN/calibration.json`` as ``faceattr evaluate`` fits it
on validation faces (class temperatures, 80 % age ranges per predicted age bin), written
atomically, read back and validated with one-line errors, and matched to a model."""

from __future__ import annotations

import json
import math
from pathlib import Path

from faceattr.atomic import write_json
from faceattr.inputerror import InputError
from faceattr.labels import CLASS_NAMES
from faceattr.runs import BEST, CALIBRATION, checkpoint_path


def write_calibration(calibration: dict, run_dir: Path) -> Path:
    """Write RUN/calibration.json atomically, after checking it reads back as valid."""
    path = Path(run_dir) / CALIBRATION
    check_calibration(json.loads(json.dumps(calibration, default=float)), path)
    return write_json(calibration, path)


def load_calibration(run_dir: Path, checkpoint: str = BEST) -> dict:
    """What ``faceattr evaluate`` fitted on validation, from RUN/calibration.json:
    ``{"temperature": {"gender": T, "ethnicity": T}}`` plus, when present, ``"age_interval"``
    (``half_width`` per predicted age bin). {} when the run has none or it was fitted for another
    of its checkpoints (a "checkpoint" entry naming, say, best.pt does not apply to last.pt)."""
    path = Path(run_dir) / CALIBRATION
    if not path.is_file():
        return {}
    expected = 'expected {"temperature": {"gender": T, "ethnicity": T}} with T > 0'
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e}); {expected}") from None
    if isinstance(data, dict) and data.get("checkpoint", checkpoint) != checkpoint:
        return {}
    return check_calibration(data, path)


def check_calibration(data, path: Path) -> dict:
    """The usable part of a parsed calibration file, or InputError naming the bad field."""
    expected = 'expected {"temperature": {"gender": T, "ethnicity": T}} with T > 0'
    temps = data.get("temperature") if isinstance(data, dict) else None
    if not isinstance(temps, dict):
        raise InputError(f"{path}: no temperature table; {expected}")
    out: dict = {"temperature": {}}
    for task, t in temps.items():
        if task not in CLASS_NAMES:
            continue
        if not _positive(t):
            raise InputError(f"{path}: temperature.{task} = {t!r}; {expected}")
        out["temperature"][task] = float(t)
    interval = data.get("age_interval")
    if interval is not None:
        _check_interval(interval, path)
        out["age_interval"] = interval
    return out


def _check_interval(interval, path: Path) -> None:
    half = interval.get("half_width") if isinstance(interval, dict) else None
    cover = interval.get("coverage") if isinstance(interval, dict) else None
    if not (isinstance(cover, float) and 0 < cover < 1):
        raise InputError(f"{path}: age_interval.coverage = {cover!r}; expected a share between 0 and 1")
    if not isinstance(half, list) or not half or not all(_positive(h) or _is_zero(h) for h in half):
        raise InputError(f"{path}: age_interval.half_width = {half!r}; expected a list of years >= 0, one per bin")


def _is_zero(x) -> bool:
    return not isinstance(x, bool) and x == 0


def _positive(x) -> bool:
    return not isinstance(x, bool) and isinstance(x, int | float) and math.isfinite(x) and x > 0


def calibration_of(ckpt: dict, path: str | Path) -> dict:
    """The calibration that applies to the checkpoint loaded from ``path`` (a run folder or a
    file): a release file carries its own; a run keeps it beside the checkpoint."""
    ckpt_path = checkpoint_path(path)
    return ckpt.get("calibration") or load_calibration(ckpt_path.parent, ckpt_path.name)


def half_widths(calibration: dict, ckpt: dict) -> list[float] | None:
    """The age-range half-widths of a calibration, if they fit this model's age bins."""
    half = (calibration.get("age_interval") or {}).get("half_width")
    n_bins = len((ckpt.get("age") or {}).get("edges", [])) - 1
    return half if half is not None and len(half) == n_bins else None
