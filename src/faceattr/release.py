"""Releases: the weights that ship inside the package and ``faceattr export``.

A release file is a faceattr checkpoint with float16 weights (half the bytes; the test metrics
of the halved weights are measured at export and stored beside those of the originals), the
run's calibration temperatures, and a ``release`` record: name, version, the split it was
judged on and its test metrics. The shipped file is replaced only by a model that scores
better on the same (canonical) test split.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np
import torch

from faceattr import __version__
from faceattr.atomic import atomic_path
from faceattr.calibration import calibration_of, half_widths
from faceattr.checkpoint import age_spec, load_checkpoint, model_from_checkpoint
from faceattr.inputerror import InputError
from faceattr.pretrained import packaged_file, pretrained_path
from faceattr.tasks import TEACHER_HEAD

MAX_RELEASE_BYTES = 25_000_000  # 25 MB: what we promise a pip install costs per weight file
CANONICAL_SPLIT = "02c602ac688aea8d"  # splits/utkface48.csv: the test split releases are judged on
PARITY_TOLERANCE = 1e-4  # max |torch - ONNX Runtime| on any output


def half_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """float32 tensors -> float16 (BatchNorm's integer step counter stays as it is)."""
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def release_checkpoint(ckpt: dict, calibration: dict, release: dict) -> dict:
    """The shippable form of a loaded checkpoint: float16 weights, what rebuilds and decodes the
    model, the calibration (temperatures, age ranges) and the ``release`` record; no optimiser,
    history or training-only head."""
    keep = ("format", "version", "model_args", "config", "tasks", "class_names", "age", "preprocessing")
    keep += ("split_hash", "data", "epoch", "metrics", "age_refit")
    out = {k: ckpt[k] for k in keep if k in ckpt}
    # A distillation head only carried the teacher into the backbone during training; users get
    # the network without it.
    prefix = f"heads.{TEACHER_HEAD}."
    out["model_args"] = {
        **ckpt["model_args"],
        "heads": {h: n for h, n in ckpt["model_args"]["heads"].items() if h != TEACHER_HEAD},
    }
    out["model"] = half_weights({k: v for k, v in ckpt["model"].items() if not k.startswith(prefix)})
    out["calibration"] = {"temperature": dict(calibration.get("temperature") or {}), "fitted_on": "val"}
    if calibration.get("age_interval"):
        out["calibration"]["age_interval"] = dict(calibration["age_interval"])
    out["release"] = release
    return out


def test_headline(ckpt: dict, prepared, device: torch.device) -> dict:
    """Point metrics of a checkpoint's weights on the test split of ``prepared`` (the data it
    was trained on, checked by ``load_split_data``), as the training loop computes them."""
    from faceattr.train import evaluate, headline

    pre = ckpt["preprocessing"]
    age = age_spec(ckpt)
    model = model_from_checkpoint(ckpt, device).float()
    metrics = evaluate(model, prepared, "test", pre["mean"], pre["std"], device, age)
    out = {k: round(float(v), 6) for k, v in headline(metrics).items()}
    if "gender" in metrics and "roc_auc" in metrics["gender"]:
        out["gender_roc_auc"] = round(float(metrics["gender"]["roc_auc"]), 6)
    out["n"] = int(len(prepared.part("test").images))
    return out


def same_network(a: dict, b: dict) -> bool:
    """The same model: equal tensors under the same names (compared as stored: float16) and the
    same architecture, preprocessing and age decoding (routing temperature included), so only
    the record and the calibration may differ."""
    if any(a.get(k) != b.get(k) for k in ("model_args", "preprocessing", "age")):
        return False
    wa, wb = a["model"], b["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def check_replaces(path: Path, new: dict, force: bool, new_model: dict | None = None) -> dict | None:
    """The release record of the weights at ``path`` (None if there are none). Refuses, unless
    ``force``: the packaged weights from a model judged on another split than the canonical
    one, and any weights judged on another split or scoring at least as well. The same network
    (``new_model``, a release checkpoint, equal to the one there) may always refresh its record
    and calibration."""
    if path.is_dir():
        raise InputError(f"--weights {path}: is a folder; name the weight file to write")
    packaged = path.resolve() == packaged_file().resolve()
    if packaged and new["split_hash"] != CANONICAL_SPLIT and not force:
        raise InputError(
            f"{path}: the shipped weights are judged on the canonical split {CANONICAL_SPLIT} "
            f"(splits/utkface48.csv); this model was trained on split {new['split_hash']} (--force overrides)"
        )
    if not path.exists():
        return None
    existing = load_checkpoint(path)
    old = existing.get("release")
    if old is None or force:
        return old
    if new_model is not None and same_network(existing, new_model):
        return {**old, "refreshed": True}  # the same model with a new record or calibration
    old_split, old_score = old.get("split_hash"), (old.get("test") or {}).get("score")
    if old_split != new["split_hash"] or old_score is None:
        raise InputError(
            f"{path}: the weights there were judged on split {old_split}, this model on {new['split_hash']}; "
            "compare on the canonical split (splits/utkface48.csv) or pass --force"
        )
    if new["test"]["score"] <= old_score:
        raise InputError(
            f"{path}: the new model is not better on the test split (score {new['test']['score']:.4f} vs "
            f"{old_score:.4f} there); kept those weights (--force replaces them anyway)"
        )
    return old


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def report_headline(run_dir: Path) -> dict | None:
    """The bootstrap-CI headline of ``faceattr evaluate`` for this run, when a report exists."""
    for candidate in (run_dir / "report" / "metrics.json", run_dir.parent / "report" / "metrics.json"):
        if candidate.is_file():
            data = json.loads(candidate.read_text())
            if data.get("split") == "test":
                return {"source": str(candidate), "n": data.get("n"), **data.get("headline", {})}
    return None


def parity(model, onnx: bytes, images: np.ndarray) -> dict[str, float]:
    """max |torch - ONNX Runtime| per output on uint8 chips (N, H, W[, C])."""
    from faceattr.onnxmodel import OnnxModel, chips_to_pixels

    pixels = chips_to_pixels(images)
    a, b = model.run(pixels), OnnxModel(onnx).run(pixels)
    return {name: float(np.abs(a[name] - b[name]).max()) for name in a}


def export(
    run: str | Path,
    weights: Path | None = None,
    onnx: Path | None = None,
    data_dir: Path | None = None,
    force: bool = False,
    command: str = "",
    log=print,
) -> dict:
    """`faceattr export`: the release weights and/or the ONNX file of a run (or of a release
    file, or of the packaged weights with ``run="pretrained"``). Everything is built and checked
    in memory first (size limit, replacement rule, ONNX parity); files are written only when
    all checks pass. Returns a summary for results/release.json."""
    from faceattr.evaluation import find_data_dir, load_split_data
    from faceattr.inference import inference_model, onnx_bytes
    from faceattr.runs import run_folder

    if weights is None and onnx is None:
        raise InputError("nothing to export: pass --weights FILE and/or --onnx FILE")
    if onnx is not None and Path(onnx).is_dir():
        raise InputError(f"--onnx {onnx}: is a folder; name the .onnx file to write")
    path = pretrained_path() if str(run) == "pretrained" else Path(run)
    ckpt = load_checkpoint(path)
    run_dir = run_folder(path)
    calibration = calibration_of(ckpt, path)
    temperature = calibration.get("temperature") or {}
    summary: dict = {"command": command, "source": str(path), "faceattr_version": __version__}
    if data_dir is not None:
        data_dir = Path(data_dir)
    else:
        try:
            data_dir = find_data_dir(run_dir, ckpt)
        except InputError:
            if weights is not None:  # release metrics need the test split; ONNX parity does not
                raise
    # The test faces, read once: release metrics for both weight precisions and the ONNX check.
    prepared = load_split_data(data_dir, ckpt, "test") if data_dir is not None else None
    device = torch.device("cpu")
    files: list[tuple[Path, bytes]] = []

    if weights is not None:
        weights = Path(weights)
        log("evaluating the float32 and float16 weights on the test split ...")
        full = test_headline(ckpt, prepared, device)
        release = {
            # A packaged file is <name>.pt, so the file names its release: exporting the next
            # default before PRETRAINED points at it still stamps the right name.
            "name": weights.stem,
            "faceattr_version": __version__,
            "created": time.strftime("%Y-%m-%d"),
            "split_hash": ckpt["split_hash"],
            "source": str(path),
            "test": {},  # filled below from the float16 weights themselves
            "report": report_headline(run_dir),
        }
        shipped = release_checkpoint(ckpt, calibration, release)
        release["test"] = test_headline(shipped, prepared, device)
        previous = check_replaces(weights, release, force, shipped)
        buffer = io.BytesIO()
        torch.save(shipped, buffer)
        data = buffer.getvalue()
        if len(data) > MAX_RELEASE_BYTES:
            raise InputError(
                f"--weights {weights}: {len(data):,} bytes in float16, over the {MAX_RELEASE_BYTES:,}-byte "
                "limit for packaged weights; release a smaller model"
            )
        files.append((weights, data))
        summary["weights"] = {
            "path": str(weights),
            "bytes": len(data),
            "megabytes": round(len(data) / 1e6, 2),
            "sha256": hashlib.sha256(data).hexdigest(),
            "test_float32": full,
            "test_float16": release["test"],
            "replaced": previous
            and {
                "name": previous.get("name"),
                "test": previous.get("test"),
                "same_model": bool(previous.get("refreshed")),
            },
        }
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)  # ONNX from what ships

    if onnx is not None:
        onnx = Path(onnx)
        model = inference_model(ckpt, temperature, age_half_width=half_widths(calibration, ckpt))
        pre = ckpt["preprocessing"]
        channels, size = (1 if pre["color"] == "gray" else 3), int(pre["size"])
        metadata = {
            "faceattr.version": __version__,
            "faceattr.model": (ckpt.get("release") or {}).get("name", path.name),
            "faceattr.calibrated": "true" if temperature else "false",
            **(
                {"faceattr.age_range_coverage": str(calibration["age_interval"]["coverage"])}
                if "age_low" in model.output_names
                else {}
            ),
            "faceattr.input": f"float32 (N, {channels}, {size}, {size}) pixel values 0..255",
            # Ties the graph to the weight file it was built from (the packaged pair must agree).
            **({"faceattr.weights_sha256": sha256(path)} if path.is_file() and weights is None else {}),
            **({"faceattr.release": json.dumps(ckpt["release"])} if ckpt.get("release") else {}),
            **(
                {"faceattr.age": json.dumps({"head": ckpt["age"]["head"], "bin_edges": list(ckpt["age"]["edges"])})}
                if ckpt.get("age")
                else {}
            ),
        }
        data = onnx_bytes(model, channels, size, metadata)
        if prepared is not None:
            images = prepared.part("test").images[:256]
            checked_on = f"{len(images)} test faces of {data_dir}"
        else:
            shape = (64, size, size) if channels == 1 else (64, size, size, 3)
            images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
            checked_on = "64 random images"
        diffs = parity(model, data, images)
        worst = max(diffs.values())
        if worst > PARITY_TOLERANCE:
            raise InputError(
                f"{onnx}: ONNX Runtime differs from PyTorch by {worst:.2e} (> {PARITY_TOLERANCE}); not written"
            )
        files.append((onnx, data))
        summary["onnx"] = {
            "path": str(onnx),
            "bytes": len(data),
            "megabytes": round(len(data) / 1e6, 2),
            "outputs": model.output_names,
            "max_abs_diff": diffs,
            "checked_on": checked_on,
        }

    for target, data in files:
        write_bytes(target, data)
        log(f"wrote {target} ({len(data) / 1e6:.1f} MB)")
    summary["score_note"] = "score = mean of gender accuracy, ethnicity macro-F1 and age CS@5 (metrics.selection_score)"
    return summary


def write_bytes(path: Path, data: bytes) -> None:
    """Atomically, with a one-line error for a path that cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except OSError as e:
        raise InputError(f"{path}: cannot write ({e.strerror or e})") from None
