"""The label vocabulary every module shares: class names per task, the age range, the UTKFace
age bands and the split names. Plain constants (no numpy, no torch), so the lightest modules
can use them."""

from __future__ import annotations

GENDERS = ("male", "female")
ETHNICITIES = ("White", "Black", "Asian", "Indian", "Others")
CLASS_NAMES = {"gender": GENDERS, "ethnicity": ETHNICITIES}

AGE_MIN, AGE_MAX = 1, 116  # the ages UTKFace labels hold (years)

# Lower edges of the age bands used to stratify the split and to break results down by age:
# 0-2, 3-12, 13-19, 20-29, ..., 60-69, 70+.
AGE_BANDS = (0, 3, 13, 20, 30, 40, 50, 60, 70)
AGE_BAND_NAMES = tuple(f"{lo}-{hi - 1}" for lo, hi in zip(AGE_BANDS[:-1], AGE_BANDS[1:])) + (f"{AGE_BANDS[-1]}+",)

SPLITS = ("train", "val", "test")  # the parts a prepared dataset is split into
EXCLUDED = "excluded"  # faces a split file leaves out (conflicting duplicates)
