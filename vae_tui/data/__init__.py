"""Datasets by name, read into host memory as an `ImageData` (images, shape, labels, class names).

Reading touches no torch op, so the code that checks a run before it starts (and reports bad data
in one line) never imports torch; the trainer moves the arrays onto its device itself.
"""

from __future__ import annotations

import os

from vae_tui.data.digits import load_digits
from vae_tui.data.idx import DataError, DownloadError, download_idx_dataset, find_idx_files, idx_folder, load_idx_dataset
from vae_tui.data.images import ImageData

__all__ = ["DataError", "ImageData", "load_dataset", "load_digits"]


def load_dataset(name: str, data_dir: str | os.PathLike[str], download: bool = True) -> ImageData:
    """Resolve --dataset (including auto) and read it into host arrays."""
    if name != "digits" and os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise DataError(f"--data-dir {data_dir} is a file, not a folder; pass the folder that holds (or will hold) the datasets")
    if name == "digits":
        return load_digits()
    if name == "auto":
        return _auto(data_dir, download)
    if name not in ("mnist", "fashion-mnist"):
        raise DataError(f"unknown dataset {name!r}")
    if find_idx_files(name, data_dir) is not None:
        return load_idx_dataset(name, data_dir)
    if not download:
        raise DataError(f"{name} is not in {idx_folder(name, data_dir)} and downloads are off")
    download_idx_dataset(name, data_dir)
    return load_idx_dataset(name, data_dir, f"{name}, downloaded to {idx_folder(name, data_dir)}")


def _auto(data_dir: str | os.PathLike[str], download: bool) -> ImageData:
    """MNIST when it is on disk or can be downloaded; otherwise digits, saying why."""
    if find_idx_files("mnist", data_dir) is not None:
        return load_idx_dataset("mnist", data_dir, f"MNIST, found in {idx_folder('mnist', data_dir)}")
    reason = "downloads are off"
    if download:
        try:
            download_idx_dataset("mnist", data_dir)
            return load_idx_dataset("mnist", data_dir, f"MNIST, downloaded to {idx_folder('mnist', data_dir)}")
        except DownloadError as exc:
            reason = exc.reason
    digits = load_digits()
    digits.source = f"scikit-learn's bundled 8x8 digits, because MNIST is not in {idx_folder('mnist', data_dir)} and {reason}"
    return digits
