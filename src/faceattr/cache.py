"""The prepared-data cache: one compressed ``data.npz`` (faces, labels, ids, split, groups) and
a ``manifest.json`` (input hash, counts, dedupe statistics). Loading it takes well under 2 s."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from faceattr.dataset import FaceData
from faceattr.inputerror import InputError


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


def write_json(obj: dict, path: Path) -> Path:
    """Write JSON atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=_jsonable)
        f.write("\n")
    os.replace(tmp, path)
    return path


def _jsonable(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def save_prepared(out_dir: Path, prepared: Prepared) -> Path:
    """Write data.npz and manifest.json into out_dir (the caller makes the folder atomic)."""
    out_dir = Path(out_dir)
    d = prepared.data
    tmp = out_dir / "data.npz.tmp"
    with open(tmp, "wb") as f:
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
    os.replace(tmp, out_dir / "data.npz")
    write_json(prepared.manifest, out_dir / "manifest.json")
    return out_dir


def load_prepared(path: str | Path) -> Prepared:
    """Load a folder written by ``faceattr prepare``."""
    path = Path(path)
    npz, manifest = path / "data.npz", path / "manifest.json"
    if not npz.is_file() or not manifest.is_file():
        raise InputError(
            f"{path}: not a prepared data folder (expected data.npz and manifest.json; run faceattr prepare)"
        )
    with np.load(npz, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    with open(manifest) as f:
        meta = json.load(f)
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
