"""Decoded images, kept: a uint8 array (count, channels, height, width) in a memory-mapped file, so
the second run over 50,000 pictures starts in seconds and the data need not fit in memory.

Each entry is three files under the cache folder, named by a key that covers everything the
pixels depend on (the files, their sizes and times, the decoding options): KEY.u8 (the raw array),
KEY.npy (int64 labels, -1 for none) and KEY.json (shape, class names, what was skipped, and the
source: which folder and split it holds). An entry is written under temporary names and renamed
last, so a run killed while decoding leaves nothing that looks whole. A new entry for a source
deletes the older ones for it (a folder's pictures changed): the cache holds one copy of each.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vae_tui.runfile.io import atomic_write, os_reason, write_json

VERSION = 1  # of how images are decoded: a change here must not reuse older entries


def cache_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vae-tui" / "decoded"


def key_of(*parts: Any) -> str:
    """A short name for everything the decoded pixels depend on."""
    return hashlib.sha256(json.dumps([VERSION, *parts], sort_keys=True, default=str).encode()).hexdigest()[:24]


def files_signature(paths: list[Path]) -> list[tuple[str, int, int]]:
    """Each file with its size and modification time: a changed or added file changes the key."""
    out = []
    for path in paths:
        info = path.stat() if path.exists() else path.lstat()  # a link to nothing: the link itself
        out.append((str(path), info.st_size, info.st_mtime_ns))
    return out


@dataclass
class Decoded:
    """One split's pixels (a memory map, not loaded), labels and what was left out."""

    images: np.ndarray  # uint8 (count, channels, height, width)
    labels: np.ndarray  # int64, -1 where there is no label
    class_names: tuple[str, ...] | None = None
    skipped: list[str] = field(default_factory=list)  # files that could not be read
    problem: str | None = None  # why it is not kept in the cache, when it could not be


def recall(key: str, folder: Path | None = None) -> dict[str, Any] | None:
    """A small record kept beside the entries (what a folder's pictures' size resolved to), or None."""
    try:
        record = json.loads(((folder or cache_folder()) / f"{key}.json").read_text(encoding="utf-8")).get("record")
    except (OSError, ValueError, AttributeError):
        return None
    return record if isinstance(record, dict) else None


def remember(key: str, source: str, record: dict[str, Any], folder: Path | None = None) -> None:
    """Keep a small record; where the cache cannot be written it is simply not kept."""
    folder = folder or cache_folder()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / f"{key}.json", {"format": VERSION, "source": source, "record": record})
    except OSError:
        return
    _drop_replaced(folder, key, source)


def problems(*entries: Decoded) -> list[str]:
    """Why entries are not kept, each reason once."""
    return list(dict.fromkeys(e.problem for e in entries if e.problem))


def load(key: str, folder: Path | None = None) -> Decoded | None:
    """The entry, or None when there is none (or it is damaged: it will be made again)."""
    folder = folder or cache_folder()
    try:
        meta = json.loads((folder / f"{key}.json").read_text(encoding="utf-8"))
        images = np.memmap(folder / f"{key}.u8", dtype=np.uint8, mode="r", shape=tuple(meta["shape"]))
        labels = np.load(folder / f"{key}.npy", allow_pickle=False)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if len(labels) != len(images):
        return None
    names = tuple(meta["class_names"]) if meta.get("class_names") else None
    return Decoded(images, labels, names, list(meta.get("skipped", [])))


def store(
    key: str,
    source: str,
    count: int,
    shape: tuple[int, int, int],
    fill: Callable[[np.ndarray], tuple[np.ndarray, list[str]]],
    class_names: tuple[str, ...] | None,
    folder: Path | None = None,
) -> Decoded:
    """Make an entry: `fill` writes the pixels of `count` images into the array it is given and
    returns (labels, skipped files); the rows of skipped files are dropped before the entry is kept.
    `source` names what the entry holds, whatever version of its files: the entries it replaces.
    Where the cache cannot be written, the pictures are decoded into memory and the entry says why."""
    folder = folder or cache_folder()
    try:
        return _store_on_disk(key, source, count, shape, fill, class_names, folder)
    except OSError as exc:
        images = np.empty((count, *shape), dtype=np.uint8)
        labels, skipped = fill(images)
        keep = labels != SKIPPED
        reason = os_reason(exc, folder)
        problem = (
            f"decoded pictures cannot be kept in {folder}: {reason[0].lower()}{reason[1:]}; they are decoded "
            "again each run (set XDG_CACHE_HOME to a folder that can hold them)"
        )
        return Decoded(images[keep], labels[keep], class_names, skipped, problem)


def _store_on_disk(
    key: str,
    source: str,
    count: int,
    shape: tuple[int, int, int],
    fill: Callable[[np.ndarray], tuple[np.ndarray, list[str]]],
    class_names: tuple[str, ...] | None,
    folder: Path,
) -> Decoded:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{key}.{os.getpid()}.u8.tmp"
    try:
        rows = max(count, 1)
        with open(tmp, "wb") as f:
            _claim(f.fileno(), rows * int(np.prod(shape)))
        images = np.memmap(tmp, dtype=np.uint8, mode="r+", shape=(rows, *shape))
        labels, skipped = fill(images[:count])
        keep = labels != SKIPPED
        images.flush()
        kept = int(keep.sum())
        if kept < count:
            _compact(images, keep, tmp)
        del images
        atomic_write(folder / f"{key}.npy", _npy(labels[keep]))
        os.replace(tmp, folder / f"{key}.u8")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    write_json(
        folder / f"{key}.json",
        {"format": VERSION, "shape": [kept, *shape], "skipped": skipped, "class_names": list(class_names) if class_names else None, "source": source},
    )
    _drop_replaced(folder, key, source)
    loaded = load(key, folder)
    if loaded is None:
        raise OSError(f"the entry written to {folder} cannot be read back")
    return loaded


SKIPPED = -2  # the label of a row whose file could not be read


def _claim(fd: int, size: int) -> None:
    """Give the file its size with every block claimed now, where the file system can: a full disk
    is then an error here, not a crash when a page of the memory map is first written."""
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except AttributeError:  # not on this system
        pass
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    os.ftruncate(fd, size)


def _drop_replaced(folder: Path, key: str, source: str) -> None:
    """Delete the other entries for the same source. A run still reading one keeps its memory map
    (the file lives on until it is closed)."""
    for meta_path in folder.glob("*.json"):
        old = meta_path.stem
        if old == key:
            continue
        try:
            if json.loads(meta_path.read_text(encoding="utf-8")).get("source") != source:
                continue
        except (OSError, ValueError, AttributeError):
            continue
        for suffix in (".u8", ".npy", ".json"):
            (folder / f"{old}{suffix}").unlink(missing_ok=True)


def _compact(images: np.memmap, keep: np.ndarray, path: Path) -> None:
    """Move the rows that are kept to the front, in order, and cut the file to them."""
    write = 0
    for read in np.flatnonzero(keep):
        if read != write:
            images[write] = images[read]
        write += 1
    images.flush()
    row = int(np.prod(images.shape[1:]))
    os.truncate(path, max(write, 1) * row)


def _npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
