"""Choose the default CPU configuration by measured quality per CPU-minute: train each
candidate stem/width for the same wall-clock budget on the canonical split and compare the
validation score (the test split is reported, never used to choose).

python bench/compare_configs.py --data prepared/kaggle48 --minutes 7 --out results/config_compare.json
"""

import argparse
import shlex
import sys
from pathlib import Path

from faceattr.atomic import write_json
from faceattr.checkpoint import load_checkpoint
from faceattr.config import resolve_config
from faceattr.train import train

# Same training img/s class on this CPU gives comparable epochs; s2pool-w32 is ~3x faster.
CANDIDATES = [
    {"stem": "s2pool", "width": 32, "epochs": 18},
    {"stem": "s1pool", "width": 32, "epochs": 6},
    {"stem": "s2pool", "width": 64, "epochs": 6},
]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, default=Path("prepared/kaggle48"))
    p.add_argument("--minutes", type=float, default=7.0)
    p.add_argument("--runs", type=Path, default=Path("runs/compare"))
    p.add_argument("--out", type=Path, default=Path("results/config_compare.json"))
    args = p.parse_args()
    rows = []
    for cand in CANDIDATES:
        name = f"{cand['stem']}-w{cand['width']}"
        cfg = resolve_config(overrides={**cand, "name": name, "max_minutes": args.minutes, "warmup_epochs": 1.0})
        result = train(cfg, args.data, args.runs / name)
        best = load_checkpoint(args.runs / name)
        val = best["metrics"]["val"]
        rows.append(
            {
                "stem": cand["stem"],
                "width": cand["width"],
                "epochs_planned": cand["epochs"],
                "epochs_run": result["epochs_run"],
                "train_minutes": result["train_minutes"],
                "val_score": val["score"],
                "val_gender_acc": val["gender"]["accuracy"],
                "val_ethnicity_macro_f1": val["ethnicity"]["macro_f1"],
                "val_score_per_minute": val["score"] / result["train_minutes"],
                "test_gender_acc": result["test"]["gender"]["accuracy"],
                "test_ethnicity_acc": result["test"]["ethnicity"]["accuracy"],
            }
        )
        write_json(
            {
                "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
                "budget_minutes": args.minutes,
                "chosen_by": "highest validation score at equal budget",
                "runs": rows,
            },
            args.out,
        )
    best = max(rows, key=lambda r: r["val_score"])
    print(f"best at {args.minutes} min: {best['stem']} width {best['width']} (val score {best['val_score']:.4f})")


if __name__ == "__main__":
    main()
