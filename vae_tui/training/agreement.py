"""How the ranks of one run agree, at the same step, on its losses and on what was asked of it.

Pause, resume, stop, checkpoint-now and a non-finite loss must act on every rank at the same
step, or the ranks' collectives no longer pair up. A host sync per step would cost what the GPU
step costs; instead all ranks meet about every 100 ms: at a step rank 0 named at the previous
meeting, each adds into one small tensor the sums of its losses since (image-weighted, so the
result is the global batch's mean), the commands it holds, and its own samples per second, and
one all-reduce gives every rank the same answer. A loss that went NaN on any rank makes the
global one NaN, so every rank stops at the same step too. While paused, the ranks meet every 50 ms.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from vae_tui.training.controls import Controls
from vae_tui.training.gpus import FIELDS as GPU_FIELDS
from vae_tui.training.gpus import as_floats, from_floats
from vae_tui.training.losses import LossBuffer
from vae_tui.training.world import World

AGREE_SECONDS = 0.1  # how often the ranks meet while training
MAX_INTERVAL = 10_000  # steps between meetings at most, however fast a step is
# The tail of the tensor, after the losses: rank 0's commands, any rank's stop, the next interval,
# a new lr (0: none) and beta (with a flag, as 0 is a beta), then one samples-per-second slot for each
# rank, then each rank's GPU reading (gpus.FIELDS; zero where it has none).
PAUSE, CHECKPOINT, STOP_SAVE, STOP_DISCARD, INTERVAL, NEW_LR, NEW_BETA, HAS_BETA, FLAGS = range(9)
RATE_SECONDS = 2.0  # each rank's samples/s is measured over about this much training time


class Agreement:
    def __init__(self, world: World, raw: Controls, device: torch.device, gpu: Callable[[], dict[str, float | None] | None] = lambda: None) -> None:
        """`gpu`: this rank's GPU as NVML last read it (gpus.GpuMeter.read), for rank 0 to publish."""
        self.world, self.raw, self.device, self.gpu = world, raw, device, gpu
        self.next_step = 0  # the first meeting: the first step
        self.paused = self.checkpoint = self.stopping = False
        self.changes: dict[str, float] = {}  # a new lr or beta, agreed, for the loop to take
        self.save_on_stop = True
        self.rates = [0.0] * world.size  # each rank's samples per second, as of the last meeting
        self.gpus: list[dict[str, float | None] | None] = [None] * world.size  # each rank's GPU, likewise
        self._clock, self._last_step = time.perf_counter(), 0
        self._interval = 1
        self._window = [0, 0.0]  # this rank's images and seconds of training since its rate was last said
        self._rate = 0.0

    def due(self, step: int) -> bool:
        """A meeting is held at this step, or one held since (at an epoch's end) agreed on something to do."""
        return step >= self.next_step or self.wanted

    @property
    def wanted(self) -> bool:
        return self.paused or self.checkpoint or self.stopping or bool(self.changes)

    def meet(self, step: int, local: torch.Tensor | None, local_samples: int) -> np.ndarray:
        """One all-reduce: the global losses' sums (flat: rows of the loss buffer's terms and images, as
        every rank's buffer lays them out; empty when none were pending) and the commands, the same on every rank."""
        now = time.perf_counter()
        seconds, steps = now - self._clock, step - self._last_step
        self._clock, self._last_step = now, step
        size, rank = self.world.size, self.world.rank
        tail = np.zeros(FLAGS + size + size * len(GPU_FIELDS))
        if self.world.main:
            if steps > 0 and seconds > 0:  # as many steps as take about AGREE_SECONDS at the pace of late
                self._interval = int(min(MAX_INTERVAL, max(1, round(steps / seconds * AGREE_SECONDS))))
            tail[PAUSE] = self.raw.paused
            tail[CHECKPOINT] = self.raw.take_checkpoint_request()
            tail[INTERVAL] = self._interval
            changes = self.raw.take_changes()
            tail[NEW_LR] = changes.get("lr", 0.0)
            tail[NEW_BETA], tail[HAS_BETA] = changes.get("beta", 0.0), "beta" in changes
        if self.raw.stopping:  # a signal reaches every rank's process: any of them may ask
            tail[STOP_SAVE if self.raw.save_on_stop else STOP_DISCARD] = 1
        tail[FLAGS + rank] = self._own_rate(local_samples, seconds)
        at = FLAGS + size + rank * len(GPU_FIELDS)
        tail[at : at + len(GPU_FIELDS)] = as_floats(self.gpu())
        parts = [local.double().flatten()] if local is not None else []
        message = torch.cat(parts + [torch.from_numpy(tail).to(self.device)])
        dist.all_reduce(message)
        agreed = message.cpu().numpy()  # the one host sync of the meeting
        losses, tail = agreed[: len(agreed) - len(tail)], agreed[len(agreed) - len(tail) :]
        self.paused = bool(tail[PAUSE])
        self.checkpoint = self.checkpoint or bool(tail[CHECKPOINT])
        self.stopping = self.stopping or bool(tail[STOP_SAVE] or tail[STOP_DISCARD])
        self.save_on_stop = self.save_on_stop and not tail[STOP_DISCARD]
        if tail[NEW_LR] > 0:
            self.changes["lr"] = float(tail[NEW_LR])
        if tail[HAS_BETA]:
            self.changes["beta"] = float(tail[NEW_BETA])
        self.rates = [float(r) for r in tail[FLAGS : FLAGS + size]]
        self.gpus = [from_floats(list(tail[FLAGS + size + r * len(GPU_FIELDS) :][: len(GPU_FIELDS)])) for r in range(size)]
        self.next_step = step + max(1, int(tail[INTERVAL]))
        return losses

    def _own_rate(self, samples: int, seconds: float) -> float:
        """Samples/s over the last couple of seconds of training (meetings while paused add nothing)."""
        if samples:
            self._window[0] += samples
            self._window[1] += seconds
        if self._window[1] >= RATE_SECONDS:
            self._rate = self._window[0] / self._window[1]
            self._window = [0, 0.0]
        return self._rate


class AgreedControls:
    """The controls the loop reads under torchrun: what all ranks agreed at their last meeting.
    Requests made here (the NaN policy pausing) go to this rank's own controls, and so, on rank 0,
    to the next meeting."""

    def __init__(self, raw: Controls, agreement: Agreement, step: Callable[[], int]) -> None:
        self.raw, self.agreement, self._step = raw, agreement, step

    def pause(self) -> None:
        self.raw.pause()
        self.agreement.paused = True  # every rank pauses here together; rank 0's resume ends it

    def stop(self, save: bool = True) -> None:
        self.raw.stop(save)

    @property
    def paused(self) -> bool:
        return self.agreement.paused

    @property
    def stopping(self) -> bool:
        return self.agreement.stopping

    @property
    def save_on_stop(self) -> bool:
        return self.agreement.save_on_stop

    @property
    def wanted(self) -> bool:
        return self.agreement.wanted

    def take_checkpoint_request(self) -> bool:
        taken, self.agreement.checkpoint = self.agreement.checkpoint, False
        return taken

    def change(self, **values: float) -> None:
        self.raw.change(**values)

    def take_changes(self) -> dict[str, float]:
        """A new lr or beta, as agreed: every rank applies it at the same step."""
        taken, self.agreement.changes = self.agreement.changes, {}
        return taken

    def wait(self, seconds: float) -> None:
        """Paused: sleep, then meet the other ranks again (which is how a resume reaches them)."""
        self.raw.wait(seconds)
        self.agreement.meet(self._step(), None, 0)


class Alone:
    """One process: commands are looked at before every step (an Event's flag, no sync), losses
    reach the host every 100 ms."""

    reduce = None

    def __init__(self, controls: Controls, losses: LossBuffer) -> None:
        self.controls, self.losses = controls, losses

    def due(self, step: int) -> bool:
        return self.controls.wanted

    def flush_due(self) -> bool:
        return self.losses.due()


class Together:
    """Ranks under torchrun: commands and losses only at the meetings, which every rank holds at the same step."""

    def __init__(self, agreement: Agreement, step: Callable[[], int]) -> None:
        self.agreement, self._step = agreement, step

    def due(self, step: int) -> bool:
        return self.agreement.due(step)

    def flush_due(self) -> bool:
        return False

    def reduce(self, local: torch.Tensor | None, samples: int) -> np.ndarray:
        return self.agreement.meet(self._step(), local, samples)
