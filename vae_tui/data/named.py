"""Datasets by name, read (and downloaded when missing) by torchvision's own classes, from --data-dir.

torchvision parses the files; the pixels then go into the uint8 cache (cache.py), keyed by the
dataset's files, so later runs read them without importing torchvision at all (a monitor opens
faster, and data on disk need not be parsed twice). Offline, a download fails within seconds
with a line saying what to do, and `--dataset auto` falls back to the bundled digits.
"""

from __future__ import annotations

import contextlib
import os
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from vae_tui.data import cache
from vae_tui.data.folder import DataError, Progress, decode_all
from vae_tui.data.images import ImageData

CONNECT_TIMEOUT_S = 3.0
DOWNLOAD_TIMEOUT_S = 15.0
DIGITS = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class Named:
    cls: str  # the torchvision.datasets class
    folder: str  # where under --data-dir torchvision keeps its files
    shape: tuple[int, int, int]
    classes: tuple[str, ...] | None
    uses_split: bool = False  # split="train"/"test" rather than train=True/False


NAMED = {
    "mnist": Named("MNIST", "MNIST", (1, 28, 28), DIGITS),
    "fashion-mnist": Named(
        "FashionMNIST", "FashionMNIST", (1, 28, 28), ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
    ),
    "kmnist": Named("KMNIST", "KMNIST", (1, 28, 28), ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")),
    "cifar10": Named("CIFAR10", "cifar-10-batches-py", (3, 32, 32), ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")),
    "cifar100": Named("CIFAR100", "cifar-100-python", (3, 32, 32), None),
    "svhn": Named("SVHN", "svhn", (3, 32, 32), DIGITS, uses_split=True),
    "celeba": Named("CelebA", "celeba", (3, 64, 64), None, uses_split=True),
}


class DownloadError(DataError):
    """A download that failed; `reason` is the short why, for --dataset auto's explanation."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def folder_of(name: str, data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir).expanduser() / NAMED[name].folder


def present(name: str, data_dir: str | os.PathLike[str]) -> bool:
    """Whether the dataset's files seem to be there (torchvision checks them when it reads)."""
    folder = folder_of(name, data_dir)
    return folder.is_dir() and any(p.is_file() for p in folder.rglob("*"))


def load_named(name: str, data_dir: str | os.PathLike[str], download: bool = True, source: str = "", progress: Progress | None = None) -> ImageData:
    """Both splits, from the cache when the files have not changed, else through torchvision."""
    if not present(name, data_dir):
        if not download:
            raise DataError(f"{name} is not in {folder_of(name, data_dir)} and downloads are off")
        if progress is not None:
            progress(0, 0, f"downloading {name} into {folder_of(name, data_dir)} (once)")
        _download(name, data_dir)
        source = source or f"{name}, downloaded to {folder_of(name, data_dir)}"
    train, test = (_split(name, data_dir, train, progress) for train in (True, False))
    spec = NAMED[name]
    _check_usable(name, data_dir, train, test, spec.classes or train.class_names)
    return ImageData(
        name=name,
        train_x=train.images,
        test_x=test.images,
        train_y=train.labels,
        test_y=test.labels,
        class_names=spec.classes or train.class_names,
        source=source or f"read from {folder_of(name, data_dir)}",
        warnings=cache.problems(train, test),
    )


def _check_usable(name: str, data_dir: str | os.PathLike[str], train: cache.Decoded, test: cache.Decoded, classes: tuple[str, ...] | None) -> None:
    """Files torchvision could read may still be no use: no pictures, or labels no class has."""
    where = folder_of(name, data_dir)
    for split, part in (("train", train), ("test", test)):
        if not len(part.images):
            raise DataError(f"the {name} {split} files in {where} hold no images; delete them so they can be downloaded again")
        labels = part.labels[part.labels >= 0]
        if classes and len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise DataError(
                f"the {name} {split} labels in {where} go outside 0..{len(classes) - 1} ({int(labels.min())}..{int(labels.max())}); these are not {name} files"
            )


def _split(name: str, data_dir: str | os.PathLike[str], train: bool, progress: Progress | None) -> cache.Decoded:
    files = sorted(p for p in folder_of(name, data_dir).rglob("*") if p.is_file())
    key = cache.key_of("named", name, train, cache.files_signature(files))
    found = cache.load(key)
    if found is not None:
        return found
    if progress is not None:  # torchvision imports torch: seconds, the first time on a machine
        progress(0, 0, f"reading {name}'s {'training' if train else 'test'} files with torchvision (once: later runs read the cache)")
    dataset, shape = _open(name, data_dir, train), NAMED[name].shape
    source = f"{name} in {Path(data_dir).expanduser().resolve()} {'train' if train else 'test'}"
    if name == "celeba":  # its pictures are files: decoded (shorter side 64, centre crop) straight into the cache
        folder = Path(dataset.root) / dataset.base_folder / "img_align_celeba"
        pictures = [folder / f for f in dataset.filename]

        def fill(out: np.ndarray) -> tuple[np.ndarray, list[str]]:
            return decode_all(pictures, [-1] * len(pictures), out, shape[1], shape[0], progress, f"decoding {name}")

        return cache.store(key, source, len(pictures), shape, fill, None)
    images, labels, classes = _arrays(dataset)

    def copy(out: np.ndarray) -> tuple[np.ndarray, list[str]]:
        out[:] = images
        return labels, []

    return cache.store(key, source, len(labels), images.shape[1:], copy, classes)


def _open(name: str, data_dir: str | os.PathLike[str], train: bool) -> Any:
    """torchvision's own reader of the split; damaged files are one line. Archives put there by
    hand (MNIST's .gz files) are unpacked by torchvision itself, which checks them first."""
    spec = NAMED[name]
    split = {"split": "train" if train else "test"} if spec.uses_split else {"train": train}
    root = Path(data_dir).expanduser() / ("svhn" if name == "svhn" else "")
    archives = any(folder_of(name, data_dir).rglob("*.gz"))
    try:
        with _quiet():
            try:
                return torchvision_class(name)(root=str(root), download=False, **split)
            except RuntimeError:
                if not archives:
                    raise
                with _socket_timeout(CONNECT_TIMEOUT_S):
                    return torchvision_class(name)(root=str(root), download=True, **split)
    except Exception as exc:  # torchvision raises many kinds for missing or damaged files
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read {name} from {folder_of(name, data_dir)} ({detail}); delete its files there so they can be downloaded again") from None


def _arrays(dataset: Any) -> tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]:
    """The uint8 pixels and labels torchvision holds in memory for the MNIST family, CIFAR and SVHN."""
    data = np.asarray(dataset.data)
    if data.ndim == 3:  # (count, 28, 28): the MNIST family
        data = data[:, None]
    elif data.shape[-1] == 3:  # (count, 32, 32, 3): CIFAR
        data = data.transpose(0, 3, 1, 2)
    labels = np.asarray(getattr(dataset, "targets", getattr(dataset, "labels", None)), dtype=np.int64)
    classes = tuple(dataset.classes) if getattr(dataset, "classes", None) else None
    return np.ascontiguousarray(data, dtype=np.uint8), labels, classes


def torchvision_class(name: str) -> Callable[..., Any]:
    from torchvision import datasets

    return getattr(datasets, NAMED[name].cls)


def _hosts(cls: Any) -> list[str]:
    """Where the class downloads from, read off its own attributes."""
    urls: list[str] = list(getattr(cls, "mirrors", []) or [])
    urls += [u for u in (getattr(cls, "url", None),) if isinstance(u, str)]
    urls += [v[0] for v in (getattr(cls, "split_list", {}) or {}).values() if isinstance(v, (list, tuple))]
    hosts = {host for u in urls if (host := urllib.parse.urlsplit(u).hostname)}
    return sorted(hosts) if hosts else ["drive.google.com"]  # CelebA's files are on Google Drive


def _download(name: str, data_dir: str | os.PathLike[str]) -> None:
    """torchvision's download; offline, a DownloadError within seconds that says what to do."""
    cls, where = torchvision_class(name), folder_of(name, data_dir)
    hosts = _hosts(cls)
    if not any(_reachable(host) for host in hosts):
        raise DownloadError(
            f"cannot download {name}: {', '.join(hosts)} cannot be reached. Put its files in {where}, or use --dataset digits, which needs no download",
            "no download server is reachable (offline?)",
        )
    spec = NAMED[name]
    root = Path(data_dir).expanduser() / ("svhn" if name == "svhn" else "")
    try:
        root.mkdir(parents=True, exist_ok=True)
        with _socket_timeout(DOWNLOAD_TIMEOUT_S), _quiet():
            for train in (True, False):
                cls(root=str(root), download=True, **({"split": "train" if train else "test"} if spec.uses_split else {"train": train}))
    except Exception as exc:  # torchvision raises many kinds; all mean the same to the user
        raise DownloadError(
            f"downloading {name} into {where} failed ({type(exc).__name__}: {exc}). Retry, put its files there yourself, or use --dataset digits",
            f"its download failed ({type(exc).__name__})",
        ) from None


def _reachable(host: str) -> bool:
    try:
        socket.create_connection((host, 443), timeout=CONNECT_TIMEOUT_S).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torchvision prints its progress; the run's own lines are what the person reads."""
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        yield
