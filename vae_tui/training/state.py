"""The training state: everything needed to continue a run exactly where it was.

`state_dict()` is what a checkpoint holds (with the configuration and the data description that
the checkpointer adds), and `load_state_dict()` puts it back: model, optimizer, progress in the
epoch (its permutation included), the best test loss and every random number generator, so a
resumed run on the CPU ends bit for bit where an uninterrupted one does.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from vae_tui.errors import VaeTuiError
from vae_tui.models.protocol import VAEModel, as_vae
from vae_tui.training.checkpoint import saved_global_batch


@dataclass
class EpochProgress:
    """Running sums for the epoch in progress, saved in mid-epoch checkpoints."""

    loss_sum: float = 0.0
    samples: int = 0
    seconds: float = 0.0  # training time, pauses not counted

    def add(self, losses: np.ndarray, sizes: np.ndarray) -> None:
        self.loss_sum += float((losses.astype(np.float64) * sizes).sum())
        self.samples += int(sizes.sum())

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.samples, 1)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam with the fused kernel where this device has one, the multi-tensor one otherwise."""
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.Adam(model.parameters(), lr=lr, foreach=True)


class TrainingState:
    @property
    def vae(self) -> VAEModel:
        """The model as vae-tui's training, pictures and evaluation take it."""
        return as_vae(self.model)

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, seed: int, device: torch.device, lr: float = 1e-3, beta: float = 1.0) -> None:
        self.model, self.optimizer, self.device = model, optimizer, device
        self.lr, self.beta = lr, beta  # as they are now: changed live, they are part of the run's state
        self.changes: list[dict[str, float]] = []  # every live change: {"step", and "lr" and/or "beta"}
        self.shuffle = torch.Generator(device=device)  # the epochs' order: its own stream, saved with the rest
        self.shuffle.manual_seed(seed)
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps taken
        self.batch_in_epoch = 0  # batches of the epoch in progress already done
        self.sample_in_epoch = 0  # where in the epoch's permutation the next batch starts (all ranks' images)
        self.scaler: dict[str, Any] | None = None  # fp16's loss scale, as the trainer last saw it
        self.perm: torch.Tensor | None = None  # the epoch in progress's order of samples
        self.progress = EpochProgress()
        self.best_test_loss = math.inf

    def permutation(self, n: int) -> torch.Tensor:
        """The order of the epoch in progress, drawn once at its start."""
        if self.perm is None:
            self.perm = torch.randperm(n, generator=self.shuffle, device=self.device)
        return self.perm

    def finish_epoch(self) -> None:
        self.epoch += 1
        self.batch_in_epoch, self.sample_in_epoch, self.perm, self.progress = 0, 0, None, EpochProgress()

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self._optimizer_state(),
            "epoch": self.epoch,
            "step": self.step,
            "batch_in_epoch": self.batch_in_epoch,
            "sample_in_epoch": self.sample_in_epoch,
            "scaler": self.scaler,
            "lr": self.lr,
            "beta": self.beta,
            "changes": list(self.changes),
            "perm": self.perm.cpu() if self.perm is not None else None,
            "epoch_progress": asdict(self.progress),
            "best_test_loss": self.best_test_loss,
            "rng": self._rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any], lr: float, beta: float) -> None:
        """Continue from a checkpoint with these values of lr and beta: the ones it was training with
        (live changes included), or ones given again on the command line."""
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise StateMismatch(str(exc).splitlines()[0]) from None
        self.set_lr(lr)
        self.beta = beta
        self.changes = [dict(c) for c in state.get("changes") or []]
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.batch_in_epoch = int(state.get("batch_in_epoch") or 0)
        self.sample_in_epoch = int(state.get("sample_in_epoch", self.batch_in_epoch * saved_global_batch(state)))
        self.scaler = state.get("scaler")
        perm = state.get("perm")
        self.perm = perm.to(self.device) if perm is not None else None
        self.progress = EpochProgress(**state.get("epoch_progress", {}))
        self.best_test_loss = float(state.get("best_test_loss", math.inf))
        self._set_rng_state(state["rng"])

    def set_lr(self, lr: float) -> None:
        self.lr = lr
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):  # a CUDA graph's Adam reads it there: changed in place
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr

    def _optimizer_state(self) -> dict[str, Any]:
        """Adam's state as the eager step keeps it, whichever step trained (a graph's Adam holds its rate
        in a tensor and says it is capturable): a checkpoint resumes with either."""
        saved = self.optimizer.state_dict()
        for group in saved["param_groups"]:
            if isinstance(group.get("lr"), torch.Tensor):
                group["lr"], group["capturable"] = self.lr, False
        return saved

    def _rng_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"torch": torch.get_rng_state(), "shuffle": self.shuffle.get_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        if getattr(torch, "mps", None) is not None and torch.backends.mps.is_available():
            state["mps"] = torch.mps.get_rng_state()
        return state

    def _set_rng_state(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        self.shuffle.set_state(state["shuffle"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        if "mps" in state and torch.backends.mps.is_available():
            torch.mps.set_rng_state(state["mps"])


class StateMismatch(VaeTuiError):
    """A checkpoint's weights or optimizer state do not fit this model."""
