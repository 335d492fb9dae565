"""`faceattr audit`: the demographic make-up of a photo collection, estimated with the
classifier's errors corrected (``faceattr.quantify``), with 95 % intervals.

The collection is cut into shards (``faceattr.collection``); each shard's photos are detected,
aligned and classified, and its faces and photos written as one pair of Parquet files,
atomically. Shards run in this process by default, or on a Dask cluster (``workers`` local
processes, or the scheduler at ``cluster``): the driver writes each shard once, whichever
worker computed it, so a worker lost mid-run only costs its shard a second run, and a rerun
of the same command skips the shards already written. The estimates use the faces above a
quality bar; the others are counted and reported, never silently dropped.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections import Counter
from importlib import resources
from pathlib import Path

import numpy as np

from faceattr import __version__
from faceattr.atomic import atomic_path, write_json
from faceattr.collection import Item, fingerprint, kind_of, shards
from faceattr.imageio import PHOTO_SUFFIXES
from faceattr.inputerror import InputError
from faceattr.labels import AGE_BAND_NAMES, AGE_BANDS, ETHNICITIES, GENDERS
from faceattr.pretrained import PRETRAINED
from faceattr.quantify import (
    FAIRFACE_AGE_EDGES,
    FAIRFACE_AGE_GROUPS,
    age_group_of,
    age_group_probs,
    estimate,
    joint_probs,
)

DETECT_FLOOR = 0.7  # faces the detector scores above this are kept in the table (and counted)
# What the report shows and why: measured by bench/audit_accuracy.py (results/audit_accuracy.json).
SHOWN = "pacc"
SHOWN_WHY = (
    "PACC (probabilistic adjusted classify-and-count: mean calibrated probabilities, corrected with the soft "
    "confusion matrix of the validation faces). On collections drawn from the test split with skewed make-ups "
    "(bench/audit_accuracy.py) it had the smallest error for gender and ethnicity, with intervals that held the "
    "truth about as often as they claim. For age groups its error is larger than plain counting's, but plain "
    "counting's intervals hold the truth far less often than they claim. EM is listed but unreliable here: it "
    "needs well-calibrated probabilities, which the age groups (and, less so, the ethnicities) do not have."
)
TARGETS = {
    "gender": GENDERS,
    "ethnicity": ETHNICITIES,
    "age_group": FAIRFACE_AGE_GROUPS,
    "age_band": AGE_BAND_NAMES,
    "gender_x_age_group": tuple(f"{g} {a}" for g in GENDERS for a in FAIRFACE_AGE_GROUPS),
}
FACE_COLUMNS = ("photo", "face", "x1", "y1", "x2", "y2", "score", "age", "age_low", "age_high")
PROB_COLUMNS = tuple(f"p_{c}" for c in GENDERS) + tuple(f"p_{c}" for c in ETHNICITIES)
_PREDICTORS: dict = {}  # one predictor per worker process, built on its first shard


def target_probs(faces: dict[str, np.ndarray], target: str) -> np.ndarray:
    """(N, classes) probabilities of one audited attribute from per-face answers."""
    if target == "gender":
        return np.asarray(faces["p_gender"], float)
    if target == "ethnicity":
        return np.asarray(faces["p_ethnicity"], float)
    if target in ("age_group", "age_band"):
        edges = FAIRFACE_AGE_EDGES if target == "age_group" else AGE_BANDS
        return age_group_probs(faces["age"], faces["age_low"], faces["age_high"], edges)
    if target == "gender_x_age_group":
        return joint_probs(target_probs(faces, "gender"), target_probs(faces, "age_group"))
    raise ValueError(f"unknown target {target!r}")


def load_validation() -> dict[str, np.ndarray]:
    """The shipped model's answers on the canonical validation faces, with their true labels
    (``tools/validation_predictions.py``): the confusion the estimates are corrected with."""
    path = resources.files("faceattr.weights").joinpath(f"{PRETRAINED['default']}.validation.npz")
    with resources.as_file(path) as f, np.load(f) as z:
        v = {k: z[k] for k in z.files}
    truth_age = v["age"].astype(float)
    return {
        "p_gender": v["p_gender"],
        "p_ethnicity": v["p_ethnicity"],
        "age": v["age_pred"],
        "age_low": v["age_low"],
        "age_high": v["age_high"],
        "gender": v["gender"].astype(int),
        "ethnicity": v["ethnicity"].astype(int),
        "age_group": age_group_of(truth_age, FAIRFACE_AGE_EDGES),
        "age_band": age_group_of(truth_age, AGE_BANDS),
        "gender_x_age_group": v["gender"].astype(int) * len(FAIRFACE_AGE_GROUPS)
        + age_group_of(truth_age, FAIRFACE_AGE_EDGES),
    }


def process_shard(settings: dict, index: int, items: list[Item]) -> tuple[int, dict, dict]:
    """Detect, align and classify one shard: (index, face columns, photo columns). Runs in the
    driver or on a cluster worker; reads nothing but its photos and writes nothing. The model is
    the shipped one: its validation answers are what the estimates are corrected with."""
    from faceattr.predictor import load_predictor

    key = json.dumps(settings, sort_keys=True)
    if key not in _PREDICTORS:
        _PREDICTORS[key] = load_predictor(
            None, min_score=DETECT_FLOOR, max_side=settings["detect_size"], threads=settings["threads"]
        )
    predictor = _PREDICTORS[key]
    faces: dict[str, list] = {c: [] for c in (*FACE_COLUMNS, *PROB_COLUMNS)}
    photos: dict[str, list] = {"photo": [], "status": [], "error": [], "faces": [], "width": [], "height": []}

    def prepared():
        for item in items:
            if item.error is not None:
                yield _failed(item.key, item.error)
                continue
            pending = predictor.prepare(item.data if item.data is not None else item.path, detect=True)
            pending.source = item.key
            if pending.error is not None:
                pending.error = pending.error.removeprefix("<bytes>: ").removeprefix(f"{item.path}: ")
            yield pending

    for result in predictor.finish_batches(prepared()):
        w, h = result.size or (None, None)
        photos["photo"].append(result.source)
        photos["status"].append("failed" if result.error else ("ok" if result.faces else "no_face"))
        photos["error"].append(result.error)
        photos["faces"].append(len(result.faces))
        photos["width"].append(w)
        photos["height"].append(h)
        for k, f in enumerate(result.faces, 1):
            for column, value in zip(FACE_COLUMNS, (result.source, k, *f.box, f.score, f.age, *f.age_range)):
                faces[column].append(value)
            for name, p in (*f.gender.items(), *f.ethnicity.items()):
                faces[f"p_{name}"].append(p)
    return index, faces, photos


def _failed(key: str, reason: str):
    from faceattr.predictor import PendingPhoto

    return PendingPhoto(key, [], [], error=reason, error_kind="missing")


def audit(
    collection: str | Path,
    out_dir: str | Path,
    workers: int | None = None,
    cluster: str | None = None,
    shard_size: int = 256,
    min_score: float = 0.9,
    min_face: int = 24,
    detect_size: int = 800,
    n_boot: int = 200,
    seed: int = 0,
    log=print,
) -> dict:
    """Audit a collection into ``out_dir``: ``shards/`` (faces-NNNNN.parquet and
    photos-NNNNN.parquet), ``faces.parquet`` (every face, with whether it entered the
    estimates and why not), ``photos.parquet`` (every photo: ok, no_face or failed and why),
    ``report.json`` and ``report.html``.
    Faces scoring below ``min_score`` or smaller than ``min_face`` pixels are counted and left
    out of the estimates. Every argument is checked, and the cluster reached, before anything is
    written. Returns the report."""
    started = time.perf_counter()
    collection, out_dir = Path(collection), Path(out_dir)
    kind = kind_of(collection)
    for option, value in (("--workers", workers), ("--shard-size", shard_size), ("--bootstrap", n_boot)):
        if value is not None and value < 1:
            raise InputError(f"{option} {value}: expected a positive number")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir}: exists and is not a folder")
    manifest = {
        "collection": str(collection),
        "kind": kind,
        "fingerprint": fingerprint(collection),
        "shard_size": shard_size,
        "settings": {"detect_size": detect_size},
        "faceattr_version": __version__,
        # Shards of one audit come from one model: a resume after the default model changed is refused.
        "model": PRETRAINED["default"],
    }
    # One ONNX Runtime thread per worker process; all the cores for a single process.
    settings = {"detect_size": detect_size, "threads": 1 if (workers or cluster) else None}
    shard_dir = out_dir / "shards"
    client = _connect(workers, cluster) if (workers or cluster) else None
    try:
        _start_or_resume(out_dir, shard_dir, manifest)
        pending = ((i, items) for i, items in enumerate(shards(collection, shard_size)) if not _done(shard_dir, i))
        if client is None:
            done = _run_here(pending, settings, shard_dir, log)
        else:
            done = _run_on_dask(client, pending, settings, shard_dir, manifest["fingerprint"], log)
    finally:
        if client is not None:
            _disconnect(client)
    log(f"{done} shard(s) written this run")
    report = summarise(shard_dir, out_dir, manifest, min_score, min_face, n_boot, seed)
    report["seconds"] = round(time.perf_counter() - started, 2)
    write_json(report, out_dir / "report.json")
    from faceattr.auditreport import write_html

    write_html(report, out_dir / "report.html")
    return report


def _start_or_resume(out_dir: Path, shard_dir: Path, manifest: dict) -> None:
    """A new audit folder, or the same audit resumed; a folder of another audit is refused."""
    path = out_dir / "manifest.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != manifest:
            raise InputError(
                f"--out {out_dir}: holds an audit of another collection, with other settings or by another model; "
                "choose a new folder"
            )
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise InputError(f"--out {out_dir}: exists and is not an audit folder; choose a new or empty folder")
    try:
        shard_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out {out_dir}: cannot create the folder ({e.strerror or e})") from None
    write_json(manifest, path)


def _done(shard_dir: Path, index: int) -> bool:
    return (shard_dir / f"photos-{index:05d}.parquet").is_file()  # written last: the shard is complete


def _write_shard(shard_dir: Path, index: int, faces: dict, photos: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name, columns in ((f"faces-{index:05d}.parquet", faces), (f"photos-{index:05d}.parquet", photos)):
        with atomic_path(shard_dir / name) as tmp:
            pq.write_table(pa.table(columns, schema=_schema(name)), tmp)


def _schema(name: str):
    import pyarrow as pa

    if name.startswith("faces"):
        fields = [("photo", pa.string()), ("face", pa.int32())]
        fields += [(c, pa.float64()) for c in FACE_COLUMNS[2:]] + [(c, pa.float64()) for c in PROB_COLUMNS]
    else:
        fields = [("photo", pa.string()), ("status", pa.string()), ("error", pa.string()), ("faces", pa.int32())]
        fields += [("width", pa.int32()), ("height", pa.int32())]
    return pa.schema(fields)


def _run_here(pending, settings: dict, shard_dir: Path, log) -> int:
    """The shards in this process, one after another; returns how many were written."""
    n = 0
    for index, items in pending:
        _, faces, photos = process_shard(settings, index, items)
        _write_shard(shard_dir, index, faces, photos)
        n += 1
        log(f"shard {index}: {len(items)} photos")
    return n


def _connect(workers: int | None, cluster: str | None):
    """A Dask client: on a new local cluster of ``workers`` processes, or at ``cluster``."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise InputError("--workers/--cluster need Dask: pip install 'faceattr[cluster]'") from None
    try:
        if cluster:
            return Client(cluster, timeout="30s")
        local = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        return Client(local)
    except (OSError, ValueError, TimeoutError) as e:
        where = f"--cluster {cluster}" if cluster else f"--workers {workers}"
        raise InputError(f"{where}: cannot reach or start the Dask cluster ({str(e).splitlines()[0][:150]})") from None


def _disconnect(client) -> None:
    local = client.cluster
    client.close()
    if local is not None:
        local.close()


def _run_on_dask(client, pending, settings: dict, shard_dir: Path, run_id: str, log) -> int:
    """The shards on a Dask cluster, a bounded number in flight; the driver writes each result
    once, whichever worker computed it (a task lost with its worker is run again elsewhere)."""
    from dask.distributed import as_completed

    # Keys unique to this run: a shared scheduler must never hand one audit another's shard.
    prefix = f"faceattr-{run_id}-{uuid.uuid4().hex[:8]}"
    in_flight = 2 * max(1, len(client.scheduler_info()["workers"]))
    written = 0

    def submit(index: int, items: list[Item]):
        return client.submit(process_shard, settings, index, items, key=f"{prefix}-shard-{index}", pure=False)

    futures = as_completed([submit(i, items) for i, items in itertools.islice(pending, in_flight)])
    for future in futures:
        index, faces, photos = future.result()
        _write_shard(shard_dir, index, faces, photos)
        written += 1
        log(f"shard {index}: {len(photos['photo'])} photos")
        for i, items in itertools.islice(pending, 1):
            futures.add(submit(i, items))
    return written


def read_shards(shard_dir: Path) -> tuple:
    """All faces and photos written so far, as pyarrow tables."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    photo_files = sorted(shard_dir.glob("photos-*.parquet"))
    faces = [pq.read_table(shard_dir / p.name.replace("photos-", "faces-")) for p in photo_files]
    photos = [pq.read_table(p) for p in photo_files]
    empty_faces, empty_photos = _schema("faces").empty_table(), _schema("photos").empty_table()
    return (
        pa.concat_tables(faces) if faces else empty_faces,
        pa.concat_tables(photos) if photos else empty_photos,
    )


def summarise(shard_dir: Path, out_dir: Path, manifest: dict, min_score: float, min_face: int, n_boot: int, seed: int):
    """Counts, the quality bar, and every estimate; writes faces.parquet with the bar applied."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    faces, photos = read_shards(shard_dir)
    if photos.num_rows == 0:
        raise InputError(
            f"{manifest['collection']}: no photos found (image files: {', '.join(PHOTO_SUFFIXES)}); nothing to audit"
        )
    f = {name: faces.column(name).to_numpy(zero_copy_only=False) for name in faces.column_names}
    side = np.minimum(f["x2"] - f["x1"], f["y2"] - f["y1"]) if faces.num_rows else np.zeros(0)
    low_score = f["score"] < min_score if faces.num_rows else np.zeros(0, bool)
    small = (side < min_face) & ~low_score
    included = ~(low_score | small)
    exclusion = np.where(low_score, "detector score below the bar", np.where(small, "face too small", None))
    table = faces.append_column("included", pa.array(included)).append_column(
        "exclusion", pa.array(exclusion.tolist(), pa.string())
    )
    table = table.append_column("model_version", pa.array([_model_version(manifest)] * faces.num_rows, pa.string()))
    with atomic_path(out_dir / "faces.parquet") as tmp:
        pq.write_table(table, tmp)
    with atomic_path(out_dir / "photos.parquet") as tmp:
        pq.write_table(photos, tmp)
    status = Counter(photos.column("status").to_pylist())
    errors = Counter(_reason_kind(e) for e in photos.column("error").to_pylist() if e)
    counts = {
        "photos": photos.num_rows,
        "photos_with_faces": status.get("ok", 0),
        "photos_without_faces": status.get("no_face", 0),
        "photos_failed": status.get("failed", 0),
        "failures_by_reason": dict(errors),
        "faces": faces.num_rows,
        "faces_included": int(included.sum()),
        "faces_excluded": {
            "detector score below the bar": int(low_score.sum()),
            "face too small": int(small.sum()),
        },
    }
    report = {
        "format": "faceattr-audit-1",
        "collection": manifest["collection"],
        "kind": manifest["kind"],
        "model": _model_version(manifest),
        "quality_bar": {"min_score": min_score, "min_face_px": min_face, "detector_floor": DETECT_FLOOR},
        "counts": counts,
        "estimator_shown": SHOWN,
        "why": SHOWN_WHY,
        "bootstrap": n_boot,
        "meaning": (
            "Apparent attributes as labelled in UTKFace (binary gender, five coarse ethnicity groups, age), "
            "estimated for the faces of the collection as a population: not identity, and not a judgement "
            "of any individual."
        ),
        "targets": {},
    }
    val = load_validation()
    report["validation"] = {"faces": int(len(val["gender"])), "split": "canonical validation split"}
    if included.any():
        kept = {k: v[included] for k, v in f.items()}
        kept["p_gender"] = np.stack([kept[f"p_{c}"] for c in GENDERS], 1)
        kept["p_ethnicity"] = np.stack([kept[f"p_{c}"] for c in ETHNICITIES], 1)
        for target, classes in TARGETS.items():
            est = estimate(target_probs(kept, target), target_probs(val, target), val[target], n_boot, seed)
            report["targets"][target] = {"classes": list(classes), "faces": int(included.sum()), "estimates": est}
    return report


def _reason_kind(error: str) -> str:
    """A short, countable reason from a one-line failure message."""
    text = error.lower()
    for needle, kind in (
        ("no such file", "missing file"),
        ("permission", "permission denied"),
        ("not an image", "not an image"),
        ("symbolic link", "bad symbolic link"),
        ("decompression bomb", "too large"),
        ("byte limit", "too large"),
        ("from the archive", "unreadable archive member"),
    ):
        if needle in text:
            return kind
    return "corrupt or unreadable"


def _model_version(manifest: dict) -> str:
    return f"faceattr {manifest['faceattr_version']} / {manifest['model']} (shipped)"
