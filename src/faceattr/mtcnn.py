"""MTCNN face detection (Zhang et al. 2016) on ONNX Runtime and NumPy, without torch.

The three networks are facenet-pytorch's, exported once to ONNX by ``tools/export_mtcnn.py``
and shipped in ``faceattr/weights``; the cascade around them (image pyramid, proposal decoding,
non-maximum suppression, box regression, landmarks) follows facenet-pytorch's ``detect_face``
step by step, so boxes and landmarks match it (``tests/test_mtcnn.py`` compares them). Its
"area" resampling (torch's adaptive average pooling) is computed exactly from one integral
image per photo (OpenCV's), for the pyramid levels and the candidate crops alike: the cascade
is sensitive enough that an approximate resize moves landmarks by several pixels.
"""

from __future__ import annotations

from importlib import resources

import cv2
import numpy as np

from faceattr.onnxmodel import onnx_session

THRESHOLDS = (0.6, 0.7, 0.7)  # P-, R-, O-Net score thresholds (facenet-pytorch's defaults)
FACTOR = 0.709  # pyramid step: each level is this much smaller
NET_FILES = {"pnet": "mtcnn_pnet.onnx", "rnet": "mtcnn_rnet.onnx", "onet": "mtcnn_onet.onnx"}


class Mtcnn:
    """The MTCNN cascade on an RGB uint8 array (H, W, 3).

    ``detect`` returns boxes (K, 4) x1, y1, x2, y2, scores (K,) and landmarks (K, 5, 2), in
    the photo's pixel coordinates, highest score first (K may be 0).
    """

    def __init__(self, min_face_size: int = 20, device: str = "cpu", threads: int | None = None):
        folder = resources.files("faceattr.weights")
        self.nets = {
            name: onnx_session(str(folder.joinpath(file)), device, threads) for name, file in NET_FILES.items()
        }
        self.min_face_size = min_face_size

    def _run(self, name: str, x: np.ndarray) -> list[np.ndarray]:
        return self.nets[name].run(None, {"image": x})

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        h, w = image.shape[:2]
        # Exact integer sums; float64 beyond what int32 holds (8.4 Mpx of 255s).
        integral = cv2.integral(np.ascontiguousarray(image), sdepth=cv2.CV_32S if h * w < 8_000_000 else cv2.CV_64F)
        boxes = self._propose(integral, h, w)
        if len(boxes):
            boxes = self._refine(integral, boxes, h, w)
        if not len(boxes):
            return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
        return self._output(integral, boxes, h, w)

    def _propose(self, integral: np.ndarray, h: int, w: int) -> np.ndarray:
        """Stage 1: P-Net over the image pyramid -> squared candidate boxes (K, 5) with scores."""
        found = []
        for scale in pyramid_scales(h, w, self.min_face_size):
            size = (int(h * scale + 1), int(w * scale + 1))
            level = area_resize(integral, h, w, *size)  # (H', W', 3)
            reg, prob = self._run("pnet", to_input(level[None]))
            boxes = proposals(reg[0], prob[0, 1], scale, THRESHOLDS[0])
            found.append(boxes[nms(boxes[:, :4], boxes[:, 4], 0.5)])
        boxes = np.concatenate(found) if found else np.zeros((0, 9))
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
        wh = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1)
        refined = boxes[:, :4] + boxes[:, 5:9] * np.tile(wh, 2)
        return square(np.concatenate([refined, boxes[:, 4:5]], 1))

    def _refine(self, integral: np.ndarray, boxes: np.ndarray, h: int, w: int) -> np.ndarray:
        """Stage 2: R-Net on 24x24 crops of the candidates -> fewer, better boxes."""
        boxes, crops = crops_of(integral, boxes, h, w, 24)
        if not len(boxes):
            return boxes
        reg, prob = self._run("rnet", to_input(crops))
        keep = prob[:, 1] > THRESHOLDS[1]
        boxes = np.concatenate([boxes[keep, :4], prob[keep, 1:2]], 1)
        reg = reg[keep]
        pick = nms(boxes[:, :4], boxes[:, 4], 0.7)
        return square(regress(boxes[pick], reg[pick]))

    def _output(self, integral: np.ndarray, boxes: np.ndarray, h: int, w: int) -> tuple:
        """Stage 3: O-Net on 48x48 crops -> final boxes, scores and five landmarks."""
        boxes, crops = crops_of(integral, boxes, h, w, 48)
        if not len(boxes):
            return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
        reg, marks, prob = self._run("onet", to_input(crops))
        keep = prob[:, 1] > THRESHOLDS[2]
        boxes = np.concatenate([boxes[keep, :4], prob[keep, 1:2]], 1)
        reg, marks = reg[keep], marks[keep]
        bw = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        bh = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        points = np.stack([bw * marks[:, :5] + boxes[:, :1] - 1, bh * marks[:, 5:] + boxes[:, 1:2] - 1], 2)
        boxes = regress(boxes, reg)
        pick = nms(boxes[:, :4], boxes[:, 4], 0.7, by_min=True)
        return boxes[pick, :4], boxes[pick, 4], points[pick]


def pyramid_scales(h: int, w: int, min_face_size: int) -> list[float]:
    """The P-Net pyramid: the first level maps the smallest face searched for onto P-Net's
    12-pixel window; levels shrink by FACTOR while the short side stays >= 12."""
    scale = 12.0 / min_face_size
    short = min(h, w) * scale
    scales = []
    while short >= 12:
        scales.append(scale)
        scale *= FACTOR
        short *= FACTOR
    return scales


def pool_bounds(length, out: int) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive average pooling's windows over ``length`` inputs (an int, or an array of K
    lengths): output i averages inputs [floor(i L / n), ceil((i + 1) L / n)). (out,) or (K, out)."""
    i = np.arange(out)
    length = np.asarray(length)[..., None]
    return (i * length) // out, -((-(i + 1) * length) // out)


def area_resize(integral: np.ndarray, h: int, w: int, out_h: int, out_w: int) -> np.ndarray:
    """The whole (h, w) image resized to (out_h, out_w, 3) float32, as torch's "area" mode."""
    r0, r1 = pool_bounds(h, out_h)
    c0, c1 = pool_bounds(w, out_w)
    rows = integral[r1] - integral[r0]  # (out_h, w + 1, 3): whole rows are cheap to gather
    sums = np.take(rows, c1, axis=1) - np.take(rows, c0, axis=1)
    inv_area = (1.0 / ((r1 - r0)[:, None] * (c1 - c0)[None, :])).astype(np.float32)
    return sums.astype(np.float32) * inv_area[..., None]


def to_input(images: np.ndarray) -> np.ndarray:
    """float32 (N, H, W, 3) 0..255 -> MTCNN's input (N, 3, H, W), scaled to about [-1, 1]."""
    return np.ascontiguousarray(((images - np.float32(127.5)) * np.float32(0.0078125)).transpose(0, 3, 1, 2))


def proposals(reg: np.ndarray, prob: np.ndarray, scale: float, threshold: float) -> np.ndarray:
    """P-Net's map -> boxes (K, 9): x1, y1, x2, y2 in the photo, score, 4 regression offsets.
    Each map cell is a 12x12 window at stride 2 of the scaled image."""
    ys, xs = np.nonzero(prob >= threshold)
    cell = np.stack([xs, ys], 1).astype(np.float32)
    q1 = np.floor((2 * cell + 1) / scale)
    q2 = np.floor((2 * cell + 12) / scale)
    return np.concatenate([q1, q2, prob[ys, xs][:, None], reg[:, ys, xs].T], 1).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, by_min: bool = False) -> np.ndarray:
    """Greedy non-maximum suppression; indices kept, highest score first. IoU as torchvision's
    ``nms`` (areas without the +1); ``by_min``: overlap over the smaller box, with +1 areas, as
    facenet-pytorch's last stage."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = boxes.T.astype(np.float64)
    plus = 1.0 if by_min else 0.0
    area = (x2 - x1 + plus) * (y2 - y1 + plus)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        iw = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + plus)
        ih = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + plus)
        inter = iw * ih
        overlap = inter / np.minimum(area[i], area[rest]) if by_min else inter / (area[i] + area[rest] - inter)
        order = rest[overlap <= threshold]
    return np.array(keep, dtype=np.int64)


def square(boxes: np.ndarray) -> np.ndarray:
    """Each box (K, 5) grown to a square around its centre (side = its longer side)."""
    boxes = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    boxes[:, 0] += w * 0.5 - side * 0.5
    boxes[:, 1] += h * 0.5 - side * 0.5
    boxes[:, 2] = boxes[:, 0] + side
    boxes[:, 3] = boxes[:, 1] + side
    return boxes


def regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Apply a network's box offsets (K, 4), in units of the box's (+1) width and height."""
    boxes = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, :4] += reg[:, :4] * np.stack([w, h, w, h], 1)
    return boxes


def crops_of(integral: np.ndarray, boxes: np.ndarray, h: int, w: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The part of each box inside the photo, area-resized to size x size: (boxes kept, crops
    (K, size, size, 3) float32). Boxes are truncated to whole pixels first, as facenet-pytorch
    does; boxes with nothing inside the photo are dropped."""
    x = np.maximum(np.trunc(boxes[:, 0]).astype(np.int64), 1) - 1
    y = np.maximum(np.trunc(boxes[:, 1]).astype(np.int64), 1) - 1
    ex = np.minimum(np.trunc(boxes[:, 2]).astype(np.int64), w)
    ey = np.minimum(np.trunc(boxes[:, 3]).astype(np.int64), h)
    ok = (ey > y) & (ex > x)
    x, y, ex, ey = x[ok], y[ok], ex[ok], ey[ok]
    r0, r1 = pool_bounds(ey - y, size)  # (K, size), relative to the crop
    c0, c1 = pool_bounds(ex - x, size)
    # Corners as flat indices into the table seen as (rows * cols, 3): np.take is much faster
    # than broadcast fancy indexing.
    cols = integral.shape[1]
    r0, r1 = ((y[:, None] + r0) * cols)[:, :, None], ((y[:, None] + r1) * cols)[:, :, None]
    c0, c1 = (x[:, None] + c0)[:, None, :], (x[:, None] + c1)[:, None, :]
    flat = integral.reshape(-1, integral.shape[2])
    sums = (
        np.take(flat, r1 + c1, axis=0)
        - np.take(flat, r0 + c1, axis=0)
        - np.take(flat, r1 + c0, axis=0)
        + np.take(flat, r0 + c0, axis=0)
    )  # (K, size, size, 3)
    area = (r1 - r0) // cols * (c1 - c0)
    return boxes[ok], sums.astype(np.float32) * (1.0 / area).astype(np.float32)[..., None]
