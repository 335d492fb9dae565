"""The audit's one self-contained HTML page: what was counted and left out, and for each
attribute the shares with their 95 % intervals (the estimator the report shows, next to plain
counting), plus every estimator in a table. Plots are PNGs inside the page."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from faceattr.atomic import atomic_path
from faceattr.figures import new_figure

TITLES = {
    "gender": "Gender",
    "ethnicity": "Ethnicity",
    "age_group": "Age group (FairFace groups)",
    "age_band": "Age band (UTKFace bands)",
    "gender_x_age_group": "Gender × age group",
}
STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 980px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 13px; }
td, th { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.note { color: #555; } img { max-width: 100%; }
"""


def shares_plot(target: dict, shown: str, title: str) -> str:
    """A horizontal bar per class: the shown estimator with its interval, plain counting as a
    hollow marker. Returns a PNG data URL."""
    classes = target["classes"]
    est, cc = target["estimates"][shown], target["estimates"]["cc"]
    fig = new_figure(7.5, 0.32 * len(classes) + 1.2, layout="constrained")
    ax = fig.add_subplot()
    y = list(range(len(classes)))[::-1]
    share = [100 * v for v in est["share"]]
    err = [
        [100 * (s - lo) for s, lo in zip(est["share"], est["low"])],
        [100 * (hi - s) for s, hi in zip(est["share"], est["high"])],
    ]
    ax.barh(y, share, xerr=err, color="#4a7fb5", ecolor="#222", capsize=3, label=f"{shown.upper()} with 95 % interval")
    ax.scatter(
        [100 * v for v in cc["share"]],
        y,
        facecolors="none",
        edgecolors="#c0392b",
        zorder=3,
        label="plain counting (CC)",
    )
    ax.set_yticks(y, classes, fontsize=8)
    ax.set_xlabel("share of faces (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def estimates_table(target: dict) -> str:
    names = list(target["estimates"])
    head = "<tr><th>class</th>" + "".join(f"<th>{n.upper()}</th>" for n in names) + "</tr>"
    rows = []
    for k, cls in enumerate(target["classes"]):
        cells = []
        for n in names:
            e = target["estimates"][n]
            cells.append(
                f"<td>{100 * e['share'][k]:.1f} % <span class=note>[{100 * e['low'][k]:.1f}, {100 * e['high'][k]:.1f}]</span></td>"
            )
        rows.append(f"<tr><td>{html.escape(cls)}</td>{''.join(cells)}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def render(report: dict) -> str:
    c = report["counts"]
    excluded = ", ".join(f"{n} {html.escape(k)}" for k, n in c["faces_excluded"].items())
    failures = ", ".join(f"{n} {html.escape(k)}" for k, n in c["failures_by_reason"].items()) or "none"
    parts = [
        f"<!doctype html><html><head><meta charset=utf-8><title>faceattr audit</title><style>{STYLE}</style></head><body>",
        "<h1>Who is in this collection?</h1>",
        f"<p class=note>{html.escape(report['collection'])} ({report['kind']}), model {html.escape(report['model'])}.</p>",
        f"<p class=note>{html.escape(report['meaning'])}</p>",
        "<h2>What was counted</h2><table>",
        f"<tr><td>photos</td><td>{c['photos']}</td></tr>",
        f"<tr><td>photos with faces / without / failed</td><td>{c['photos_with_faces']} / {c['photos_without_faces']} / {c['photos_failed']}</td></tr>",
        f"<tr><td>failures by reason</td><td>{failures}</td></tr>",
        f"<tr><td>faces found</td><td>{c['faces']}</td></tr>",
        f"<tr><td>faces in the estimates</td><td>{c['faces_included']}</td></tr>",
        f"<tr><td>faces left out (counted, not estimated)</td><td>{excluded}</td></tr>",
        "</table>",
        f"<h2>Estimates</h2><p>Shown: <b>{report['estimator_shown'].upper()}</b>. {html.escape(report['why'])}</p>",
        f"<p class=note>Intervals: 95 % bootstrap ({report['bootstrap']} replicates over the audited faces and the "
        "validation faces the correction is fitted on). CC: classify and count; PCC: mean calibrated probability; "
        "ACC / PACC: CC / PCC corrected with the validation confusion matrix; EM: prior-shift re-weighting.</p>",
    ]
    if not report["targets"]:
        parts.append("<p>No face passed the quality bar: nothing to estimate.</p>")
    for name, target in report["targets"].items():
        title = TITLES.get(name, name)
        parts.append(f"<h3>{html.escape(title)}</h3>")
        parts.append(f"<img alt='{html.escape(title)}' src='{shares_plot(target, report['estimator_shown'], title)}'>")
        parts.append(estimates_table(target))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(report: dict, path: Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(render(report), encoding="utf-8")
    return path
