"""Batch augmentation on tensors (CPU or GPU) of faces in [0, 1] (``faceattr.preprocess`` makes them).

Every random number comes from the caller's ``torch.Generator``, so an epoch replays
exactly after a resume. A per-sample ``strength`` scales how hard each face is augmented.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

BLUR_KERNEL = 5


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation magnitudes at strength 1.

    Magnitudes (translate, scale, rotate, brightness, contrast, gamma, noise) are
    multiplied by each sample's strength; so are the probabilities of blur, erasing,
    degradation and the frame (then clipped to [0, 1]), while blur sigma, erased area,
    degradation scale and the frame's band widths keep their ranges.
    ``flip_p`` is not scaled: a flip preserves every label, and p=1 would not augment.
    ``max_translate`` is a fraction of the image side; brightness, contrast and gamma are
    +- ranges around a factor of 1; ``noise_std`` is in [0, 1] intensity units.
    """

    max_translate: float = 0.08
    scale: tuple[float, float] = (0.9, 1.1)
    max_rotate_deg: float = 10.0
    flip_p: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    gamma: float = 0.2
    blur_p: float = 0.1
    blur_sigma: tuple[float, float] = (0.5, 1.2)
    noise_std: float = 0.02
    erase_p: float = 0.25
    erase_area: tuple[float, float] = (0.02, 0.15)
    erase_aspect: tuple[float, float] = (0.3, 3.3)
    padding: str = "reflection"
    # Photo-realistic degradation, off by default: a face seen at low resolution (area-reduced
    # to a side in ``degrade_scale`` times its own, then bilinear back), as in small or distant
    # faces of real photos. With degrade_p 0 it draws no random numbers, so runs without it
    # replay exactly as before it existed.
    degrade_p: float = 0.0
    degrade_scale: tuple[float, float] = (0.35, 0.8)
    # Hair-cue removal, off by default: the chip's left and right bands (each a fraction of the
    # width in ``frame_side``, drawn apart) and top band (``frame_top`` of the height) become one
    # flat grey, as for hair tied back against a studio wall. The aligned chip shows hair only at
    # its edges, and a model trained without this keys on it: framing the validation faces this
    # way costs utkface64rgb-v4 recall on adult women (bench/hair_edges.py, README "Hair at the edges").
    # With frame_p 0 it draws no random numbers, so earlier runs replay exactly.
    frame_p: float = 0.0
    frame_side: tuple[float, float] = (0.05, 0.2)
    frame_top: tuple[float, float] = (0.0, 0.15)


def _rand(n: int, generator: torch.Generator, device: torch.device) -> Tensor:
    # Draw on the generator's device (a CPU generator cannot feed CUDA ops), then move.
    return torch.rand(n, generator=generator, device=generator.device).to(device)


def _affine(x: Tensor, s: Tensor, generator: torch.Generator, cfg: AugmentConfig) -> Tensor:
    b, device = x.shape[0], x.device
    u_tx, u_ty, u_sc, u_rot, u_flip = (2 * _rand(b, generator, device) - 1 for _ in range(5))
    lo, hi = cfg.scale
    zoom = 1 + s * (lo - 1 + (u_sc + 1) / 2 * (hi - lo))
    angle = torch.deg2rad(cfg.max_rotate_deg * s * u_rot)
    # theta maps output coordinates to input ones: zooming in by z samples at 1/z.
    inv = 1 / zoom.clamp_min(0.1)
    cos, sin = torch.cos(angle) * inv, torch.sin(angle) * inv
    flip = torch.where((u_flip + 1) / 2 < cfg.flip_p, -1.0, 1.0).to(device)
    # Normalised coordinates span 2 units per image side, hence 2 * translate.
    tx = 2 * cfg.max_translate * s * u_tx
    ty = 2 * cfg.max_translate * s * u_ty
    theta = torch.stack(
        [
            torch.stack([flip * cos, -flip * sin, flip * tx], 1),
            torch.stack([sin, cos, ty], 1),
        ],
        1,
    )  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=cfg.padding, align_corners=False)


def _photometric(x: Tensor, s: Tensor, generator: torch.Generator, cfg: AugmentConfig) -> Tensor:
    b, device = x.shape[0], x.device
    u_b, u_c, u_g = (2 * _rand(b, generator, device) - 1 for _ in range(3))
    bright = (1 + cfg.brightness * s * u_b).clamp_min(0).view(b, 1, 1, 1)
    contrast = (1 + cfg.contrast * s * u_c).clamp_min(0).view(b, 1, 1, 1)
    gamma = torch.exp(cfg.gamma * s * u_g).view(b, 1, 1, 1)
    x = x * bright
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    # Blend written as x*c + m*(1-c) so c == 1 returns x bit for bit.
    x = (x * contrast + mean * (1 - contrast)).clamp(0, 1)
    return x.pow(gamma)


def _blur(x: Tensor, s: Tensor, generator: torch.Generator, cfg: AugmentConfig) -> Tensor:
    b, c, h, w = x.shape
    device = x.device
    chosen = _rand(b, generator, device) < (cfg.blur_p * s).clamp(0, 1)
    lo, hi = cfg.blur_sigma
    sigma = lo + _rand(b, generator, device) * (hi - lo)
    idx = chosen.nonzero().squeeze(1)
    if idx.numel() == 0:
        return x
    # One separable gaussian per chosen sample: a grouped conv over (sample, channel).
    r = torch.arange(BLUR_KERNEL, device=device, dtype=x.dtype) - BLUR_KERNEL // 2
    k = torch.exp(-(r**2) / (2 * sigma[idx, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n*C, K)
    sub = x[idx].reshape(1, -1, h, w)
    pad = BLUR_KERNEL // 2
    groups = sub.shape[1]
    sub = F.conv2d(F.pad(sub, (pad, pad, 0, 0), mode="reflect"), k[:, None, None, :], groups=groups)
    sub = F.conv2d(F.pad(sub, (0, 0, pad, pad), mode="reflect"), k[:, None, :, None], groups=groups)
    out = x.clone()
    out[idx] = sub.reshape(-1, c, h, w)
    return out


def _erase(x: Tensor, s: Tensor, generator: torch.Generator, cfg: AugmentConfig) -> Tensor:
    b, _, h, w = x.shape
    device = x.device
    u_p, u_area, u_aspect, u_top, u_left, fill = (_rand(b, generator, device) for _ in range(6))
    chosen = u_p < (cfg.erase_p * s).clamp(0, 1)
    lo, hi = cfg.erase_area
    area = (lo + u_area * (hi - lo)) * h * w
    log_lo, log_hi = math.log(cfg.erase_aspect[0]), math.log(cfg.erase_aspect[1])
    aspect = torch.exp(log_lo + u_aspect * (log_hi - log_lo))
    eh = (area * aspect).sqrt().round().clamp(1, h)
    ew = (area / aspect).sqrt().round().clamp(1, w)
    top = (u_top * (h - eh + 1)).floor()
    left = (u_left * (w - ew + 1)).floor()
    rows = torch.arange(h, device=device).view(1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, w)
    inside = (
        (rows >= top.view(b, 1, 1))
        & (rows < (top + eh).view(b, 1, 1))
        & (cols >= left.view(b, 1, 1))
        & (cols < (left + ew).view(b, 1, 1))
        & chosen.view(b, 1, 1)
    )  # (B, H, W)
    # A flat random grey per sample: a plain occluder, not a texture to key on.
    return torch.where(inside[:, None], fill.view(b, 1, 1, 1).to(x.dtype), x)


def _frame(x: Tensor, s: Tensor, generator: torch.Generator, cfg: AugmentConfig) -> Tensor:
    if cfg.frame_p <= 0:
        return x
    b, _, h, w = x.shape
    device = x.device
    u_p, u_left, u_right, u_top, fill = (_rand(b, generator, device) for _ in range(5))
    chosen = u_p < (cfg.frame_p * s).clamp(0, 1)
    lo, hi = cfg.frame_side
    left = ((lo + u_left * (hi - lo)) * w).round()
    right = w - ((lo + u_right * (hi - lo)) * w).round()
    top = ((cfg.frame_top[0] + u_top * (cfg.frame_top[1] - cfg.frame_top[0])) * h).round()
    rows = torch.arange(h, device=device).view(1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, w)
    band = (cols < left.view(b, 1, 1)) | (cols >= right.view(b, 1, 1)) | (rows < top.view(b, 1, 1))
    outside = band & chosen.view(b, 1, 1)  # (B, H, W)
    return torch.where(outside[:, None], fill.view(b, 1, 1, 1).to(x.dtype), x)


def _degrade(x: Tensor, s: Tensor, generator: torch.Generator, cfg: AugmentConfig) -> Tensor:
    if cfg.degrade_p <= 0:
        return x
    b, _, h, w = x.shape
    u_p, u_scale = (_rand(b, generator, x.device) for _ in range(2))
    chosen = (u_p < (cfg.degrade_p * s).clamp(0, 1)).nonzero().squeeze(1)
    lo, hi = cfg.degrade_scale
    out = x.clone()
    for i in chosen.tolist():  # one resolution per sample; the faces are small, the loop is cheap
        side = max(4, round(h * (lo + float(u_scale[i]) * (hi - lo))))
        small = F.interpolate(x[i : i + 1], size=(side, side), mode="area")
        out[i] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0]
    return out


def augment_batch(x: Tensor, strength: Tensor, generator: torch.Generator, cfg: AugmentConfig) -> Tensor:
    """Augment images in [0, 1]: (B, C, H, W) -> (B, C, H, W), same dtype and device.

    ``strength`` (B,) scales each sample's augmentation; 0 leaves a sample unchanged apart
    from the horizontal flip (and float rounding in the resampling). The generator
    advances by the same amount for every batch of the same shape, whatever the data.
    """
    if x.ndim != 4 or strength.shape != (x.shape[0],):
        raise ValueError(f"expected x (B, C, H, W) and strength (B,), got {tuple(x.shape)} and {tuple(strength.shape)}")
    dtype = x.dtype
    x = x.float()
    s = strength.to(device=x.device, dtype=torch.float32).clamp_min(0)
    x = _affine(x, s, generator, cfg)
    x = _frame(x, s, generator, cfg)  # before the photometric changes, which then apply to the wall too
    x = _photometric(x, s, generator, cfg)
    x = _blur(x, s, generator, cfg)
    x = _degrade(x, s, generator, cfg)
    noise = torch.randn(x.shape, generator=generator, device=generator.device).to(x.device)
    x = x + noise * (cfg.noise_std * s).view(-1, 1, 1, 1)
    x = _erase(x, s, generator, cfg)
    return x.clamp(0, 1).to(dtype)


def strength_per_class(class_counts: np.ndarray, power: float, max_strength: float) -> Tensor:
    """Per-class augmentation strength (K,): ``(max_count / count) ** power``, capped.

    The majority class gets 1.0 and rarer classes more, up to ``max_strength``; a class
    with no samples gets ``max_strength``. Index the result with labels per sample.

    >>> strength_per_class(np.array([400, 100, 0]), power=0.5, max_strength=1.5)
    tensor([1.0000, 1.5000, 1.5000])
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.ndim != 1 or (counts < 0).any() or counts.max(initial=0) <= 0:
        raise ValueError(f"expected non-negative class counts (K,) with some > 0, got {counts}")
    with np.errstate(divide="ignore"):
        ratio = np.where(counts > 0, counts.max() / counts, np.inf)
    return torch.from_numpy(np.minimum(ratio**power, max_strength)).float()
