"""The real-photos issue's bars for one yardstick row against another (results/wild.json).

The issue measures against the model that was the default when it was filed, the reference
design (``reference48``). A candidate passes when, on the same split, it beats that row on the
UTK-C means (the yardstick's mean over the corrupted cells) and on frl244 for gender and
ethnicity accuracy; keeps the canonical split at gender >= 91 %, ethnicity >= 78 % and age MAE
<= 6.0; and has at most half that row's |signed age error| in each of the decades 60-69 and 70+.
Validation rows decide; test rows only report.

python tools/issue_bars.py --candidate short-ft-frame-soft/val --against reference48/val --out results/bars_v5.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from faceattr.atomic import write_json

FLOORS = {"gender_acc": 0.91, "ethnicity_acc": 0.78}
MAX_MAE = 6.0
OLD_DECADES = ("60-69", "70+")


def utk_c_mean(row: dict, key: str) -> float:
    """``key`` over the corrupted UTK-C cells, as the yardstick averaged it (the clean photos are
    not a corruption)."""
    return float(row["utk_c"]["mean_over_corruptions"][key])


def bars(candidate: dict, against: dict) -> dict[str, dict]:
    """Each bar: the candidate's value, what it must meet, and whether it does."""
    out: dict[str, dict] = {}
    for key in ("gender_acc", "ethnicity_acc"):
        ours, theirs = utk_c_mean(candidate, key), utk_c_mean(against, key)
        out[f"UTK-C mean {key} above"] = {"value": ours, "must_beat": theirs, "pass": ours > theirs}
        ours, theirs = candidate["frl244"][key], against["frl244"][key]
        out[f"frl244 {key} above"] = {"value": ours, "must_beat": theirs, "pass": ours > theirs}
        value = candidate["canonical"][key]
        out[f"canonical {key} at least"] = {"value": value, "floor": FLOORS[key], "pass": value >= FLOORS[key]}
    mae = candidate["canonical"]["age_mae"]
    out["canonical age_mae at most"] = {"value": mae, "ceiling": MAX_MAE, "pass": mae <= MAX_MAE}
    for decade in OLD_DECADES:
        ours = candidate["canonical"]["age_signed_error_by_decade"][decade]
        theirs = against["canonical"]["age_signed_error_by_decade"][decade]
        limit = 0.5 * abs(theirs)
        out[f"signed error {decade}, magnitude at most half"] = {
            "value": ours,
            "limit": limit,
            "pass": abs(ours) <= limit,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wild", type=Path, default=Path("results/wild.json"))
    ap.add_argument("--candidate", required=True, help="a row of the yardstick, e.g. short-ft-frame-soft/val")
    ap.add_argument("--against", required=True, help="the row the issue measures against, on the same split")
    ap.add_argument("--out", type=Path, help="write the verdict here (JSON)")
    args = ap.parse_args()
    try:
        rows = json.loads(args.wild.read_text())["variants"]
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"{args.wild}: not a yardstick result file ({type(e).__name__})")
    for name in (args.candidate, args.against):
        if name not in rows:
            sys.exit(f"{args.wild}: no row {name!r}; rows: {', '.join(rows)}")
        missing = [part for part in ("canonical", "utk_c", "frl244") if not rows[name].get(part)]
        if missing:
            sys.exit(f"{args.wild}: row {name!r} has no {', '.join(missing)} scores; the bars need all three")
    if args.candidate.rpartition("/")[2] != args.against.rpartition("/")[2]:
        sys.exit(f"--candidate {args.candidate} and --against {args.against}: compare rows of the same split")
    verdict = bars(rows[args.candidate], rows[args.against])
    for name, bar in verdict.items():
        print(f"{'pass' if bar['pass'] else 'FAIL'}  {name}: {bar}")
    passed = all(bar["pass"] for bar in verdict.values())
    print(f"{args.candidate} against {args.against}: {'every bar holds' if passed else 'not every bar holds'}")
    if args.out:
        record = {
            "candidate": args.candidate,
            "against": args.against,
            "bars": verdict,
            "all_pass": passed,
            "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        }
        write_json(record, args.out)


if __name__ == "__main__":
    main()
