"""Outputs of the shipped model (PyTorch backend) on the first 128 faces of the embedded sample,
computed by the faceattr source tree given as argv[1]: tests/data/shipped_outputs_before.npz was
written from the tree before the lean-inference change (commit 50628a3), so that tests show the
refactored code, and the shipped ONNX graph, give the same answers.

    git worktree add /tmp/before 50628a3
    python tools/shipped_outputs_fixture.py /tmp/before/src tests/data/shipped_outputs_before.npz
"""

import sys

import numpy as np

sys.path.insert(0, sys.argv[1])
from importlib import resources

import faceattr.inference as inf
from faceattr.predictor import Predictor
from faceattr.readers import read_kaggle_csv

with resources.as_file(resources.files("faceattr.sample").joinpath("utkface48_sample.csv.gz")) as f:
    data, _ = read_kaggle_csv(f)
images = data.images[:128]
pred = Predictor.from_pretrained()  # torch backend before the change
out = pred.runner.run(inf.chips_to_pixels(images))
np.savez_compressed(sys.argv[2], ids=data.ids[:128], **{k: v.astype(np.float32) for k, v in out.items()})
print({k: v.shape for k, v in out.items()})
