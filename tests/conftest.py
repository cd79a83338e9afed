"""Shared fixtures: small data made on the spot, never a download."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pytest

from vae_tui.data import IDX_FILES, ArrayDataset, load_digits


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """Write a uint8 array in the IDX format MNIST uses."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def make_idx_dataset(data_dir: Path, folder: str = "MNIST", n_train: int = 40, n_test: int = 12, size: int = 6, gz: bool = False) -> Path:
    """A tiny MNIST-shaped dataset in torchvision's layout: data_dir/<folder>/raw/*-ubyte[.gz]."""
    raw = data_dir / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, size, size)),
        "train_y": rng.integers(0, 10, n_train),
        "test_x": rng.integers(0, 256, (n_test, size, size)),
        "test_y": rng.integers(0, 10, n_test),
    }
    for key, stem in IDX_FILES.items():
        write_idx(raw / stem, arrays[key], gz=gz)
    return raw


@pytest.fixture(scope="session")
def digits() -> ArrayDataset:
    return load_digits()


@pytest.fixture
def small_digits(digits: ArrayDataset) -> ArrayDataset:
    """400 training images: a few batches an epoch keeps trainer tests quick."""
    return ArrayDataset(
        name="digits",
        train_x=digits.train_x[:400],
        train_y=digits.train_y[:400],
        test_x=digits.test_x,
        test_y=digits.test_y,
        image_shape=digits.image_shape,
        source="test subset of digits",
    )


@pytest.fixture
def vae_tui(monkeypatch, capsys):
    """Run the `vae-tui` command in this process: (exit status, stdout, stderr)."""
    from vae_tui.cli import main

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["vae-tui", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            main()
        captured = capsys.readouterr()
        return exit_info.value.code, captured.out, captured.err

    return run
