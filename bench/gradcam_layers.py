"""Which block should Grad-CAM explain? One run on a trained model: for each of layer1..layer4
and each head, the map size, the randomisation sanity check (Adebayo et al. 2018: trained vs
fully re-initialised maps, should be near 0; trained vs the same faces plus noise, the
yardstick) and the mirror check (the map of a mirrored face, mirrored back, vs the map of the
face: 1 when the map follows the face). Writes results/gradcam_layers.json.

python bench/gradcam_layers.py --model runs/run-cpu60/model --data runs/run-cpu60/data --faces 128
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from faceattr.atomic import write_json
from faceattr.explain import TRUNK, _cam_output, _head_plan, layer_cells, load_run, sanity_check, split_faces


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path)
    ap.add_argument("--split", default="test")
    ap.add_argument("--faces", type=int, default=128, help="faces drawn from the split (seeded)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("results/gradcam_layers.json"))
    args = ap.parse_args()

    ckpt, model, age = load_run(args.model)
    part = split_faces(args.data, args.split, ckpt, args.model)
    pre = ckpt["preprocessing"]
    pick = np.sort(np.random.default_rng(args.seed).choice(len(part), min(args.faces, len(part)), replace=False))
    faces = part.images[pick]
    rows = []
    for layer in TRUNK[1:]:
        cells = layer_cells(model, layer, part.channels, part.size)
        for head in _head_plan(model, age):
            t0 = time.perf_counter()
            check = sanity_check(
                model, faces, pre["mean"], pre["std"], _cam_output(head, age), age, args.seed, layer=layer
            )
            check.pop("maps")
            rows.append(
                {
                    "layer": layer,
                    "cells": cells,
                    "head": head,
                    "trained_vs_noisy_input": round(check["trained_vs_noisy_input"], 3),
                    "full_randomisation": round(check["full_randomisation"], 3),
                    "mirror_consistency": round(check["mirror_consistency"], 3),
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            )
            r = rows[-1]
            print(
                f"{layer} ({cells}x{cells}) {head:<9} noise {r['trained_vs_noisy_input']:.2f}  "
                f"random {r['full_randomisation']:.2f}  mirror {r['mirror_consistency']:.2f}",
                file=sys.stderr,
            )
    write_json(
        {
            "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
            "model": str(args.model),
            "split": args.split,
            "faces": len(faces),
            "rows": rows,
        },
        args.out,
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
