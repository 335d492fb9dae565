"""The uint8 -> model-input conversion every consumer shares (training, evaluation, Grad-CAM,
embeddings): faces as stored (B, H, W[, C]) become float (B, C, H, W) in [0, 1], then
normalised with the training set's mean and std."""

from __future__ import annotations

import torch
from torch import Tensor


def to_unit(images_u8: Tensor) -> Tensor:
    """uint8 images (B, H, W) or (B, H, W, C) -> float32 (B, C, H, W) in [0, 1]."""
    if images_u8.dtype != torch.uint8 or images_u8.ndim not in (3, 4):
        raise ValueError(
            f"expected uint8 images (B, H, W) or (B, H, W, C), got {images_u8.dtype} {tuple(images_u8.shape)}"
        )
    x = images_u8.unsqueeze(1) if images_u8.ndim == 3 else images_u8.permute(0, 3, 1, 2)
    return x.float().div_(255)


def normalize(x: Tensor, mean: float, std: float) -> Tensor:
    """Images in [0, 1] (B, C, H, W) -> model input (x - mean) / std, same shape."""
    return (x - mean) / std


def to_input(images_u8: Tensor, mean: float, std: float) -> Tensor:
    """uint8 (B, H, W) or (B, H, W, C) -> normalised float32 (B, C, H, W); for eval."""
    return normalize(to_unit(images_u8), mean, std)
