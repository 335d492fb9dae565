"""Export facenet-pytorch's three MTCNN networks (P-, R- and O-Net, weights from its wheel) to
ONNX files inside the package, so that face detection runs on ONNX Runtime without torch.
Each graph is checked against the PyTorch network on random inputs before it is written.

    python tools/export_mtcnn.py            # writes src/faceattr/weights/mtcnn_{pnet,rnet,onet}.onnx
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

from faceattr.atomic import atomic_path

OUT = Path(__file__).resolve().parents[1] / "src" / "faceattr" / "weights"
TOLERANCE = 1e-4


def export(net: torch.nn.Module, example: torch.Tensor, dynamic: dict, names: list[str]) -> bytes:
    program = torch.onnx.export(
        net.eval(),
        (example,),
        input_names=["image"],
        output_names=names,
        dynamic_shapes={"x": dynamic},
        opset_version=18,
        dynamo=True,
        optimize=True,
        verbose=False,
    )
    buffer = io.BytesIO()
    program.save(buffer, external_data=False)
    return buffer.getvalue()


def check(net: torch.nn.Module, data: bytes, shapes: list[tuple[int, ...]]) -> float:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    worst = 0.0
    rng = np.random.default_rng(0)
    for shape in shapes:
        x = rng.uniform(-1, 1, shape).astype(np.float32)
        with torch.no_grad():
            ref = [t.numpy() for t in net(torch.from_numpy(x))]
        got = session.run(None, {"image": x})
        worst = max(worst, *(float(np.abs(a - b).max()) for a, b in zip(ref, got)))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    batch, h, w = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("h"), torch.export.Dim("w")
    plan = [
        (
            "pnet",
            PNet(),
            torch.zeros(1, 3, 40, 52),
            {0: batch, 2: h, 3: w},
            ["reg", "prob"],
            [(1, 3, 12, 12), (2, 3, 97, 131)],
        ),
        ("rnet", RNet(), torch.zeros(2, 3, 24, 24), {0: batch}, ["reg", "prob"], [(1, 3, 24, 24), (37, 3, 24, 24)]),
        (
            "onet",
            ONet(),
            torch.zeros(2, 3, 48, 48),
            {0: batch},
            ["reg", "landmarks", "prob"],
            [(1, 3, 48, 48), (9, 3, 48, 48)],
        ),
    ]
    for name, net, example, dynamic, outputs, shapes in plan:
        data = export(net, example, dynamic, outputs)
        worst = check(net, data, shapes)
        if worst > TOLERANCE:
            raise SystemExit(f"{name}: ONNX Runtime differs from PyTorch by {worst:.2e}; not written")
        path = args.out / f"mtcnn_{name}.onnx"
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        print(f"wrote {path} ({len(data) / 1e3:.0f} kB, max |torch - ORT| {worst:.1e})")


if __name__ == "__main__":
    main()
