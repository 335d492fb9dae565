"""The ``faceattr`` command line: a thin adapter, each subcommand parses its options and calls
one library function. Bad input ends with a one-line (or, for many bad rows, a short list of)
error message and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from faceattr.config import PROFILES
from faceattr.inputerror import InputError

SAMPLE_NAME = "utkface48_sample.csv.gz"  # the embedded UTKFace sample, inside faceattr/sample/


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected three comma-separated numbers, e.g. 0.7,0.15,0.15"
        ) from None
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: expected three comma-separated numbers, e.g. 0.7,0.15,0.15")
    return parts  # type: ignore[return-value]


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=int, default=48, help="side of the square faces for image inputs (default 48)")
    colour = p.add_mutually_exclusive_group()
    colour.add_argument("--gray", dest="gray", action="store_true", default=True, help="grayscale faces (default)")
    colour.add_argument("--rgb", dest="gray", action="store_false", help="keep RGB colour (image inputs only)")
    p.add_argument("--labels", type=Path, help="labels CSV (file,age,gender,ethnicity) when DATA is a folder of chips")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument(
        "--fractions", type=_fractions, default=(0.7, 0.15, 0.15), help="train,val,test (default 0.7,0.15,0.15)"
    )
    p.add_argument(
        "--skip-bad", action="store_true", help="skip bad rows, listing them in rejected.csv, instead of stopping"
    )
    p.add_argument(
        "--split-file", type=Path, help="apply this split file (e.g. splits/utkface48.csv) instead of splitting"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faceattr", description="Gender, ethnicity and age from faces.")
    parser.add_argument("--version", action="version", version=f"faceattr {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="validate, dedupe and split a dataset; write the cache and data report")
    p.add_argument("data", type=Path, help="Kaggle .csv/.csv.gz/.zip, UTKFace folder or .tar.gz, or a folder of chips")
    p.add_argument("--out", type=Path, default=Path("prepared/data"), help="output folder (default prepared/data)")
    _add_data_options(p)
    p.add_argument("--summary", type=Path, help="also write the summary (with this command) to this JSON file")

    p = sub.add_parser("train", help="train a model on a prepared dataset")
    p.add_argument(
        "task", choices=["multitask", "age"], help="multitask: gender + ethnicity; age: adds the age head to them"
    )
    p.add_argument(
        "--from",
        dest="init_from",
        type=Path,
        help="(age) fine-tune from this multitask run folder or checkpoint; without it all heads train from scratch",
    )
    p.add_argument("--data", type=Path, default=Path("prepared/data"), help="folder written by faceattr prepare")
    _add_config_options(p)
    p.add_argument("--runs", type=Path, default=Path("runs"), help="parent folder of run folders (default runs)")
    p.add_argument("--resume", action="store_true", help="continue the run from its last.pt")
    p.add_argument("--results", type=Path, help="also write the test metrics (with this command) to this JSON file")

    p = sub.add_parser("run", help="the whole pipeline: prepare, train, evaluate (default: the embedded sample)")
    p.add_argument("--data", type=Path, help="input data (default: the embedded UTKFace sample)")
    _add_config_options(p, default_profile="quick")
    p.add_argument("--out", type=Path, help="output folder (default runs/run-PROFILE)")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--split-file", type=Path, help="apply this split file instead of splitting")
    return parser


def _add_config_options(p: argparse.ArgumentParser, default_profile: str | None = None) -> None:
    p.add_argument("--profile", choices=PROFILES, default=default_profile, help="built-in config profile")
    p.add_argument("--config", type=Path, help="YAML config file (over the profile)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. --set lr=1e-3 (repeatable; over the config file)",
    )
    p.add_argument("--name", help="run name (default: the config's name or the profile)")


def _version() -> str:
    from faceattr import __version__

    return __version__


def cmd_prepare(args: argparse.Namespace) -> int:
    from faceattr.cache import write_json
    from faceattr.prepare import prepare

    summary = prepare(
        args.data,
        args.out,
        size=args.size,
        gray=args.gray,
        seed=args.seed,
        fractions=args.fractions,
        skip_bad=args.skip_bad,
        split_file=args.split_file,
        labels=args.labels,
    )
    if args.summary:
        args.summary.parent.mkdir(parents=True, exist_ok=True)
        write_json({"command": _command_line(args), **summary}, args.summary)
    return 0


def _resolve(args: argparse.Namespace, task: str = "multitask", init_from: Path | None = None):
    """Resolve the config of a multitask or age run. An age run adds the age task below the
    profile and config file (so a user's config can still choose tasks) and, with
    ``init_from``, starts from that run's best checkpoint."""
    from faceattr.config import parse_overrides, resolve_config

    overrides = parse_overrides(args.overrides)
    base = {"tasks": ["gender", "ethnicity", "age"]} if task == "age" else {}
    if init_from is not None:
        overrides["init_from"] = str(init_from / "best.pt" if init_from.is_dir() else init_from)
    if args.name:
        overrides["name"] = args.name
    elif "name" not in overrides:
        profile = args.profile or ""
        overrides["name"] = (
            (profile or "multitask") if task == "multitask" else "-".join(filter(None, ["age", profile]))
        )
    return resolve_config(args.profile, args.config, overrides, base=base)


def cmd_train(args: argparse.Namespace) -> int:
    from faceattr.cache import write_json
    from faceattr.train import train

    if args.init_from and args.task != "age":
        raise InputError("--from applies to `faceattr train age` only")
    cfg = _resolve(args, args.task, args.init_from)
    result = train(cfg, args.data, args.runs / cfg.name, resume=args.resume)
    if args.results and result:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        write_json({"command": _command_line(args), **result}, args.results)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from importlib import resources

    from faceattr.cache import write_json
    from faceattr.prepare import prepare
    from faceattr.train import train

    cfg = _resolve(args)
    out = args.out or Path("runs") / f"run-{args.profile or cfg.name}"
    if args.data is None:
        with resources.as_file(resources.files("faceattr.sample").joinpath(SAMPLE_NAME)) as sample:
            summary = prepare(sample, out / "data", seed=args.seed, split_file=args.split_file)
    else:
        summary = prepare(args.data, out / "data", seed=args.seed, split_file=args.split_file)
    multitask = train(cfg, out / "data", out / "multitask")
    # The age model reuses the multitask backbone: fine-tuned from its best checkpoint.
    age_cfg = _resolve(args, "age", out / "multitask")
    age = train(age_cfg, out / "data", out / "age")
    write_json(
        {"command": _command_line(args), "data": summary, "multitask": multitask, "age": age}, out / "summary.json"
    )
    print(f"wrote {out}/summary.json; models in {out / 'multitask'} and {out / 'age'}")
    return 0


def _command_line(args: argparse.Namespace) -> str:
    return "faceattr " + " ".join(shlex.quote(a) for a in args.argv)


COMMANDS = {"prepare": cmd_prepare, "train": cmd_train, "run": cmd_run}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return COMMANDS[args.command](args)
    except InputError as e:
        print(f"faceattr {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"faceattr {args.command}: interrupted", file=sys.stderr)
        return 130
