"""The noise eps of the reparameterization: torch.randn_like, or under torchrun, this rank's rows
of the draw for the whole global batch.

Every rank keeps the same random stream and draws the global batch's noise, then takes the rows
of its own images: rank r's image i gets exactly the noise it would get in a 1-rank run of the
same global batch, so the two runs train alike. The extra draw is a few numbers per image.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

_rows: tuple[int, int] | None = None  # (offset of this rank's images, images in the global batch)


def noise_like(std: torch.Tensor) -> torch.Tensor:
    if _rows is None:
        return torch.randn_like(std)
    offset, total = _rows
    drawn = torch.randn((total, *std.shape[1:]), dtype=std.dtype, device=std.device)
    return drawn[offset : offset + len(std)]


@contextlib.contextmanager
def global_rows(offset: int, total: int) -> Iterator[None]:
    """For one training step on the training thread: this rank's images sit at `offset` of `total`."""
    global _rows
    _rows = (offset, total)
    try:
        yield
    finally:
        _rows = None
