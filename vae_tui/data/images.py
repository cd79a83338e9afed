"""The data description every other part of vae-tui works from: images of a known shape, with
labels and class names when the dataset has them. Read into host memory; no torch here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class ImageData:
    """Images (count, channels, height, width): float32 in [0, 1], or uint8 in 0..255 (decoded
    pictures, often a memory map of the cache, left on disk until used); labels optional."""

    name: str
    train_x: np.ndarray
    test_x: np.ndarray
    source: str  # where it came from and, for --dataset auto, why this one
    train_y: np.ndarray | None = None  # int64 class indices
    test_y: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None
    skipped: list[str] = field(default_factory=list)  # files that could not be read
    warnings: list[str] = field(default_factory=list)  # said before training, e.g. why nothing is cached

    def __post_init__(self) -> None:
        if self.train_x.ndim != 4 or self.test_x.shape[1:] != self.train_x.shape[1:]:
            raise ValueError(f"images must be (count, channels, height, width) alike: {self.train_x.shape}, {self.test_x.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        c, h, w = self.train_x.shape[1:]
        return int(c), int(h), int(w)

    def describe(self) -> str:
        c, h, w = self.shape
        colour = "" if c == 1 else f", {c} channels"
        return f"{self.name}, {len(self.train_x):,} train / {len(self.test_x):,} test images of {h}x{w}{colour}"

    def spec(self) -> dict[str, Any]:
        """What a run records about its data (config.json, checkpoints)."""
        return {
            "name": self.name,
            "source": self.source,
            "shape": list(self.shape),
            "train_size": len(self.train_x),
            "test_size": len(self.test_x),
            "class_names": list(self.class_names) if self.class_names else None,
        }


def unit_images(images: np.ndarray, scale: float) -> np.ndarray:
    """(count, height, width) or (count, channels, height, width) integers into float32 in [0, 1]."""
    x = images.astype(np.float32) / np.float32(scale)
    return x[:, None] if x.ndim == 3 else x


def as_unit(images: np.ndarray) -> np.ndarray:
    """float32 in [0, 1], whether the images are stored as floats already or as bytes."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(255)
    return np.asarray(images, dtype=np.float32)
