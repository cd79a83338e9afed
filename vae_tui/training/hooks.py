"""Hooks: what happens around the training loop without being in it.

The loop calls every hook at the same few moments, on the training thread. Metrics, snapshots,
the latent report, the final evaluation and the status views read are all hooks
(reporting.py, pictures.py, evaluation.py); a new behaviour is one more.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vae_tui.training.loop import Trainer, TrainResult
    from vae_tui.training.losses import LossChunk


class Hook:
    """Every method is optional. on_batch_end runs after each step: keep it cheap (no host sync), and
    prefer on_losses (about every 100 ms) for anything paced by time."""

    def on_start(self, trainer: "Trainer") -> None:
        """Training (re)starts from trainer.state: a new run, a resumed one, or one rolled back."""

    def on_batch_end(self, trainer: "Trainer") -> None:
        """An optimizer step was taken."""

    def on_losses(self, trainer: "Trainer", chunk: "LossChunk") -> None:
        """The losses of recent batches reached the host (about every 100 ms)."""

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        """An epoch ended; `record` is its metrics record (train and test loss)."""

    def on_checkpoint(self, trainer: "Trainer", path: Path, why: str, routine: bool) -> None:
        """A checkpoint was saved at `path` (routine: by the schedule, not asked for)."""

    def on_pause(self, trainer: "Trainer") -> None:
        """Training holds, paused: a chance to show the model as it stands."""

    def on_change(self, trainer: "Trainer", change: dict[str, float]) -> None:
        """The learning rate and/or beta were changed live, from the next step on (`change` has the step)."""

    def on_finish(self, trainer: "Trainer", result: "TrainResult") -> None:
        """Training ended: finished, stopped or failed."""


class Hooks:
    """Calls each hook in order; a hook that does not override a method costs nothing there."""

    EVENTS = ("on_start", "on_batch_end", "on_losses", "on_epoch_end", "on_checkpoint", "on_pause", "on_change", "on_finish")

    def __init__(self, hooks: list[Hook]) -> None:
        self.hooks = hooks
        self._bound = {event: [getattr(h, event) for h in hooks if getattr(type(h), event) is not getattr(Hook, event)] for event in self.EVENTS}

    def listening(self, event: str) -> bool:
        """Whether any hook overrides `event`: the loop calls on_batch_end only then."""
        return bool(self._bound[event])

    def on_start(self, trainer: "Trainer") -> None:
        for call in self._bound["on_start"]:
            call(trainer)

    def on_batch_end(self, trainer: "Trainer") -> None:
        for call in self._bound["on_batch_end"]:
            call(trainer)

    def on_losses(self, trainer: "Trainer", chunk: "LossChunk") -> None:
        for call in self._bound["on_losses"]:
            call(trainer, chunk)

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        for call in self._bound["on_epoch_end"]:
            call(trainer, record)

    def on_checkpoint(self, trainer: "Trainer", path: Path, why: str, routine: bool) -> None:
        for call in self._bound["on_checkpoint"]:
            call(trainer, path, why, routine)

    def on_pause(self, trainer: "Trainer") -> None:
        for call in self._bound["on_pause"]:
            call(trainer)

    def on_change(self, trainer: "Trainer", change: dict[str, float]) -> None:
        for call in self._bound["on_change"]:
            call(trainer, change)

    def on_finish(self, trainer: "Trainer", result: "TrainResult") -> None:
        for call in self._bound["on_finish"]:
            call(trainer, result)
