"""Which torch device a command runs on, from what the user typed (cpu, cuda, cuda:N, auto)."""

from __future__ import annotations

import torch

from faceattr.inputerror import InputError


def select_device(name: str | torch.device, local_rank: int = 0) -> torch.device:
    """'auto' means this process's GPU when there is one, else the CPU."""
    name = str(name)
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name!r}: CUDA is not available on this machine; use the CPU (device cpu)")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"device {name!r}: expected cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise InputError(f"device {name!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    return device
