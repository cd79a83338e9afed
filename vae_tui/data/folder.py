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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from vae_tui.data import cache
from vae_tui.data.images import ImageData
from vae_tui.data.pixels import DECODER, Range, decode
from vae_tui.data.survey import Survey, notes, pixel_limit, survey, too_large_words
from vae_tui.errors import ConfigError, VaeTuiError

Progress = Callable[[int, int, str], None]  # (done, total, what)
DEFAULT_SIZE = 64  # when the pictures do not all have one size
MAX_SIZE = 1024
CHUNK = 64  # pictures a decoding task takes: few enough to report progress, many enough to be cheap
PARALLEL_FROM = 1024  # pictures from which decoding is spread over processes (starting them costs a second)


class DataError(VaeTuiError):
    """Missing, unreadable or unusable data."""


TOP_LEVEL = "(top level)"  # the class of pictures beside the sub-folders, when there are both


@dataclass
class Found:
    """The pictures under a folder, sorted, their class indices, the class names (None when flat), and
    what a person should hear about the folder's layout."""

    files: list[Path]
    labels: list[int]
    classes: tuple[str, ...] | None
    notes: list[str]


def image_files(folder: Path) -> Found:
    """Sub-folders are classes; pictures beside them are a class of their own (TOP_LEVEL), and class
    folders without pictures are left out, both said. A link to nothing is a picture that cannot be read."""
    from PIL import Image

    extensions = {ext.lower() for ext in Image.registered_extensions()}

    def pictures(paths: Iterable[Path]) -> list[Path]:
        return sorted(
            p for p in paths if p.suffix.lower() in extensions and not p.name.startswith(".") and (p.is_file() or (p.is_symlink() and not p.exists()))
        )

    folders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    top = pictures(folder.iterdir())
    if not folders:
        return Found(top, [-1] * len(top), None, [])
    groups = [(TOP_LEVEL, top)] if top else []
    groups += [(f.name, pictures(p for p in f.rglob("*") if not _hidden(p, f))) for f in folders]
    empty = [name for name, files in groups if not files]
    groups = [(name, files) for name, files in groups if files]
    notes = (
        [
            f"{len(top):,} picture{'s' if len(top) != 1 else ''} beside the class folders in {folder} train as a class "
            f"of {'their' if len(top) != 1 else 'its'} own, {TOP_LEVEL!r}"
        ]
        if top
        else []
    )
    if empty:
        shown = ", ".join(empty[:3]) + (", ..." if len(empty) > 3 else "")
        notes.append(
            f"{len(empty)} class folder{'s' if len(empty) != 1 else ''} in {folder} "
            f"{'have' if len(empty) != 1 else 'has'} no pictures and {'are' if len(empty) != 1 else 'is'} left out: {shown}"
        )
    files = [f for _, fs in groups for f in fs]
    labels = [i for i, (_, fs) in enumerate(groups) for _ in fs]
    return Found(files, labels, tuple(name for name, _ in groups) if groups else None, notes)


def _hidden(path: Path, folder: Path) -> bool:
    """Inside a hidden folder (.thumbnails, .ipynb_checkpoints) or hidden itself, below `folder`."""
    return any(part.startswith(".") for part in path.relative_to(folder).parts)


def held_out(path: Path, root: Path) -> bool:
    """One file in ten, by a hash of its name within the folder: the same files whatever is added."""
    return int(hashlib.md5(str(path.relative_to(root)).encode()).hexdigest()[:8], 16) % 10 == 0


def check_options(size: int | None, channels: int | None) -> None:
    if size is not None and not 1 <= size <= MAX_SIZE:
        raise ConfigError(f"--image-size must be from 1 to {MAX_SIZE} pixels, got {size}")
    if channels is not None and channels not in (1, 3):
        raise ConfigError(f"--channels must be 1 (grey) or 3 (colour), got {channels}")


def load_folder(path: Path, size: int | None, channels: int | None, test_dir: Path | None, progress: Progress | None = None) -> ImageData:
    """The folder's pictures (and --test-dir's) as a dataset, decoded once into the cache."""
    check_options(size, channels)
    folder, test = _folder(path, "--dataset"), _folder(test_dir, "--test-dir") if test_dir else None
    found = image_files(folder)
    classes = found.classes
    if not found.files:
        raise DataError(f"no pictures in {folder} (nothing Pillow opens, e.g. .png or .jpg, in it or its sub-folders)")
    held = _test_pictures(test, folder, classes) if test is not None else None
    surveyed = _surveyed(found.files + (held.files if held else []), f"{folder.resolve()} survey")
    found.notes += notes(surveyed, folder)
    refused = {name for name, _ in surveyed.too_large}  # left out before the split: never a held-out picture that cannot be
    files, labels = _kept(found.files, found.labels, refused)
    if not files:
        raise DataError(f"every picture in {folder} is too large to open, {too_large_words(surveyed)}")
    if held is not None:
        test_files, test_labels = _kept(held.files, held.labels, refused)
        train_files, train_labels = files, labels
    else:
        train_files, train_labels, test_files, test_labels = _split(files, labels, folder, found.notes)
    size, channels = _resolve(surveyed, size, channels)
    scale = surveyed.range()
    source = f"{folder.resolve()} {'with --test-dir ' + str(test.resolve()) if test else 'split by name'} {size}px {channels}ch"
    train = _decoded(train_files, train_labels, size, channels, scale, classes, progress, "decoding training pictures", f"{source} train")
    tested = _decoded(test_files, test_labels, size, channels, scale, classes, progress, "decoding test pictures", f"{source} test")
    _check_both(folder, test, train, tested)
    data = _as_dataset(folder, train, tested, classes, test)
    if scale is not None:
        data.source += f"; {scale.words}"
    data.warnings[:0] = found.notes
    return data


def _test_pictures(test: Path, folder: Path, classes: tuple[str, ...] | None) -> Found:
    held = image_files(test)
    if not held.files:
        raise DataError(f"no pictures in --test-dir {test}")
    if held.classes != classes:
        raise DataError(f"--test-dir {test} has classes {held.classes} but {folder} has {classes}: they must match")
    return held


def _split(files: list[Path], labels: list[int], folder: Path, notes: list[str]) -> tuple[list[Path], list[int], list[Path], list[int]]:
    """One file in ten held out by its name; a handful still gives one of each, and a single picture
    is both trained and tested on (said: its held-out figures then say nothing)."""
    if len(files) == 1:
        notes.append(f"{folder} has one picture: it is trained on and tested on alike, so the test loss says nothing; add pictures, or give --test-dir")
        return files, labels, files, labels
    split = [held_out(f, folder) for f in files]
    if not any(split) or all(split):
        split = [i == 0 for i in range(len(files))]
    train = [(f, lab) for f, lab, s in zip(files, labels, split) if not s]
    test = [(f, lab) for f, lab, s in zip(files, labels, split) if s]
    return [f for f, _ in train], [lab for _, lab in train], [f for f, _ in test], [lab for _, lab in test]


def _kept(files: list[Path], labels: list[int], refused: set[str]) -> tuple[list[Path], list[int]]:
    pairs = [(f, lab) for f, lab in zip(files, labels) if str(f) not in refused]
    return [f for f, _ in pairs], [lab for _, lab in pairs]


def _check_both(folder: Path, test: Path | None, train: cache.Decoded, tested: cache.Decoded) -> None:
    """A split left with no picture is refused, saying which split and what to do."""
    if not len(train.images) and not len(tested.images):
        raise DataError(f"none of the pictures in {folder} could be read ({len(train.skipped) + len(tested.skipped)} skipped)")
    if not len(tested.images):
        bad = len(tested.skipped)
        where = f"--test-dir {test}" if test else f"the held-out split of {folder} (one picture in ten, chosen by file name)"
        example = f", e.g. {tested.skipped[0]}" if tested.skipped else ""
        raise DataError(
            f"{where} is empty: its {bad} picture{'s' if bad != 1 else ''} could not be read{example}; "
            f"the other {len(train.images):,} are fine. Repair or remove {'them' if bad != 1 else 'it'}"
            + ("" if test else ", or give held-out pictures with --test-dir")
        )
    if not len(train.images):
        example = f", e.g. {train.skipped[0]}" if train.skipped else ""
        raise DataError(
            f"none of the training pictures in {folder} could be read ({len(train.skipped)} skipped{example}); "
            f"only {len(tested.images):,} held-out ones could. Repair or remove them"
        )


def _folder(path: Path, option: str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{option} {path} does not exist")
    if not path.is_dir():
        raise DataError(f"{option} {path} is a file, not a folder of pictures")
    return path


def _surveyed(files: list[Path], source: str) -> Survey:
    """survey.survey's answer, kept in the cache (keyed by the files and Pillow's limit)."""
    key = cache.key_of("survey", DECODER, cache.files_signature(files), pixel_limit())
    known = cache.recall(key)
    if known is not None:
        try:
            return Survey.from_record(known)
        except (KeyError, TypeError, ValueError):  # an older or damaged record: survey again
            pass
    found = survey(files)
    cache.remember(key, source, found.to_record())
    return found


def _resolve(found: Survey, size: int | None, channels: int | None) -> tuple[int, int]:
    """--image-size and --channels when not given: the pictures' own size when they all agree (else
    64), and colour when any picture is in colour."""
    if size is None:
        own = min(next(iter(found.sizes))) if len(found.sizes) == 1 else 0
        size = own if 1 <= own <= MAX_SIZE else DEFAULT_SIZE
    return size, channels if channels is not None else (3 if found.colour else 1)


def _decoded(
    files: list[Path],
    labels: list[int],
    size: int,
    channels: int,
    scale: Range | None,
    classes: tuple[str, ...] | None,
    progress: Progress | None,
    what: str,
    source: str,
) -> cache.Decoded:
    key = cache.key_of("folder", DECODER, cache.files_signature(files), labels, size, channels, scale.to_list() if scale else None)
    found = cache.load(key)
    if found is not None:
        return found

    def fill(images: np.ndarray) -> tuple[np.ndarray, list[str]]:
        return decode_all(files, labels, images, size, channels, progress, what, scale)

    return cache.store(key, source, len(files), (channels, size, size), fill, classes)


def decode_all(
    files: list[Path], labels: list[int], images: np.ndarray, size: int, channels: int, progress: Progress | None, what: str, scale: Range | None = None
) -> tuple[np.ndarray, list[str]]:
    """Decode every file into its row of `images` (in parallel when it is a memory map the workers
    can open too); the labels, with the rows of files that could not be read marked as skipped,
    and those files."""
    out = np.asarray(labels, dtype=np.int64).copy()
    skipped: list[str] = []
    chunks = [(start, [str(f) for f in files[start : start + CHUNK]]) for start in range(0, len(files), CHUNK)]
    memmap = images if isinstance(images, np.memmap) else None
    shared = memmap is not None and len(files) >= PARALLEL_FROM and (os.cpu_count() or 1) > 1
    done = 0
    with contextlib.ExitStack() as stack:
        if shared and memmap is not None:  # spawned, not forked: the caller may have threads (a monitor, a trainer)
            memmap.flush()
            pool = stack.enter_context(ProcessPoolExecutor(min(os.cpu_count() or 1, len(chunks)), mp_context=multiprocessing.get_context("spawn")))
            tasks = [(str(memmap.filename), images.shape, start, names, size, channels, scale) for start, names in chunks]
            results = pool.map(_decode_chunk, tasks)
        else:
            results = (_decode_rows(images, start, names, size, channels, scale) for start, names in chunks)
        for failed in results:
            for index, name in failed:
                out[index] = cache.SKIPPED
                skipped.append(name)
            done = min(done + CHUNK, len(files))
            if progress is not None:
                progress(done, len(files), what)
    return out, skipped


def _decode_chunk(task: tuple[str, tuple[int, ...], int, list[str], int, int, Range | None]) -> list[tuple[int, str]]:
    """In a worker process: decode some pictures straight into the shared memory map."""
    path, shape, start, names, size, channels, scale = task
    images = np.memmap(path, dtype=np.uint8, mode="r+", shape=shape)
    failed = _decode_rows(images, start, names, size, channels, scale)
    images.flush()
    return failed


def _decode_rows(images: np.ndarray, start: int, names: list[str], size: int, channels: int, scale: Range | None) -> list[tuple[int, str]]:
    failed = []
    for offset, name in enumerate(names):
        try:
            images[start + offset] = decode(Path(name), size, channels, scale)
        except Exception:  # Pillow raises many kinds for a damaged file: all mean "skip it"
            failed.append((start + offset, name))
    return failed


def _as_dataset(folder: Path, train: cache.Decoded, test: cache.Decoded, classes: tuple[str, ...] | None, test_dir: Path | None) -> ImageData:
    skipped = train.skipped + test.skipped
    source = f"pictures in {folder}" + (f", tested on {test_dir}" if test_dir else ", 10% held out by file name")
    return ImageData(
        name=folder.name,
        train_x=train.images,
        test_x=test.images,
        source=source,
        train_y=train.labels if classes else None,
        test_y=test.labels if classes else None,
        class_names=classes,
        skipped=skipped,
        warnings=cache.problems(train, test),
    )
