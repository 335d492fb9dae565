"""Running exported graphs on ONNX Runtime, without importing torch: the faceattr model
(``OnnxModel``: uint8 chips in, calibrated probabilities and years out, the same call as the
PyTorch ``InferenceModel``) and the sessions of the face detector's networks.

Input of a faceattr graph: float32 (N, C, H, W) pixel values 0..255 (C = 1 for the gray models).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from faceattr.inputerror import InputError

INPUT_NAME = "pixels"


def onnx_session(model: str | Path | bytes, device: str = "cpu", threads: int | None = None):
    """An ONNX Runtime session (CPU, or CUDA when asked and available); a file that is no
    loadable model is an InputError naming it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    # ORT's default spins one thread per core and keeps them spinning between calls; fix
    # the count to the cores we may use and let them sleep, so a server stays polite.
    options.intra_op_num_threads = threads or usable_cores()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    label = "<bytes>" if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options, providers)
    except Exception as e:  # a foreign or truncated file: one line, not a traceback
        raise InputError(f"{label}: not a loadable ONNX model ({str(e).splitlines()[0][:200]})") from None


class OnnxModel:
    """An exported faceattr graph on ONNX Runtime (CPU, or CUDA when asked and available)."""

    def __init__(self, model: str | Path | bytes, device: str = "cpu", threads: int | None = None):
        label = "<bytes>" if isinstance(model, bytes) else str(model)
        self.session = onnx_session(model, device, threads)
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
            raise InputError(f"{label}: not a faceattr ONNX model (expected one input named {INPUT_NAME!r})")
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.input_shape = inputs[0].shape  # ['batch', C, H, W]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

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
