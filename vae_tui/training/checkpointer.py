"""Which checkpoints a run keeps: last.pt (every few epochs, on request, on stop), best.pt (the
lowest test loss), and the last good one a run goes back to after a NaN."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vae_tui.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from vae_tui.runfile.io import os_reason
from vae_tui.runfile.layout import RunDir

if TYPE_CHECKING:
    from vae_tui.telemetry import Telemetry
    from vae_tui.training.state import TrainingState


class Checkpointer:
    def __init__(self, run: RunDir | None, meta: dict[str, Any], telemetry: "Telemetry") -> None:
        """`meta`: what every checkpoint carries beside the training state (configuration, data)."""
        self.run, self.meta, self.telemetry = run, meta, telemetry

    def save(self, which: str, state: "TrainingState", why: str) -> Path | None:
        """Save last.pt or best.pt; a failed write is a warning, the previous file stays whole."""
        if self.run is None:
            return None
        path = self.run.last_checkpoint if which == "last" else self.run.best_checkpoint
        try:
            save_checkpoint({**self.meta, **state.state_dict(), "saved_at": time.time()}, path)
        except OSError as exc:
            self.telemetry.trouble(f"saving {path.name}", f"could not save {path}: {os_reason(exc, path)}; the previous "
                                   "one is intact, training goes on")
            return None
        self.telemetry.cleared(f"saving {path.name}")
        return path

    def existing(self, which: str) -> Path | None:
        if self.run is None:
            return None
        path = self.run.last_checkpoint if which == "last" else self.run.best_checkpoint
        return path if path.exists() else None

    def last_good(self) -> tuple[Path | None, dict[str, Any] | None]:
        """The last checkpoint that loads, and its state; (None, None) when there is none."""
        last = self.existing("last")
        if last is None:
            return None, None
        try:
            return last, load_checkpoint(last)
        except CheckpointError:
            return None, None
