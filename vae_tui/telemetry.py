"""What the trainer publishes and every view pulls: thread-safe, append-only, numpy only.

The trainer thread writes (in chunks, never per batch from the UI's point of view); views read
on their own timers and use the version counters to skip redraws when nothing changed. Nothing
here imports torch, so the UI thread never touches a tensor (DESIGN principle 5).
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vae_tui.metrics import MetricsWriter, batch_lines
from vae_tui.series import Decimated, Series

SERIES = ("recon", "kl", "loss")
FINAL_STATES = ("finished", "stopped", "error", "crashed")


@dataclass
class Status:
    state: str = "starting"  # starting, training, paused, finished, stopped, error
    dataset: str = ""
    device: str = ""
    device_memory: int = 0  # bytes allocated on a CUDA device, 0 elsewhere
    model: str = ""  # e.g. "784-400-20"
    parameters: int = 0
    epoch: int = 0  # the epoch in progress (or the last one finished)
    epochs: int = 0
    step: int = 0
    batch_in_epoch: int = 0
    batches_per_epoch: int = 0
    samples_per_s: float = 0.0
    message: str = ""
    run_dir: str = ""
    started: float = field(default_factory=time.time)
    best_test_loss: float = math.inf
    last_checkpoint: str = ""
    beta: float = 1.0  # the KL weight in use now (below --beta during --kl-warmup)
    evaluation: dict[str, Any] = field(default_factory=dict)  # the final honest evaluation, once done
    # Filled in by the publisher, so a watcher in another process can tell a live trainer from
    # one that was killed: which process on which host, and when it last said so.
    pid: int = 0
    host: str = ""
    updated: float = 0.0

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Status":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Snapshot:
    """Pictures for the image panes, as (n, h, w) float32 arrays in [0, 1]."""

    step: int
    epoch: int
    originals: np.ndarray
    reconstructions: np.ndarray
    samples: np.ndarray


@dataclass
class Event:
    kind: str  # checkpoint, error, warning, info
    message: str
    time: float = field(default_factory=time.time)


class Telemetry:
    def __init__(self, metrics: MetricsWriter | None = None) -> None:
        self._lock = threading.Lock()
        self._metrics = metrics
        self._snapshot: Snapshot | None = None
        self._events: list[Event] = []
        self._status = Status()
        self.status_version = 0
        self.snapshot_version = 0
        self._analysis: dict[str, np.ndarray] | None = None
        self.analysis_version = 0
        self.resets = 0  # views include it in their redraw keys
        self._mirror_failing = False
        self.reset()

    def reset(self) -> None:
        """Forget the loss history (a watcher re-reading a metrics file that a resume rewrote)."""
        with self._lock:
            self._series = {name: Series() for name in SERIES}
            self.first_step = 1  # the step number of the series' first value
            self._epochs: list[dict[str, Any]] = []
            self.resets += 1

    # -- writer side (the trainer thread) ------------------------------------------------
    def add_batches(
        self, epoch: int, steps: np.ndarray, recon: np.ndarray, kl: np.ndarray, loss: np.ndarray, times: np.ndarray
    ) -> None:
        with self._lock:
            if len(self._series["loss"]) == 0:
                self.first_step = int(steps[0])
            self._series["recon"].extend(recon)
            self._series["kl"].extend(kl)
            self._series["loss"].extend(loss)
        if self._metrics is not None:
            self._mirror(batch_lines(epoch, steps, recon, kl, loss, times))

    def add_epoch(self, record: dict[str, Any]) -> None:
        record = {"kind": "epoch", **record}
        with self._lock:
            self._epochs.append(record)
        if self._metrics is not None:
            self._mirror(json.dumps(record) + "\n")

    def rewind(self, step: int, epoch: int) -> None:
        """Forget everything after the checkpoint being rolled back to, in the mirror file too."""
        from vae_tui.metrics import truncate_metrics

        if self._metrics is not None:
            path = self._metrics.path
            self._metrics.close()
            truncate_metrics(path, step, epoch)
            self._metrics = MetricsWriter(path)
        self.reset()

    def _mirror(self, text: str) -> None:
        try:
            self._metrics.write(text)  # type: ignore[union-attr]
        except OSError as exc:
            if not self._mirror_failing:  # once, not twenty times a second
                self.event("warning", f"could not write {self._metrics.path}: {exc}; training goes on")  # type: ignore[union-attr]
            self._mirror_failing = True
        else:
            self._mirror_failing = False

    def set_snapshot(self, snapshot: Snapshot) -> None:
        with self._lock:
            self._snapshot = snapshot
            self.snapshot_version += 1

    def set_analysis(self, analysis: dict[str, np.ndarray]) -> None:
        """The latent view's arrays (analysis.LatentReport), replaced whole."""
        with self._lock:
            self._analysis = analysis
            self.analysis_version += 1

    def analysis(self) -> dict[str, np.ndarray] | None:
        with self._lock:
            return self._analysis

    def update_status(self, **changes: Any) -> None:
        with self._lock:
            self._status = dataclasses.replace(self._status, **changes)
            self.status_version += 1

    def event(self, kind: str, message: str, when: float | None = None) -> None:
        with self._lock:
            self._events.append(Event(kind, message, time.time() if when is None else when))

    # -- reader side (any view) ------------------------------------------------------------
    @property
    def batches(self) -> int:
        return len(self._series["loss"])

    @property
    def epoch_count(self) -> int:
        return len(self._epochs)

    def decimated(self, name: str, max_points: int) -> Decimated:
        with self._lock:
            return self._series[name].decimate(max_points)

    def tail(self, name: str, count: int) -> np.ndarray:
        with self._lock:
            return self._series[name].tail(count).copy()

    def status(self) -> Status:
        with self._lock:
            return self._status

    def epochs(self, since: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            return self._epochs[since:]

    def events(self, since: int = 0) -> list[Event]:
        with self._lock:
            return self._events[since:]

    def snapshot(self) -> Snapshot | None:
        with self._lock:
            return self._snapshot
