"""The ``faceattr`` command line: a thin adapter, each subcommand parses its options and calls
one library function. Bad input ends with a one-line (or, for many bad rows, a short list of)
error message and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from faceattr.inputerror import InputError
from faceattr.profiles import PROFILES

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

    p = sub.add_parser("evaluate", help="evaluation report of a run: metrics.json, plots, report.html, calibration")
    p.add_argument("run_dir", metavar="RUN", type=Path, help="run folder (with best.pt)")
    p.add_argument("--split", default="test", help="split to evaluate: train, val or test (default test)")
    p.add_argument("--data", type=Path, help="prepared data folder (default: the one the run was trained on)")
    p.add_argument("--out", type=Path, help="report folder, replaced whole (default RUN/report)")

    p = sub.add_parser("predict", help="faces in photos: box, landmarks, age, gender, ethnicity")
    p.add_argument("inputs", nargs="+", metavar="PATH", help="image files, folders (searched recursively) or globs")
    p.add_argument(
        "--model",
        type=Path,
        help="run folder, checkpoint or .onnx file, or a packaged model: default, reference48 "
        "(default: the weights shipped as default)",
    )
    p.add_argument(
        "--backend",
        choices=["onnx", "torch"],
        help="ONNX Runtime or PyTorch (default: onnx for the shipped weights and .onnx files, torch for runs)",
    )
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", dest="fmt", action="store_const", const="json", help="one JSON document on stdout")
    fmt.add_argument(
        "--jsonl",
        dest="fmt",
        action="store_const",
        const="jsonl",
        help="JSON Lines on stdout, one line per photo as it is done (for large folders)",
    )
    fmt.add_argument("--csv", dest="fmt", action="store_const", const="csv", help="CSV, one row per face, on stdout")
    p.set_defaults(fmt="table")
    p.add_argument("--annotate", type=Path, metavar="DIR", help="write copies of the photos with boxes and labels")
    p.add_argument("--no-detect", dest="detect", action="store_false", help="inputs are ready face chips")
    p.add_argument("--batch-size", type=int, default=64, help="faces per model batch (default 64)")
    p.add_argument("--min-score", type=float, default=0.9, help="smallest detector score kept (default 0.9)")
    p.add_argument(
        "--detect-size",
        type=int,
        default=800,
        metavar="PX",
        help="faces are searched for on a copy of the photo at most PX long (default 800; larger finds smaller faces, slower)",
    )
    p.add_argument("--workers", type=int, help="threads preparing photos (default: one per usable core)")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None, help="always show progress")
    bar.add_argument("--no-progress", dest="progress", action="store_false", help="never show progress")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")

    p = sub.add_parser(
        "audit", help="the make-up of a photo collection (gender, ethnicity, age), corrected for the model's errors"
    )
    p.add_argument(
        "collection", type=Path, help="a folder (recursive), a tar/zip of images, or a .txt/.csv/.parquet list"
    )
    p.add_argument("--out", type=Path, required=True, help="audit folder (rerunning the command resumes it)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, help="run on a local Dask cluster of N worker processes")
    where.add_argument("--cluster", metavar="ADDRESS", help="run on the Dask scheduler at ADDRESS (tcp://host:8786)")
    p.add_argument("--shard-size", type=int, default=256, help="photos per shard (default 256)")
    p.add_argument("--min-score", type=float, default=0.9, help="faces scored lower are counted, not estimated")
    p.add_argument("--min-face", type=int, default=24, help="faces smaller than this many pixels likewise (default 24)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap replicates for the intervals (default 200)")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("export", help="release weights (float16, calibrated) and/or a self-contained ONNX file")
    p.add_argument(
        "run", metavar="RUN", help="run folder, checkpoint or release file; `pretrained` for the shipped one"
    )
    p.add_argument("--onnx", type=Path, metavar="FILE", help="write one .onnx file (weights inside, dynamic batch)")
    p.add_argument(
        "--weights", type=Path, metavar="FILE", help="write float16 release weights (refused unless better on test)"
    )
    p.add_argument("--data", type=Path, help="prepared data folder (default: the one the run was trained on)")
    p.add_argument("--force", action="store_true", help="replace --weights even if the model there scores better")
    p.add_argument("--results", type=Path, help="also write what was exported and measured to this JSON file")

    p = sub.add_parser("serve", help="HTTP API (/v1/predict, /v1/model, /healthz, /docs) and a page to try a photo")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--model",
        type=Path,
        help="run folder, checkpoint or .onnx file, or a packaged model: default, reference48 (default: default)",
    )
    p.add_argument(
        "--backend",
        choices=["onnx", "torch"],
        help="default: onnx for the shipped weights and .onnx files (Grad-CAM loads PyTorch on demand), torch for runs",
    )
    p.add_argument(
        "--token",
        help="API token every /v1 call must carry (Authorization: Bearer ...); required with a non-loopback --host "
        "(or set FACEATTR_TOKEN)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")

    p = sub.add_parser("explain", help="Grad-CAM of every head: overlay grids, mean maps, randomisation check")
    p.add_argument("run_dir", metavar="RUN", type=Path, help="run folder (with best.pt) or checkpoint")
    _add_analysis_options(p, "explain")
    p.add_argument("--images", nargs="+", type=Path, metavar="FILE", help="explain these image files instead")
    p.add_argument(
        "--layer",
        default="layer2",
        choices=["layer1", "layer2", "layer3", "layer4"],
        help="block whose map Grad-CAM uses (default layer2; see results/gradcam_layers.json)",
    )
    p.add_argument("--errors", type=int, default=16, help="misclassified faces per head in the grids (default 16)")
    p.add_argument("--correct", type=int, default=16, help="correct faces per head in the grids (default 16)")

    p = sub.add_parser("cluster", help="clusters of the mistakes of every head, with montages and descriptions")
    p.add_argument("run_dir", metavar="RUN", type=Path, help="run folder (with best.pt) or checkpoint")
    _add_analysis_options(p, "clusters")
    return parser


def _add_analysis_options(p: argparse.ArgumentParser, folder: str) -> None:
    p.add_argument("--data", type=Path, help="prepared data folder (default: the one the run was trained on)")
    p.add_argument("--split", default="test", help="train, val or test (default test)")
    p.add_argument("--out", type=Path, help=f"output folder (default RUN/{folder})")
    p.add_argument("--seed", type=int, default=0, help="seed of the random choices (default 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")


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
    from faceattr.atomic import write_json
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
    from faceattr.runs import checkpoint_path

    overrides = parse_overrides(args.overrides)
    base = {"tasks": ["gender", "ethnicity", "age"]} if task == "age" else {}
    if init_from is not None:
        overrides["init_from"] = str(checkpoint_path(init_from))
    if args.name:
        overrides["name"] = args.name
    elif "name" not in overrides:
        profile = args.profile or ""
        overrides["name"] = (
            (profile or "multitask") if task == "multitask" else "-".join(filter(None, ["age", profile]))
        )
    return resolve_config(args.profile, args.config, overrides, base=base)


def cmd_train(args: argparse.Namespace) -> int:
    from faceattr.atomic import write_json
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

    from faceattr.atomic import write_json
    from faceattr.prepare import prepare
    from faceattr.report import evaluate_run
    from faceattr.train import train

    # One model for all three tasks, trained jointly from scratch: at equal CPU time it beat a
    # multitask run followed by an age fine-tune (results/age_cpu60.json).
    cfg = _resolve(args, "age")
    out = args.out or Path("runs") / f"run-{args.profile or cfg.name}"
    if args.data is None:
        with resources.as_file(resources.files("faceattr.sample").joinpath(SAMPLE_NAME)) as sample:
            summary = prepare(sample, out / "data", seed=args.seed, split_file=args.split_file)
    else:
        summary = prepare(args.data, out / "data", seed=args.seed, split_file=args.split_file)
    model_dir = out / "model"
    # Rerunning the same command continues an interrupted training (and a finished one trains
    # no further); a different config is refused by the resume check.
    result = train(cfg, out / "data", model_dir, resume=(model_dir / "last.pt").is_file())
    report = evaluate_run(model_dir, out / "data", "test", out / "report")
    write_json(
        {"command": _command_line(args), "data": summary, "model": result, "report": report["headline"]},
        out / "summary.json",
    )
    print(f"wrote {out}/summary.json; model in {model_dir}, report in {out / 'report' / 'report.html'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from faceattr.report import evaluate_run

    evaluate_run(args.run_dir, args.data, split=args.split, out_dir=args.out)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from faceattr.bulk import predict_files

    return predict_files(
        args.inputs,
        args.model,
        fmt=args.fmt,
        annotate=args.annotate,
        detect=args.detect,
        batch_size=args.batch_size,
        device=args.device,
        min_score=args.min_score,
        backend=args.backend,
        workers=args.workers,
        detect_size=args.detect_size,
        progress=args.progress,
    )


def cmd_audit(args: argparse.Namespace) -> int:
    from faceattr.audit import audit

    report = audit(
        args.collection,
        args.out,
        workers=args.workers,
        cluster=args.cluster,
        shard_size=args.shard_size,
        min_score=args.min_score,
        min_face=args.min_face,
        n_boot=args.bootstrap,
        seed=args.seed,
    )
    c = report["counts"]
    print(
        f"{c['photos']} photos ({c['photos_failed']} failed, {c['photos_without_faces']} without a face), "
        f"{c['faces']} faces, {c['faces_included']} in the estimates; wrote {args.out / 'report.html'}"
    )
    for reason, n in c["failures_by_reason"].items():
        print(
            f"faceattr audit: {n} photo(s) failed: {reason} (listed in {args.out / 'photos.parquet'})", file=sys.stderr
        )
    return 1 if c["photos_failed"] else 0


def cmd_export(args: argparse.Namespace) -> int:
    from faceattr.atomic import write_json
    from faceattr.release import export

    summary = export(
        args.run,
        weights=args.weights,
        onnx=args.onnx,
        data_dir=args.data,
        force=args.force,
        command=_command_line(args),
    )
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        write_json(summary, args.results)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import socket

    from faceattr.serve import serve

    if not 0 < args.port < 65536:
        raise InputError(f"--port {args.port}: expected 1..65535")
    try:  # refuse a taken port now, before the model loads
        with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((args.host, args.port))
    except OSError as e:
        raise InputError(f"cannot listen on {args.host}:{args.port} ({e.strerror or e})") from None
    return serve(args.model, args.host, args.port, args.backend, args.device, token=args.token)


def cmd_explain(args: argparse.Namespace) -> int:
    from faceattr.device import select_device
    from faceattr.explain import explain_images, explain_run

    device = select_device(args.device)
    if args.images:
        explain_images(args.run_dir, args.images, args.out, device=device, layer=args.layer)
        return 0
    explain_run(
        args.run_dir,
        args.data,
        args.out,
        split=args.split,
        n_errors=args.errors,
        n_correct=args.correct,
        seed=args.seed,
        device=device,
        layer=args.layer,
    )
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from faceattr.clusters import cluster_run
    from faceattr.device import select_device

    cluster_run(args.run_dir, args.data, args.out, split=args.split, seed=args.seed, device=select_device(args.device))
    return 0


def _command_line(args: argparse.Namespace) -> str:
    return "faceattr " + " ".join(shlex.quote(a) for a in args.argv)


COMMANDS = {
    "prepare": cmd_prepare,
    "train": cmd_train,
    "run": cmd_run,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "audit": cmd_audit,
    "export": cmd_export,
    "serve": cmd_serve,
    "explain": cmd_explain,
    "cluster": cmd_cluster,
}


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
    except BrokenPipeError:  # the reader went away (`faceattr predict ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
