"""Inference speed of the shipped model on this machine, as a user feels it, in one run:

- cold start: wall time of `faceattr predict photo.jpg` (one 640x480 photo) and of
  `faceattr --help` in a fresh process, median of --cold-runs, plus the slowest imports of the
  predict command by `python -X importtime`;
- warm latency: photo -> attributes with a loaded Predictor (the default, ONNX Runtime) for a
  512x512, a 640x480 and a 12-megapixel (4000x3000) JPEG;
- bulk: `faceattr predict FOLDER` over --bulk-photos 640x480 photos in a fresh process,
  photos/s with the default workers (one per core) and with one worker;
- the classifier alone (chips at the model's input in, calibrated attributes out): single-face latency and
  batch throughput on PyTorch eager, PyTorch channels_last and ONNX Runtime; photo ->
  attributes on both backends.

Writes results/bench_predict.json. The photos are made from scikit-image's astronaut (one face).

python bench/predict.py --out results/bench_predict.json
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data as skdata

from faceattr.atomic import write_json
from faceattr.calibration import half_widths
from faceattr.checkpoint import load_checkpoint
from faceattr.inference import inference_model, onnx_bytes
from faceattr.onnxmodel import OnnxModel, chips_to_pixels, usable_cores
from faceattr.predictor import Predictor
from faceattr.pretrained import pretrained_path

FACEATTR = [sys.executable, "-m", "faceattr"]
TARGETS = {"cold_start_s": 1.5, "help_s": 0.3, "photo_640x480_ms": 50, "photo_12mp_ms": 100, "bulk_photos_per_s": 20}


def make_photos(folder: Path, n_bulk: int) -> dict[str, Path]:
    """The benchmark's photos: the astronaut (512x512; her hair touches the top edge, so the
    detector makes its second, framed pass), inside a 640x480 and a 4000x3000 canvas,
    and ``n_bulk`` different 640x480 photos (shifted, scaled, mirrored, re-lit) for the bulk run."""
    face = Image.fromarray(skdata.astronaut())
    photos = {"512x512": folder / "astronaut-512.jpg", "640x480": folder / "astronaut-640x480.jpg"}
    photos["12MP"] = folder / "astronaut-4000x3000.jpg"
    face.save(photos["512x512"], quality=92)
    canvas = Image.new("RGB", (640, 480), (96, 110, 128))
    canvas.paste(face.resize((400, 400)), (120, 40))
    canvas.save(photos["640x480"], quality=92)
    big = Image.new("RGB", (4000, 3000), (96, 110, 128))
    big.paste(face.resize((2400, 2400)), (800, 300))
    big.save(photos["12MP"], quality=90)
    bulk = folder / "bulk"
    bulk.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n_bulk):
        side = int(rng.integers(300, 480))
        img = face.resize((side, side))
        if i % 2:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        canvas = Image.new("RGB", (640, 480), tuple(int(v) for v in rng.integers(40, 200, 3)))
        canvas.paste(img, (int(rng.integers(0, 640 - side)), int(rng.integers(0, 480 - side))))
        arr = np.clip(np.asarray(canvas, np.float32) * rng.uniform(0.7, 1.2), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(bulk / f"{i:04d}.jpg", quality=90)
    photos["bulk"] = bulk
    return photos


def wall(command: list[str], runs: int) -> dict:
    """Wall time of a fresh process, ``runs`` times (one untimed run first warms the page cache)."""
    subprocess.run(command, check=True, capture_output=True)
    seconds = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        seconds.append(time.perf_counter() - t0)
    return {"median_s": round(statistics.median(seconds), 3), "min_s": round(min(seconds), 3), "runs": runs}


def slowest_imports(command: list[str], top: int = 10) -> list[dict]:
    """The imports with the largest cumulative time in ``python -X importtime`` of a command."""
    out = subprocess.run([sys.executable, "-X", "importtime", *command[1:]], capture_output=True, text=True, check=True)
    rows = []
    for line in out.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "cumulative" not in line:
            _, cumulative, name = (part.strip() for part in line[len("import time:") :].split("|"))
            rows.append({"module": name, "cumulative_ms": round(int(cumulative) / 1000, 1)})
    top_level = [r for r in rows if "." not in r["module"]]
    return sorted(top_level, key=lambda r: -r["cumulative_ms"])[:top]


def user_view(photos: dict[str, Path], args) -> dict:
    """Cold start, warm latency by photo size and bulk throughput, as a user meets them."""
    one = [*FACEATTR, "predict", str(photos["640x480"])]
    print("cold start ...", file=sys.stderr)
    cold = {
        "predict_one_640x480_photo": wall(one, args.cold_runs),
        "help": wall([*FACEATTR, "--help"], args.cold_runs),
        "slowest_imports_of_predict": slowest_imports(one),
    }
    print("warm latency ...", file=sys.stderr)
    predictor = Predictor.from_pretrained()
    warm = {}
    for name in ("512x512", "640x480", "12MP"):
        faces = predictor.predict(str(photos[name]))
        warm[name] = {
            "faces_found": len(faces),
            **latency_ms(timings(lambda f=str(photos[name]): predictor.predict(f), args.photo_repeats, warmup=3)),
        }
    print("bulk ...", file=sys.stderr)
    n = len(list(photos["bulk"].iterdir()))
    bulk = {"photos": n, "photo_size": "640x480", "note": "fresh process each run; wall time includes start-up"}
    for label, extra in (("default_workers", []), ("one_worker", ["--workers", "1"])):
        timing = wall([*FACEATTR, "predict", str(photos["bulk"]), "--jsonl", "--no-progress", *extra], args.bulk_runs)
        bulk[label] = {**timing, "photos_per_s": round(n / timing["median_s"], 1)}
    got = {
        "cold_start_s": cold["predict_one_640x480_photo"]["median_s"],
        "help_s": cold["help"]["median_s"],
        "photo_640x480_ms": warm["640x480"]["median_ms"],
        "photo_12mp_ms": warm["12MP"]["median_ms"],
        "bulk_photos_per_s": bulk["default_workers"]["photos_per_s"],
    }
    met = {k: (got[k] >= TARGETS[k]) if k.startswith("bulk") else (got[k] <= TARGETS[k]) for k in TARGETS}
    return {
        "cold_start": cold,
        "warm_latency": warm,
        "bulk": bulk,
        "user_targets": {"want": TARGETS, "got": got, "met": met},
    }


def timings(fn, repeats: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def latency_ms(seconds: list[float]) -> dict:
    ms = sorted(1000 * s for s in seconds)
    return {
        "median_ms": round(statistics.median(ms), 3),
        "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 3),
        "min_ms": round(ms[0], 3),
        "calls": len(ms),
    }


def throughput(fn, n_faces: int, batches: int) -> dict:
    seconds = timings(fn, batches, warmup=2)
    return {
        "faces_per_s": round(n_faces * len(seconds) / sum(seconds), 1),
        "batch": n_faces,
        "batches": batches,
        "best_faces_per_s": round(n_faces / min(seconds), 1),
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pretrained", help="release/checkpoint file or run folder (default: shipped)")
    ap.add_argument("--repeats", type=int, default=300, help="single-face calls per backend (default 300)")
    ap.add_argument("--batch", type=int, default=256, help="faces per batch for throughput (default 256)")
    ap.add_argument("--batches", type=int, default=20, help="batches per backend (default 20)")
    ap.add_argument("--photo-repeats", type=int, default=20, help="end-to-end calls per photo (default 20)")
    ap.add_argument("--cold-runs", type=int, default=5, help="fresh processes per cold-start figure (default 5)")
    ap.add_argument("--bulk-photos", type=int, default=200, help="photos in the bulk folder (default 200)")
    ap.add_argument("--bulk-runs", type=int, default=3, help="bulk runs per setting (default 3)")
    ap.add_argument("--out", type=Path, default=Path("results/bench_predict.json"))
    args = ap.parse_args()

    threads = usable_cores()
    with tempfile.TemporaryDirectory(prefix="faceattr-bench-") as tmp:
        photos = make_photos(Path(tmp), args.bulk_photos)
        user = user_view(photos, args)  # first, before this process loads torch and warms caches
        torch.set_num_threads(threads)
        rest = model_view(args, photos, threads)
    result = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv), **rest, **user}
    write_json(result, args.out)
    for name, r in result["classifier"].items():
        print(
            f"{name:<20} single face {r['single_face']['median_ms']:7.2f} ms   batch {r['batch']['faces_per_s']:8.1f} faces/s"
        )
    t = result["user_targets"]
    for key, want in t["want"].items():
        print(
            f"{key:<20} {t['got'][key]:>8} (want {'>=' if key.startswith('bulk') else '<='} {want}): {'met' if t['met'][key] else 'NOT met'}"
        )
    print(f"wrote {args.out}")


def model_view(args, photos: dict[str, Path], threads: int) -> dict:
    """The classifier alone on each backend, and photo -> attributes on both backends."""
    path = pretrained_path() if args.model == "pretrained" else Path(args.model)
    ckpt = load_checkpoint(path)
    calibration = ckpt.get("calibration") or {}
    temperature, half = calibration.get("temperature") or {}, half_widths(calibration, ckpt)
    model = inference_model(ckpt, temperature, age_half_width=half)
    size = int(ckpt["preprocessing"]["size"])
    channels = 1 if ckpt["preprocessing"]["color"] == "gray" else 3
    chip = (size, size) if channels == 1 else (size, size, channels)
    rng = np.random.default_rng(0)
    one = chips_to_pixels(rng.integers(0, 256, (1, *chip), dtype=np.uint8))
    many = chips_to_pixels(rng.integers(0, 256, (args.batch, *chip), dtype=np.uint8))

    backends: dict[str, object] = {"torch_eager": model}
    cl_model = inference_model(ckpt, temperature, age_half_width=half)
    cl_model.net.to(memory_format=torch.channels_last)

    class ChannelsLast:  # the same model with NHWC activations, oneDNN's preferred CPU layout
        output_names = cl_model.output_names

        @torch.inference_mode()
        def run(self, pixels):
            x = torch.from_numpy(pixels).contiguous(memory_format=torch.channels_last)
            return {n: v.numpy() for n, v in zip(cl_model.output_names, cl_model(x))}

    backends["torch_channels_last"] = ChannelsLast()
    t0 = time.perf_counter()
    onnx_model = OnnxModel(onnx_bytes(model, channels, size), threads=threads)
    export_s = time.perf_counter() - t0
    backends["onnxruntime"] = onnx_model

    classifier = {}
    for name, runner in backends.items():
        print(f"classifier: {name} ...", file=sys.stderr)
        classifier[name] = {
            "single_face": latency_ms(timings(lambda r=runner: r.run(one), args.repeats)),
            "batch": throughput(lambda r=runner: r.run(many), args.batch, args.batches),
        }

    photo_bytes = photos["512x512"]
    photo = Image.open(photo_bytes).convert("RGB")
    end_to_end = {}
    for backend in ("torch", "onnx"):
        print(f"photo -> attributes: {backend} ...", file=sys.stderr)
        predictor = Predictor.from_checkpoint(path, backend=backend)
        faces = predictor.predict(str(photo_bytes))  # also loads MTCNN before timing
        end_to_end[backend] = {
            "photo": "scikit-image astronaut, 512x512 JPEG, 1 face",
            "faces_found": len(faces),
            **latency_ms(timings(lambda p=predictor: p.predict(str(photo_bytes)), args.photo_repeats, warmup=2)),
        }
        detector = predictor.detector
        end_to_end[backend]["detection_only"] = latency_ms(
            timings(lambda d=detector: d.detect(photo), args.photo_repeats, warmup=2)
        )

    ort = classifier["onnxruntime"]
    return {
        "model": str(path),
        "release": (ckpt.get("release") or {}).get("name"),
        "parameters": sum(p.numel() for p in model.net.parameters()),
        "weights_megabytes": round(path.stat().st_size / 2**20, 2) if path.is_file() else None,
        "input": f"{size}x{size} {'gray' if ckpt['preprocessing']['color'] == 'gray' else 'RGB'}",
        "machine": {
            "cpu": cpu_name(),
            "cores_used": threads,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": metadata.version("onnxruntime"),
        },
        "onnx_export_seconds": round(export_s, 2),
        "classifier": classifier,
        "end_to_end": end_to_end,
        "targets": {
            "onnxruntime_batch_faces_per_s": {"want": ">= 200", "got": ort["batch"]["faces_per_s"]},
            "onnxruntime_single_face_ms": {"want": "<= 10", "got": ort["single_face"]["median_ms"]},
            "met": ort["batch"]["faces_per_s"] >= 200 and ort["single_face"]["median_ms"] <= 10,
        },
    }


if __name__ == "__main__":
    main()
