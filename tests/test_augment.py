"""Batch augmentation: range, shape, reproducibility, strength, and input conversion."""

import dataclasses

import numpy as np
import pytest
import torch

from faceattr.augment import AugmentConfig, augment_batch, strength_per_class
from faceattr.preprocess import to_input

CFG = AugmentConfig()


def _faces(b=16, c=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Smooth gradients plus noise, so resampling and blur both have something to change.
    ramp = torch.linspace(0, 1, 48)
    base = (ramp[None, :] * ramp[:, None]).expand(b, c, 48, 48)
    return (0.7 * base + 0.3 * torch.rand(b, c, 48, 48, generator=g)).clamp(0, 1)


def _aug(x, strength, seed, cfg=CFG):
    return augment_batch(x, strength, torch.Generator().manual_seed(seed), cfg)


@pytest.mark.parametrize("c", [1, 3])
def test_range_shape_dtype(c):
    x = _faces(c=c)
    y = _aug(x, torch.full((16,), 2.0), seed=1)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert y.min() >= 0 and y.max() <= 1
    assert not torch.equal(x, y)


def test_same_seed_same_output_different_seed_different_output():
    x, s = _faces(), torch.ones(16)
    assert torch.equal(_aug(x, s, seed=3), _aug(x, s, seed=3))
    assert not torch.allclose(_aug(x, s, seed=3), _aug(x, s, seed=4))


def test_zero_strength_is_identity():
    x = _faces()
    y = _aug(x, torch.zeros(16), seed=5, cfg=dataclasses.replace(CFG, flip_p=0.0))
    # Only bilinear resampling at the identity grid rounds, far below one grey level.
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)


def test_flip_only_mirrors():
    x = _faces(b=4)
    y = _aug(x, torch.zeros(4), seed=6, cfg=dataclasses.replace(CFG, flip_p=1.0))
    torch.testing.assert_close(y, x.flip(-1), atol=1e-5, rtol=0)


def test_stronger_strength_changes_more():
    x = _faces(b=64)
    deltas = [(_aug(x, torch.full((64,), s), seed=7) - x).abs().mean() for s in (0.5, 1.0, 2.0)]
    assert deltas[0] < deltas[1] < deltas[2]


def test_strength_is_per_sample():
    x = _faces(b=8)
    strength = torch.tensor([0.0, 2.0] * 4)
    y = _aug(x, strength, seed=8, cfg=dataclasses.replace(CFG, flip_p=0.0))
    torch.testing.assert_close(y[0::2], x[0::2], atol=1e-5, rtol=0)
    assert (y[1::2] - x[1::2]).abs().mean() > 0.01


def test_rejects_mismatched_strength():
    with pytest.raises(ValueError, match="strength"):
        _aug(_faces(b=4), torch.ones(3), seed=0)


def test_to_input_gray_and_rgb():
    gray = torch.tensor([[[0, 255], [51, 102]]], dtype=torch.uint8)  # (1, 2, 2)
    x = to_input(gray, mean=0.5, std=0.5)
    assert x.shape == (1, 1, 2, 2) and x.dtype == torch.float32
    torch.testing.assert_close(x[0, 0], torch.tensor([[-1.0, 1.0], [-0.6, -0.2]]))
    rgb = torch.zeros(2, 48, 48, 3, dtype=torch.uint8)
    rgb[..., 2] = 255
    x = to_input(rgb, mean=0.0, std=1.0)
    assert x.shape == (2, 3, 48, 48) and torch.equal(x[:, 2], torch.ones(2, 48, 48))
    with pytest.raises(ValueError, match="expected uint8"):
        to_input(torch.zeros(1, 4, 4), 0.5, 0.5)


def test_strength_per_class():
    s = strength_per_class(np.array([1000, 250, 40, 0]), power=0.5, max_strength=3.0)
    torch.testing.assert_close(s, torch.tensor([1.0, 2.0, 3.0, 3.0]))
    s = strength_per_class(np.array([100, 400]), power=1.0, max_strength=10.0)
    torch.testing.assert_close(s, torch.tensor([4.0, 1.0]))


def test_generator_advances_the_same_whatever_the_data():
    # Resuming mid-epoch relies on each batch consuming a fixed amount of randomness.
    states = []
    for strength in (torch.zeros(8), torch.full((8,), 2.0)):
        g = torch.Generator().manual_seed(9)
        augment_batch(_faces(b=8), strength, g, CFG)
        states.append(g.get_state())
    assert torch.equal(states[0], states[1])


def test_degradation_is_off_by_default_and_blurs_when_on():
    """Off: it returns the batch and draws no random number, so runs without it replay exactly
    as before it existed; on: faces lose fine detail (a low-resolution copy), values in range."""
    from faceattr.augment import AugmentConfig, _degrade, augment_batch

    x = torch.rand(8, 1, 48, 48, generator=torch.Generator().manual_seed(1))
    strength = torch.ones(8)
    g = torch.Generator().manual_seed(0)
    before = g.get_state()
    assert _degrade(x, strength, g, AugmentConfig()) is x and torch.equal(g.get_state(), before)
    still = {"max_translate": 0, "scale": (1, 1), "max_rotate_deg": 0, "flip_p": 0, "brightness": 0}
    still |= {"contrast": 0, "gamma": 0, "blur_p": 0, "noise_std": 0, "erase_p": 0}
    sharp = augment_batch(x, strength, torch.Generator().manual_seed(0), AugmentConfig(**still))
    soft = augment_batch(x, strength, torch.Generator().manual_seed(0), AugmentConfig(**still, degrade_p=1.0))
    assert torch.allclose(sharp, x, atol=1e-5)  # nothing else moved
    detail = lambda t: (t[..., 1:, :] - t[..., :-1, :]).abs().mean()  # noqa: E731
    assert detail(soft) < 0.7 * detail(sharp) and soft.min() >= 0 and soft.max() <= 1


def test_frame_is_off_by_default_and_flattens_only_the_edges_when_on():
    """Off: no random number drawn (earlier runs replay); on: the left, right and top bands of
    each face become one flat grey inside the configured widths, and the centre is untouched."""
    from faceattr.augment import AugmentConfig, _frame

    x = torch.rand(16, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    strength = torch.ones(16)
    g = torch.Generator().manual_seed(0)
    before = g.get_state()
    assert _frame(x, strength, g, AugmentConfig()) is x and torch.equal(g.get_state(), before)
    cfg = AugmentConfig(frame_p=1.0, frame_side=(0.1, 0.2), frame_top=(0.05, 0.15))
    out = _frame(x, strength, torch.Generator().manual_seed(0), cfg)
    for face, orig in zip(out, x):
        changed = (face != orig).any(0)  # (H, W)
        cols = changed.all(0)  # whole columns replaced: the side bands
        left, right = int(cols[:32].sum()), int(cols[32:].sum())
        top = int(changed[:, 20:44].all(1).sum())  # whole rows across the middle: the top band
        assert 6 <= left <= 13 and 6 <= right <= 13 and 3 <= top <= 10
        assert cols[:left].all() and cols[64 - right :].all() and changed[:top].all()
        assert not changed[top:, left : 64 - right].any()  # the face itself is kept
        assert face[:, changed].unique().numel() == 1  # one flat grey, every channel alike
    assert torch.equal(_frame(x, torch.zeros(16), torch.Generator().manual_seed(0), cfg), x)  # strength 0: none
    # frame_p is a share of faces, and the bands follow width and height on a non-square face.
    tall = torch.rand(2000, 1, 40, 30, generator=torch.Generator().manual_seed(3))
    half = AugmentConfig(frame_p=0.5, frame_side=(0.2, 0.2), frame_top=(0.25, 0.25))
    out = _frame(tall, torch.ones(2000), torch.Generator().manual_seed(1), half)
    framed = (out != tall).flatten(1).any(1)
    assert 0.45 < framed.float().mean() < 0.55
    faces, wall = out[framed, 0], out[framed, 0, :1, :1]  # (n, 40, 30), each face's grey (n, 1, 1)
    assert (faces[:, :, :6] == wall).all() and (faces[:, :, 24:] == wall).all() and (faces[:, :10] == wall).all()
    assert torch.equal(faces[:, 10:, 6:24], tall[framed, 0, 10:, 6:24])
