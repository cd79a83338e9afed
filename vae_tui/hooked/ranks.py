"""A script started by a launcher (`vae-tui run -- torchrun ...`, `-- accelerate launch ...`): every rank
is watched, rank 0 writes the run, and the monitor's requests reach every rank at the same step.

The ranks agree every AGREE_EVERY steps of the model's optimizer, in its step pre-hook, with one
broadcast from rank 0 on the script's own process group: whether to stop or pause, whether rank 0
saves now, and each optimizer's new learning rate (NaN: unchanged). DDP keeps the ranks' steps in
lockstep, so each rank reaches the same broadcast at the same step. A pause holds every rank in a
further broadcast that rank 0 makes when it resumes. A stop ends every rank with status 0 (a launcher
takes a worker's non-zero status as a failure, and may restart it).
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable

import torch
import torch.distributed as dist

from vae_tui.hooked import registry
from vae_tui.hooked.finding import model_trained_by
from vae_tui.hooked.probes import Probes

AGREE_EVERY = 4  # steps of the model's optimizer between two agreements: a request waits at most this many
MOST_OPTIMIZERS = 4  # the other optimizers (a discriminator's) whose learning rate an agreement carries
STOP, PAUSE, SAVE = 0, 1, 2  # an agreement's first slots; then the model's lr, then each other optimizer's
SLOTS = 3 + 1 + MOST_OPTIMIZERS


def rank() -> int:
    """This process's rank under a launcher (0 alone)."""
    return _int_env("RANK")


def world_size() -> int:
    return max(1, _int_env("WORLD_SIZE", 1))


def _int_env(name: str, default: int = 0) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


class Agreement:
    """The broadcast from rank 0 on the script's default process group, once the script has made one."""

    def __init__(self) -> None:
        self.steps = 0  # the model's optimizer's steps so far

    @property
    def active(self) -> bool:
        return world_size() > 1 and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def due(self) -> bool:
        """Whether this step of the model's optimizer is one the ranks agree at (counted on every rank alike)."""
        self.steps += 1
        return self.active and self.steps % AGREE_EVERY == 1

    def agree(self, values: list[float]) -> list[float]:
        """Rank 0's `values` on every rank (the others' are ignored)."""
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        tensor = torch.tensor(values + [math.nan] * (SLOTS - len(values)), dtype=torch.float64, device=device)
        dist.broadcast(tensor, src=0)
        return tensor.cpu().tolist()


def request(stop: bool, pause: bool, save: bool, lrs: list[float]) -> list[float]:
    return [float(stop), float(pause), float(save), *lrs[: 1 + MOST_OPTIMIZERS]]


class RankWatch:
    """A rank other than 0: it writes nothing, finds the model's optimizer as rank 0 does, and does what
    the agreements say (rank 0 saves the checkpoints)."""

    def __init__(self, stopped: Callable[[], BaseException]) -> None:
        self.agreement = Agreement()
        self.optimizer: torch.optim.Optimizer | None = None
        self.others: list[torch.optim.Optimizer] = []
        self.stopped = stopped
        self.probes = Probes(self._before_step, self._after_step)
        self.active = True
        registry.set_session(self)

    def _before_step(self, optimizer: torch.optim.Optimizer) -> None:
        if optimizer is not self.optimizer or not self.agreement.due():
            return
        said = self.agreement.agree(request(False, False, False, []))
        self._take_lrs(said)
        while said[PAUSE] == 1 and said[STOP] != 1:
            said = self.agreement.agree(request(False, False, False, []))
            self._take_lrs(said)
        if said[STOP] == 1:
            self.active = False
            self.probes.remove()
            raise self.stopped()

    def _take_lrs(self, said: list[float]) -> None:
        for optimizer, lr in zip([self.optimizer, *self.others], said[3:]):
            if optimizer is not None and not math.isnan(lr):
                for group in optimizer.param_groups:
                    group["lr"] = lr

    def _after_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Which optimizer trains the model, found as rank 0 finds it; the others in the order rank 0 names them."""
        self.probes.take_loss()
        if optimizer is self.optimizer:
            return
        if self.optimizer is None and model_trained_by(self.probes, optimizer, optimizer in self.others)[0]:
            self.optimizer = optimizer
            if optimizer in self.others:
                self.others.remove(optimizer)
        elif optimizer not in self.others:
            self.others.append(optimizer)

    def log(self, **values: Any) -> None:
        """vae_tui.log on a rank that does not write: nothing to keep."""

    def log_epoch(self, test_loss: float | None = None, **values: Any) -> None:
        pass

    def step_aside(self) -> None:
        self.active = False
        self.probes.remove()
        registry.set_session(None)
