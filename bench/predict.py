"""Inference speed of the shipped model on this machine, one run: the classifier alone (48x48
chips in, calibrated attributes out) as single-face latency and batch throughput on PyTorch
eager, PyTorch channels_last and ONNX Runtime; and photo -> attributes end to end (decode,
MTCNN detection, alignment, classifier) on both backends. Writes results/bench_predict.json.

python bench/predict.py --out results/bench_predict.json

Latency: median (and p90) over --repeats calls of one face, after warm-up. Throughput: faces/s
over --batches batches of --batch faces. Threads: all cores this process may use.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data as skdata

from faceattr.cache import write_json
from faceattr.inference import OnnxModel, chips_to_pixels, inference_model, onnx_bytes, usable_cores
from faceattr.predictor import Predictor, half_widths
from faceattr.release import pretrained_path
from faceattr.train import load_checkpoint


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
    ap.add_argument("--photo-repeats", type=int, default=20, help="end-to-end calls per backend (default 20)")
    ap.add_argument("--out", type=Path, default=Path("results/bench_predict.json"))
    args = ap.parse_args()

    threads = usable_cores()
    torch.set_num_threads(threads)
    path = pretrained_path() if args.model == "pretrained" else Path(args.model)
    ckpt = load_checkpoint(path)
    calibration = ckpt.get("calibration") or {}
    temperature, half = calibration.get("temperature") or {}, half_widths(calibration, ckpt)
    model = inference_model(ckpt, temperature, age_half_width=half)
    size = int(ckpt["preprocessing"]["size"])
    rng = np.random.default_rng(0)
    one = chips_to_pixels(rng.integers(0, 256, (1, size, size), dtype=np.uint8))
    many = chips_to_pixels(rng.integers(0, 256, (args.batch, size, size), dtype=np.uint8))

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
    onnx_model = OnnxModel(onnx_bytes(model, 1, size), threads=threads)
    export_s = time.perf_counter() - t0
    backends["onnxruntime"] = onnx_model

    classifier = {}
    for name, runner in backends.items():
        print(f"classifier: {name} ...", file=sys.stderr)
        classifier[name] = {
            "single_face": latency_ms(timings(lambda r=runner: r.run(one), args.repeats)),
            "batch": throughput(lambda r=runner: r.run(many), args.batch, args.batches),
        }

    photo = Image.fromarray(skdata.astronaut())  # 512x512 RGB, one face
    photo_bytes = Path("/tmp") / f"faceattr-bench-{os.getpid()}.jpg"
    photo.save(photo_bytes, quality=92)
    end_to_end = {}
    try:
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
    finally:
        photo_bytes.unlink(missing_ok=True)

    ort = classifier["onnxruntime"]
    result = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
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
    write_json(result, args.out)
    for name, r in classifier.items():
        print(
            f"{name:<20} single face {r['single_face']['median_ms']:7.2f} ms   batch {r['batch']['faces_per_s']:8.1f} faces/s"
        )
    for name, r in end_to_end.items():
        print(
            f"photo -> attributes ({name}): {r['median_ms']:.1f} ms (detection alone {r['detection_only']['median_ms']:.1f} ms)"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
