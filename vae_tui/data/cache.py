"""Decoded images, kept: a uint8 array (count, channels, height, width) in a memory-mapped file, so
the second run over 50,000 pictures starts in seconds and the data need not fit in memory.

Each entry is three files under the cache folder, named by a key that covers everything the
pixels depend on (the files, their sizes and times, the decoding options): KEY.u8 (the raw array),
KEY.npy (int64 labels, -1 for none) and KEY.json (shape, class names, what was skipped). An entry
is written under temporary names and renamed last, so a run killed while decoding leaves nothing
that looks whole.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vae_tui.runfile.io import atomic_write, write_json

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
        info = path.stat()
        out.append((str(path), info.st_size, info.st_mtime_ns))
    return out


@dataclass
class Decoded:
    """One split's pixels (a memory map, not loaded), labels and what was left out."""

    images: np.ndarray  # uint8 (count, channels, height, width)
    labels: np.ndarray  # int64, -1 where there is no label
    class_names: tuple[str, ...] | None = None
    skipped: list[str] = field(default_factory=list)  # files that could not be read


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


def store(key: str, count: int, shape: tuple[int, int, int], fill: Callable[[np.ndarray], tuple[np.ndarray, list[str]]],
          class_names: tuple[str, ...] | None, folder: Path | None = None) -> Decoded:
    """Make an entry: `fill` writes the pixels of `count` images into the array it is given and
    returns (labels, skipped files); the rows of skipped files are dropped before the entry is kept."""
    folder = folder or cache_folder()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{key}.{os.getpid()}.u8.tmp"
    try:
        images = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(max(count, 1), *shape))
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
    write_json(folder / f"{key}.json", {"format": VERSION, "shape": [kept, *shape], "skipped": skipped,
                                        "class_names": list(class_names) if class_names else None})
    loaded = load(key, folder)
    assert loaded is not None
    return loaded


SKIPPED = -2  # the label of a row whose file could not be read


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
