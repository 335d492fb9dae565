"""The age comparison on the canonical split: fine-tune the multitask backbone with each age
head (two-stage, direct regression, DEX expectation) for the same number of epochs, and tabulate
the test metrics. The two-stage head is reported with soft and hard routing.

python bench/age_compare.py --data prepared/kaggle48 --from runs/cpu60 --epochs 10
"""

import argparse
import shlex
import sys
from pathlib import Path

from faceattr.atomic import write_json
from faceattr.config import resolve_config
from faceattr.runs import checkpoint_path
from faceattr.train import train

HEADS = ("two_stage", "direct", "dex")


def row(name: str, age: dict, minutes: float, multitask: dict) -> dict:
    return {
        "model": name,
        "mae": age["mae"],
        "cs5": age["cs5"],
        "bin_accuracy": age.get("bin_accuracy"),
        "mae_children_under_13": age["children"]["under_13"]["mae"],
        "mae_correct_bin": age.get("correct_bin", {}).get("mae"),
        "mae_wrong_bin": age.get("wrong_bin", {}).get("mae"),
        "train_minutes": minutes,
        "gender_acc": multitask["gender"]["accuracy"],
        "ethnicity_acc": multitask["ethnicity"]["accuracy"],
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, default=Path("prepared/kaggle48"))
    p.add_argument("--from", dest="init_from", type=Path, default=Path("runs/cpu60"))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--heads", nargs="+", default=list(HEADS), choices=HEADS)
    p.add_argument("--age-reg-weight", type=float, default=None, help="override the config's age_reg_weight")
    p.add_argument("--runs", type=Path, default=Path("runs/age"))
    p.add_argument("--out", type=Path, default=Path("results/age_compare.json"))
    args = p.parse_args()
    source = resolve_config("cpu60")
    table, details = [], {}
    for head in args.heads:
        cfg = resolve_config(
            "cpu60",
            overrides={
                "name": f"age-{head}",
                "tasks": ["gender", "ethnicity", "age"],
                "age_head": head,
                "init_from": str(checkpoint_path(args.init_from)),
                "epochs": args.epochs,
                "lr": source.lr / 2,
                "warmup_epochs": 1.0,
                "max_minutes": 0.0,
                **({"age_reg_weight": args.age_reg_weight} if args.age_reg_weight is not None else {}),
            },
        )
        result = train(cfg, args.data, args.runs / cfg.name)
        test = result["test"]
        details[head] = test
        if head == "two_stage":
            table.append(row("two_stage (soft routing)", test["age"], result["train_minutes"], test))
            table.append(row("two_stage (hard routing)", test["age_hard_routing"], result["train_minutes"], test))
        else:
            table.append(row(head, test["age"], result["train_minutes"], test))
        write_json(
            {
                "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
                "fine_tuned_from": str(args.init_from),
                "epochs": args.epochs,
                "table": table,
                "test_metrics": details,
            },
            args.out,
        )
    for r in table:
        print(f"{r['model']:28s} MAE {r['mae']:.2f}  CS@5 {r['cs5']:.3f}  ({r['train_minutes']} min)")


if __name__ == "__main__":
    main()
