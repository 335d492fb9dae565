"""Do two prepared datasets hold the same faces? Compares the pixel SHA-1 sets and the labels of
matching faces (e.g. the Kaggle table vs the UTKFace originals read at 48x48 gray).

python tools/compare_prepared.py prepared/kaggle48 prepared/utk48 results/prepare_match.json
"""

import shlex
import sys
from pathlib import Path

import numpy as np

from faceattr.atomic import write_json
from faceattr.cache import load_prepared


def main(a: str, b: str, out: str) -> None:
    pa, pb = load_prepared(a), load_prepared(b)
    common = np.intersect1d(pa.sha, pb.sha)
    # Labels of faces whose pixels occur once on each side, so the pairing is unambiguous.
    ua, ia, ca = np.unique(pa.sha, return_index=True, return_counts=True)
    ub, ib, cb = np.unique(pb.sha, return_index=True, return_counts=True)
    single_a, single_b = ua[ca == 1], ub[cb == 1]
    both = np.intersect1d(single_a, single_b)
    ka = ia[ca == 1][np.searchsorted(single_a, both)]
    kb = ib[cb == 1][np.searchsorted(single_b, both)]
    same = {
        f: float(np.mean(getattr(pa.data, f)[ka] == getattr(pb.data, f)[kb])) for f in ("age", "gender", "ethnicity")
    }
    write_json(
        {
            "command": "python " + " ".join(shlex.quote(x) for x in sys.argv),
            "faces": {a: len(pa.data), b: len(pb.data)},
            "distinct_pixel_sha1": {a: len(ua), b: len(ub)},
            "distinct_sha1_in_both": len(common),
            "faces_matched_one_to_one": len(both),
            "share_same_label_when_matched": same,
        },
        Path(out),
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
