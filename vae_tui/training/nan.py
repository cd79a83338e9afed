"""What a NaN or infinite loss does (--on-nan): stop, pause and go back, or skip the batch.

A model with NaN in it is never saved: the loss buffer notices before any checkpoint is
written, and the message names the step, the checkpoint that is intact and a rate to try.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vae_tui.runfile.schema import RunState
from vae_tui.training.losses import NonFiniteLoss
from vae_tui.training.world import share

if TYPE_CHECKING:
    from vae_tui.training.loop import Trainer, TrainResult

LARGE_BETA = 1e3  # a KL weight beyond this, not the learning rate, is the likely cause of a NaN
MAX_SKIPPED = 20  # --on-nan skip: this many non-finite batches in a row means the model itself is broken


class NanPolicy:
    def __init__(self, mode: str) -> None:
        if mode not in ("pause", "stop", "skip"):
            raise ValueError(f"--on-nan {mode!r} must be resolved to pause, stop or skip before training")
        self.mode = mode
        self.skipped = 0

    def skip(self, trainer: "Trainer", loss: torch.Tensor) -> bool:
        """--on-nan skip: whether to drop this batch. A host sync per step, only in this mode."""
        if self.mode != "skip":
            return False
        if torch.isfinite(loss).item():
            self.skipped = 0
            return False
        self.skipped += 1
        step = trainer.state.step + 1
        if self.skipped >= MAX_SKIPPED:
            raise NonFiniteLoss(step)
        if self.skipped == 1:
            trainer.telemetry.event("warning", f"loss was NaN or infinite at step {step}: batch skipped (--on-nan skip)")
        return True

    def after(self, trainer: "Trainer", exc: NonFiniteLoss) -> "TrainResult | None":
        """The run's end after a non-finite loss, or None when it went back to a checkpoint to go on."""
        last, good = trainer.checkpointer.last_good()  # read once: message, rollback and result share it
        good = share(trainer.world, good)  # under torchrun, rank 0's: the others have no run directory
        message = self.message(trainer, exc, last, good)
        if self.mode == "pause" and self._wait(trainer, message):
            try:
                trainer.roll_back(good)
            except Exception as err:  # the checkpoint to go back to does not fit any more
                return trainer.ended(RunState.ERROR, f"{message}; rolling back failed: {err}")
            trainer.telemetry.event("warning", f"rolled back to step {good['step'] if good else 0}" + (f" ({last})" if last else " (the start)"))
            return None
        return trainer.ended(RunState.STOPPED if self.mode == "pause" else RunState.ERROR, message)

    @staticmethod
    def message(trainer: "Trainer", exc: NonFiniteLoss, last: Path | None, good: dict[str, Any] | None) -> str:
        """What happened, what is safe, and the likeliest cause to change first."""
        run = trainer.checkpointer.run
        lr, beta = trainer.state.lr, trainer.state.beta  # as they are now, live changes included
        if beta > LARGE_BETA:  # the KL term swamps everything: that is what to change, not the rate
            fix, option = f"--beta {beta:g} is very large; try --beta 1", "--beta 1"
        else:
            lower = f"{min(lr / 10, 1e-3):g}"  # the default, or a tenth of a rate that was already small
            fix, option = f"Try a lower learning rate (now {lr:g})", f"--lr {lower}"
        if last is not None and good is not None and run is not None:
            kept, retry = f"{last} (step {good['step']}) is intact", f"vae-tui train --resume {run.path} {option}"
        else:
            kept, retry = "no checkpoint had been saved yet", f"start again with {option}"
        return (  # what to do first: the status line may show only the start of it
            f"loss became NaN or infinite at step {exc.step} (epoch {trainer.state.epoch + 1}). {fix}: {retry}. Nothing was saved after it; {kept}"
        )

    @staticmethod
    def _wait(trainer: "Trainer", message: str) -> bool:
        """Hold, paused, until resumed (then go back and on: True) or stopped (keep what is saved: False)."""
        controls, telemetry = trainer.controls, trainer.telemetry
        controls.pause()
        telemetry.update_status(state=RunState.PAUSED, message=message + "; or press space to go back to the last checkpoint and go on")
        telemetry.event("error", message)
        while controls.paused and not controls.stopping:
            controls.take_checkpoint_request()  # a model with NaN in it is never saved
            controls.wait(0.05)
        return not controls.stopping
