"""The prepared-data cache: one compressed ``data.npz`` (faces, labels, ids, split, groups) and
a ``manifest.json`` (input hash, counts, dedupe statistics). Loading it takes well under 2 s."""

from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from faceattr.atomic import atomic_path, write_json
from faceattr.dataset import FaceData
from faceattr.inputerror import InputError

ARRAYS = ("images", "age", "gender", "ethnicity", "ids", "names", "split", "group", "sha")


@dataclass
class Prepared:
    """A prepared dataset: faces, their split ('train'/'val'/'test'/'excluded'), duplicate
    group ids, pixel SHA-1s and the manifest written by ``faceattr prepare``."""

    data: FaceData
    split: np.ndarray
    group: np.ndarray
    sha: np.ndarray
    manifest: dict

    def part(self, name: str) -> FaceData:
        """The faces of one split."""
        return self.data.subset(self.split == name)


def save_prepared(out_dir: Path, prepared: Prepared) -> Path:
    """Write data.npz and manifest.json into out_dir (the caller makes the folder atomic)."""
    out_dir = Path(out_dir)
    d = prepared.data
    with atomic_path(out_dir / "data.npz") as tmp, open(tmp, "wb") as f:
        np.savez_compressed(
            f,
            images=d.images,
            age=d.age,
            gender=d.gender,
            ethnicity=d.ethnicity,
            ids=d.ids,
            names=d.names,
            split=prepared.split,
            group=prepared.group,
            sha=prepared.sha,
        )
    write_json(prepared.manifest, out_dir / "manifest.json")
    return out_dir


def load_prepared(path: str | Path) -> Prepared:
    """Load a folder written by ``faceattr prepare``.

    A truncated or corrupt data.npz, a missing array or a manifest that is not JSON raises
    InputError naming the file and the fault.
    """
    path = Path(path)
    npz, manifest = path / "data.npz", path / "manifest.json"
    if not npz.is_file() or not manifest.is_file():
        raise InputError(
            f"{path}: not a prepared data folder (expected data.npz and manifest.json; run faceattr prepare)"
        )
    again = "run faceattr prepare again"
    try:
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k in ARRAYS}
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"{npz}: truncated or corrupt ({reason}); {again}") from None
    missing = [k for k in ARRAYS if k not in arrays]
    if missing:
        raise InputError(f"{npz}: missing array(s) {', '.join(missing)}; {again}")
    lengths = {k: arrays[k].shape[0] if arrays[k].ndim else None for k in ARRAYS}
    if len(set(lengths.values())) != 1 or lengths["images"] is None:
        shown = ", ".join(f"{k} {n}" for k, n in lengths.items())
        raise InputError(f"{npz}: arrays disagree in length ({shown}); {again}")
    try:
        meta = json.loads(manifest.read_text())
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        reason = str(e).splitlines()[0]
        raise InputError(f"{manifest}: not valid JSON ({reason}); {again}") from None
    if not isinstance(meta, dict):
        raise InputError(f"{manifest}: expected a JSON object, got {type(meta).__name__}; {again}")
    data = FaceData(
        images=arrays["images"],
        age=arrays["age"],
        gender=arrays["gender"],
        ethnicity=arrays["ethnicity"],
        ids=arrays["ids"],
        names=arrays["names"],
        source=meta.get("input", {}).get("path", str(path)),
    )
    return Prepared(data=data, split=arrays["split"], group=arrays["group"], sha=arrays["sha"], manifest=meta)
