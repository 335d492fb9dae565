"""The evaluation report of a run: matplotlib (Agg) figures saved as PNG files, ``metrics.json``
and one self-contained ``report.html`` (figures embedded as data URIs, so it opens offline), all
written into a temp folder that replaces the report folder whole. ``evaluate_run`` is the entry
point; the numbers come from faceattr.evaluation."""

from __future__ import annotations

import base64
import csv
import html
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve

from faceattr import __version__
from faceattr.atomic import write_json
from faceattr.calibration import write_calibration
from faceattr.checkpoint import age_spec, load_checkpoint, model_from_checkpoint
from faceattr.device import select_device
from faceattr.evaluation import (
    N_BOOT,
    SplitPredictions,
    checkpoint_tasks,
    evaluate_predictions,
    find_data_dir,
    load_split_data,
    predict_split,
)
from faceattr.figures import new_figure, save_figure
from faceattr.folders import replacing_folder
from faceattr.inputerror import InputError
from faceattr.labels import AGE_BAND_NAMES, CLASS_NAMES
from faceattr.runs import BEST, CALIBRATION, HISTORY
from faceattr.split import age_band

REPORT_FORMAT = "faceattr-evaluation-1"
EXTRA_SECTIONS = (("explain", "Explanations"), ("clusters", "Error clusters"))  # RUN/<folder>/index.json
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}
LABELS = {
    "gender_accuracy": "gender accuracy",
    "gender_roc_auc": "gender ROC AUC",
    "ethnicity_accuracy": "ethnicity accuracy",
    "ethnicity_macro_f1": "ethnicity macro-F1",
    "age_mae": "age MAE (soft routing)",
    "age_cs5": "age CS@5 (soft routing)",
    "age_mae_hard": "age MAE (hard routing)",
    "age_cs5_hard": "age CS@5 (hard routing)",
}
GROUPINGS = {"ethnicity": "ethnicity", "gender": "gender", "age_band": "age band"}
DPI = 90
LAYOUT = "constrained"  # the report's figures lay themselves out, so they are saved uncropped


def plot_confusion(confusion: list[list[int]], labels: list[str], title: str, path: str | Path) -> Path:
    """Confusion matrix (K, K) (rows true, columns predicted) as counts and row-normalised."""
    cm = np.asarray(confusion, dtype=float)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    k = len(labels)
    fig = new_figure(3 + 1.2 * k, 1.8 + 0.6 * k, layout=LAYOUT)
    for ax, values, kind in zip(fig.subplots(1, 2), (cm, norm), ("counts", "row-normalised (recall on diagonal)")):
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(k):
            for j in range(k):
                text = f"{int(values[i, j])}" if values is cm else f"{100 * values[i, j]:.0f}%"
                ax.text(
                    j, i, text, ha="center", va="center", fontsize=8, color="white" if norm[i, j] > 0.5 else "black"
                )
        ax.set_xticks(range(k), labels, rotation=30, ha="right")
        ax.set_yticks(range(k), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title}: {kind}", fontsize=10)
    return save_figure(fig, path, DPI, tight=False)


def plot_roc_pr(y: np.ndarray, score: np.ndarray, positive: str, path: str | Path) -> Path:
    """ROC curve and precision-recall curve of a binary score (N,) for labels y (N,) in {0, 1}."""
    fpr, tpr, _ = roc_curve(y, score)
    precision, recall, _ = precision_recall_curve(y, score)
    fig = new_figure(9, 3.8, layout=LAYOUT)
    ax1, ax2 = fig.subplots(1, 2)
    auc = float(np.trapezoid(tpr, fpr))
    ax1.plot(fpr, tpr, color="tab:blue", label=f"AUC {auc:.3f}")
    ax1.plot([0, 1], [0, 1], ls=":", color="grey", label="chance")
    ax1.set_xlabel("false positive rate")
    ax1.set_ylabel("true positive rate")
    ax1.set_title(f"ROC, positive class {positive}", fontsize=10)
    ax1.legend(loc="lower right")
    ap = average_precision_score(y, score)
    ax2.plot(recall, precision, color="tab:orange", label=f"average precision {ap:.3f}")
    ax2.axhline(float(np.mean(y == 1)), ls=":", color="grey", label="share of positives")
    ax2.set_xlabel("recall")
    ax2.set_ylabel("precision")
    ax2.set_ylim(0, 1.02)
    ax2.set_title(f"precision-recall, positive class {positive}", fontsize=10)
    ax2.legend(loc="lower left")
    return save_figure(fig, path, DPI, tight=False)


def plot_reliability(before: dict, after: dict, temperature: float, title: str, path: str | Path) -> Path:
    """Reliability diagrams (top-label accuracy against confidence per bin) before and after
    temperature scaling; ``before``/``after`` come from faceattr.evaluation.reliability."""
    fig = new_figure(9, 3.8, layout=LAYOUT)
    for ax, rel, name in zip(
        fig.subplots(1, 2, sharey=True), (before, after), ("before", f"after T = {temperature:.2f}")
    ):
        edges = np.asarray(rel["edges"])
        width = np.diff(edges)
        acc = np.array([np.nan if a is None else a for a in rel["accuracy"]])
        conf = np.array([np.nan if c is None else c for c in rel["confidence"]])
        ax.bar(
            edges[:-1], np.nan_to_num(acc), width=width, align="edge", color="tab:blue", alpha=0.75, label="accuracy"
        )
        ax.bar(
            edges[:-1],
            np.nan_to_num(conf),
            width=width,
            align="edge",
            fill=False,
            edgecolor="tab:red",
            lw=1.2,
            label="mean confidence",
        )
        ax.plot([0, 1], [0, 1], ls=":", color="grey")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top class)")
        ax.set_title(f"{title} {name}: ECE {100 * rel['ece']:.2f} %", fontsize=10)
    fig.axes[0].set_ylabel("accuracy")
    fig.axes[0].legend(loc="upper left")
    return save_figure(fig, path, DPI, tight=False)


def plot_age_scatter(true_age: np.ndarray, preds: dict[str, np.ndarray], path: str | Path) -> Path:
    """Predicted against true age (hexbin, log counts), one panel per routing. Arrays (N,)."""
    fig = new_figure(4.4 * len(preds) + 0.6, 4, layout=LAYOUT)
    axes = np.atleast_1d(fig.subplots(1, len(preds), sharey=True))
    top = float(max(true_age.max(), max(p.max() for p in preds.values()))) + 2
    for ax, (routing, pred) in zip(axes, preds.items()):
        hb = ax.hexbin(true_age, pred, gridsize=40, extent=(0, top, 0, top), mincnt=1, bins="log", cmap="viridis")
        ax.plot([0, top], [0, top], color="tab:red", lw=1)
        ax.set_xlabel("true age")
        ax.set_title(f"{routing} routing: MAE {np.mean(np.abs(pred - true_age)):.2f} y", fontsize=10)
        ax.set_aspect("equal")
    axes[0].set_ylabel("predicted age")
    fig.colorbar(hb, ax=list(axes), label="faces")
    return save_figure(fig, path, DPI, tight=False)


def plot_mae_by_age(
    true_age: np.ndarray, preds: dict[str, np.ndarray], path: str | Path, step: int = 5, min_faces: int = 5
) -> Path:
    """MAE by true age in ``step``-year bins (those with at least ``min_faces``), one line per
    routing, over the face counts."""
    lo = np.arange(0, int(true_age.max()) + step, step)
    idx = np.digitize(true_age, lo) - 1
    counts = np.bincount(idx, minlength=len(lo))
    fig = new_figure(9, 3.8, layout=LAYOUT)
    ax = fig.add_subplot()
    twin = ax.twinx()
    twin.bar(lo + step / 2, counts, width=step * 0.9, color="lightgrey", label="faces")
    twin.set_ylabel("faces")
    ax.set_zorder(twin.get_zorder() + 1)
    ax.patch.set_visible(False)
    have = counts >= min_faces
    for routing, pred in preds.items():
        mae = np.bincount(idx, np.abs(pred - true_age), minlength=len(lo))
        ax.plot((lo + step / 2)[have], (mae / np.maximum(counts, 1))[have], marker="o", label=f"{routing} routing")
    ax.set_xlabel(f"true age ({step}-year bins)")
    ax.set_ylabel("MAE (years)")
    ax.set_title(f"age MAE by true age (bins with at least {min_faces} faces)", fontsize=10)
    ax.legend(loc="upper left")
    return save_figure(fig, path, DPI, tight=False)


def plot_residuals(true_age: np.ndarray, preds: dict[str, np.ndarray], path: str | Path) -> Path:
    """Histogram of the residuals (predicted - true age), one outline per routing."""
    fig = new_figure(9, 3.5, layout=LAYOUT)
    ax = fig.add_subplot()
    bins = np.arange(-40.5, 41.5, 1.0)
    for routing, pred in preds.items():
        res = pred - true_age
        ax.hist(np.clip(res, -40, 40), bins=bins, histtype="step", lw=1.5, label=f"{routing}: mean {res.mean():+.2f} y")
    ax.axvline(0, color="grey", ls=":")
    ax.set_xlabel("predicted - true age (years; clipped at +-40)")
    ax.set_ylabel("faces")
    ax.set_title("age residuals", fontsize=10)
    ax.legend()
    return save_figure(fig, path, DPI, tight=False)


def plot_cumulative_score(curves: dict[str, list[float]], path: str | Path) -> Path:
    """Cumulative score: share of faces within k years, k = 0..len-1, one line per routing."""
    fig = new_figure(7, 3.8, layout=LAYOUT)
    ax = fig.add_subplot()
    for routing, cs in curves.items():
        k = np.arange(len(cs))
        ax.plot(k, 100 * np.asarray(cs), marker=".", label=f"{routing}: CS@5 {100 * cs[5]:.1f} %")
    ax.axvline(5, color="grey", ls=":")
    ax.set_xlabel("k (years)")
    ax.set_ylabel("faces within k years (%)")
    ax.set_ylim(0, 100)
    ax.set_xticks(range(0, len(next(iter(curves.values()))), 2))
    ax.grid(alpha=0.3)
    ax.set_title("age cumulative score", fontsize=10)
    ax.legend(loc="lower right")
    return save_figure(fig, path, DPI, tight=False)


def plot_fairness(table: dict, overall: dict[str, dict], grouping: str, path: str | Path) -> Path:
    """One panel per metric: each group's value with its 95 % interval, and the overall value."""
    metrics = table["metrics"]
    names = list(table["groups"])
    fig = new_figure(3.2 * len(metrics), 0.9 + 0.32 * len(names), layout=LAYOUT)
    for ax, m in zip(np.atleast_1d(fig.subplots(1, len(metrics), sharey=True)), metrics):
        scale = 100 if "accuracy" in m or "cs5" in m else 1
        for y, name in enumerate(names):
            cell = table["groups"][name].get(m)
            if not cell or cell["value"] is None:
                continue
            lo, hi = cell["ci"] or (cell["value"], cell["value"])
            v = cell["value"]
            ax.errorbar(scale * v, y, xerr=[[scale * (v - lo)], [scale * (hi - v)]], fmt="o", color="tab:blue", ms=4)
        if overall.get(m) and overall[m]["value"] is not None:
            ax.axvline(scale * overall[m]["value"], color="tab:red", ls=":", label="all faces")
        ax.set_yticks(range(len(names)), [f"{n} ({table['groups'][n]['n']})" for n in names])
        ax.set_ylim(len(names) - 0.5, -0.5)
        unit = " (%)" if scale == 100 else " (years)" if "mae" in m else ""
        ax.set_xlabel(LABELS.get(m, m) + unit, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"by {GROUPINGS.get(grouping, grouping)}: value and 95 % bootstrap interval", fontsize=10)
    return save_figure(fig, path, DPI, tight=False)


def plot_training_curves(history: list[dict[str, float]], path: str | Path) -> Path:
    """Training loss and the validation metrics per epoch (rows of history.csv), best epoch marked."""
    epochs = [r["epoch"] for r in history]
    columns = [c for c in history[0] if c.startswith("val_")]
    unit = [c for c in columns if "mae" not in c]
    years = [c for c in columns if "mae" in c]
    panels = 2 + bool(years)
    fig = new_figure(4.2 * panels, 3.6, layout=LAYOUT)
    axes = fig.subplots(1, panels)
    axes[0].plot(epochs, [r["train_loss"] for r in history], marker=".", color="tab:blue")
    axes[0].set_title("training loss", fontsize=10)
    for c in unit:
        axes[1].plot(epochs, [r[c] for r in history], marker=".", label=c.removeprefix("val_"))
    axes[1].set_title("validation metrics", fontsize=10)
    for c in years:
        axes[2].plot(epochs, [r[c] for r in history], marker=".", label=c.removeprefix("val_"))
        axes[2].set_title("validation age MAE (years)", fontsize=10)
    if "val_score" in history[0]:
        best = max(history, key=lambda r: r["val_score"])["epoch"]
        for ax in axes:
            ax.axvline(best, color="grey", ls=":", label="best epoch")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    return save_figure(fig, path, DPI, tight=False)


def read_history(path: Path) -> list[dict[str, float]]:
    """history.csv rows as numbers; [] when the run has none."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    try:
        return [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in rows]
    except ValueError as e:
        raise InputError(f"{path}: not a faceattr history file ({e})") from None


def _data_uri(path: Path) -> str:
    return f"data:{IMAGE_TYPES[path.suffix.lower()]};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def load_extra_section(folder: Path) -> dict | None:
    """The section another tool left in ``folder/index.json`` ({"title", "text": [...],
    "figures": [{"path", "caption"}]}), its figures read from that folder; None without one."""
    index = folder / "index.json"
    if not index.is_file():
        return None
    try:
        spec = json.loads(index.read_text())
    except (ValueError, OSError) as e:
        raise InputError(f"{index}: not valid JSON ({str(e).splitlines()[0]})") from None
    expected = 'expected {"title": str, "text": [str, ...], "figures": [{"path": str, "caption": str}, ...]}'
    if not isinstance(spec, dict) or not isinstance(spec.get("title"), str):
        raise InputError(f"{index}: 'title' missing or not a string; {expected}")
    text, figures = spec.get("text", []), spec.get("figures", [])
    if not isinstance(text, list) or not all(isinstance(t, str) for t in text):
        raise InputError(f"{index}: 'text' must be a list of strings; {expected}")
    if not isinstance(figures, list):
        raise InputError(f"{index}: 'figures' must be a list; {expected}")
    embedded = []
    root = folder.resolve()
    for k, fig in enumerate(figures):
        if not isinstance(fig, dict) or not isinstance(fig.get("path"), str):
            raise InputError(f"{index}: figures[{k}] needs a 'path' string; {expected}")
        file = (folder / fig["path"]).resolve()
        if not file.is_relative_to(root) or not file.is_file():
            raise InputError(f"{index}: figures[{k}].path {fig['path']!r}: no such file inside {folder}")
        if file.suffix.lower() not in IMAGE_TYPES:
            raise InputError(f"{index}: figures[{k}].path {fig['path']!r}: expected one of {', '.join(IMAGE_TYPES)}")
        embedded.append({"src": _data_uri(file), "caption": str(fig.get("caption", ""))})
    return {"title": spec["title"], "text": text, "figures": embedded}


def _fmt(metric: str, value: float | None, gap: bool = False) -> str:
    if value is None:
        return "–"
    if "mae" in metric:
        return f"{value:.2f} y"
    if "auc" in metric or "macro_f1" in metric:
        return f"{value:.3f}"
    return f"{100 * value:.1f} pp" if gap else f"{100 * value:.1f} %"


def _fmt_ci(metric: str, cell: dict | None, gap: bool = False) -> str:
    if not cell or cell.get("value") is None:
        return "–"
    text = _fmt(metric, cell["value"], gap)
    if cell.get("ci"):
        lo, hi = cell["ci"]
        text += f' <span class="ci">[{_fmt(metric, lo, gap)}, {_fmt(metric, hi, gap)}]</span>'
    return text


def _table(header: list[str], rows: list[list], raw: bool = False, summary: list | None = None) -> str:
    """An HTML table; cells are escaped unless ``raw`` (cells we built ourselves); ``summary``
    is a last row set in bold."""

    def cells(row: list) -> str:
        return "".join(f"<td>{c if raw else html.escape(str(c))}</td>" for c in row)

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(f"<tr>{cells(row)}</tr>" for row in rows)
    if summary is not None:
        body += f'<tr class="gap">{cells(summary)}</tr>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(path: Path, alt: str) -> str:
    return f'<figure><img src="{_data_uri(path)}" alt="{html.escape(alt)}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def _paragraphs(lines: list[str]) -> str:
    return "".join(f"<p>{html.escape(t)}</p>" for t in lines)


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f3f3f3; }
tr.gap td { font-weight: 600; background: #fafafa; }
.ci { color: #666; font-size: .9em; white-space: nowrap; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; } figcaption { color: #555; font-size: .9em; }
nav a { margin-right: .9em; } .note { color: #555; font-size: .92em; }
"""


def render_html(metrics: dict, figures: dict[str, Path], history: list[dict], extras: list[dict]) -> str:
    """The report page from the metrics dict, the saved figures (name -> PNG path) and the
    optional sections; everything is embedded, text is escaped."""
    split, n = metrics["split"], metrics["n"]
    sections: list[tuple[str, str, str]] = []
    head = metrics["headline"]
    rows = [[html.escape(LABELS.get(k, k)), _fmt_ci(k, v)] for k, v in head.items()]
    ci = metrics["bootstrap"]
    sections.append(
        (
            "headline",
            "Headline metrics",
            _table(["metric", f"{split} value [95 % CI]"], rows, raw=True)
            + f'<p class="note">Percentile bootstrap over the {n} {html.escape(split)} faces, '
            f"{ci['resamples']} resamples, seed {ci['seed']}. Labels are apparent attributes as annotated in "
            "UTKFace (binary gender, five coarse ethnicity groups); the model must not be used to identify people "
            "or make decisions about them.</p>",
        )
    )
    sections.append(("data", "Dataset", _dataset_html(metrics)))
    for task in ("gender", "ethnicity"):
        if task not in metrics:
            continue
        m = metrics[task]
        rows = [
            [name, f"{100 * c['precision']:.1f} %", f"{100 * c['recall']:.1f} %", f"{c['f1']:.3f}", c["support"]]
            for name, c in m["per_class"].items()
        ]
        body = _table(["class", "precision", "recall", "F1", "support"], rows)
        body += _img(figures[f"confusion_{task}"], f"{task} confusion matrix, {split} split")
        if task == "gender" and "roc_gender" in figures:
            body += f"<p>ROC AUC {m['roc_auc']:.3f}, average precision {m['average_precision']:.3f}.</p>"
            body += _img(figures["roc_gender"], "gender ROC and precision-recall curves")
        sections.append((task, task.capitalize(), body))
    sections.append(("calibration", "Calibration", _calibration_html(metrics, figures)))
    if "age" in metrics:
        sections.append(("age", "Age", _age_html(metrics, figures)))
    body = (
        "<p>Every headline metric per group, with its 95 % bootstrap interval; the last row of each table is the "
        "largest gap between groups (best minus worst) with its interval on the same resamples. Ethnicity "
        "macro-F1 is not given within one ethnicity (only one class is true there); small groups have wide "
        "intervals.</p>"
    )
    for grouping, label in GROUPINGS.items():
        table = metrics["fairness"][grouping]
        cols = table["metrics"]
        rows = [
            [html.escape(name), str(g["n"])] + [_fmt_ci(m, g.get(m)) for m in cols]
            for name, g in table["groups"].items()
        ]
        gap_row = ["largest gap", ""]
        for m in cols:
            gap = table["gaps"].get(m)
            gap_row.append(
                "–"
                if gap is None
                else _fmt_ci(m, gap, gap=True)
                + f"<br>{html.escape(gap['max_group'])} vs {html.escape(gap['min_group'])}"
            )
        header = [label, "faces"] + [LABELS.get(m, m) for m in cols]
        body += f"<h3>By {label}</h3>" + _table(header, rows, raw=True, summary=gap_row)
        body += _img(figures[f"fairness_{grouping}"], f"metrics by {label}")
    sections.append(("fairness", "Fairness: metrics by group", body))
    if history:
        sections.append(
            ("training", "Training curves", _img(figures["training"], "training loss and validation metrics by epoch"))
        )
    else:
        sections.append(("training", "Training curves", "<p>The run has no history.csv.</p>"))
    for k, extra in enumerate(extras):
        body = _paragraphs(extra["text"]) + "".join(
            f'<figure><img src="{f["src"]}" alt="{html.escape(f["caption"])}">'
            f"<figcaption>{html.escape(f['caption'])}</figcaption></figure>"
            for f in extra["figures"]
        )
        sections.append((f"extra{k}", extra["title"], body))

    nav = "".join(f'<a href="#{sid}">{html.escape(title)}</a>' for sid, title, _ in sections)
    content = "".join(
        f'<section id="{sid}"><h2>{html.escape(title)}</h2>{body}</section>' for sid, title, body in sections
    )
    title = f"faceattr evaluation: {metrics['config_name']} on the {split} split"
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        '<link rel="icon" href="data:,">'
        f"<style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f'<p class="note">Run {html.escape(metrics["run"])}, checkpoint {html.escape(metrics["checkpoint"])} '
        f"(epoch {metrics['epoch']}), data {html.escape(metrics['data_dir'])}, split hash "
        f"{html.escape(str(metrics['split_hash']))}, {n} faces. faceattr {html.escape(metrics['faceattr_version'])}, "
        f"{html.escape(metrics['created'])}.</p>"
        f"<nav>{nav}</nav>{content}</body></html>\n"
    )


def _dataset_html(metrics: dict) -> str:
    d = metrics["dataset"]
    dup = d.get("duplicates", {})
    rows = [
        ["input", f"{d.get('input', {}).get('path', '?')} ({d.get('input', {}).get('kind', '?')})"],
        ["faces read", d.get("faces_read", "?")],
        ["rows skipped", d.get("skipped", {}).get("total", "?")],
        ["pixel-identical pairs", dup.get("exact_pairs", "?")],
        ["near-duplicate pairs (incl. identical)", dup.get("near_pairs", "?")],
        ["duplicate groups", f"{dup.get('groups', '?')} (largest {dup.get('largest_group', '?')})"],
        ["split sizes", ", ".join(f"{k} {v}" for k, v in d.get("split", {}).items())],
        ["split hash", d.get("split_hash", "?")],
    ]
    body = _table(["prepare", ""], rows)
    comp = metrics["composition"]
    rows = [[name, count, f"{100 * count / max(metrics['n'], 1):.1f} %"] for name, count in comp.items()]
    return body + f"<h3>The {html.escape(metrics['split'])} faces</h3>" + _table(["group", "faces", "share"], rows)


def _calibration_html(metrics: dict, figures: dict[str, Path]) -> str:
    cal = metrics["calibration"]
    rows = []
    for task in ("gender", "ethnicity"):
        if task not in cal:
            continue
        c = cal[task]
        for part, label in (("val", "val (fit)"), ("eval", metrics["split"])):
            s = c[part]
            rows.append(
                [
                    task,
                    f"{c['temperature']:.3f}",
                    label,
                    s["n"],
                    f"{100 * s['ece_before']:.2f} %",
                    f"{100 * s['ece_after']:.2f} %",
                    f"{s['nll_before']:.4f}",
                    f"{s['nll_after']:.4f}",
                ]
            )
    body = (
        f"<p>Temperature T fitted on the validation split by minimising the NLL of softmax(log p / T); ECE over "
        f"{cal['bins']} equal-width confidence bins. The temperatures are saved to the run's calibration.json "
        "for prediction.</p>"
    )
    body += _table(["head", "T", "split", "faces", "ECE before", "ECE after", "NLL before", "NLL after"], rows)
    for task in ("gender", "ethnicity"):
        if f"reliability_{task}" in figures:
            body += _img(figures[f"reliability_{task}"], f"{task} reliability diagrams, {metrics['split']} split")
    return body


def _age_html(metrics: dict, figures: dict[str, Path]) -> str:
    routings = {"soft": metrics["age"]}
    if "age_hard_routing" in metrics:
        routings["hard"] = metrics["age_hard_routing"]
    names = list(routings)
    rows = [
        ["MAE (years)"] + [f"{r['mae']:.2f}" for r in routings.values()],
        ["RMSE (years)"] + [f"{r['rmse']:.2f}" for r in routings.values()],
        ["CS@5"] + [f"{100 * r['cs5']:.1f} %" for r in routings.values()],
        ["age-bin accuracy"] + [f"{100 * r['bin_accuracy']:.1f} %" for r in routings.values()],
        ["MAE, right bin"] + [_fmt("mae", r["correct_bin"]["mae"]) for r in routings.values()],
        ["MAE, wrong bin"] + [_fmt("mae", r["wrong_bin"]["mae"]) for r in routings.values()],
    ]
    rows += [
        [f"MAE, {label}"] + [_fmt("mae", r["children"][key]["mae"]) for r in routings.values()]
        for key, label in (("under_13", "under 13"), ("13_plus", "13 and over"))
    ]
    body = ""
    if len(names) > 1:
        body += (
            "<p>The two-stage head: soft routing weighs each bin's regressor by the bin probabilities (at the "
            f"routing temperature fitted on validation after training, T = {metrics.get('age_routing_temperature', 1.0)}"
            "); hard routing uses the most probable bin only. Soft routing is what `faceattr predict` returns.</p>"
        )
    body += _table(["age"] + [f"{n} routing" for n in names], rows)
    if "age_interval" in metrics:
        ai = metrics["age_interval"]
        check = ai["check"]
        body += (
            f"<p>Age ranges: faceattr prints each age with a range meant to hold the true age "
            f"{100 * ai['coverage']:.0f} % of the time: prediction ± a half-width per predicted age bin, fitted on "
            f"the validation split by split conformal prediction. On this split the ranges held "
            f"{100 * check['coverage']:.1f} % of the true ages, {check['mean_width']:.1f} years wide on average.</p>"
        )
        body += _table(
            ["predicted bin", "half-width (years)", "validation faces"],
            [
                [label, f"{h:.1f}", str(n)]
                for label, h, n in zip(metrics["age"]["bin_labels"], ai["half_width"], ai["n_per_bin"])
            ],
        )
        body += _table(
            ["true age band", "faces", "range holds the true age"],
            [[band, str(c["n"]), f"{100 * c['coverage']:.1f} %"] for band, c in check["by_age_band"].items()],
        )
    body += _img(figures["age_scatter"], "predicted against true age")
    body += _img(figures["age_mae_by_age"], "MAE by true age")
    body += _img(figures["age_residuals"], "residual histogram")
    body += _img(figures["age_cumulative"], "cumulative score: share of faces within k years")
    body += _img(figures["confusion_age_bin"], "age-bin confusion matrix (model bins from the training ages)")
    return body


def make_figures(
    metrics: dict, pred: SplitPredictions, history: list[dict[str, float]], plots: Path
) -> dict[str, Path]:
    """Save every figure of the report under ``plots``; returns name -> path."""
    figs: dict[str, Path] = {}
    for task in ("gender", "ethnicity"):
        if task in metrics:
            figs[f"confusion_{task}"] = plot_confusion(
                metrics[task]["confusion"], list(CLASS_NAMES[task]), task, plots / f"confusion_{task}.png"
            )
            cal = metrics["calibration"][task]
            figs[f"reliability_{task}"] = plot_reliability(
                cal["reliability_before"],
                cal["reliability_after"],
                cal["temperature"],
                task,
                plots / f"reliability_{task}.png",
            )
    if "gender" in metrics and "roc_auc" in metrics["gender"]:
        known = pred.gender >= 0
        figs["roc_gender"] = plot_roc_pr(
            pred.gender[known], pred.prob["gender"][known, 1], CLASS_NAMES["gender"][1], plots / "roc_pr_gender.png"
        )
    if "age" in metrics:
        figs["age_scatter"] = plot_age_scatter(pred.age, pred.age_pred, plots / "age_scatter.png")
        figs["age_mae_by_age"] = plot_mae_by_age(pred.age, pred.age_pred, plots / "age_mae_by_age.png")
        figs["age_residuals"] = plot_residuals(pred.age, pred.age_pred, plots / "age_residuals.png")
        curves = {"soft": metrics["age"]["cumulative_score"]}
        if "age_hard_routing" in metrics:
            curves["hard"] = metrics["age_hard_routing"]["cumulative_score"]
        figs["age_cumulative"] = plot_cumulative_score(curves, plots / "age_cumulative_score.png")
        figs["confusion_age_bin"] = plot_confusion(
            metrics["age"]["bin_confusion"], metrics["age"]["bin_labels"], "age bin", plots / "confusion_age_bin.png"
        )
    for grouping in GROUPINGS:
        figs[f"fairness_{grouping}"] = plot_fairness(
            metrics["fairness"][grouping], metrics["headline"], grouping, plots / f"fairness_{grouping}.png"
        )
    if history:
        figs["training"] = plot_training_curves(history, plots / "training_curves.png")
    return figs


def _composition(pred: SplitPredictions) -> dict[str, int]:
    out = {}
    for task in ("gender", "ethnicity"):
        codes = getattr(pred, task)
        out.update({f"{task}: {name}": int((codes == k).sum()) for k, name in enumerate(CLASS_NAMES[task])})
    bands = np.bincount(age_band(pred.age), minlength=len(AGE_BAND_NAMES))
    out.update({f"age {name}": int(c) for name, c in zip(AGE_BAND_NAMES, bands)})
    return out


def _check_out_dir(out_dir: Path, run_dir: Path) -> None:
    """The report folder is replaced whole: never do that to a folder evaluate did not write."""
    out, run, cwd = out_dir.resolve(), run_dir.resolve(), Path.cwd().resolve()
    if out in (run, cwd) or out in run.parents or out in cwd.parents:
        raise InputError(f"--out {out_dir}: holds the run or the current folder; evaluate replaces --out whole")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "report.html").is_file():
        raise InputError(
            f"--out {out_dir}: exists and is not a faceattr report folder; evaluate replaces --out whole, name a new one"
        )


def evaluate_run(
    run_dir: str | Path,
    data_dir: str | Path | None = None,
    split: str = "test",
    out_dir: str | Path | None = None,
    log: Callable[[str], object] = print,
    device: str = "auto",
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict:
    """Evaluate RUN/best.pt on one split of its prepared data and write the report.

    Writes OUT (default RUN/report/: metrics.json, plots/*.png, report.html, replaced whole)
    and RUN/calibration.json (temperatures fitted on the validation split). ``data_dir`` None
    means: find the prepared data the run was trained on. Returns the metrics dict.
    """
    start = time.perf_counter()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: no such run folder")
    if not (run_dir / BEST).is_file():
        raise InputError(f"{run_dir}: no {BEST} (expected a run folder written by faceattr train)")
    ckpt = load_checkpoint(run_dir / BEST)
    data_dir = Path(data_dir) if data_dir is not None else find_data_dir(run_dir, ckpt)
    prepared = load_split_data(data_dir, ckpt, split)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "report"
    _check_out_dir(out_dir, run_dir)
    history = read_history(run_dir / HISTORY)
    extras = [s for folder, _ in EXTRA_SECTIONS if (s := load_extra_section(run_dir / folder))]

    dev = select_device(device)
    model = model_from_checkpoint(ckpt, dev)
    batch = int(ckpt["config"].get("eval_batch_size", 512))
    pred = predict_split(model, ckpt, prepared, split, dev, batch)
    val = pred if split == "val" else predict_split(model, ckpt, prepared, "val", dev, batch)
    age = age_spec(ckpt)
    edges = age.edges if age else None
    metrics = {
        "format": REPORT_FORMAT,
        "faceattr_version": __version__,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "run": str(run_dir),
        "checkpoint": BEST,
        "epoch": int(ckpt["epoch"]) + 1,
        "config_name": ckpt["config"]["name"],
        "tasks": checkpoint_tasks(ckpt),
        "age_head": age.head if age else None,
        "age_routing_temperature": age.routing_temperature if age else 1.0,
        "data_dir": str(data_dir),
        "split": split,
        "split_hash": ckpt["split_hash"],
        "dataset": {k: prepared.manifest.get(k) for k in ("input", "faces_read", "skipped", "duplicates", "split")}
        | {"split_hash": prepared.manifest.get("split_hash")},
        **evaluate_predictions(pred, val, edges, n_boot, seed),
    }
    metrics["composition"] = _composition(pred)
    cal = metrics["calibration"]
    calibration = {
        "temperature": {t: cal[t]["temperature"] for t in CLASS_NAMES if t in cal},
        "fitted_on": "val",
        "checkpoint": BEST,
        "epoch": metrics["epoch"],
        "split_hash": ckpt["split_hash"],
        "n_val": {t: cal[t]["val"]["n"] for t in CLASS_NAMES if t in cal},
        "ece_val": {
            t: {"before": cal[t]["val"]["ece_before"], "after": cal[t]["val"]["ece_after"]}
            for t in CLASS_NAMES
            if t in cal
        },
        "formula": "softmax(log(p) / T)",
    }
    if "age_interval" in metrics:
        ai = metrics["age_interval"]
        calibration["age_interval"] = {k: ai[k] for k in ("coverage", "half_width", "n_per_bin", "method")}

    with replacing_folder(out_dir) as tmp:
        figures = make_figures(metrics, pred, history, tmp / "plots")
        metrics["seconds"] = round(time.perf_counter() - start, 2)
        metrics["plots"] = sorted(str(p.relative_to(tmp)) for p in figures.values())
        write_json(metrics, tmp / "metrics.json")
        (tmp / "report.html").write_text(render_html(metrics, figures, history, extras), encoding="utf-8")
        write_calibration(calibration, run_dir)
    log(
        f"{split} (n={len(pred)}): "
        + ", ".join(
            f"{k} {v['value']:.4f} [{v['ci'][0]:.4f}, {v['ci'][1]:.4f}]"
            for k, v in metrics["headline"].items()
            if v["value"] is not None and v["ci"]
        )
    )
    log(
        "temperature (val): "
        + ", ".join(f"{t} {v:.3f}" for t, v in calibration["temperature"].items())
        + f"; wrote {out_dir / 'report.html'} and {run_dir / CALIBRATION} in {metrics['seconds']:.1f} s"
    )
    return metrics
