"""Refit a run's two-stage age heads on its frozen backbone with age-balanced loss weights, with
or without a distribution map that spreads the answers back onto the training ages, the choice
made on validation (``faceattr.agerefit``); gender and ethnicity are untouched.

The run's best.pt is kept as best_before_refit.pt and replaced (atomically) by the refitted
model; a rerun starts again from best_before_refit.pt, so the command is repeatable. Run
``faceattr evaluate RUN`` afterwards: the calibration's age ranges depend on the age answers.

``--baseline`` names the model the run would replace (a packaged name such as ``default``, or a
checkpoint): the MAE limit of the rule is then the larger of the run's own and the baseline's
validation MAE (``faceattr.agerefit``), for fine-tunes of a refitted model.

python tools/refit_age.py runs/run-v2/model --data runs/run-v2/data --results results/age_refit_v2.json
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
from pathlib import Path

from faceattr.agerefit import refit_age_heads
from faceattr.atomic import write_json
from faceattr.checkpoint import load_checkpoint, save_checkpoint
from faceattr.evaluation import load_split_data
from faceattr.inputerror import InputError
from faceattr.pretrained import PRETRAINED, packaged_name, pretrained_path
from faceattr.release import sha256
from faceattr.runs import checkpoint_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="run folder (its best.pt)")
    ap.add_argument("--data", type=Path, required=True, help="the prepared data the run was trained on")
    ap.add_argument("--results", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline", help="the model the run would replace: a packaged name or a checkpoint")
    args = ap.parse_args()
    started = time.perf_counter()
    best, before = args.run / "best.pt", args.run / "best_before_refit.pt"
    try:
        baseline = None
        if args.baseline is not None:
            name = packaged_name(args.baseline)  # as --model reads it: an existing path of that name wins
            where = pretrained_path(name) if name else checkpoint_path(args.baseline)
            baseline = load_checkpoint(where)
        if not before.is_file():
            shutil.copy2(best, before)
        ckpt = load_checkpoint(before)
        prepared = load_split_data(args.data, ckpt, "val")
        refitted, record = refit_age_heads(ckpt, prepared, epochs=args.epochs, seed=args.seed, baseline=baseline)
    except (InputError, ValueError) as e:
        sys.exit(f"refit_age: {e}")
    if baseline is not None:  # a packaged name means another file once the default moves: record which
        record["baseline"].update(
            model=PRETRAINED[name] if name else args.baseline,
            path=str(where),
            sha256=sha256(where),
        )
    save_checkpoint(refitted, best)
    record.update(
        run=str(args.run),
        seconds=round(time.perf_counter() - started, 1),
        command="python " + " ".join(shlex.quote(a) for a in sys.argv),
    )
    write_json(record, args.results)
    print(f"chosen age_balance: {record['chosen']}; wrote {best} and {args.results}")


if __name__ == "__main__":
    main()
