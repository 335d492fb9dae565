"""Write the embedded sample: a stratified slice of the Kaggle table (plus some planted
near-duplicate pairs, so dedupe has work on it) as src/faceattr/sample/utkface48_sample.csv.gz.

Run from the project root: python tools/make_sample.py ../shared/data/age_gender.csv.gz
"""

import csv
import gzip
import sys

import numpy as np

from faceattr.dedupe import find_duplicates
from faceattr.readers import read_kaggle_csv
from faceattr.split import age_band

N_FACES = 1600
N_DUP_PAIRS = 30
SEED = 0


def main(path: str, out: str = "src/faceattr/sample/utkface48_sample.csv.gz") -> None:
    data, _ = read_kaggle_csv(path)
    rng = np.random.default_rng(SEED)
    stratum = (data.ethnicity.astype(int) * 2 + data.gender) * 10 + age_band(data.age)
    dup = find_duplicates(data.images)
    chosen = set(dup.pairs[rng.choice(len(dup.pairs), N_DUP_PAIRS, replace=False)].ravel().tolist())
    # Proportional allocation per stratum, at least one face per non-empty stratum.
    quota = N_FACES - len(chosen)
    for s in np.unique(stratum):
        members = np.flatnonzero(stratum == s)
        k = max(1, round(quota * len(members) / len(data)))
        chosen.update(rng.choice(members, min(k, len(members)), replace=False).tolist())
    rows = sorted(chosen)
    with gzip.open(out, "wt", newline="", compresslevel=9) as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["age", "ethnicity", "gender", "img_name", "pixels"])
        for k in rows:
            w.writerow(
                [
                    data.age[k],
                    data.ethnicity[k],
                    data.gender[k],
                    data.names[k],
                    " ".join(map(str, data.images[k].ravel())),
                ]
            )
    print(f"wrote {len(rows)} faces to {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
