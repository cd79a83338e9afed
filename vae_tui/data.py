"""Datasets as whole arrays: read once from disk, then moved to the training device in one piece.

Loading happens in two steps on purpose. `load_dataset` reads files into numpy arrays and may
download; it touches no torch op, so the CLI can run it on the main thread and report problems
before training starts. `to_device` runs on the trainer thread (DESIGN principle 5) and turns
the arrays into device tensors that batches are sliced from, with no per-sample DataLoader.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from vae_tui.errors import VaeTuiError

# torchvision's folder names and file names, so files it downloaded are found and vice versa.
IDX_DATASETS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
DIGITS_TEST_SIZE = 297  # a fixed held-out sixth of scikit-learn's 1797 digits
DIGITS_SPLIT_SEED = 0
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


@dataclass
class ArrayDataset:
    """Images flattened to rows of float32 in [0, 1], labels as int64, all in host memory."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    image_shape: tuple[int, int]
    source: str  # where it came from and, for --dataset auto, why this one

    @property
    def input_dim(self) -> int:
        return int(self.train_x.shape[1])


@dataclass
class DeviceData:
    """The same dataset as tensors on the training device; labels stay on the host for views."""

    name: str
    train_x: "torch.Tensor"  # noqa: F821 (torch is imported lazily, on the trainer thread)
    test_x: "torch.Tensor"  # noqa: F821
    test_y: np.ndarray
    image_shape: tuple[int, int]

    @property
    def input_dim(self) -> int:
        return int(self.train_x.shape[1])


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


def load_idx_dataset(name: str, data_dir: str | os.PathLike[str], source: str = "") -> ArrayDataset:
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
    return ArrayDataset(
        name=name,
        train_x=_to_unit_rows(arrays["train_x"]),
        train_y=arrays["train_y"].astype(np.int64),
        test_x=_to_unit_rows(arrays["test_x"]),
        test_y=arrays["test_y"].astype(np.int64),
        image_shape=(int(h), int(w)),
        source=source or f"read from {idx_folder(name, data_dir)}",
    )


def _to_unit_rows(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float32) / np.float32(255)


def load_digits() -> ArrayDataset:
    """scikit-learn's bundled 8x8 digits: needs no download, so it always works offline."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    order = np.random.RandomState(DIGITS_SPLIT_SEED).permutation(len(x))
    test, train = order[:DIGITS_TEST_SIZE], order[DIGITS_TEST_SIZE:]
    return ArrayDataset(
        name="digits",
        train_x=x[train],
        train_y=y[train],
        test_x=x[test],
        test_y=y[test],
        image_shape=(8, 8),
        source="scikit-learn's bundled 8x8 digits",
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


def load_dataset(name: str, data_dir: str | os.PathLike[str], download: bool = True) -> ArrayDataset:
    """Resolve --dataset (including auto) and read it into host arrays."""
    if name == "digits":
        return load_digits()
    if name == "auto":
        if find_idx_files("mnist", data_dir) is not None:
            return load_idx_dataset("mnist", data_dir, f"MNIST, found in {idx_folder('mnist', data_dir)}")
        if not download:
            reason = "downloads are off"
        else:
            try:
                download_idx_dataset("mnist", data_dir)
                return load_idx_dataset("mnist", data_dir, f"MNIST, downloaded to {idx_folder('mnist', data_dir)}")
            except DownloadError as exc:
                reason = exc.reason
        digits = load_digits()
        digits.source = (
            f"scikit-learn's bundled 8x8 digits, because MNIST is not in {idx_folder('mnist', data_dir)} "
            f"and {reason}"
        )
        return digits
    if name not in IDX_DATASETS:
        raise DataError(f"unknown dataset {name!r}")
    if find_idx_files(name, data_dir) is not None:
        return load_idx_dataset(name, data_dir)
    if not download:
        raise DataError(f"{name} is not in {idx_folder(name, data_dir)} and downloads are off")
    download_idx_dataset(name, data_dir)
    return load_idx_dataset(name, data_dir, f"{name}, downloaded to {idx_folder(name, data_dir)}")


def to_device(data: ArrayDataset, device: "torch.device") -> DeviceData:  # noqa: F821
    """Move the images onto the device as two float32 tensors; call on the trainer thread."""
    import torch

    return DeviceData(
        name=data.name,
        train_x=torch.from_numpy(data.train_x).to(device),
        test_x=torch.from_numpy(data.test_x).to(device),
        test_y=data.test_y,
        image_shape=data.image_shape,
    )
