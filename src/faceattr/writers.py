"""How ``faceattr predict`` writes its results: a table for people, CSV (one row per face),
JSON (one document) or JSON Lines (one line per photo as soon as it is done)."""

from __future__ import annotations

import csv
import json
from typing import TextIO

from faceattr.drawing import top_class
from faceattr.labels import CLASS_NAMES
from faceattr.predictor import FileResult, Predictor

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


class ResultWriter:
    """Streams results as table rows, CSV rows or JSON Lines (one object per input as soon as it
    is done, then a summary line); JSON is one document written at the end."""

    def __init__(self, fmt: str, out: TextIO, predictor: Predictor, width: int):
        self.fmt, self.out, self.width = fmt, out, min(width, 60)
        self.results: list[dict] = []
        self.meta = {
            "model": predictor.source,
            "backend": predictor.backend,
            "calibrated": predictor.calibrated,
            "age_range_coverage": predictor.age_range_coverage,
        }
        self.classes = {t: CLASS_NAMES[t] for t in ("gender", "ethnicity")}
        if fmt == "csv":
            self.csv = csv.writer(out)
            lm = [f"{n}_{c}" for n in LANDMARK_NAMES for c in "xy"]
            probs = [f"p_{t}_{c}" for t, names in self.classes.items() for c in names]
            header = ["file", "face", "x1", "y1", "x2", "y2", "score", *lm, "age", "age_low", "age_high", *probs]
            self.csv.writerow([*header, "error"])
        elif fmt == "jsonl":
            self._line({"type": "meta", **self.meta})
        elif fmt == "table":
            print(
                f"{'file':<{self.width}}  face  {'box (x1,y1,x2,y2)':<24} score  {'age (range)':<16} "
                f"{'gender':<13}  ethnicity",
                file=out,
            )

    def _line(self, obj: dict) -> None:
        self.out.write(json.dumps(obj, separators=(",", ":")) + "\n")

    def add(self, r: FileResult) -> None:
        item = {"file": r.source, "faces": [f.to_dict() for f in r.faces]}
        item = {**item, "error": r.error} if r.error else item
        if self.fmt == "json":
            self.results.append(item)
        elif self.fmt == "jsonl":
            self._line({"type": "result", **item})
        elif self.fmt == "csv":
            self._csv_rows(r)
        else:
            self._table_rows(r)
        self.out.flush()

    def _csv_rows(self, r: FileResult) -> None:
        blank_probs = [""] * sum(len(v) for v in self.classes.values())
        if r.error or not r.faces:
            self.csv.writerow([r.source, "", "", "", "", "", "", *[""] * 10, "", "", "", *blank_probs, r.error or ""])
            return
        for k, f in enumerate(r.faces, 1):
            d = f.to_dict()
            lm = [v for pt in d["landmarks"] for v in pt] if d["landmarks"] else [""] * 10
            probs = []
            for task, names in self.classes.items():
                probs += [d[task][c] if d[task] else "" for c in names]
            score = "" if d["score"] is None else d["score"]
            age = "" if d["age"] is None else d["age"]
            low, high = d["age_range"] or ("", "")
            self.csv.writerow([r.source, k, *d["box"], score, *lm, age, low, high, *probs, ""])

    def _table_rows(self, r: FileResult) -> None:
        name = r.source if len(r.source) <= self.width else "…" + r.source[-self.width + 1 :]
        if r.error:
            print(f"{name:<{self.width}}     -  failed (see the message above)", file=self.out)
            return
        if not r.faces:
            print(f"{name:<{self.width}}     -  no face", file=self.out)
            return
        for k, f in enumerate(r.faces, 1):
            box = "(" + ",".join(f"{v:.0f}" for v in f.box) + ")"
            score = "    -" if f.score is None else f"{f.score:5.2f}"
            age = "-" if f.age is None else f"{f.age:.1f}"
            age += "" if f.age_range is None else f" ({f.age_range[0]:.0f}-{f.age_range[1]:.0f})"
            print(
                f"{name:<{self.width}}  {k:>4}  {box:<24} {score}  {age:<16} {top_class(f.gender):<13}  {top_class(f.ethnicity)}",
                file=self.out,
            )

    def close(self, summary: dict) -> None:
        if self.fmt == "json":
            json.dump({**self.meta, "results": self.results, "summary": summary}, self.out, indent=2)
            self.out.write("\n")
        elif self.fmt == "jsonl":
            self._line({"type": "summary", **summary})
