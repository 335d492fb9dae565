"""Faces in photos: detection (MTCNN, ``faceattr.mtcnn``: box, score, 5 landmarks) and the
similarity warp that frames each face like a UTKFace chip, so the chip then goes through the
very recipe the training faces went through (gray, area resize 200 -> 48)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from faceattr.mtcnn import Mtcnn

CHIP_SIZE = 200  # side of a UTKFace "Aligned&Cropped" chip, the frame the model was trained on
# Median MTCNN landmarks (x, y) in a 200x200 UTKFace chip: left eye, right eye, nose tip, left and
# right mouth corner (left/right as seen in the image). Measured by tools/measure_template.py on
# 400 chips of ../shared/data/UTKFace.tar.gz (every 59th file in name order, the largest face of
# each, detected by FaceDetector, i.e. inside its black margin; 398 of 400 detected). The per-chip
# spread (median absolute deviation) is 2-5 px; without the margin MTCNN misplaces the landmarks
# of these tight crops and the spread is 5-12 px.
TEMPLATE = np.array(
    [
        [60.10, 58.05],
        [138.82, 58.30],
        [98.78, 104.97],
        [64.82, 138.75],
        [133.90, 138.70],
    ]
)


@dataclass(frozen=True)
class Detection:
    """One face found in a photo, in that photo's pixel coordinates.

    box: (4,) x1, y1, x2, y2; landmarks: (5, 2) x, y in TEMPLATE's order; score: MTCNN's probability.
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray


DETECT_SIDE = 800  # photos are searched for faces on a copy at most this many pixels long


class FaceDetector:
    """MTCNN (facenet-pytorch's networks, run on ONNX Runtime). Photos larger than ``max_side``
    are detected on a downscaled copy and the coordinates mapped back, which bounds the time per
    photo; faces under ``min_face_size`` pixels (in that copy) are not searched for, so at the
    default 800 px a face must span about 2.5 % of the photo's longer side.

    A face that fills the frame (a tight crop, a UTKFace chip, a selfie) gets a box reaching past
    the edges and landmarks off by up to a quarter of the face; such photos are detected again
    inside a black margin of ``margin`` times their longer side, which puts the landmarks back.
    Photos of at most ``crop_side`` pixels are mostly such crops and go inside the margin at once.
    """

    def __init__(
        self,
        device: str = "cpu",
        min_score: float = 0.9,
        min_face_size: int = 20,
        max_side: int = DETECT_SIDE,
        margin: float = 0.25,
        crop_side: int = 400,
        threads: int | None = None,
    ):
        self.mtcnn = Mtcnn(min_face_size=min_face_size, device=device, threads=threads)
        self.min_score = min_score
        self.min_face_size = min_face_size
        self.max_side = max_side
        self.margin = margin
        self.crop_side = crop_side

    def detect(self, image: Image.Image) -> list[Detection]:
        """Faces in an RGB photo, left to right, with score >= min_score."""
        w, h = image.size
        scale = min(1.0, self.max_side / max(w, h))
        small = image
        if scale < 1.0:
            # Pillow's resize filters widen with the reduction, so this is antialiased.
            small = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR, reducing_gap=3.0)
        if min(small.size) < self.min_face_size:
            return []  # MTCNN's image pyramid is empty below its smallest face
        sw, sh = small.size
        if self.margin > 0 and max(sw, sh) <= self.crop_side:
            boxes, probs, points = self._framed(small)
        else:
            boxes, probs, points = self._mtcnn(small)
            if self.margin > 0 and len(boxes) and (boxes[:, :2].min() < 0 or (boxes[:, 2:] > [sw, sh]).any()):
                boxes, probs, points = self._framed(small)
        fx, fy = sw / w, sh / h
        boxes = boxes / np.array([fx, fy, fx, fy])
        points = points / np.array([fx, fy])
        found = [
            Detection(box=b, score=float(p), landmarks=lm)
            for b, p, lm in zip(boxes, probs, points)
            if p >= self.min_score
        ]
        return sorted(found, key=lambda d: d.box[0])

    def _framed(self, image: Image.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """MTCNN inside a black margin, coordinates back in the image's frame."""
        w, h = image.size
        pad = round(self.margin * max(w, h))
        framed = Image.new("RGB", (w + 2 * pad, h + 2 * pad))
        framed.paste(image, (pad, pad))
        boxes, probs, points = self._mtcnn(framed)
        return boxes - pad, probs, points - pad

    def _mtcnn(self, image: Image.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes (K, 4), probabilities (K,), landmarks (K, 5, 2) as float arrays (K may be 0)."""
        boxes, probs, points = self.mtcnn.detect(np.asarray(image.convert("RGB")))
        return tuple(np.asarray(a, dtype=float) for a in (boxes, probs, points))


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 matrix M (rotation, uniform scale, translation; no reflection) minimising
    sum |M @ [src, 1] - dst|^2, by Umeyama's closed form (1991). src, dst: (N, 2), N >= 2.

    >>> m = similarity_transform(np.array([[0, 0], [1, 0], [0, 1]]), np.array([[1, 1], [1, 3], [-1, 1]]))
    >>> np.round(m, 6).tolist()
    [[0.0, -2.0, 1.0], [2.0, 0.0, 1.0]]
    """
    src, dst = np.asarray(src, float), np.asarray(dst, float)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    var_s = (xs**2).sum() / len(src)
    u, s, vt = np.linalg.svd(xd.T @ xs / len(src))
    d = np.diag([1.0, -1.0 if np.linalg.det(u) * np.linalg.det(vt) < 0 else 1.0])
    rot = u @ d @ vt
    scale = np.trace(np.diag(s) @ d) / var_s
    return np.hstack([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]])


def align_face(
    image: Image.Image, landmarks: np.ndarray, size: int = CHIP_SIZE, border: str = "reflect"
) -> Image.Image:
    """An RGB chip (size x size) of the face whose 5 landmarks are given, warped so that they land
    on TEMPLATE (scaled to ``size``) in the least-squares sense.

    Where the chip reaches past the photo, ``border="reflect"`` mirrors the photo at its edge, as
    training's augmentation pads its shifted faces (black borders are rare in UTKFace and throw
    the model off); ``"black"`` fills with zeros, as UTKFace's own chips do.

    A face much larger than the chip is first box-averaged by an integer factor (on a crop around
    it, so huge photos stay cheap), so the bilinear warp never skips pixels.
    """
    return warp(image, similarity_transform(landmarks, TEMPLATE * (size / CHIP_SIZE)), size, border)


def chip_scale(landmarks: np.ndarray, size: int = CHIP_SIZE) -> float:
    """Chip pixels per photo pixel of the warp ``align_face`` makes for these landmarks; above 1
    the chip is upsampled from the photo (a photo decoded at reduced size is then re-read whole)."""
    m = similarity_transform(landmarks, TEMPLATE * (size / CHIP_SIZE))
    return math.sqrt(abs(np.linalg.det(m[:, :2])))


def warp(image: Image.Image, m: np.ndarray, size: int, border: str = "reflect") -> Image.Image:
    """The size x size RGB chip that the 2x3 similarity ``m`` (photo -> chip coordinates) cuts
    from the photo; see align_face for ``border``."""
    a, t = m[:, :2], m[:, 2]
    scale = math.sqrt(abs(np.linalg.det(a)))  # chip pixels per photo pixel
    a_inv = np.linalg.inv(a)
    t_inv = -a_inv @ t  # chip -> photo: p = a_inv @ c + t_inv
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], float) @ a_inv.T + t_inv
    factor = max(1, int(1.0 / scale))
    x0, y0 = np.floor(corners.min(0)).astype(int) - 2
    x1, y1 = np.ceil(corners.max(0)).astype(int) + 2
    # A crop whose sides are multiples of the factor, so reduce() maps p -> (p - origin) / factor.
    x1 = x0 + -(-(x1 - x0) // factor) * factor
    y1 = y0 + -(-(y1 - y0) // factor) * factor
    region = _crop(image.convert("RGB"), int(x0), int(y0), int(x1), int(y1), border)
    if factor > 1:
        region = region.reduce(factor)
    coeffs = np.concatenate(
        [a_inv[0] / factor, [(t_inv[0] - x0) / factor], a_inv[1] / factor, [(t_inv[1] - y0) / factor]]
    )
    return region.transform(
        (size, size), Image.AFFINE, tuple(coeffs.tolist()), resample=Image.BILINEAR, fillcolor=(0, 0, 0)
    )


def _crop(image: Image.Image, x0: int, y0: int, x1: int, y1: int, border: str) -> Image.Image:
    """image[y0:y1, x0:x1], the part outside the image filled as ``border`` says."""
    if border not in ("reflect", "black"):
        raise ValueError(f"border must be 'reflect' or 'black', got {border!r}")
    w, h = image.size
    inside = (max(x0, 0), max(y0, 0), min(x1, w), min(y1, h))
    if border == "black" or inside[0] >= inside[2] or inside[1] >= inside[3]:
        return image.crop((x0, y0, x1, y1))  # Pillow fills outside with zeros
    if inside == (x0, y0, x1, y1):
        return image.crop(inside)
    part = np.asarray(image.crop(inside))
    pad = ((inside[1] - y0, y1 - inside[3]), (inside[0] - x0, x1 - inside[2]), (0, 0))
    # "symmetric" repeats the edge pixel, as torch's grid_sample reflection (align_corners=False) does.
    return Image.fromarray(np.pad(part, pad, mode="symmetric"))


def model_chip(chip: Image.Image, size: int, gray: bool) -> np.ndarray:
    """The training recipe on a chip (faceattr.readers.decode_image): grayscale (or RGB) first,
    then an area (box) resize to size x size. Returns uint8 (size, size) or (size, size, 3)."""
    im = chip.convert("L" if gray else "RGB")
    if im.size != (size, size):
        im = im.resize((size, size), Image.BOX)
    return np.asarray(im, dtype=np.uint8)
