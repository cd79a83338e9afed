"""Datasets, read into an `ImageData` (images, shape, labels, class names): scikit-learn's bundled
digits, torchvision's datasets by name (named.py), or a folder of pictures (folder.py).

Checking and reading happen before training starts (a bad dataset is one line), without torch
when the decoded pictures are in the cache; the trainer moves them onto its device itself.
"""

from __future__ import annotations

import os
from pathlib import Path

from vae_tui.data.digits import load_digits
from vae_tui.data.folder import DataError, Progress, check_options, load_folder
from vae_tui.data.images import ImageData, as_unit
from vae_tui.data.named import NAMED, DownloadError, folder_of, load_named, present
from vae_tui.errors import ConfigError

__all__ = ["DATASETS", "DataError", "ImageData", "as_unit", "load_dataset", "load_digits"]

DATASETS = ("auto", "digits", *NAMED)  # or the path of a folder of pictures


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str],
    download: bool = True,
    image_size: int | None = None,
    channels: int | None = None,
    test_dir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> ImageData:
    """Resolve --dataset (a name, auto, or a folder) and read it."""
    if name not in DATASETS:
        return load_folder(Path(name), image_size, channels, Path(test_dir) if test_dir else None, progress)
    check_options(image_size, channels)
    if image_size is not None or channels is not None or test_dir is not None:
        raise ConfigError("--image-size, --channels and --test-dir are for a folder of pictures (--dataset PATH)")
    if name == "digits":
        return load_digits()
    if name != "auto":
        _check_data_dir(data_dir)
        return load_named(name, data_dir, download, progress=progress)
    return _auto(data_dir, download, progress)


def _check_data_dir(data_dir: str | os.PathLike[str]) -> None:
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise DataError(f"--data-dir {data_dir} is a file, not a folder; pass the folder that holds (or will hold) the datasets")


def _auto(data_dir: str | os.PathLike[str], download: bool, progress: Progress | None) -> ImageData:
    """MNIST when it is on disk or can be downloaded; otherwise digits, saying why."""
    if os.path.isdir(data_dir) and present("mnist", data_dir):
        return load_named("mnist", data_dir, source=f"MNIST, found in {folder_of('mnist', data_dir)}", progress=progress)
    reason = "downloads are off"
    if download:
        try:
            return load_named("mnist", data_dir, progress=progress)
        except DownloadError as exc:
            reason = exc.reason
    digits = load_digits()
    digits.source = f"scikit-learn's bundled 8x8 digits, because MNIST is not in {folder_of('mnist', data_dir)} and {reason}"
    return digits
