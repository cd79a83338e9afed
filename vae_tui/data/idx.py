"""MNIST and Fashion-MNIST: IDX files in torchvision's layout, read with numpy, downloaded with
torchvision when missing (offline, that fails within seconds with a line saying what to do)."""

from __future__ import annotations

import contextlib
import gzip
import os
import socket
import urllib.parse
from pathlib import Path
from typing import Iterator

import numpy as np

from vae_tui.data.images import ImageData, unit_images
from vae_tui.errors import VaeTuiError

# torchvision's folder names and file names, so files it downloaded are found and vice versa.
IDX_DATASETS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
CLASS_NAMES = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
}
CONNECT_TIMEOUT_S = 3.0
DOWNLOAD_TIMEOUT_S = 15.0

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataError(VaeTuiError):
    """Missing, unreadable or undownloadable data."""


class DownloadError(DataError):
    """A download that failed; `reason` is the short why, for --dataset auto's explanation."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (the MNIST format), plain or gzipped; a damaged file is a DataError."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read {path}: {exc}; delete it so it can be downloaded again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad header); delete it so it can be downloaded again")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated (header cut short); delete it so it can be downloaded again")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path} is truncated or damaged: {len(raw) - header} data bytes for shape {shape}, "
            f"expected {expected}; delete it so it can be downloaded again"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def idx_folder(name: str, data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir).expanduser() / IDX_DATASETS[name] / "raw"


def find_idx_files(name: str, data_dir: str | os.PathLike[str]) -> dict[str, Path] | None:
    """The four files of an IDX dataset, plain or .gz, or None when any is missing."""
    folder = idx_folder(name, data_dir)
    found: dict[str, Path] = {}
    for key, stem in IDX_FILES.items():
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


def load_idx_dataset(name: str, data_dir: str | os.PathLike[str], source: str = "") -> ImageData:
    files = find_idx_files(name, data_dir)
    if files is None:
        raise DataError(f"{name} files are missing from {idx_folder(name, data_dir)}")
    arrays = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"{name} {split} files in {idx_folder(name, data_dir)} do not match: images {images.shape}, "
                f"labels {labels.shape}"
            )
    h, w = arrays["train_x"].shape[1:]
    if arrays["test_x"].shape[1:] != (h, w):
        raise DataError(f"{name} train and test images differ in size in {idx_folder(name, data_dir)}")
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if len(images) == 0 or h == 0 or w == 0:
            raise DataError(f"the {name} {split} files in {idx_folder(name, data_dir)} hold no images; "
                            "delete them so they can be downloaded again")
        classes = len(CLASS_NAMES[name])
        if labels.min() < 0 or labels.max() >= classes:
            raise DataError(f"the {name} {split} labels in {idx_folder(name, data_dir)} go outside 0..{classes - 1} "
                            f"({int(labels.min())}..{int(labels.max())}); these are not {name} files")
    return ImageData(
        name=name,
        train_x=unit_images(arrays["train_x"], 255),
        test_x=unit_images(arrays["test_x"], 255),
        train_y=arrays["train_y"].astype(np.int64),
        test_y=arrays["test_y"].astype(np.int64),
        class_names=CLASS_NAMES[name],
        source=source or f"read from {idx_folder(name, data_dir)}",
    )


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _torchvision_class(name: str):
    from torchvision import datasets

    return {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}[name]


def download_idx_dataset(name: str, data_dir: str | os.PathLike[str]) -> None:
    """Download with torchvision; offline, fail within seconds with a DataError that says what to do."""
    cls = _torchvision_class(name)
    hosts = [urllib.parse.urlsplit(m) for m in cls.mirrors]
    reachable = []
    for url in hosts:
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            socket.create_connection((url.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
            reachable.append(url.hostname)
        except OSError:
            pass
    where = idx_folder(name, data_dir)
    if not reachable:
        raise DownloadError(
            f"cannot download {name}: no mirror is reachable ({', '.join(u.hostname or '?' for u in hosts)}). "
            f"Put the IDX files in {where}, or use --dataset digits, which needs no download",
            "no download mirror is reachable (offline?)",
        )
    try:
        Path(data_dir).expanduser().mkdir(parents=True, exist_ok=True)
        with _socket_timeout(DOWNLOAD_TIMEOUT_S), open(os.devnull, "w") as quiet:
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                cls(root=str(Path(data_dir).expanduser()), train=True, download=True)
    except Exception as exc:  # torchvision raises many kinds; all mean the same to the user
        raise DownloadError(
            f"downloading {name} into {where} failed ({type(exc).__name__}: {exc}). "
            f"Retry, put the IDX files there yourself, or use --dataset digits",
            f"its download failed ({type(exc).__name__})",
        ) from None
    if find_idx_files(name, data_dir) is None:
        raise DownloadError(
            f"downloading {name} into {where} left files missing; retry or use --dataset digits",
            "its download left files missing",
        )
