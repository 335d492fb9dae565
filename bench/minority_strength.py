"""Ablation: does stronger augmentation for minority ethnicities help? Trains the same small
configuration twice on the canonical split, with per-class augmentation strength
(minority_power 0.5, capped at 2x) and without it, and records the validation curves.

python bench/minority_strength.py --data prepared/kaggle48 --epochs 8
"""

import argparse
import shlex
import sys
from pathlib import Path

from faceattr.atomic import write_json
from faceattr.checkpoint import load_checkpoint
from faceattr.config import resolve_config
from faceattr.runs import LAST
from faceattr.train import train


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, default=Path("prepared/kaggle48"))
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--runs", type=Path, default=Path("runs/ablation"))
    p.add_argument("--out", type=Path, default=Path("results/ablation_minority_strength.json"))
    args = p.parse_args()
    rows = []
    for power in (0.5, 0.0):
        name = f"minority-power-{power}"
        cfg = resolve_config(
            overrides={
                "stem": "s2pool",
                "width": 32,
                "epochs": args.epochs,
                "warmup_epochs": 1.0,
                "minority_power": power,
                "max_strength": 2.0,
                "name": name,
            }
        )
        result = train(cfg, args.data, args.runs / name)
        history = load_checkpoint(args.runs / name / LAST)["history"]
        rows.append(
            {
                "minority_power": power,
                "val_ethnicity_macro_f1_by_epoch": [h["val_ethnicity_macro_f1"] for h in history],
                "val_ethnicity_acc_by_epoch": [h["val_ethnicity_acc"] for h in history],
                "train_loss_by_epoch": [h["train_loss"] for h in history],
                "test_ethnicity_macro_f1": result["test"]["ethnicity"]["macro_f1"],
                "test_gender_acc": result["test"]["gender"]["accuracy"],
            }
        )
    write_json({"command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "runs": rows}, args.out)
    print({r["minority_power"]: r["test_ethnicity_macro_f1"] for r in rows})


if __name__ == "__main__":
    main()
