"""Per-batch losses: kept on the device, copied to the host together, checked for NaN there.

A `loss.item()` per step would make the CPU wait for the GPU every step. The buffer instead
holds the loss tensors and copies them all in one transfer about every 50 ms; that copy is also
where a non-finite loss is noticed, at most 50 ms late and before anything is saved.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

FLUSH_SECONDS = 0.05


class NonFiniteLoss(Exception):
    def __init__(self, step: int) -> None:
        super().__init__(step)
        self.step = step


@dataclass
class LossChunk:
    """Batches whose losses reached the host together."""

    steps: np.ndarray
    sizes: np.ndarray
    times: np.ndarray  # Unix seconds at each step's end
    recon: np.ndarray
    kl: np.ndarray
    loss: np.ndarray
    seconds: float  # since the previous chunk (pauses excluded): for samples/s
    lr: np.ndarray | None = None  # each step's learning rate and beta (NaN where not known)
    beta: np.ndarray | None = None


class LossBuffer:
    def __init__(self) -> None:
        self.flush_seconds = FLUSH_SECONDS
        self._tensors: list[torch.Tensor] = []
        self._steps: list[int] = []
        self._sizes: list[int] = []
        self._times: list[float] = []
        self._settings: list[tuple[float, float]] = []  # (lr, beta) of each step
        self._clock = time.perf_counter()

    def add(self, step: int, size: int, recon: torch.Tensor, kl: torch.Tensor, loss: torch.Tensor,
            lr: float = math.nan, beta: float = math.nan) -> None:
        """One batch's terms, still on the device (no sync), and the lr and beta it trained with."""
        self._tensors += (recon.detach(), kl.detach(), loss.detach())
        self._steps.append(step)
        self._sizes.append(size)
        self._times.append(time.time())
        self._settings.append((lr, beta))

    @property
    def pending(self) -> bool:
        return bool(self._steps)

    def due(self) -> bool:
        return time.perf_counter() - self._clock >= self.flush_seconds

    def restart_clock(self) -> None:
        """After a pause: the time paused is not training time."""
        self._clock = time.perf_counter()

    def clear(self) -> None:
        self._tensors.clear()
        self._steps.clear()
        self._sizes.clear()
        self._times.clear()
        self._settings.clear()

    def flush(self, check: bool = True, reduce: "Reduce | None" = None) -> LossChunk | None:
        """Everything pending, in one host copy; with `check`, raise NonFiniteLoss (and drop it all)
        on NaN or inf. `reduce` (under torchrun) turns this rank's sums into the global batches': it is
        called even with nothing pending, since every rank must take part."""
        if reduce is not None:
            sums = reduce(self._local_sums(), int(sum(self._sizes)))
            if not len(sums):
                return None
            values, sizes = sums[:, :3] / sums[:, 3:], sums[:, 3].round().astype(np.int64)
        elif self._steps:
            values, sizes = torch.stack(self._tensors).cpu().numpy().reshape(-1, 3), np.asarray(self._sizes)
        else:
            return None
        now = time.perf_counter()
        settings = np.asarray(self._settings, dtype=np.float64).reshape(-1, 2)
        chunk = LossChunk(np.asarray(self._steps), sizes, np.asarray(self._times),
                          values[:, 0], values[:, 1], values[:, 2], now - self._clock, settings[:, 0], settings[:, 1])
        self._clock = now
        self.clear()
        finite = np.isfinite(chunk.loss)
        if check and not finite.all():
            raise NonFiniteLoss(int(chunk.steps[~finite][0]))
        return chunk

    def _local_sums(self) -> torch.Tensor | None:
        """Rows of (recon, kl, loss) times this rank's image count, and the count: sums add up across ranks."""
        if not self._steps:
            return None
        values = torch.stack(self._tensors).double().view(-1, 3)
        sizes = torch.tensor(self._sizes, dtype=torch.float64, device=values.device).view(-1, 1)
        return torch.cat([values * sizes, sizes], dim=1)


Reduce = Callable[[torch.Tensor | None, int], np.ndarray]  # (this rank's sums, its images) -> every rank's


def beta_at(beta: float, warmup_epochs: int, step: int, batches_per_epoch: int) -> float:
    """KL warm-up: beta rises linearly from 0 to `beta` over the first `warmup_epochs` epochs.

    Early on the decoder learns to use z before the KL term pulls every posterior onto the prior,
    a common guard against posterior collapse. A function of the step alone, so resume is exact.
    """
    if warmup_epochs <= 0:
        return beta
    return beta * min(1.0, step / (warmup_epochs * batches_per_epoch))
