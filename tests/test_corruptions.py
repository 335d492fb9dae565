"""UTK-C, the corruption suite of the out-of-domain yardstick: every corruption changes the
photo, harder with each severity, the same way for the same seed, and never in place."""

import numpy as np
import pytest
from skimage import data as skdata

from faceattr.corruptions import CORRUPTIONS, SEVERITIES, corrupt, photo_seed, transform


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.ascontiguousarray(skdata.astronaut()[::2, ::2])  # 256x256 RGB, one face


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_each_corruption_is_seeded_and_grows_with_severity(photo, name):
    before = photo.copy()
    change = []
    for severity in SEVERITIES:
        seed = photo_seed(0, "astronaut", name, severity)
        a = corrupt(photo, name, severity, seed)
        corrupt(photo, name, severity, seed + 1)  # another draw in between changes nothing
        assert np.array_equal(a, corrupt(photo, name, severity, seed))
        assert a.shape == photo.shape and a.dtype == np.uint8
        change.append(np.abs(a.astype(float) - photo).mean())
    assert np.array_equal(photo, before)  # the original is untouched
    assert change[0] > 0.5 and change[0] <= change[1] <= change[2], change


def test_unknown_corruptions_and_severities_are_refused():
    with pytest.raises(ValueError, match="unknown corruption"):
        transform("rain", 1)
    with pytest.raises(ValueError, match="severity"):
        transform("jpeg", 4)
    assert photo_seed(0, "a.jpg", "jpeg", 1) != photo_seed(0, "b.jpg", "jpeg", 1)
