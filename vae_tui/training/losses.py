"""Per-batch losses: kept on the device, copied to the host together, checked for NaN there.

A `loss.item()` per step would make the CPU wait for the GPU every step. The buffer instead
holds the loss tensors and copies them all in one transfer about every 100 ms; that copy is also
where a non-finite loss is noticed, at most 100 ms late and before anything is saved.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

FLUSH_SECONDS = 0.1


class NonFiniteLoss(Exception):
    def __init__(self, step: int) -> None:
        super().__init__(step)
        self.step = step


@dataclass
class LossChunk:
    """Batches whose losses reached the host together."""

    steps: np.ndarray
    sizes: np.ndarray
    times: np.ndarray  # Unix seconds at each step's end (spread evenly over the chunk's time: no clock read per step)
    recon: np.ndarray
    kl: np.ndarray
    loss: np.ndarray
    seconds: float  # since the previous chunk (pauses excluded): for samples/s
    lr: np.ndarray | None = None  # each step's learning rate and beta (NaN where not known)
    beta: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # other named terms (tc), each step's


class TermList:
    """Each step's (recon, kl, loss, other terms...) tensors as an eager step made them, stacked at the flush."""

    capacity = 1 << 62  # a list never fills

    def __init__(self, width: int = 3) -> None:
        self.tensors: list[torch.Tensor] = []
        self.width = width  # recon, kl, loss and the run's other terms

    def add(self, recon: torch.Tensor, kl: torch.Tensor, loss: torch.Tensor, *extra: torch.Tensor) -> None:
        self.tensors += (recon.detach(), kl.detach(), loss.detach(), *(t.detach() for t in extra))

    def rows(self, n: int) -> torch.Tensor:
        """The pending rows, (n, width), on the device: at least float32 (a term autocast left in bf16 too,
        as numpy has no bfloat16)."""
        rows = torch.stack(self.tensors).view(n, self.width)
        return rows.to(torch.promote_types(rows.dtype, torch.float32))

    def clear(self) -> None:
        self.tensors.clear()


Terms = Any  # TermList, or a device ring a CUDA graph writes (static_step.TermRing): add/rows/clear/capacity
Settings = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray]"]  # steps -> the lr and beta each trained with


class LossBuffer:
    """What the loop records per step is one image count; the loss terms wait in `terms` on the device,
    and everything else a record holds (step numbers, times, lr and beta) is made at the flush."""

    def __init__(self, terms: Terms | None = None, names: tuple[str, ...] = ()) -> None:
        self.flush_seconds = FLUSH_SECONDS
        self.names = names  # the run's terms beyond recon, kl and loss: their columns follow those three
        self.terms: Terms = terms if terms is not None else TermList(3 + len(names))
        self._sizes: list[int] = []
        self._clock = time.perf_counter()
        self._since = time.time()  # wall time of the last flush (or restart): the chunk's steps ended after it

    def add(self, size: int, recon: torch.Tensor | None = None, kl: torch.Tensor | None = None, loss: torch.Tensor | None = None) -> None:
        """One step of `size` images; its terms are given here, or were written to `terms` by the step."""
        if recon is not None:
            self.terms.add(recon, kl, loss)
        self._sizes.append(size)

    @property
    def pending(self) -> int:
        return len(self._sizes)

    def due(self) -> bool:
        return len(self._sizes) >= self.terms.capacity or time.perf_counter() - self._clock >= self.flush_seconds

    def restart_clock(self) -> None:
        """After a pause: the time paused is not training time."""
        self._clock, self._since = time.perf_counter(), time.time()

    def clear(self) -> None:
        self.terms.clear()
        self._sizes.clear()

    def flush(self, last_step: int, settings: Settings | None = None, check: bool = True, reduce: "Reduce | None" = None) -> LossChunk | None:
        """Everything pending, the steps up to `last_step`, in one host copy; with `check`, raise
        NonFiniteLoss (and drop it all) on NaN or inf. `settings` gives each step's lr and beta (NaN
        when not given). `reduce` (under torchrun) turns this rank's sums into the global batches': it
        is called even with nothing pending, since every rank must take part."""
        n = len(self._sizes)
        if reduce is not None:
            sums = reduce(self._local_sums(), int(sum(self._sizes))).reshape(-1, 4 + len(self.names))
            if not len(sums):
                return None
            values, sizes = sums[:, :-1] / sums[:, -1:], sums[:, -1].round().astype(np.int64)
        elif n:
            values, sizes = self.terms.rows(n).cpu().numpy(), np.asarray(self._sizes)
        else:
            return None
        now, wall = time.perf_counter(), time.time()
        steps = np.arange(last_step - n + 1, last_step + 1)
        lr, beta = settings(steps) if settings is not None else (np.full(n, math.nan), np.full(n, math.nan))
        times = np.linspace(self._since, wall, n + 1)[1:]  # steps end evenly between the last flush and now
        extra = {name: values[:, 3 + i] for i, name in enumerate(self.names)}
        chunk = LossChunk(steps, sizes, times, values[:, 0], values[:, 1], values[:, 2], now - self._clock, lr, beta, extra)
        self._clock, self._since = now, wall
        self.clear()
        finite = np.isfinite(chunk.loss)
        if check and not finite.all():
            raise NonFiniteLoss(int(chunk.steps[~finite][0]))
        return chunk

    def _local_sums(self) -> torch.Tensor | None:
        """Rows of (recon, kl, loss, other terms) times this rank's image count, and the count: sums add up across ranks."""
        if not self._sizes:
            return None
        values = self.terms.rows(len(self._sizes)).double()
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


def betas_at(beta: float, warmup_epochs: int, steps: np.ndarray, batches_per_epoch: int) -> np.ndarray:
    """`beta_at` for many steps at once, in the same float64 arithmetic (so the same numbers)."""
    if warmup_epochs <= 0:
        return np.full(len(steps), beta)
    return beta * np.minimum(1.0, steps / (warmup_epochs * batches_per_epoch))
