"""The checkpoint format, owned here: what a ``.pt`` file written by faceattr holds, how it is
written (atomically) and read (``weights_only=True``, format checked), and how the network and
its age decoding are rebuilt from the file alone (``model_args``, ``age``)."""

from __future__ import annotations

from pathlib import Path

import torch

from faceattr.atomic import atomic_path
from faceattr.inputerror import InputError
from faceattr.model import FaceNet, build_model
from faceattr.runs import checkpoint_path
from faceattr.tasks import AgeSpec

CHECKPOINT_FORMAT = "faceattr-checkpoint-1"


def save_checkpoint(state: dict, path: Path) -> Path:
    """torch.save to a temp file in the same folder, then rename: never a half-written file."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Load a faceattr checkpoint (a file, or a run folder's best.pt) safely and check its format."""
    path = checkpoint_path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which, not a traceback
        raise InputError(f"{path}: not a readable faceattr checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not a faceattr checkpoint (expected format {CHECKPOINT_FORMAT})")
    return ckpt


def model_from_checkpoint(ckpt: dict, device: torch.device | str = "cpu") -> FaceNet:
    """The network a loaded checkpoint describes, with its weights, in eval mode on ``device``."""
    model = build_model(ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


def age_spec(ckpt: dict) -> AgeSpec | None:
    """The age head's decoding recipe stored in a checkpoint (None for gender/ethnicity only)."""
    return AgeSpec(**ckpt["age"]) if ckpt.get("age") else None
