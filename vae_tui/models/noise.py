"""The noise eps of the reparameterization: torch.randn_like, or under torchrun, this rank's rows
of the draw for the whole global batch.

Every rank keeps the same random stream and draws the global batch's noise, then takes the rows
of its own images: rank r's image i gets exactly the noise it would get in a 1-rank run of the
same global batch, so the two runs train alike. The extra draw is a few numbers per image.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Iterator

import torch

# (offset of this rank's images, images in the global batch) while a step runs under torchrun: set by
# the step around the model's forward, read inside every model's reparameterization
ROWS: ContextVar[tuple[int, int] | None] = ContextVar("vae_tui_noise_rows", default=None)


def noise_like(std: torch.Tensor) -> torch.Tensor:
    rows = ROWS.get()
    if rows is None:
        return torch.randn_like(std)
    offset, total = rows
    drawn = torch.randn((total, *std.shape[1:]), dtype=std.dtype, device=std.device)
    return drawn[offset : offset + len(std)]


@contextlib.contextmanager
def global_rows(offset: int, total: int) -> Iterator[None]:
    """For one training step on the training thread: this rank's images sit at `offset` of `total`."""
    token = ROWS.set((offset, total))
    try:
        yield
    finally:
        ROWS.reset(token)
