"""What a deployed model computes, once, for every backend: pixels in, calibrated probabilities
and years out. ``InferenceModel`` wraps a trained FaceNet with its preprocessing, its fitted
temperatures and its age decoding, so PyTorch and the exported ONNX graph run the same maths;
``OnnxModel`` runs that graph on ONNX Runtime with the same call.

Input: float32 (N, C, H, W) pixel values 0..255 (C = 1 for the published gray models).
Outputs, in ``output_names`` order (a task's outputs only when the model has that head):
``gender_prob`` (N, 2), ``ethnicity_prob`` (N, 5), ``age`` (N,) years, and for the two-stage
age head ``age_bin_prob`` (N, bins) and, when the model carries fitted age ranges,
``age_low`` / ``age_high`` (N,); the raw head outputs follow as ``<head>_logits``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from faceattr import age as agemod
from faceattr.inputerror import InputError
from faceattr.metrics import CLASS_NAMES
from faceattr.model import FaceNet
from faceattr.tasks import AgeSpec

ONNX_OPSET = 18
INPUT_NAME = "pixels"


class InferenceModel(nn.Module):
    """A FaceNet plus everything between pixels and answers (eval mode only).

    temperature: class task -> T; probabilities are softmax(logits / T), the same scaling
    ``faceattr evaluate`` fits on validation (an absent task keeps T = 1).
    """

    def __init__(
        self,
        net: FaceNet,
        mean: float,
        std: float,
        age: AgeSpec | None = None,
        temperature: dict[str, float] | None = None,
        age_half_width: list[float] | None = None,
    ):
        super().__init__()
        self.net = net.eval()
        self.mean, self.std = float(mean), float(std)
        self.age = age
        self.temperature = {t: float((temperature or {}).get(t, 1.0)) for t in CLASS_NAMES if t in net.head_sizes}
        # Age ranges need the predicted bin, which only the two-stage head has.
        use_ranges = age is not None and age.head == "two_stage" and age_half_width is not None
        self.age_half_width = [float(h) for h in age_half_width] if use_ranges else None
        self.output_names = output_names(net.head_sizes, age, self.age_half_width is not None)

    def forward(self, pixels: Tensor) -> tuple[Tensor, ...]:
        raw = self.net((pixels / 255.0 - self.mean) / self.std)
        out: dict[str, Tensor] = {}
        for task, t in self.temperature.items():
            out[f"{task}_prob"] = torch.softmax(raw[task] / t, 1)
        if self.age is not None:
            out.update(decode_age(raw, self.age))
        if self.age_half_width is not None:
            half = torch.as_tensor(self.age_half_width, dtype=out["age"].dtype, device=out["age"].device)
            h = half[raw["age_bin"].argmax(1)]
            out["age_low"] = (out["age"] - h).clamp(agemod.AGE_MIN, agemod.AGE_MAX)
            out["age_high"] = (out["age"] + h).clamp(agemod.AGE_MIN, agemod.AGE_MAX)
        out.update({f"{head}_logits": value for head, value in raw.items()})
        return tuple(out[name] for name in self.output_names)

    @torch.inference_mode()
    def run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """float32 (N, C, H, W) 0..255 -> {output name: array}, as ``OnnxModel.run``."""
        device = next(self.net.parameters()).device
        values = self(torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).to(device))
        return {name: v.float().cpu().numpy() for name, v in zip(self.output_names, values)}


def decode_age(raw: dict[str, Tensor], age: AgeSpec) -> dict[str, Tensor]:
    """Years (and bin probabilities for the two-stage head) from the age heads' raw outputs."""
    if age.head == "two_stage":
        bin_logits, reg = raw["age_bin"], raw["age_reg"]
        return {
            "age": agemod.decode_two_stage(bin_logits, reg, age.edges, "soft", age.routing_temperature),
            "age_bin_prob": torch.softmax(bin_logits, 1),
        }
    if age.head == "direct":
        return {"age": agemod.decode_direct(raw["age_direct"], age.mean, age.std)}
    return {"age": agemod.decode_dex(raw["age_dex"])}


def output_names(heads: dict[str, int], age: AgeSpec | None, age_ranges: bool = False) -> list[str]:
    names = [f"{t}_prob" for t in CLASS_NAMES if t in heads]
    if age is not None:
        names += ["age", "age_bin_prob"] if age.head == "two_stage" else ["age"]
    if age_ranges:
        names += ["age_low", "age_high"]
    return names + [f"{head}_logits" for head in heads]


def inference_model(
    ckpt: dict,
    temperature: dict[str, float] | None,
    device: torch.device | str = "cpu",
    age_half_width: list[float] | None = None,
):
    """The InferenceModel of a loaded checkpoint, on ``device``, weights in float32."""
    from faceattr.train import model_from_checkpoint

    pre = ckpt["preprocessing"]
    age = AgeSpec(**ckpt["age"]) if ckpt.get("age") else None
    net = model_from_checkpoint(ckpt, device).float()
    return InferenceModel(net, pre["mean"], pre["std"], age, temperature, age_half_width)


def onnx_bytes(model: InferenceModel, channels: int, size: int, metadata: dict[str, str] | None = None) -> bytes:
    """The model as one self-contained ONNX file (weights inside, batch axis dynamic), with
    ``metadata`` as the model's metadata_props."""
    model = model.cpu().eval()
    example = torch.full((2, channels, size, size), 128.0)
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.onnx.export(
        model,
        (example,),
        input_names=[INPUT_NAME],
        output_names=model.output_names,
        dynamic_shapes={"pixels": {0: batch}},
        opset_version=ONNX_OPSET,
        dynamo=True,
        optimize=True,
        verbose=False,
    )
    program.model.metadata_props.update(metadata or {})
    buffer = io.BytesIO()
    # The new exporter writes large weights to a side file unless asked to embed them.
    program.save(buffer, external_data=False)
    return buffer.getvalue()


class OnnxModel:
    """An exported faceattr graph on ONNX Runtime (CPU, or CUDA when asked and available)."""

    def __init__(self, model: str | Path | bytes, device: str = "cpu", threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        # ORT's default spins one thread per core and keeps them spinning between calls; fix
        # the count to the cores we may use and let them sleep, so a server stays polite.
        options.intra_op_num_threads = threads or usable_cores()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        label = "<bytes>" if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), options, providers)
        except Exception as e:  # a foreign or truncated file: one line, not a traceback
            raise InputError(f"{label}: not a loadable ONNX model ({str(e).splitlines()[0][:200]})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
            raise InputError(f"{label}: not a faceattr ONNX model (expected one input named {INPUT_NAME!r})")
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.input_shape = inputs[0].shape  # ['batch', C, H, W]

    def run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        values = self.session.run(None, {INPUT_NAME: np.ascontiguousarray(pixels, dtype=np.float32)})
        return dict(zip(self.output_names, values))


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def chips_to_pixels(chips: np.ndarray) -> np.ndarray:
    """uint8 chips (N, H, W) or (N, H, W, C) -> float32 (N, C, H, W) 0..255, the models' input."""
    x = chips[:, None] if chips.ndim == 3 else chips.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=np.float32)
