"""Releases: the weights that ship inside the package and ``faceattr export``.

A release file is a faceattr checkpoint with float16 weights (half the bytes; the test metrics
of the halved weights are measured at export and stored beside those of the originals), the
run's calibration temperatures, and a ``release`` record: name, version, the split it was
judged on and its test metrics. The shipped file is replaced only by a model that scores
better on the same (canonical) test split.
"""

from __future__ import annotations

import hashlib
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from faceattr import __version__
from faceattr.inputerror import InputError

PRETRAINED = {"default": "utkface48-v1.pt"}  # name -> file in faceattr/weights
PRETRAINED_NAME = "utkface48-v1"
MAX_RELEASE_BYTES = 25 * 1024 * 1024  # what we promise a pip install costs in weights
PARITY_TOLERANCE = 1e-4  # max |torch - ONNX Runtime| on any output


def pretrained_path(name: str = "default") -> Path:
    """The packaged weight file for ``name``, or InputError naming the names that exist."""
    if name not in PRETRAINED:
        raise InputError(f"no pretrained faceattr model named {name!r}; known: {', '.join(PRETRAINED)}")
    path = Path(str(resources.files("faceattr.weights").joinpath(PRETRAINED[name])))
    if not path.is_file():
        raise InputError(f"{path}: the packaged weights are missing from this install; reinstall faceattr")
    return path


def half_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """float32 tensors -> float16 (BatchNorm's integer step counter stays as it is)."""
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def release_checkpoint(ckpt: dict, temperature: dict[str, float], release: dict) -> dict:
    """The shippable form of a loaded checkpoint: float16 weights, what rebuilds and decodes the
    model, the calibration and the ``release`` record; no optimiser or history."""
    keep = ("format", "version", "model_args", "config", "tasks", "class_names", "age", "preprocessing")
    keep += ("split_hash", "data", "epoch", "metrics")
    out = {k: ckpt[k] for k in keep if k in ckpt}
    out["model"] = half_weights(ckpt["model"])
    out["calibration"] = {"temperature": dict(temperature), "fitted_on": "val"}
    out["release"] = release
    return out


def test_headline(ckpt: dict, data_dir: Path, device: torch.device) -> dict:
    """Point metrics of a checkpoint's weights on the test split of ``data_dir`` (the split
    it was trained on), as the training loop computes them."""
    from faceattr.evaluation import load_split_data
    from faceattr.tasks import AgeSpec
    from faceattr.train import evaluate, headline, model_from_checkpoint

    prepared = load_split_data(data_dir, ckpt, "test")
    pre = ckpt["preprocessing"]
    age = AgeSpec(**ckpt["age"]) if ckpt.get("age") else None
    model = model_from_checkpoint(ckpt, device).float()
    metrics = evaluate(model, prepared, "test", pre["mean"], pre["std"], device, age)
    out = {k: round(float(v), 6) for k, v in headline(metrics).items()}
    if "gender" in metrics and "roc_auc" in metrics["gender"]:
        out["gender_roc_auc"] = round(float(metrics["gender"]["roc_auc"]), 6)
    out["n"] = int(len(prepared.part("test").images))
    return out


def check_replaces(path: Path, new: dict, force: bool) -> dict | None:
    """The release record of the weights at ``path`` (None if there are none). Refuses, unless
    ``force``, to replace weights judged on another split or that score at least as well."""
    from faceattr.train import load_checkpoint

    if not path.exists():
        return None
    old = load_checkpoint(path).get("release")
    if old is None or force:
        return old
    if old["split_hash"] != new["split_hash"]:
        raise InputError(
            f"{path}: the shipped weights were judged on split {old['split_hash']}, this model on "
            f"{new['split_hash']}; compare on the canonical split (splits/utkface48.csv) or pass --force"
        )
    if new["test"]["score"] <= old["test"]["score"]:
        raise InputError(
            f"{path}: the new model is not better on the test split (score {new['test']['score']:.4f} vs "
            f"{old['test']['score']:.4f} shipped); kept the shipped weights (--force replaces them anyway)"
        )
    return old


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def report_headline(run_dir: Path) -> dict | None:
    """The bootstrap-CI headline of ``faceattr evaluate`` for this run, when a report exists."""
    import json

    for candidate in (run_dir / "report" / "metrics.json", run_dir.parent / "report" / "metrics.json"):
        if candidate.is_file():
            data = json.loads(candidate.read_text())
            if data.get("split") == "test":
                return {"source": str(candidate), "n": data.get("n"), **data.get("headline", {})}
    return None


def parity(model, onnx: bytes, images: np.ndarray) -> dict[str, float]:
    """max |torch - ONNX Runtime| per output on uint8 chips (N, H, W[, C])."""
    from faceattr.inference import OnnxModel, chips_to_pixels

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
    file, or of the packaged weights with ``run="pretrained"``). Returns a summary for
    results/release.json."""
    from faceattr.atomic import atomic_path
    from faceattr.evaluation import find_data_dir
    from faceattr.inference import inference_model, onnx_bytes
    from faceattr.predictor import load_temperature
    from faceattr.train import load_checkpoint

    if weights is None and onnx is None:
        raise InputError("nothing to export: pass --weights FILE and/or --onnx FILE")
    path = pretrained_path() if str(run) == "pretrained" else Path(run)
    ckpt = load_checkpoint(path)
    run_dir, name = (path, "best.pt") if path.is_dir() else (path.parent, path.name)
    temperature = (ckpt.get("calibration") or {}).get("temperature") or load_temperature(run_dir, name)
    summary: dict = {"command": command, "source": str(path), "faceattr_version": __version__}
    needs_data = weights is not None
    if needs_data or data_dir is not None or (run_dir / "data").is_dir() or (run_dir.parent / "data").is_dir():
        try:
            data_dir = Path(data_dir) if data_dir else find_data_dir(run_dir, ckpt)
        except InputError:
            if needs_data:
                raise
            data_dir = None
    device = torch.device("cpu")

    if weights is not None:
        log("evaluating the float32 and float16 weights on the test split ...")
        full = test_headline(ckpt, data_dir, device)
        release = {
            "name": PRETRAINED_NAME,
            "faceattr_version": __version__,
            "created": time.strftime("%Y-%m-%d"),
            "split_hash": ckpt["split_hash"],
            "source": str(path),
            "test": {},  # filled below from the float16 weights themselves
            "report": report_headline(run_dir),
        }
        shipped = release_checkpoint(ckpt, temperature, release)
        release["test"] = test_headline(shipped, data_dir, device)
        previous = check_replaces(Path(weights), release, force)
        weights = Path(weights)
        weights.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(weights) as tmp:
            torch.save(shipped, tmp)
        size = weights.stat().st_size
        summary["weights"] = {
            "path": str(weights),
            "bytes": size,
            "megabytes": round(size / 2**20, 2),
            "under_limit": size <= MAX_RELEASE_BYTES,
            "sha256": sha256(weights),
            "test_float32": full,
            "test_float16": release["test"],
            "replaced": previous and {"name": previous["name"], "test": previous["test"]},
        }
        log(f"wrote {weights} ({size / 2**20:.1f} MiB, float16)")
        ckpt = load_checkpoint(weights)  # export ONNX from exactly what ships

    if onnx is not None:
        model = inference_model(ckpt, temperature)
        pre = ckpt["preprocessing"]
        channels = 1 if pre["color"] == "gray" else 3
        release = ckpt.get("release") or {}
        metadata = {
            "faceattr.version": __version__,
            "faceattr.model": release.get("name", str(path)),
            "faceattr.calibrated": "true" if temperature else "false",
            "faceattr.input": f"float32 (N, {channels}, {pre['size']}, {pre['size']}) pixel values 0..255",
        }
        data = onnx_bytes(model, channels, int(pre["size"]), metadata)
        if data_dir is not None:
            from faceattr.evaluation import load_split_data

            images = load_split_data(data_dir, ckpt, "test").part("test").images[:256]
            checked_on = f"{len(images)} test faces of {data_dir}"
        else:
            images = np.random.default_rng(0).integers(0, 256, (64, pre["size"], pre["size"]), dtype=np.uint8)
            checked_on = "64 random images"
        diffs = parity(model, data, images)
        worst = max(diffs.values())
        if worst > PARITY_TOLERANCE:
            raise InputError(
                f"{onnx}: ONNX Runtime differs from PyTorch by {worst:.2e} (> {PARITY_TOLERANCE}); not written"
            )
        onnx = Path(onnx)
        onnx.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(onnx) as tmp:
            tmp.write_bytes(data)
        summary["onnx"] = {
            "path": str(onnx),
            "bytes": len(data),
            "megabytes": round(len(data) / 2**20, 2),
            "outputs": model.output_names,
            "max_abs_diff": diffs,
            "checked_on": checked_on,
        }
        log(f"wrote {onnx} ({len(data) / 2**20:.1f} MiB); max |torch - onnxruntime| = {worst:.1e}")
    summary["score_note"] = "score = mean of gender accuracy, ethnicity macro-F1 and age CS@5 (metrics.selection_score)"
    return summary
