"""The ONNX + NumPy MTCNN (faceattr.mtcnn) against facenet-pytorch's own, on real faces: the
same boxes, scores and landmarks, so prediction answers as it did before torch left the path.
Also the exact "area" resampling and the edge cases of the cascade."""

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from faceattr.mtcnn import Mtcnn, area_resize, nms, pool_bounds


@pytest.fixture(scope="module")
def ours() -> Mtcnn:
    return Mtcnn()


def photos() -> dict[str, np.ndarray]:
    face = Image.fromarray(skdata.astronaut())
    group = Image.new("RGB", (900, 380), (70, 90, 110))
    for k in range(3):  # three faces of different sizes in one photo
        side = 180 + 60 * k
        group.paste(face.resize((side, side)), (20 + 300 * k, 10))
    framed = Image.new("RGB", (300, 300))  # a tight crop inside a black margin, as align.py frames them
    framed.paste(face.crop((150, 40, 350, 240)), (50, 50))
    return {"astronaut": np.asarray(face), "group": np.asarray(group), "framed": np.asarray(framed)}


@pytest.mark.parametrize("name", ["astronaut", "group", "framed"])
def test_same_faces_as_facenet_pytorch(ours, name):
    from facenet_pytorch import MTCNN

    image = photos()[name]
    boxes, probs, points = MTCNN(keep_all=True, device="cpu").detect(Image.fromarray(image), landmarks=True)
    ref_boxes, ref_probs, ref_points = (np.asarray(a, dtype=float) for a in (boxes, probs, points))
    got_boxes, got_probs, got_points = ours.detect(image)
    order_ref, order_got = np.argsort(ref_boxes[:, 0]), np.argsort(got_boxes[:, 0])
    assert len(got_boxes) == len(ref_boxes) >= 1
    assert np.abs(got_boxes[order_got] - ref_boxes[order_ref]).max() < 1e-2  # pixels
    assert np.abs(got_points[order_got] - ref_points[order_ref]).max() < 1e-2
    assert np.abs(got_probs[order_got] - ref_probs[order_ref]).max() < 1e-4


def test_area_resize_is_torchs_area_interpolation():
    import cv2

    image = np.random.default_rng(0).integers(0, 256, (97, 131, 3), dtype=np.uint8)
    integral = cv2.integral(image, sdepth=cv2.CV_32S)
    ours = area_resize(integral, 97, 131, 40, 53)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float(), size=(40, 53), mode="area"
    )
    assert np.abs(ours - ref[0].permute(1, 2, 0).numpy()).max() < 1e-3
    lo, hi = pool_bounds(10, 4)  # windows overlap where 10 / 4 is not whole: [0,3) [2,5) [5,8) [7,10)
    assert lo.tolist() == [0, 2, 5, 7] and hi.tolist() == [3, 5, 8, 10]


def test_no_face_tiny_and_thin_images_give_empty_answers(ours):
    for shape in [(1, 1, 3), (20, 20, 3), (12, 500, 3), (500, 25, 3), (64, 64, 3)]:
        boxes, probs, points = ours.detect(np.full(shape, 128, np.uint8))
        assert boxes.shape == (0, 4) and probs.shape == (0,) and points.shape == (0, 5, 2)


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], float)
    scores = np.array([0.8, 0.9, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []
