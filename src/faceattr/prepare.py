"""``faceattr prepare``: read and validate an input, find duplicates, split without leakage,
and write the cache, the split and duplicate files and the dataset report into one folder that
appears whole or not at all."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np

from faceattr import __version__
from faceattr.cache import Prepared, save_prepared
from faceattr.datareport import write_data_report
from faceattr.dedupe import conflict_summary, find_duplicates, pixel_sha1, write_duplicates_csv
from faceattr.folders import replacing_folder
from faceattr.inputerror import InputError
from faceattr.labels import EXCLUDED, SPLITS
from faceattr.readers import read_any, write_rejected
from faceattr.split import make_split, read_split_csv, split_hash, write_split_csv


def file_fingerprint(path: Path) -> str:
    """SHA-256 of a file, or of the sorted names and sizes of a folder's files."""
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                h.update(f"{p.relative_to(path)}:{p.stat().st_size}\n".encode())
    else:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def prepare(
    input_path: str | Path,
    out_dir: str | Path,
    *,
    size: int = 48,
    gray: bool = True,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    skip_bad: bool = False,
    split_file: str | Path | None = None,
    labels: str | Path | None = None,
    max_hamming: int = 8,
    max_mad: float = 5.0,
    log=print,
) -> dict:
    """Run the whole preparation and return the summary that also goes to manifest.json.

    Outputs are built in a sibling temp folder and renamed into place at the end, so a failure
    never leaves a half-written ``out_dir`` (an earlier one stays as it was).
    """
    start = time.perf_counter()
    input_path, out_dir = Path(input_path), Path(out_dir).resolve()
    if out_dir == Path.cwd() or out_dir in Path.cwd().parents:
        raise InputError(
            f"--out {out_dir}: is the current folder or holds it; prepare replaces --out whole, name a subfolder"
        )
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "manifest.json").is_file():
        # The folder is replaced whole; never do that to a folder prepare did not write.
        raise InputError(f"--out {out_dir}: exists and is not a prepared data folder; choose a new or empty folder")
    data, problems, kind = read_any(input_path, size=size, gray=gray, skip_bad=skip_bad, labels=labels)
    log(f"read {len(data)} faces from {input_path} ({kind}); skipped {len(problems)}")
    if len(data) == 0:
        raise InputError(f"{input_path}: no usable faces ({len(problems)} rejected); fix the input")
    unlabelled = int(((data.age < 0) | (data.gender < 0) | (data.ethnicity < 0)).sum())
    if unlabelled:
        first = data.ids[(data.age < 0) | (data.gender < 0) | (data.ethnicity < 0)][0]
        raise InputError(
            f"{labels or input_path}: {unlabelled} face(s) lack a label (first: {first}); prepare needs age, gender "
            "and ethnicity for every face"
        )
    _check_unique_ids(data.ids, labels or input_path)
    t_read = time.perf_counter() - start

    dup = find_duplicates(data.images, max_hamming=max_hamming, max_mad=max_mad)
    conflicts = conflict_summary(data, dup)
    log(
        f"duplicates: {conflicts['near_pairs']} near-duplicate pairs ({conflicts['exact_pairs']} pixel-identical) "
        f"in {conflicts['groups']} groups, {conflicts['near_faces']} faces"
    )
    sha = pixel_sha1(data.images)
    if split_file is not None:
        split = read_split_csv(Path(split_file), data, sha)
        crossing = _groups_crossing(dup.group, split)
        if crossing:
            raise InputError(f"{split_file}: {crossing} duplicate group(s) cross splits with this dedupe setting")
    else:
        split = make_split(data, dup.group, fractions=fractions, seed=seed)
    counts = {s: int((split == s).sum()) for s in (*SPLITS, EXCLUDED)}
    log("split: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    empty = [s for s in ("val", "test") if counts[s] == 0]
    if empty:
        source = f"--split-file {split_file}" if split_file else f"--fractions {','.join(map(str, fractions))}"
        which = " and ".join(empty) + (" splits are" if len(empty) > 1 else " split is")
        raise InputError(
            f"{source}: the {which} empty ({len(data)} faces); train needs val faces for early stopping "
            "and test faces for its metrics"
        )

    fingerprint = {"path": str(input_path), "kind": kind, "sha256": file_fingerprint(input_path)}
    if labels is not None:
        # For a folder the fingerprint covers only file names and sizes; the labels live in the CSV.
        fingerprint.update(labels=str(labels), labels_sha256=file_fingerprint(Path(labels)))
    summary = {
        "faceattr_version": __version__,
        "input": fingerprint,
        "options": {
            "size": size,
            "gray": gray,
            "seed": seed,
            "fractions": list(fractions),
            "split_file": str(split_file) if split_file else None,
            "max_hamming": max_hamming,
            "max_mad": max_mad,
        },
        "faces_read": len(data),
        "skipped": {"total": len(problems), **data.skipped},
        "duplicates": conflicts,
        "split": counts,
        "split_hash": split_hash(data.ids, split),
        "image_shape": list(data.images.shape[1:]),
    }

    with replacing_folder(out_dir) as tmp:
        if problems:
            write_rejected(problems, tmp / "rejected.csv")
        write_duplicates_csv(data, dup, tmp / "duplicates.csv")
        write_split_csv(data, sha, dup.group, split, tmp / "split.csv")
        write_data_report(tmp, data, split, summary, dup.pairs, dup.mad)
        summary["seconds"] = {"read": round(t_read, 2), "total": round(time.perf_counter() - start, 2)}
        save_prepared(tmp, Prepared(data=data, split=split, group=dup.group, sha=sha, manifest=summary))
    log(f"wrote {out_dir} in {summary['seconds']['total']:.1f} s")
    return summary


def _check_unique_ids(ids: np.ndarray, source: str | Path) -> None:
    """ids key the split file and the duplicate list, so two faces may not share one."""
    seen: set[str] = set()
    for face_id in ids.tolist():
        if face_id in seen:
            raise InputError(f"{source}: id {face_id!r} appears more than once; every face needs its own id")
        seen.add(face_id)


def _groups_crossing(group: np.ndarray, split: np.ndarray) -> int:
    """Number of duplicate groups whose kept faces sit in more than one split."""
    kept = split != EXCLUDED
    pairs = {(g, s) for g, s in zip(group[kept], split[kept])}
    per_group: dict[int, int] = {}
    for g, _ in pairs:
        per_group[g] = per_group.get(g, 0) + 1
    return sum(1 for v in per_group.values() if v > 1)
