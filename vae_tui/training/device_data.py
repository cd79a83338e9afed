"""The dataset on the training device, as two tensors that batches are sliced from.

No per-sample DataLoader: a batch is an index into a tensor already on the device, so the loop
never waits on Python per sample or on a host-to-device copy per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vae_tui.data import ImageData


@dataclass
class DeviceData:
    train_x: torch.Tensor  # (count, channels, height, width) float32
    test_x: torch.Tensor

    def __len__(self) -> int:
        return len(self.train_x)

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        """The training images at these indices: what the loop asks of any source of batches."""
        return self.train_x[indices]


CHUNK = 8192  # images moved at a time: bytes stay bytes on the host, floats only on the device


def to_device(data: ImageData, device: torch.device) -> DeviceData:
    """Call on the training thread, like every torch op: measured on a 2-core CPU, torch ops run on a
    second thread left OpenMP's workers spinning and made the training loop 1.7x slower."""
    return DeviceData(on_device(data.train_x, device), on_device(data.test_x, device))


def on_device(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """float32 images in [0, 1] on the device, from float32 or uint8 (a memory map of the cache:
    read a chunk at a time, so the host never holds a float copy of it all)."""
    if images.dtype != np.uint8:
        return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(device)
    out = torch.empty(images.shape, dtype=torch.float32, device=device)
    for start in range(0, len(images), CHUNK):
        chunk = torch.from_numpy(np.array(images[start : start + CHUNK]))
        out[start : start + len(chunk)] = chunk.to(device, non_blocking=False).float().div_(255)
    return out
