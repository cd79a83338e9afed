"""A folder of pictures as a dataset, the way torchvision's ImageFolder reads one.

Sub-folders name the classes (a flat folder has no labels); every file Pillow can open is an
image. Each picture is resized so its shorter side is --image-size and cropped at the centre to
a square, in colour or grey (--channels). 10% of the files, chosen by a hash of their names (so
the split stays put as files are added), are held out for testing, unless --test-dir gives the
test pictures. Decoding happens once, in parallel, into the uint8 cache (cache.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from vae_tui.data import cache
from vae_tui.data.images import ImageData
from vae_tui.errors import ConfigError, VaeTuiError

Progress = Callable[[int, int, str], None]  # (done, total, what)
DEFAULT_SIZE = 64  # when the pictures do not all have one size
MAX_SIZE = 1024
CHUNK = 64  # pictures a decoding task takes: few enough to report progress, many enough to be cheap
PARALLEL_FROM = 1024  # pictures from which decoding is spread over processes (starting them costs a second)


class DataError(VaeTuiError):
    """Missing, unreadable or unusable data."""


def image_files(folder: Path) -> tuple[list[Path], list[int], tuple[str, ...] | None]:
    """The pictures under `folder`, sorted, their class indices, and the class names (None when flat)."""
    from PIL import Image

    extensions = {ext.lower() for ext in Image.registered_extensions()}
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    roots = [(folder / c, i) for i, c in enumerate(classes)] if classes else [(folder, -1)]
    files, labels = [], []
    for root, label in roots:
        for path in sorted(root.rglob("*") if classes else root.iterdir()):
            if path.is_file() and path.suffix.lower() in extensions and not path.name.startswith("."):
                files.append(path)
                labels.append(label)
    return files, labels, tuple(classes) if classes else None


def held_out(path: Path, root: Path) -> bool:
    """One file in ten, by a hash of its name within the folder: the same files whatever is added."""
    return int(hashlib.md5(str(path.relative_to(root)).encode()).hexdigest()[:8], 16) % 10 == 0


def check_options(size: int | None, channels: int | None) -> None:
    if size is not None and not 1 <= size <= MAX_SIZE:
        raise ConfigError(f"--image-size must be from 1 to {MAX_SIZE} pixels, got {size}")
    if channels is not None and channels not in (1, 3):
        raise ConfigError(f"--channels must be 1 (grey) or 3 (colour), got {channels}")


def load_folder(path: Path, size: int | None, channels: int | None, test_dir: Path | None,
                progress: Progress | None = None) -> ImageData:
    """The folder's pictures (and --test-dir's) as a dataset, decoded once into the cache."""
    check_options(size, channels)
    folder, test = _folder(path, "--dataset"), _folder(test_dir, "--test-dir") if test_dir else None
    files, labels, classes = image_files(folder)
    if not files:
        raise DataError(f"no pictures in {folder} (nothing Pillow opens, e.g. .png or .jpg, in it or its sub-folders)")
    if test is not None:
        test_files, test_labels, test_classes = image_files(test)
        if not test_files:
            raise DataError(f"no pictures in --test-dir {test}")
        if test_classes != classes:
            raise DataError(f"--test-dir {test} has classes {test_classes} but {folder} has {classes}: they must match")
        train_files, train_labels = files, labels
    else:
        split = [held_out(f, folder) for f in files]
        if not any(split) or all(split):  # a handful of files: still one of each
            split = [i == 0 for i in range(len(files))]
        train_files = [f for f, s in zip(files, split) if not s]
        train_labels = [lab for lab, s in zip(labels, split) if not s]
        test_files = [f for f, s in zip(files, split) if s]
        test_labels = [lab for lab, s in zip(labels, split) if s]
    size, channels = _resolved(train_files + test_files, size, channels, f"{folder.resolve()} sizes")
    source = f"{folder.resolve()} {'with --test-dir ' + str(test.resolve()) if test else 'split by name'} {size}px {channels}ch"
    train = _decoded(train_files, train_labels, size, channels, classes, progress, "decoding training pictures", f"{source} train")
    held = _decoded(test_files, test_labels, size, channels, classes, progress, "decoding test pictures", f"{source} test")
    if not len(train.images) or not len(held.images):
        raise DataError(f"none of the pictures in {folder} could be read ({len(train.skipped) + len(held.skipped)} skipped)")
    return _as_dataset(folder, train, held, classes, test)


def _folder(path: Path, option: str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{option} {path} does not exist")
    if not path.is_dir():
        raise DataError(f"{option} {path} is a file, not a folder of pictures")
    return path


def _resolved(files: list[Path], size: int | None, channels: int | None, source: str) -> tuple[int, int]:
    """_resolve's answer, kept in the cache: reading 20,000 headers took 1.7 s of a second run's start."""
    if size is not None and channels is not None:
        return size, channels
    key = cache.key_of("resolved", cache.files_signature(files), size, channels)
    known = cache.recall(key)
    if known is not None and isinstance(known.get("size"), int) and isinstance(known.get("channels"), int):
        return known["size"], known["channels"]
    size, channels = _resolve(files, size, channels)
    cache.remember(key, source, {"size": size, "channels": channels})
    return size, channels


def _resolve(files: list[Path], size: int | None, channels: int | None) -> tuple[int, int]:
    """--image-size and --channels when not given: the pictures' own size when they all agree (else
    64), and colour when any picture is in colour. Only the files' headers are read."""
    if size is not None and channels is not None:
        return size, channels
    from PIL import Image

    sizes, colour = set(), False
    for path in files:
        try:
            with Image.open(path) as image:
                sizes.add(image.size)
                colour = colour or image.mode not in ("1", "L", "LA", "I", "I;16", "F")
        except Exception:  # a damaged file is counted when it is decoded
            continue
    if size is None:
        own = min(next(iter(sizes))) if len(sizes) == 1 else 0
        size = own if 1 <= own <= MAX_SIZE else DEFAULT_SIZE
    return size, channels if channels is not None else (3 if colour else 1)


def _decoded(files: list[Path], labels: list[int], size: int, channels: int, classes: tuple[str, ...] | None,
             progress: Progress | None, what: str, source: str) -> cache.Decoded:
    key = cache.key_of("folder", cache.files_signature(files), labels, size, channels)
    found = cache.load(key)
    if found is not None:
        return found

    def fill(images: np.ndarray) -> tuple[np.ndarray, list[str]]:
        return decode_all(files, labels, images, size, channels, progress, what)

    return cache.store(key, source, len(files), (channels, size, size), fill, classes)


def decode_all(files: list[Path], labels: list[int], images: np.ndarray, size: int, channels: int,
               progress: Progress | None, what: str) -> tuple[np.ndarray, list[str]]:
    """Decode every file into its row of `images` (in parallel when it is a memory map the workers
    can open too); the labels, with the rows of files that could not be read marked as skipped,
    and those files."""
    out = np.asarray(labels, dtype=np.int64).copy()
    skipped: list[str] = []
    chunks = [(start, [str(f) for f in files[start : start + CHUNK]]) for start in range(0, len(files), CHUNK)]
    shared = isinstance(images, np.memmap) and len(files) >= PARALLEL_FROM and (os.cpu_count() or 1) > 1
    done = 0
    with contextlib.ExitStack() as stack:
        if shared:  # spawned, not forked: the caller may have threads (a monitor, a trainer)
            images.flush()
            pool = stack.enter_context(ProcessPoolExecutor(min(os.cpu_count() or 1, len(chunks)),
                                                           mp_context=multiprocessing.get_context("spawn")))
            tasks = [(str(images.filename), images.shape, start, names, size, channels) for start, names in chunks]
            results = pool.map(_decode_chunk, tasks)
        else:
            results = (_decode_rows(images, start, names, size, channels) for start, names in chunks)
        for failed in results:
            for index, name in failed:
                out[index] = cache.SKIPPED
                skipped.append(name)
            done = min(done + CHUNK, len(files))
            if progress is not None:
                progress(done, len(files), what)
    return out, skipped


def _decode_chunk(task: tuple[str, tuple[int, ...], int, list[str], int, int]) -> list[tuple[int, str]]:
    """In a worker process: decode some pictures straight into the shared memory map."""
    path, shape, start, names, size, channels = task
    images = np.memmap(path, dtype=np.uint8, mode="r+", shape=shape)
    failed = _decode_rows(images, start, names, size, channels)
    images.flush()
    return failed


def _decode_rows(images: np.ndarray, start: int, names: list[str], size: int, channels: int) -> list[tuple[int, str]]:
    failed = []
    for offset, name in enumerate(names):
        try:
            images[start + offset] = decode(Path(name), size, channels)
        except Exception:  # Pillow raises many kinds for a damaged file: all mean "skip it"
            failed.append((start + offset, name))
    return failed


def decode(path: Path, size: int, channels: int) -> np.ndarray:
    """One picture as uint8 (channels, size, size): shorter side to `size`, centre crop."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image = image.convert("RGB" if channels == 3 else "L")
        if image.size != (size, size):
            image = ImageOps.fit(image, (size, size), method=Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
    return array.transpose(2, 0, 1) if channels == 3 else array[None]


def _as_dataset(folder: Path, train: cache.Decoded, test: cache.Decoded, classes: tuple[str, ...] | None,
                test_dir: Path | None) -> ImageData:
    skipped = train.skipped + test.skipped
    source = f"pictures in {folder}" + (f", tested on {test_dir}" if test_dir else ", 10% held out by file name")
    return ImageData(
        name=folder.name, train_x=train.images, test_x=test.images, source=source,
        train_y=train.labels if classes else None, test_y=test.labels if classes else None, class_names=classes,
        skipped=skipped, warnings=cache.problems(train, test),
    )
