"""What a deployed model computes, once, for every backend: pixels in, calibrated probabilities
and years out. ``InferenceModel`` wraps a trained FaceNet with its preprocessing, its fitted
temperatures and its age decoding, so PyTorch and the exported ONNX graph (``onnx_bytes``) run
the same maths; ``faceattr.onnxmodel.OnnxModel`` runs that graph with the same call, without torch.

Input: float32 (N, C, H, W) pixel values 0..255 (C = 1 for the published gray models).
Outputs, in ``output_names`` order (a task's outputs only when the model has that head):
``gender_prob`` (N, 2), ``ethnicity_prob`` (N, 5), ``age`` (N,) years, and for the two-stage
age head ``age_bin_prob`` (N, bins) and, when the model carries fitted age ranges,
``age_low`` / ``age_high`` (N,); the raw head outputs follow as ``<head>_logits``.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from torch import Tensor, nn

from faceattr.checkpoint import age_spec, model_from_checkpoint
from faceattr.labels import AGE_MAX, AGE_MIN, CLASS_NAMES
from faceattr.model import FaceNet
from faceattr.onnxmodel import INPUT_NAME
from faceattr.tasks import TEACHER_HEAD, AgeSpec, decode_age

ONNX_OPSET = 18


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
            out["age_low"] = (out["age"] - h).clamp(AGE_MIN, AGE_MAX)
            out["age_high"] = (out["age"] + h).clamp(AGE_MIN, AGE_MAX)
        out.update({f"{head}_logits": value for head, value in raw.items()})
        return tuple(out[name] for name in self.output_names)

    @torch.inference_mode()
    def run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """float32 (N, C, H, W) 0..255 -> {output name: array}, as ``OnnxModel.run``."""
        device = next(self.net.parameters()).device
        values = self(torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).to(device))
        return {name: v.float().cpu().numpy() for name, v in zip(self.output_names, values)}


def output_names(heads: dict[str, int], age: AgeSpec | None, age_ranges: bool = False) -> list[str]:
    names = [f"{t}_prob" for t in CLASS_NAMES if t in heads]
    if age is not None:
        names += ["age", "age_bin_prob"] if age.head == "two_stage" else ["age"]
    if age_ranges:
        names += ["age_low", "age_high"]
    return names + [f"{head}_logits" for head in heads if head != TEACHER_HEAD]


def inference_model(
    ckpt: dict,
    temperature: dict[str, float] | None,
    device: torch.device | str = "cpu",
    age_half_width: list[float] | None = None,
):
    """The InferenceModel of a loaded checkpoint, on ``device``, weights in float32."""
    pre = ckpt["preprocessing"]
    net = model_from_checkpoint(ckpt, device).float()
    return InferenceModel(net, pre["mean"], pre["std"], age_spec(ckpt), temperature, age_half_width)


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
    return compact_onnx(buffer.getvalue(), model.net)


def compact_onnx(data: bytes, net: FaceNet) -> bytes:
    """The exported graph with its convolution weights stored in float16 where that loses
    nothing: a release file's weights are float16 values, but the exporter folds each
    BatchNorm into its convolution (W' = W * s, s per output channel), which float16 cannot
    hold exactly. Storing W in float16 and s in float32, with Cast and Mul nodes that ONNX
    Runtime folds back into W' when it loads the graph, halves the file and keeps the maths
    (the rebuilt W' differs from the exporter's by float32 rounding). Weights that are not
    float16 values (a model straight from training) are left as they are."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    proto = onnx.load_from_string(data)
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    nodes = []
    for name, w16, scale in _folded_convs(net):
        if name not in inits:
            continue
        folded = numpy_helper.to_array(inits[name])
        rebuilt = w16.astype(np.float32) * scale[:, None, None, None]
        if folded.shape != rebuilt.shape or np.abs(rebuilt - folded).max() > 1e-6 * np.abs(folded).max():
            continue
        graph.initializer.remove(inits[name])
        graph.initializer.extend(
            [
                numpy_helper.from_array(w16, f"{name}.f16"),
                numpy_helper.from_array(scale.reshape(-1, 1, 1, 1), f"{name}.scale"),
            ]
        )
        nodes += [
            helper.make_node("Cast", [f"{name}.f16"], [f"{name}.f32"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{name}.f32", f"{name}.scale"], [name]),
        ]
    for node in reversed(nodes):
        graph.node.insert(0, node)
    return proto.SerializeToString()


def _folded_convs(net: FaceNet) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(ONNX initializer name, float16 weights, BatchNorm scale) of each convolution that is
    followed by a BatchNorm and holds float16 values."""
    out, conv = [], None
    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d):
            conv = (name, module)
        elif isinstance(module, nn.BatchNorm2d) and conv is not None:
            weight = conv[1].weight.detach().float().cpu()
            if torch.equal(weight.half().float(), weight):
                scale = module.weight.detach().float() / torch.sqrt(module.running_var.float() + module.eps)
                out.append((f"net.{conv[0]}.weight", weight.half().numpy(), scale.cpu().numpy().astype(np.float32)))
            conv = None
    return out
