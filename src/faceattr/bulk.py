"""``faceattr predict`` over many photos: worker threads decode, detect and align photos ahead
of the model (ONNX Runtime, OpenCV and Pillow's decoders release the GIL, so threads use every
core), the main thread runs the classifier on batches of faces and writes results in input
order, and a progress line on stderr shows photos per second."""

from __future__ import annotations

import collections
import itertools
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TextIO

from faceattr.align import DETECT_SIDE
from faceattr.drawing import annotated_name, write_annotated
from faceattr.imageio import ImageLoadError, load_image
from faceattr.inputerror import InputError
from faceattr.inputs import expand_inputs
from faceattr.onnxmodel import usable_cores
from faceattr.predictor import FileResult, load_predictor
from faceattr.writers import ResultWriter

FORMATS = ("table", "json", "jsonl", "csv")
PREFETCH_PER_WORKER = 4  # photos in flight per worker: enough to hide a slow decode, little memory


def predict_files(
    inputs: list[str],
    model: str | Path | None,
    fmt: str = "table",
    annotate: Path | None = None,
    detect: bool = True,
    batch_size: int = 64,
    device: str = "cpu",
    min_score: float = 0.9,
    backend: str | None = None,
    workers: int | None = None,
    detect_size: int = DETECT_SIDE,
    progress: bool | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """`faceattr predict`: every face of every input as a table, JSON or CSV on ``out``; a
    one-line reason on ``err`` for each input that fails, the others still processed; with
    ``annotate``, a copy of each photo with boxes and labels. ``workers`` threads prepare photos
    (default: one per usable core); ``progress`` None shows the progress line when ``err`` is a
    terminal. Returns 1 if any input failed, else 0."""
    out = out or sys.stdout
    err = err or sys.stderr
    if fmt not in FORMATS:
        raise InputError(f"output format {fmt!r}: expected table, json, jsonl or csv")
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: expected a positive number")
    workers = usable_cores() if workers is None else workers
    if workers < 1:
        raise InputError(f"--workers {workers}: expected a positive number")
    files, missing, passed_over = expand_inputs(inputs)
    if annotate is not None:
        make_folder(annotate, "--annotate")  # before the model loads: a bad folder fails fast
    predictor = load_predictor(
        model,
        backend,
        device,
        min_score=min_score,
        batch_size=batch_size,
        max_side=detect_size,
        threads=1 if workers > 1 else None,  # one ONNX Runtime thread per worker: no oversubscription
    )
    if detect:
        predictor.detector  # built once here, not by each worker thread at its first photo  # noqa: B018
    writer = ResultWriter(
        fmt, out, predictor, width=max([len(str(f)) for f in files] + [len(m) for m, _ in missing] + [4])
    )
    n_faces = n_failed = 0
    for name, reason in missing:
        print(f"faceattr predict: {name}: {reason}", file=err)
        writer.add(FileResult(name, [], f"{name}: {reason}"))
        n_failed += 1
    used_names: set[str] = set()
    inputs_resolved = {f.resolve() for f in files}
    bar = Progress(len(files), err, enabled=err.isatty() if progress is None else progress)
    with ThreadPoolExecutor(workers, thread_name_prefix="faceattr-prepare") as pool:
        prepared = ordered_map(pool, lambda f: predictor.prepare(str(f), detect), files, workers * PREFETCH_PER_WORKER)
        for result in predictor.finish_batches(prepared):
            bar.clear()
            if result.error:
                print(f"faceattr predict: {result.error}", file=err)
                n_failed += 1
            else:
                n_faces += len(result.faces)
                if annotate is not None:
                    target = annotated_name(Path(result.source), annotate, used_names, inputs_resolved)
                    try:
                        write_annotated(load_image(result.source), result.faces, target)
                    except (ImageLoadError, OSError) as e:
                        print(f"faceattr predict: {target}: cannot write the annotated copy ({e})", file=err)
                        n_failed += 1
            writer.add(result)
            bar.update()
    bar.close()
    n_files = len(files) + len(missing)
    summary = {"files": n_files, "faces": n_faces, "failed": n_failed, "skipped_not_images": passed_over}
    writer.close(summary)
    skipped = f", {passed_over} non-image files in folders skipped" if passed_over else ""
    print(f"{n_files} files, {n_faces} faces, {n_failed} failed{skipped}", file=out if fmt == "table" else err)
    return 1 if n_failed else 0


def make_folder(folder: Path, option: str) -> None:
    """Create an output folder, or a one-line InputError saying why it cannot be."""
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{option} {folder}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{option} {folder}: cannot create the folder ({e.strerror or e})") from None


def ordered_map(pool: ThreadPoolExecutor, fn: Callable, items: Iterable, window: int) -> Iterator:
    """``fn`` over ``items`` on the pool, results in input order, at most ``window`` in flight
    (so a folder of a million photos never queues a million decoded images)."""
    it = iter(items)
    running = collections.deque(pool.submit(fn, x) for x in itertools.islice(it, window))
    while running:
        result = running.popleft().result()
        running.extend(pool.submit(fn, x) for x in itertools.islice(it, 1))
        yield result


class Progress:
    """A one-line progress display on a terminal: done/total, photos/s, time left."""

    def __init__(self, total: int, stream: TextIO, enabled: bool, every: float = 0.2):
        self.total, self.stream, self.enabled, self.every = total, stream, enabled and total > 0, every
        self.done, self.start, self.last = 0, time.perf_counter(), 0.0

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self.last >= self.every or self.done == self.total):
            self.last = now
            self.stream.write("\r" + self.line(now))
            self.stream.flush()

    def line(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        return f"{self.done}/{self.total} photos  {rate:.1f} photos/s  {elapsed:.0f} s, about {left:.0f} s left"

    def clear(self) -> None:
        """Wipe the line, so a message or a table row printed next starts clean."""
        if self.enabled and self.last:
            self.stream.write("\r\033[K")

    def close(self) -> None:
        if self.enabled and self.last:
            self.stream.write("\n")
            self.stream.flush()
