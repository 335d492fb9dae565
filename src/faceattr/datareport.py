"""The data report: label distributions, split balance and duplicate pairs, as plots, JSON and Markdown.

Plot functions take arrays and a path and return the path; ``write_data_report`` ties them
together into ``data_report.json`` (the numbers) and ``data_report.md`` (rendered from that JSON only).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from faceattr.atomic import atomic_path, write_json
from faceattr.dataset import FaceData
from faceattr.figures import new_figure, save_figure, show_image
from faceattr.labels import AGE_BAND_NAMES, ETHNICITIES, EXCLUDED, GENDERS, SPLITS
from faceattr.split import age_band

SPLIT_VALUES = (*SPLITS, EXCLUDED)  # what the split column may hold; the report covers each
DPI = 110
PLOT_FILES = {
    "age_histogram": "age_histogram.png",
    "ethnicity_counts": "ethnicity_counts.png",
    "gender_counts": "gender_counts.png",
    "ethnicity_by_gender": "ethnicity_by_gender.png",
    "age_by_ethnicity": "age_by_ethnicity.png",
    "duplicate_pairs": "duplicate_pairs.png",
}
SPLIT_TABLE_FILE = "split_distribution.csv"
MAX_LISTED_CONFLICTS = 50


def plot_age_histogram(age: np.ndarray, path: str | Path) -> Path:
    """Histogram of ages with one bar per year. age: int (N,)."""
    age = np.asarray(age)
    fig = new_figure(8, 3.5)
    ax = fig.add_subplot()
    if len(age):
        # Bin edges at half years so every integer age gets its own bar (UTKFace has spikes at 1 and 26).
        ax.hist(age, bins=np.arange(-0.5, age.max() + 1.5), color="tab:blue")
        ax.set_title(f"Age, n={len(age)}, median {np.median(age):g}, range {age.min()}-{age.max()}")
    else:
        ax.set_title("Age: no faces")
    ax.set_xlabel("age (years)")
    ax.set_ylabel("faces")
    return save_figure(fig, path, DPI)


def plot_class_counts(
    labels: np.ndarray,
    class_names: tuple[str, ...] | list[str],
    title: str,
    path: str | Path,
) -> Path:
    """Bar chart of how many faces carry each class, each bar labelled with count and share. labels: int (N,)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))[: len(class_names)]
    total = max(int(counts.sum()), 1)
    fig = new_figure(1.2 * len(class_names) + 2, 3.5)
    ax = fig.add_subplot()
    bars = ax.bar(list(class_names), counts, color="tab:blue")
    ax.bar_label(bars, labels=[f"{c}\n({100 * c / total:.1f}%)" for c in counts], fontsize=8)
    # Headroom so the two-line labels above the tallest bar are not clipped.
    ax.set_ylim(0, max(int(counts.max()), 1) * 1.25)
    ax.set_ylabel("faces")
    ax.set_title(title)
    return save_figure(fig, path, DPI)


def _crosstab(ethnicity: np.ndarray, gender: np.ndarray) -> np.ndarray:
    counts = np.zeros((len(ETHNICITIES), len(GENDERS)), dtype=np.int64)
    np.add.at(
        counts,
        (np.asarray(ethnicity, dtype=np.int64), np.asarray(gender, dtype=np.int64)),
        1,
    )
    return counts


def plot_ethnicity_by_gender(ethnicity: np.ndarray, gender: np.ndarray, path: str | Path) -> Path:
    """Heat map of face counts, ethnicity rows by gender columns. ethnicity, gender: int (N,)."""
    counts = _crosstab(ethnicity, gender)
    fig = new_figure(4.5, 4)
    ax = fig.add_subplot()
    im = ax.imshow(counts, cmap="Blues", vmin=0)
    peak = max(int(counts.max()), 1)
    for (row, col), count in np.ndenumerate(counts):
        ax.text(
            col,
            row,
            str(count),
            ha="center",
            va="center",
            color="white" if count > peak / 2 else "black",
        )
    ax.set_xticks(range(len(GENDERS)), GENDERS)
    ax.set_yticks(range(len(ETHNICITIES)), ETHNICITIES)
    ax.set_title("Faces by ethnicity and gender")
    fig.colorbar(im, ax=ax, label="faces")
    return save_figure(fig, path, DPI)


def plot_age_by_ethnicity(age: np.ndarray, ethnicity: np.ndarray, path: str | Path) -> Path:
    """Box plot of age per ethnicity (mean marked, n in the tick labels). age, ethnicity: int (N,)."""
    age = np.asarray(age)
    ethnicity = np.asarray(ethnicity)
    groups = [age[ethnicity == k] for k in range(len(ETHNICITIES))]
    positions = list(range(1, len(ETHNICITIES) + 1))
    fig = new_figure(7, 4)
    ax = fig.add_subplot()
    ax.boxplot(groups, positions=positions, showmeans=True)
    ax.set_xticks(positions, [f"{name}\nn={len(g)}" for name, g in zip(ETHNICITIES, groups, strict=True)])
    ax.set_ylabel("age (years)")
    ax.set_title("Age by ethnicity")
    return save_figure(fig, path, DPI)


def _conflicts_from_text(pairs: np.ndarray, labels_text: list[str]) -> np.ndarray:
    # Texts read "age gender ethnicity"; an age gap alone is not a label conflict.
    def rest(i: int) -> list[str]:
        return labels_text[i].split()[1:]

    return np.array([rest(a) != rest(b) for a, b in pairs], dtype=bool)


def plot_duplicate_montage(
    images: np.ndarray,
    pairs: np.ndarray,
    labels_text: list[str],
    path: str | Path,
    max_pairs: int = 24,
    conflicts: np.ndarray | None = None,
    pair_mad: np.ndarray | None = None,
) -> Path:
    """Duplicate pairs side by side, titled with their labels; pairs with differing labels in red.

    images: uint8 (N, H, W) or (N, H, W, 3). pairs: int (P, 2) row indices into images.
    labels_text: one string per image, e.g. "29 F Asian". conflicts: bool (P,) marking pairs whose
    gender or ethnicity differ; when None, pairs whose texts differ past the leading age are marked.
    pair_mad: optional float (P,) pixel mean absolute difference, shown under the left face.
    Conflicting pairs are shown first, so with more than max_pairs none of them is cut.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if len(pairs) == 0:
        fig = new_figure(4, 1.5)
        fig.text(0.5, 0.5, "no duplicates", ha="center", va="center", fontsize=14)
        return save_figure(fig, path, DPI)
    conflicts = _conflicts_from_text(pairs, labels_text) if conflicts is None else np.asarray(conflicts, dtype=bool)
    # Stable sort keeps the caller's order within conflicting and within agreeing pairs.
    order = np.argsort(~conflicts, kind="stable")[:max_pairs]
    pairs_per_row = min(4, len(order))
    rows = -(-len(order) // pairs_per_row)
    fig = new_figure(2 * pairs_per_row * 1.4, rows * 1.7 + 0.5)
    fig.set_layout_engine("constrained")
    # A narrow empty column after every pair keeps each pair visibly together.
    grid = fig.add_gridspec(rows, 3 * pairs_per_row, width_ratios=[1, 1, 0.25] * pairs_per_row)
    for slot, p in enumerate(order):
        flagged = bool(conflicts[p])
        row, col = divmod(slot, pairs_per_row)
        for side in range(2):
            ax = fig.add_subplot(grid[row, 3 * col + side])
            face = int(pairs[p, side])
            show_image(ax, images[face], frame=True)
            ax.set_title(labels_text[face], fontsize=7, color="red" if flagged else "black")
            if flagged:
                for spine in ax.spines.values():
                    spine.set_color("red")
                    spine.set_linewidth(2)
            if side == 0 and pair_mad is not None:
                ax.set_xlabel(f"pair MAD {float(pair_mad[p]):.2f}", fontsize=6, loc="left")
    shown = f"{len(order)} of {len(pairs)} pairs" if len(order) < len(pairs) else f"{len(pairs)} pairs"
    fig.suptitle(
        f"Duplicate pairs: {shown}, {int(conflicts.sum())} with differing labels (red)",
        fontsize=10,
    )
    return save_figure(fig, path, DPI)


def _codes_checked(name: str, values: np.ndarray, n_classes: int) -> np.ndarray:
    values = np.asarray(values, dtype=np.int64)
    bad = (values < 0) | (values >= n_classes)
    if bad.any():
        raise ValueError(f"{name} codes must lie in 0..{n_classes - 1}, got {sorted(set(values[bad].tolist()))}")
    return values


def label_stats(age: np.ndarray, gender: np.ndarray, ethnicity: np.ndarray) -> dict[str, Any]:
    """Counts per ethnicity, gender, ethnicity x gender and age band, plus age min/median/mean/max."""
    eth_counts = np.bincount(ethnicity, minlength=len(ETHNICITIES))
    gender_counts = np.bincount(gender, minlength=len(GENDERS))
    cross = _crosstab(ethnicity, gender)
    bands = np.bincount(age_band(age), minlength=len(AGE_BAND_NAMES))
    has = len(age) > 0
    return {
        "n": len(age),
        "ethnicity": {name: int(c) for name, c in zip(ETHNICITIES, eth_counts, strict=True)},
        "gender": {name: int(c) for name, c in zip(GENDERS, gender_counts, strict=True)},
        "ethnicity_by_gender": {
            eth: {g: int(cross[i, j]) for j, g in enumerate(GENDERS)} for i, eth in enumerate(ETHNICITIES)
        },
        "age": {
            "min": int(age.min()) if has else None,
            "median": float(np.median(age)) if has else None,
            "mean": round(float(age.mean()), 2) if has else None,
            "max": int(age.max()) if has else None,
        },
        "age_bands": {band: int(c) for band, c in zip(AGE_BAND_NAMES, bands, strict=True)},
    }


def _duplicate_stats(
    ids: np.ndarray,
    age: np.ndarray,
    gender: np.ndarray,
    ethnicity: np.ndarray,
    split: np.ndarray,
    pairs: np.ndarray,
    pair_mad: np.ndarray,
) -> dict[str, Any]:
    a, b = pairs[:, 0], pairs[:, 1]
    gender_diff = gender[a] != gender[b]
    eth_diff = ethnicity[a] != ethnicity[b]
    conflicts = gender_diff | eth_diff
    age_gap = np.abs(age[a] - age[b])
    # Dedupe must keep each group inside one split; excluded faces take no part in training or scoring.
    kept = (split[a] != EXCLUDED) & (split[b] != EXCLUDED)
    listed = np.flatnonzero(conflicts)[:MAX_LISTED_CONFLICTS]
    return {
        "pairs": len(pairs),
        "gender_conflicts": int(gender_diff.sum()),
        "ethnicity_conflicts": int(eth_diff.sum()),
        "label_conflicts": int(conflicts.sum()),
        "age_gap": {
            "median": float(np.median(age_gap)) if len(pairs) else None,
            "max": int(age_gap.max()) if len(pairs) else None,
        },
        "mad": {
            "min": round(float(pair_mad.min()), 3) if len(pairs) else None,
            "median": round(float(np.median(pair_mad)), 3) if len(pairs) else None,
            "max": round(float(pair_mad.max()), 3) if len(pairs) else None,
        },
        "pairs_across_splits": int((kept & (split[a] != split[b])).sum()),
        "conflicts_listed": [
            {
                "ids": [str(ids[a[p]]), str(ids[b[p]])],
                "age": [int(age[a[p]]), int(age[b[p]])],
                "gender": [GENDERS[gender[a[p]]], GENDERS[gender[b[p]]]],
                "ethnicity": [
                    ETHNICITIES[ethnicity[a[p]]],
                    ETHNICITIES[ethnicity[b[p]]],
                ],
                "mad": round(float(pair_mad[p]), 3),
            }
            for p in listed
        ],
    }


def _write_split_table(per_split: dict[str, dict[str, Any]], path: Path) -> Path:
    header = ["split", "n"]
    header += [f"ethnicity:{e}" for e in ETHNICITIES] + [f"gender:{g}" for g in GENDERS]
    header += [f"age:{band}" for band in AGE_BAND_NAMES]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for name, stats in per_split.items():
            row = [name, stats["n"]] + list(stats["ethnicity"].values()) + list(stats["gender"].values())
            writer.writerow(row + list(stats["age_bands"].values()))
    return path


def write_data_report(
    out_dir: str | Path,
    data: FaceData,
    split: np.ndarray,
    summary: dict,
    pairs: np.ndarray,
    pair_mad: np.ndarray,
) -> dict:
    """Write plots, ``data_report.json`` and ``data_report.md`` into out_dir; return the JSON as a dict.

    split: str (N,) with values in SPLIT_VALUES. summary: counts and dedupe statistics computed elsewhere,
    stored untouched under "summary". pairs: int (P, 2) duplicate row indices into data.
    pair_mad: float (P,) pixel mean absolute difference of each pair.
    """
    out_dir = Path(out_dir)
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    n = len(data)
    split = np.asarray(split).astype(str)
    if split.shape != (n,):
        raise ValueError(f"split must have one entry per face, shape ({n},), got {split.shape}")
    unknown = sorted(set(split.tolist()) - set(SPLIT_VALUES))
    if unknown:
        raise ValueError(f"split values must be in {SPLIT_VALUES}, got {unknown}")
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    pair_mad = np.asarray(pair_mad, dtype=np.float64).reshape(-1)
    if len(pair_mad) != len(pairs):
        raise ValueError(f"pair_mad must have one value per pair ({len(pairs)}), got {len(pair_mad)}")
    if len(pairs) and (pairs.min() < 0 or pairs.max() >= n):
        raise ValueError(f"pairs must index rows 0..{n - 1}, got values {pairs.min()}..{pairs.max()}")

    age = np.asarray(data.age, dtype=np.int64)
    gender = _codes_checked("gender", data.gender, len(GENDERS))
    ethnicity = _codes_checked("ethnicity", data.ethnicity, len(ETHNICITIES))
    conflicts = (gender[pairs[:, 0]] != gender[pairs[:, 1]]) | (ethnicity[pairs[:, 0]] != ethnicity[pairs[:, 1]])
    labels_text = [
        f"{a} {GENDERS[g][0].upper()} {ETHNICITIES[e]}" for a, g, e in zip(age, gender, ethnicity, strict=True)
    ]

    plot_age_histogram(age, plot_dir / PLOT_FILES["age_histogram"])
    plot_class_counts(
        ethnicity,
        ETHNICITIES,
        "Faces per ethnicity",
        plot_dir / PLOT_FILES["ethnicity_counts"],
    )
    plot_class_counts(gender, GENDERS, "Faces per gender", plot_dir / PLOT_FILES["gender_counts"])
    plot_ethnicity_by_gender(ethnicity, gender, plot_dir / PLOT_FILES["ethnicity_by_gender"])
    plot_age_by_ethnicity(age, ethnicity, plot_dir / PLOT_FILES["age_by_ethnicity"])
    plot_duplicate_montage(
        data.images,
        pairs,
        labels_text,
        plot_dir / PLOT_FILES["duplicate_pairs"],
        conflicts=conflicts,
        pair_mad=pair_mad,
    )
    per_split = {s: label_stats(age[split == s], gender[split == s], ethnicity[split == s]) for s in SPLIT_VALUES}
    _write_split_table(per_split, plot_dir / SPLIT_TABLE_FILE)

    report = {
        "source": str(data.source),
        "n": n,
        "image_shape": list(data.images.shape[1:]),
        "summary": summary,
        "labels": label_stats(age, gender, ethnicity),
        "splits": per_split,
        "duplicates": _duplicate_stats(data.ids, age, gender, ethnicity, split, pairs, pair_mad),
        "plots": {key: f"plots/{name}" for key, name in PLOT_FILES.items()},
        "split_table": f"plots/{SPLIT_TABLE_FILE}",
    }
    path = write_json(report, out_dir / "data_report.json")
    # Read back so the returned dict is exactly what the file holds (plain types, string keys).
    report = json.loads(path.read_text())
    with atomic_path(out_dir / "data_report.md") as tmp:
        tmp.write_text(render_markdown(report))
    return report


def _pct(count: int, total: int) -> str:
    return f"{100 * count / total:.1f}%" if total else "-"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        items: list[tuple[str, Any]] = []
        for key, sub in value.items():
            items += _flatten(sub, f"{prefix}.{key}" if prefix else str(key))
        return items
    return [(prefix, value)]


def render_markdown(report: dict) -> str:
    """The Markdown data report, built only from the dict that ``write_data_report`` returns."""
    labels, splits, dups, plots = (
        report["labels"],
        report["splits"],
        report["duplicates"],
        report["plots"],
    )
    n = report["n"]
    out = [
        "# Data report",
        "",
        f"Source: `{report['source']}`. {n} faces, image shape {tuple(report['image_shape'])}.",
        "",
        "## Summary",
        "",
    ]
    summary = _flatten(report["summary"])
    out += _table(["item", "value"], [[f"`{k}`", v] for k, v in summary]) if summary else ["(empty)"]

    out += [
        "",
        "## Labels",
        "",
        f"![faces per ethnicity]({plots['ethnicity_counts']})",
        "",
    ]
    out += _table(
        ["ethnicity", "faces", "share"],
        [[k, c, _pct(c, n)] for k, c in labels["ethnicity"].items()],
    )
    out += ["", f"![faces per gender]({plots['gender_counts']})", ""]
    out += _table(
        ["gender", "faces", "share"],
        [[k, c, _pct(c, n)] for k, c in labels["gender"].items()],
    )
    out += ["", f"![ethnicity by gender]({plots['ethnicity_by_gender']})", ""]
    out += _table(
        ["ethnicity", *labels["gender"], "female share"],
        [
            [eth, *row.values(), _pct(row.get("female", 0), sum(row.values()))]
            for eth, row in labels["ethnicity_by_gender"].items()
        ],
    )

    age = labels["age"]
    out += ["", "## Age", "", f"![age histogram]({plots['age_histogram']})", ""]
    out += _table(
        ["min", "median", "mean", "max"],
        [[age["min"], age["median"], age["mean"], age["max"]]],
    )
    out += [""]
    out += _table(
        ["age band", "faces", "share"],
        [[k, c, _pct(c, n)] for k, c in labels["age_bands"].items()],
    )
    out += ["", f"![age by ethnicity]({plots['age_by_ethnicity']})"]

    out += [
        "",
        "## Splits",
        "",
        (
            "Shares within each split; a stratified split shows near-equal rows. "
            f"Counts per split: [{report['split_table']}]({report['split_table']})."
        ),
        "",
    ]
    header = [
        "split",
        "faces",
        "of all",
        *labels["ethnicity"],
        *labels["gender"],
        "median age",
    ]
    rows = [
        [name, s["n"], _pct(s["n"], n)]
        + [_pct(c, s["n"]) for c in s["ethnicity"].values()]
        + [_pct(c, s["n"]) for c in s["gender"].values()]
        + [s["age"]["median"] if s["age"]["median"] is not None else "-"]
        for name, s in splits.items()
    ]
    out += _table(header, rows)
    out += [""]
    out += _table(
        ["split", *labels["age_bands"]],
        [[name, *(_pct(c, s["n"]) for c in s["age_bands"].values())] for name, s in splits.items()],
    )

    out += [
        "",
        "## Duplicates",
        "",
        (
            f"{dups['pairs']} duplicate pairs; {dups['label_conflicts']} with differing labels "
            f"({dups['gender_conflicts']} gender, {dups['ethnicity_conflicts']} ethnicity); "
            f"{dups['pairs_across_splits']} pairs cross between train/val/test."
        ),
        "",
    ]
    if dups["pairs"]:
        out += _table(
            ["", "min", "median", "max"],
            [
                [
                    "pixel MAD",
                    dups["mad"]["min"],
                    dups["mad"]["median"],
                    dups["mad"]["max"],
                ],
                [
                    "age gap (years)",
                    "",
                    dups["age_gap"]["median"],
                    dups["age_gap"]["max"],
                ],
            ],
        )
        out += [""]
    if dups["conflicts_listed"]:
        out += _table(
            ["ids", "age", "gender", "ethnicity", "MAD"],
            [
                [
                    " / ".join(c["ids"]),
                    " / ".join(map(str, c["age"])),
                    " / ".join(c["gender"]),
                    " / ".join(c["ethnicity"]),
                    c["mad"],
                ]
                for c in dups["conflicts_listed"]
            ],
        )
        out += [""]
    out += [f"![duplicate pairs]({plots['duplicate_pairs']})", ""]
    return "\n".join(out)
