"""The canonical in-memory face dataset every reader produces and every later step consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class FaceData:
    """Faces and labels, index-aligned.

    images: uint8 (N, H, W) grayscale or (N, H, W, 3) RGB.
    age, gender, ethnicity: int16/int8 arrays of shape (N,).
    ids: stable string ids, unique within the dataset (e.g. ``row00042`` or a file name).
    names: the original image name (``img_name`` in the Kaggle CSV, the file name for UTKFace).
    source: where the faces came from (a path), for provenance in manifests.
    """

    images: np.ndarray
    age: np.ndarray
    gender: np.ndarray
    ethnicity: np.ndarray
    ids: np.ndarray
    names: np.ndarray
    source: str
    skipped: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.images)
        for name in ("age", "gender", "ethnicity", "ids", "names"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"FaceData.{name} has {len(getattr(self, name))} entries, images has {n}")
        if self.images.dtype != np.uint8 or self.images.ndim not in (3, 4):
            raise ValueError(
                f"FaceData.images must be uint8 (N,H,W) or (N,H,W,3), got {self.images.dtype} {self.images.shape}"
            )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def channels(self) -> int:
        return 1 if self.images.ndim == 3 else self.images.shape[3]

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    def subset(self, index: np.ndarray) -> FaceData:
        """A new FaceData with the rows in ``index`` (int indices or a boolean mask)."""
        return FaceData(
            images=self.images[index],
            age=self.age[index],
            gender=self.gender[index],
            ethnicity=self.ethnicity[index],
            ids=self.ids[index],
            names=self.names[index],
            source=self.source,
            skipped=dict(self.skipped),
        )
