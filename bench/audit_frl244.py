"""An audit outside UTKFace: `faceattr audit` on the studio portraits of ../shared/data/frl244
whose self-reported ethnicity maps to a UTKFace class, compared with their true make-up
(self-reported gender and ethnicity of the photos): each estimator's absolute error in points
and whether its 95 % interval holds the truth. One collection, so this says how the correction
behaves out of domain, not how often intervals cover.

python bench/audit_frl244.py --out results/audit_frl244.json
"""

from __future__ import annotations

import argparse
import csv
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np

from faceattr.atomic import write_json
from faceattr.audit import audit
from faceattr.labels import ETHNICITIES, GENDERS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frl", type=Path, default=Path("../shared/data/frl244"))
    ap.add_argument("--out", type=Path, default=Path("results/audit_frl244.json"))
    args = ap.parse_args()
    rows = list(csv.DictReader(open(args.frl / "labels.csv")))
    kept = [r for r in rows if r["ethnicity"] != "" and r["gender"] != ""]
    truth = {
        "gender": np.bincount([int(r["gender"]) for r in kept], minlength=2) / len(kept),
        "ethnicity": np.bincount([int(r["ethnicity"]) for r in kept], minlength=5) / len(kept),
    }
    with tempfile.TemporaryDirectory(prefix="faceattr-audit-frl-") as tmp:
        listing = Path(tmp) / "photos.txt"
        listing.write_text("\n".join(str((args.frl / r["file"]).resolve()) for r in kept) + "\n")
        report = audit(listing, Path(tmp) / "audit", log=lambda *_: None)
    out = {}
    for target, classes in (("gender", GENDERS), ("ethnicity", ETHNICITIES)):
        est = report["targets"][target]["estimates"]
        out[target] = {
            "true_share": dict(zip(classes, truth[target].round(4).tolist())),
            "estimators": {
                name: {
                    "share": dict(zip(classes, e["share"])),
                    "mean_abs_error_points": round(float(np.abs(np.array(e["share"]) - truth[target]).mean() * 100), 2),
                    "classes_inside_interval": int(
                        ((np.array(e["low"]) <= truth[target]) & (truth[target] <= np.array(e["high"]))).sum()
                    ),
                }
                for name, e in est.items()
            },
        }
    write_json(
        {
            "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
            "photos": len(kept),
            "note": "photos whose self-reported ethnicity maps to a UTKFace class; each London person appears twice",
            "counts": report["counts"],
            "estimator_shown": report["estimator_shown"],
            "targets": out,
        },
        args.out,
    )
    for target, t in out.items():
        line = ", ".join(f"{n} {e['mean_abs_error_points']} pt" for n, e in t["estimators"].items())
        print(f"{target}: {line}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
