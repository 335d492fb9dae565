"""A face teacher for distillation (training side only; nothing on the inference path imports it).

The teacher is dlib's face-recognition ResNet (128-D embedding, trained by Davis King on about
3 M faces; weights in the ``face-recognition-models`` package, released into the public domain
by their author, package licence file CC0 1.0) with dlib's 5-point landmark model (trained on
dlib's own CC0 5-point set) for its alignment. The 68-point model in the same package is trained
on iBUG 300-W, whose licence excludes commercial use; it is never loaded here. dlib itself is
Boost-licensed (``dlib-bin`` wheel). Install with ``pip install -e '.[teacher]'``.

What a training run reads is the cache (``write_cache``/``load_cache``): for each face of a
prepared table, the teacher's embedding of its UTKFace original and the soft targets of linear
probes on it, cross-fitted on the training split (each training face's soft target comes from a
probe that never saw it), so a student can regress the embedding and/or match the probes.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from faceattr.atomic import atomic_path
from faceattr.inputerror import InputError

EMBED_DIM = 128
CACHE_KEYS = ("ids", "has", "embedding", "gender_prob", "ethnicity_prob", "age")


def model_dir() -> Path:
    """Where face-recognition-models keeps its .dat files (found without importing the package,
    whose __init__ needs setuptools' pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the dlib teacher needs the teacher extra: pip install -e '.[teacher]'")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


class DlibTeacher:
    """dlib's 128-D face embedding of one face of a photo, aligned by dlib's 5-point model inside
    a face box (the box comes from our MTCNN, so teacher and student see the same faces)."""

    def __init__(self) -> None:
        try:
            import dlib
        except ImportError:
            raise InputError("the dlib teacher needs the teacher extra: pip install -e '.[teacher]'") from None
        self.dlib = dlib
        folder = model_dir()
        self.landmarks = dlib.shape_predictor(str(folder / "shape_predictor_5_face_landmarks.dat"))
        self.net = dlib.face_recognition_model_v1(str(folder / "dlib_face_recognition_resnet_model_v1.dat"))

    def embed(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
        """(128,) float32 embedding of the face in ``box`` (x1, y1, x2, y2) of an RGB uint8 photo."""
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        shape = self.landmarks(rgb, self.dlib.rectangle(x1, y1, x2, y2))
        return np.asarray(self.net.compute_face_descriptor(rgb, shape), dtype=np.float32)


@dataclass
class Probes:
    """Linear probes on teacher embeddings: logistic regression for gender and ethnicity, ridge
    regression for age (identity embeddings carry little age; reported, not distilled)."""

    gender: object
    ethnicity: object
    age: object

    def predict(self, emb: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "gender_prob": self.gender.predict_proba(emb),
            "ethnicity_prob": self.ethnicity.predict_proba(emb),
            "age": np.clip(self.age.predict(emb), 1, 116),
        }


def _probe_models(seed: int) -> tuple:
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def logistic():
        return make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=3000, random_state=seed))

    return logistic(), logistic(), make_pipeline(StandardScaler(), Ridge(alpha=10.0))


def fit_probes(emb: np.ndarray, gender: np.ndarray, ethnicity: np.ndarray, age: np.ndarray, seed: int = 0) -> Probes:
    g, e, a = _probe_models(seed)
    return Probes(g.fit(emb, gender), e.fit(emb, ethnicity), a.fit(emb, age))


def cross_fitted(
    emb: np.ndarray, gender: np.ndarray, ethnicity: np.ndarray, age: np.ndarray, folds: int, seed: int
) -> dict[str, np.ndarray]:
    """Each face's probe answers from probes fitted on the other folds (soft targets that do not
    echo a face's own label back to the student)."""
    order = np.random.default_rng(seed).permutation(len(emb))
    out = {"gender_prob": np.zeros((len(emb), 2)), "ethnicity_prob": np.zeros((len(emb), 5)), "age": np.zeros(len(emb))}
    for k in range(folds):
        held = order[k::folds]
        keep = np.setdiff1d(order, held)
        probes = fit_probes(emb[keep], gender[keep], ethnicity[keep], age[keep], seed)
        for key, value in probes.predict(emb[held]).items():
            out[key][held] = value
    return out


def write_cache(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> Path:
    """The teacher cache as one .npz (atomically): CACHE_KEYS arrays plus a JSON ``meta`` string."""
    missing = [k for k in CACHE_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"teacher cache needs {missing}")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **{k: arrays[k] for k in CACHE_KEYS})
    return Path(path)


@dataclass
class TeacherTargets:
    """The teacher's targets for a list of faces, in that list's order; ``has`` is False where the
    cache has no answer for a face (no original found, no face detected): those faces train on
    their labels only."""

    has: np.ndarray  # (N,) bool
    embedding: np.ndarray  # (N, 128) float32, unit length where has
    gender_prob: np.ndarray  # (N, 2) float32
    ethnicity_prob: np.ndarray  # (N, 5) float32


def load_cache(path: str | Path, ids: np.ndarray) -> TeacherTargets:
    """The cached teacher targets of the faces ``ids`` (a prepared table's ids)."""
    path = Path(path)
    try:
        z = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: no such teacher cache (make one with tools/teacher_cache.py)") from None
    except (ValueError, OSError) as e:
        raise InputError(f"{path}: not a teacher cache .npz ({e})") from None
    with z:
        missing = [k for k in CACHE_KEYS if k not in z.files]
        if missing:
            raise InputError(f"{path}: teacher cache lacks {', '.join(missing)}")
        where = {str(i): n for n, i in enumerate(z["ids"])}
        rows = np.array([where.get(str(i), -1) for i in ids])
        found = rows >= 0
        take = np.where(found, rows, 0)
        has = found & z["has"][take]
        emb = z["embedding"][take].astype(np.float32)
        norm = np.linalg.norm(emb, axis=1, keepdims=True)
        emb = np.where(has[:, None], emb / np.maximum(norm, 1e-12), 0).astype(np.float32)
        return TeacherTargets(
            has=has,
            embedding=emb,
            gender_prob=np.where(has[:, None], z["gender_prob"][take], 0).astype(np.float32),
            ethnicity_prob=np.where(has[:, None], z["ethnicity_prob"][take], 0).astype(np.float32),
        )
