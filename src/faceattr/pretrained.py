"""The weights that ship inside the package: which names exist and where their files are.
Each model ships twice: ``NAME.pt`` (float16 release checkpoint: PyTorch, Grad-CAM, fine-tuning,
``faceattr export``) and ``NAME.onnx`` (the same network, calibration and age decoding as one
ONNX Runtime graph: what ``faceattr predict`` and ``faceattr serve`` run by default)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from faceattr.inputerror import InputError

# name -> file stem in faceattr/weights. ``reference48`` is the reference design (48x48 gray
# ResNet-18, labels only), kept selectable by name whatever ships as the default.
PRETRAINED = {"default": "utkface64rgb-v5", "reference48": "utkface48-v1"}
WEIGHT_SUFFIXES = (".pt", ".onnx")


def packaged_file(name: str = "default", suffix: str = ".pt") -> Path:
    """Where a packaged file lives inside the installed package (it may be absent)."""
    if name not in PRETRAINED:
        raise InputError(f"no pretrained faceattr model named {name!r}; known: {', '.join(PRETRAINED)}")
    if suffix not in WEIGHT_SUFFIXES:
        raise ValueError(f"suffix must be one of {WEIGHT_SUFFIXES}, got {suffix!r}")
    return Path(str(resources.files("faceattr.weights").joinpath(PRETRAINED[name] + suffix)))


def packaged_name(model: str | Path | None) -> str | None:
    """The packaged model a ``--model`` value names (``default``, ``reference48``), or None when
    it names a path (an existing file or folder of that name wins)."""
    if model is None:
        return "default"
    if str(model) in PRETRAINED and not Path(model).exists():
        return str(model)
    return None


def pretrained_path(name: str = "default", suffix: str = ".pt") -> Path:
    """The packaged file for ``name``, or InputError naming the names that exist."""
    path = packaged_file(name, suffix)
    if not path.is_file():
        raise InputError(f"{path}: the packaged weights are missing from this install; reinstall faceattr")
    return path
