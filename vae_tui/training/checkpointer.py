"""Which checkpoints a run keeps: last.pt (every few epochs, on request, on stop), best.pt (the
lowest test loss), and the last good one a run goes back to after a NaN.

A save asked for (a key, a stop) is written before `save` returns. A routine one (every epoch, a
new best) must not hold training up: at GPU speed an epoch can take a tenth of a second, and
writing and fsyncing a checkpoint takes about as long. Its tensors are copied to host memory on
the training thread (the state as it is at that step; from a GPU without waiting for the copy),
and a writer thread of its own serialises and writes them. Each file is written at most every
`min_seconds` (--checkpoint-every's seconds): when epochs are short, the newest routine save of each
waits for its time and older ones are dropped, never half written, so last.pt is never more than
one interval behind and best.pt holds the best state even when it came between writes. A save
asked for, and the end of the run (`drain`), write at once.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vae_tui.runfile.io import os_reason
from vae_tui.runfile.layout import RunDir
from vae_tui.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

if TYPE_CHECKING:
    from vae_tui.telemetry import Telemetry
    from vae_tui.training.state import TrainingState


class Checkpointer:
    def __init__(
        self, run: RunDir | None, meta: dict[str, Any], telemetry: "Telemetry", device: torch.device = torch.device("cpu"), min_seconds: float = 0.0
    ) -> None:
        """`meta`: what every checkpoint carries beside the training state (configuration, data)."""
        self.run, self.meta, self.telemetry, self.device = run, meta, telemetry, device
        self.min_seconds = min_seconds
        self._last_write: dict[Path, float] = {}  # monotonic time each file was last written
        self._hurry = False  # drain: write what waits now, whatever its time
        self._ready = threading.Condition()
        self._waiting: dict[Path, tuple[dict[str, Any], str, Any]] = {}  # the newest save of each file not yet written
        self._written: list[tuple[Path, str]] = []  # written in the background, not yet told
        self._writer: threading.Thread | None = None
        self._finished: list[threading.Thread] = []  # writers that said they are done: joined by drain

    def save(self, which: str, state: "TrainingState", why: str, background: bool = False) -> Path | None:
        """Save last.pt or best.pt; a failed write is a warning, the previous file stays whole. Returns
        the path once written, or None (failed; or in the background: see `saved`)."""
        if self.run is None:
            return None
        path = self.run.last_checkpoint if which == "last" else self.run.best_checkpoint
        payload = {**self.meta, **state.state_dict(), "saved_at": time.time()}
        if not background:
            self.drain()  # after any older save of the same file
            self._last_write[path] = time.monotonic()
            return path if self._write(path, payload) else None
        payload = on_host(payload)
        copied = torch.cuda.Event() if self.device.type == "cuda" else None
        if copied is not None:
            copied.record()  # the writer waits for the copies from the GPU, the loop does not
        with self._ready:
            self._waiting[path] = (payload, why, copied)
            self._ready.notify_all()
            if self._writer is None:  # it ends when nothing is left to write
                self._writer = threading.Thread(target=self._write_waiting, name="vae-checkpoints", daemon=True)
                self._writer.start()
        return None

    def saved(self) -> list[tuple[Path, str]]:
        """(path, why) of the background saves written since the last call."""
        with self._ready:
            done, self._written = self._written, []
        return done

    def drain(self) -> None:
        """Write every background save now, whatever its time, and wait until it is written (or has failed)
        and its writer has ended: a writer still letting go of a checkpoint's tensors while the
        interpreter exits aborted the process ("terminate called without an active exception")."""
        with self._ready:
            self._hurry = True
            self._ready.notify_all()
            self._ready.wait_for(lambda: self._writer is None)
            self._hurry = False
            finished, self._finished = self._finished, []
        for writer in finished:
            writer.join()

    def _write_waiting(self) -> None:
        while True:
            with self._ready:
                if not self._waiting:
                    self._writer = None
                    self._finished.append(threading.current_thread())
                    self._ready.notify_all()
                    return
                due = {p: self._last_write.get(p, -math.inf) + self.min_seconds for p in self._waiting}
                path = min(due, key=due.__getitem__)
                wait = due[path] - time.monotonic()
                if wait > 0 and not self._hurry:
                    self._ready.wait(wait)  # a newer save, or drain, wakes it early
                    continue
                payload, why, copied = self._waiting.pop(path)
                self._last_write[path] = time.monotonic()
            if copied is not None:
                copied.synchronize()
            ok = self._write(path, payload)
            if ok:
                with self._ready:
                    self._written.append((path, why))

    def _write(self, path: Path, payload: dict[str, Any]) -> bool:
        try:
            save_checkpoint(payload, path)
        except Exception as exc:  # a full disk (OSError), or anything else: said, and training goes on
            reason = os_reason(exc, path) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
            self.telemetry.trouble(f"saving {path.name}", f"could not save {path}: {reason}; the previous one is intact, training goes on")
            return False
        self.telemetry.cleared(f"saving {path.name}")
        return True

    def existing(self, which: str) -> Path | None:
        if self.run is None:
            return None
        path = self.run.last_checkpoint if which == "last" else self.run.best_checkpoint
        return path if path.exists() else None

    def last_good(self) -> tuple[Path | None, dict[str, Any] | None]:
        """The last checkpoint that loads, and its state; (None, None) when there is none."""
        self.drain()
        last = self.existing("last")
        if last is None:
            return None, None
        try:
            return last, load_checkpoint(last)
        except CheckpointError:
            return None, None


def on_host(value: Any) -> Any:
    """`value` with every tensor copied to host memory, where the training that goes on cannot change
    it: from a GPU into pinned memory without waiting (the copies run in order on the GPU's stream,
    before any later step; record an event to wait for them), on a CPU a clone."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.is_cuda:
            return torch.empty(value.shape, dtype=value.dtype, pin_memory=True).copy_(value, non_blocking=True)
        return value.clone()
    if isinstance(value, dict):
        return {k: on_host(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(on_host(v) for v in value)
    return value
