"""UTK-C: a fixed suite of photo corruptions (albumentations), three severities each, seeded
per photo, for measuring how a model holds up on photos that do not look like UTKFace's clean
chips (``bench/wild.py``). It is a yardstick, not training augmentation: the training side's
augmentation lives in ``faceattr.augment`` and shares no code with it. Of these corruptions,
training also applies milder forms of rotation, translation (off-centre), Gaussian blur, noise,
brightness/gamma (low light) and erasing (occlusion); JPEG artefacts, motion blur, down-scaling
and colour casts it never sees.
"""

from __future__ import annotations

import functools
import zlib

import numpy as np

SEVERITIES = (1, 2, 3)
# name -> parameter at severities 1, 2, 3 (for 200x200 UTKFace originals, face about 100 px wide)
LEVELS = {
    "jpeg": (30, 15, 7),  # JPEG quality
    "gaussian_blur": (1.0, 2.0, 3.0),  # sigma, px
    "motion_blur": (7, 11, 15),  # kernel, px
    "downscale": (0.32, 0.28, 0.24),  # scale: the face (about 100 px) ends up about 32, 28, 24 px wide
    "noise": (0.06, 0.10, 0.16),  # Gaussian noise std, share of full scale
    "low_light": (2.0, 3.0, 4.0),  # gamma (darker with more)
    "colour_cast": (20, 40, 60),  # +red, -blue shift, grey levels
    "occlusion": (0.25, 0.35, 0.45),  # side of one square hole, share of the photo side
    "rotation": (15, 30, 45),  # degrees, in-plane, counter-clockwise
    "offcentre": (0.08, 0.15, 0.22),  # shift, share of the photo side, then cropped back
}
CORRUPTIONS = tuple(LEVELS)
ALSO_IN_TRAINING = ("gaussian_blur", "noise", "low_light", "occlusion", "rotation", "offcentre")


def transform(name: str, severity: int):
    """The albumentations transform of one corruption at one severity (always applied)."""
    import albumentations as A
    import cv2

    if name not in LEVELS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity}")
    v = LEVELS[name][severity - 1]
    reflect = cv2.BORDER_REFLECT_101
    return {
        "jpeg": lambda: A.ImageCompression(quality_range=(v, v), p=1),
        "gaussian_blur": lambda: A.GaussianBlur(blur_limit=0, sigma_limit=(v, v), p=1),
        "motion_blur": lambda: A.MotionBlur(blur_limit=(v, v), p=1),
        # Area down, bilinear up: a small face photographed from afar, not nearest-neighbour blocks.
        "downscale": lambda: A.Downscale(
            scale_range=(v, v), interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR}, p=1
        ),
        "noise": lambda: A.GaussNoise(std_range=(v, v), p=1),
        "low_light": lambda: A.RandomGamma(gamma_limit=(100 * v, 100 * v), p=1),
        "colour_cast": lambda: A.RGBShift(r_shift_limit=(v, v), g_shift_limit=(0, 0), b_shift_limit=(-v, -v), p=1),
        "occlusion": lambda: A.CoarseDropout(
            num_holes_range=(1, 1), hole_height_range=(v, v), hole_width_range=(v, v), fill=0, p=1
        ),
        "rotation": lambda: A.Rotate(limit=(v, v), border_mode=reflect, p=1),
        "offcentre": lambda: A.Affine(translate_percent=(-v, v), border_mode=reflect, p=1),
    }[name]()


def photo_seed(seed: int, key: str, name: str, severity: int) -> int:
    """The same photo, corruption and severity get the same random draw in every run."""
    return zlib.crc32(f"{seed}:{key}:{name}:{severity}".encode())


@functools.cache
def _pipeline(name: str, severity: int):
    import albumentations as A

    return A.Compose([transform(name, severity)])


def corrupt(image: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """A corrupted copy of an RGB uint8 photo (H, W, 3), reproducible from ``seed``."""
    pipeline = _pipeline(name, severity)
    pipeline.set_random_seed(seed)  # every random draw of this call comes from the seed
    return pipeline(image=np.ascontiguousarray(image))["image"]
