"""A photo collection as `faceattr audit` reads it: a folder (recursive), a tar or zip archive
of images, or a list of paths (.txt one per line, .csv or .parquet with a ``path`` column or
its first column). It is cut into shards of photos in a fixed order, so that an interrupted
audit can skip the shards it finished; archive members travel as bytes (a worker cannot seek
in a .tar.gz), files as paths (a cluster's workers must see the same files).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import itertools
import os
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from faceattr.imageio import PHOTO_SUFFIXES
from faceattr.inputerror import InputError
from faceattr.inputs import expand_inputs

ARCHIVES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")
LISTS = (".txt", ".csv", ".parquet")


@dataclass(frozen=True)
class Item:
    """One photo of a collection: ``key`` names it in every output (a path, or
    ``archive::member``); ``path`` is the file to read, or ``data`` its bytes; ``error`` is
    why it cannot be read at all (a broken link found while listing a folder)."""

    key: str
    path: str | None = None
    data: bytes | None = None
    error: str | None = None


def kind_of(collection: Path) -> str:
    """folder, archive or list; InputError for anything else."""
    name = collection.name.lower()
    if collection.is_dir():
        return "folder"
    if not collection.exists():
        raise InputError(f"{collection}: no such file or folder")
    if name.endswith(ARCHIVES):
        return "archive"
    if name.endswith(LISTS):
        return "list"
    raise InputError(
        f"{collection}: expected a folder, an archive ({', '.join(ARCHIVES)}) or a list of paths ({', '.join(LISTS)})"
    )


def fingerprint(collection: Path) -> str:
    """What identifies the collection's content cheaply: for a folder the names and sizes of
    its files, for a file its size and modification time."""
    h = hashlib.sha256(str(collection.resolve()).encode())
    if collection.is_dir():
        for f in sorted(collection.rglob("*")):
            with contextlib.suppress(OSError):  # a file gone or unreadable while listing
                h.update(f"{f.relative_to(collection)}:{f.stat().st_size}\n".encode())
    else:
        st = collection.stat()
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def shards(collection: Path, size: int) -> Iterator[list[Item]]:
    """The collection's photos in a fixed order, ``size`` at a time."""
    if size < 1:
        raise InputError(f"--shard-size {size}: expected a positive number")
    items = {"folder": _folder, "archive": _archive, "list": _listed}[kind_of(collection)](collection)
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def _folder(folder: Path) -> Iterator[Item]:
    files, failed, _ = expand_inputs([str(folder)])
    named = {str(f): Item(str(f), path=str(f)) for f in files}
    for key, reason in failed:
        if key != str(folder) or not reason.startswith("folder holds no image"):
            named[key] = Item(key, error=reason)
    yield from (named[k] for k in sorted(named))


MAX_MEMBER_BYTES = 50_000_000  # an archive member larger than this is no photo worth reading


def _archive(archive: Path) -> Iterator[Item]:
    """The image members of a zip or tar, each read on its own: a member that cannot be read
    (unsupported compression, encrypted, bad checksum, too large) becomes a counted failure."""
    if archive.name.lower().endswith(".zip"):
        try:
            zf = zipfile.ZipFile(archive)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise InputError(f"{archive}: not a readable zip archive ({e})") from None
        with zf:
            for info in zf.infolist():
                if info.is_dir() or not info.filename.lower().endswith(PHOTO_SUFFIXES):
                    continue
                key = f"{archive.name}::{info.filename}"
                if info.file_size > MAX_MEMBER_BYTES:
                    yield Item(key, error=f"{info.file_size:,} bytes, over the {MAX_MEMBER_BYTES:,}-byte limit")
                    continue
                try:
                    yield Item(key, data=zf.read(info))
                except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, EOFError) as e:
                    yield Item(key, error=f"cannot be read from the archive ({type(e).__name__}: {e})")
        return
    try:
        with tarfile.open(archive, "r|*") as tf:  # a stream: one pass, whatever the compression
            for member in tf:
                if not (member.isfile() and member.name.lower().endswith(PHOTO_SUFFIXES)):
                    continue
                key = f"{archive.name}::{member.name}"
                if member.size > MAX_MEMBER_BYTES:
                    yield Item(key, error=f"{member.size:,} bytes, over the {MAX_MEMBER_BYTES:,}-byte limit")
                    continue
                f = tf.extractfile(member)
                yield Item(key, data=f.read() if f else b"")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise InputError(f"{archive}: not a readable tar archive ({e})") from None


def _listed(listing: Path) -> Iterator[Item]:
    """Paths named in a list; relative paths are relative to the list's folder. A named file
    that does not exist becomes a failure of its own when read, never silently dropped."""
    base = listing.parent
    for raw in _list_entries(listing):
        entry = raw.strip()
        if not entry:
            continue
        path = Path(entry) if os.path.isabs(entry) else base / entry
        yield Item(entry, path=str(path))


def _list_entries(listing: Path) -> list[str]:
    name = listing.name.lower()
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(listing)
        except Exception as e:  # pyarrow raises several types for a foreign file
            raise InputError(f"{listing}: not a readable Parquet file ({str(e).splitlines()[0][:120]})") from None
        column = "path" if "path" in table.column_names else table.column_names[0]
        return [str(v) for v in table.column(column).to_pylist() if v is not None]
    text = listing.read_text(encoding="utf-8", errors="surrogateescape")
    if name.endswith(".csv"):
        rows = list(csv.reader(io.StringIO(text)))
        if not rows:
            return []
        header = [h.strip().lower() for h in rows[0]]
        column = header.index("path") if "path" in header else 0
        return [r[column] for r in rows[1:] if len(r) > column]
    return text.splitlines()
