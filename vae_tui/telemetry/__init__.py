"""A run as views see it: thread-safe, append-only, numpy only.

The trainer's hooks fill one in its process (in chunks, never per batch from a view's point of
view); a watcher fills one from a run directory. Views read on their own timers and use the
version counters to skip redraws when nothing changed. Nothing here imports torch, so a view
never touches a tensor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Any, Iterator

import numpy as np

from vae_tui.runfile.files import Snapshot
from vae_tui.runfile.schema import Event, Status
from vae_tui.telemetry.series import Decimated, Growable, Series

SERIES = ("recon", "kl", "loss")


class Telemetry:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._snapshot: Snapshot | None = None
        self._events: list[Event] = []
        self._status = Status()
        self.status_version = 0
        self.snapshot_version = 0
        self._analysis: dict[str, np.ndarray] | None = None
        self.analysis_version = 0
        self.resets = 0  # views include it in their redraw keys
        self._troubles: dict[str, int] = {}
        self.reset()

    def reset(self) -> None:
        """Forget the loss history (a rollback, or a watcher re-reading a file a resume rewrote)."""
        with self._lock:
            self._series = {name: Series() for name in SERIES}
            self._steps = Growable(dtype=np.float64)  # each point's step: its last, for an interval of steps
            self.first_step = 1  # the step number of the series' first value
            self._epochs: list[dict[str, Any]] = []
            self._clear_terms()

    def reset_terms(self) -> None:
        """Forget the other terms' history (their file was rewritten)."""
        with self._lock:
            self._clear_terms()

    def _clear_terms(self) -> None:
        self._terms: dict[str, Series] = {}  # the run's other named terms (lpips, d_loss, perplexity), in the order first seen
        self._term_steps = Growable(dtype=np.float64)  # each term point's step, one for all terms
        self.resets += 1

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Nothing changes while a view draws one frame from several parts of it."""
        with self._lock:
            yield

    # -- writer side -----------------------------------------------------------------------
    def add_batches(self, steps: np.ndarray, recon: np.ndarray, kl: np.ndarray, loss: np.ndarray) -> None:
        with self._lock:
            if len(self._series["loss"]) == 0 and len(steps):
                self.first_step = int(steps[0])
            self._steps.extend(np.asarray(steps, dtype=np.float64))
            self._series["recon"].extend(recon)
            self._series["kl"].extend(kl)
            self._series["loss"].extend(loss)

    def add_terms(self, steps: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        """Points of the other named terms: `columns` holds each term's value at `steps` (NaN where a step
        did not give it); a term first seen now is NaN at every point before."""
        with self._lock:
            before = len(self._term_steps)
            self._term_steps.extend(np.asarray(steps, dtype=np.float64))
            for name in columns:
                if name not in self._terms:
                    self._terms[name] = Series()
                    self._terms[name].extend(np.full(before, np.nan))
            for name, series in self._terms.items():
                series.extend(columns[name] if name in columns else np.full(len(steps), np.nan))

    def add_epoch(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._epochs.append(record)

    def set_snapshot(self, snapshot: Snapshot) -> None:
        with self._lock:
            self._snapshot = snapshot
            self.snapshot_version += 1

    def set_analysis(self, analysis: dict[str, np.ndarray]) -> None:
        """The latent view's arrays (analysis.LatentReport), replaced whole."""
        with self._lock:
            self._analysis = analysis
            self.analysis_version += 1

    def update_status(self, **changes: Any) -> None:
        with self._lock:
            self._status = dataclasses.replace(self._status, **changes)
            self.status_version += 1

    def set_status(self, status: Status) -> None:
        with self._lock:
            self._status = status
            self.status_version += 1

    def trouble(self, key: str, message: str) -> None:
        """A failure that may repeat every second (a full or read-only disk): a warning the first time,
        then only a count, in the status, until `cleared(key)`."""
        with self._lock:
            count = self._troubles[key] = self._troubles.get(key, 0) + 1
        if count == 1:
            self.event("warning", message)
        problems = {**self.status().problems, key: message + (f" ({count} times)" if count > 1 else "")}
        self.update_status(problems=problems)

    def cleared(self, key: str) -> None:
        """The failure `key` is over: said once, and gone from the status."""
        with self._lock:
            count = self._troubles.pop(key, 0)
        if count:
            self.event("info", f"{key}: working again after {count} failure{'s' if count > 1 else ''}")
            self.update_status(problems={k: v for k, v in self.status().problems.items() if k != key})

    def event(self, kind: str, message: str, when: float | None = None) -> None:
        with self._lock:
            self._events.append(Event(kind, message) if when is None else Event(kind, message, when))

    # -- reader side (any view) ------------------------------------------------------------
    @property
    def batches(self) -> int:
        return len(self._series["loss"])

    @property
    def epoch_count(self) -> int:
        return len(self._epochs)

    def term_names(self) -> list[str]:
        """The run's named terms beyond recon, kl and loss, in the order they were first seen."""
        with self._lock:
            return list(self._terms)

    def _track(self, name: str) -> tuple[Series, Growable]:
        """A series by name and the steps of its points: recon, kl and loss, or one of the other terms
        (empty for a name this run does not have)."""
        if name in self._series:
            return self._series[name], self._steps
        if name in self._terms:
            return self._terms[name], self._term_steps
        return Series(), Growable(dtype=np.float64)

    def decimated(self, name: str, max_points: int) -> Decimated:
        with self._lock:
            return self._track(name)[0].decimate(max_points)

    def steps_at(self, points: np.ndarray, name: str = "loss") -> np.ndarray:
        """The step at each (fractional) point index of the series `name`: a point is a step, or an interval
        of them at its last."""
        with self._lock:
            steps = self._track(name)[1].values
            if not len(steps):
                return np.asarray(points, dtype=np.float64) + self.first_step
            return np.interp(points, np.arange(len(steps)), steps)

    def last_steps(self, count: int, name: str = "loss") -> np.ndarray:
        with self._lock:
            steps = self._track(name)[1].values
            return steps[-count:].copy() if count > 0 else np.empty(0)

    def tail(self, name: str, count: int) -> np.ndarray:
        with self._lock:
            return self._track(name)[0].tail(count).copy()

    def status(self) -> Status:
        with self._lock:
            return self._status

    def charted_status(self) -> Status:
        """The status with its progress as the loss series have it (they come from metrics.jsonl, which
        runs ahead of status.json): the numbers a view prints then agree with the charts it draws."""
        with self._lock:
            status, n = self._status, self.batches
            if not n:
                return status
            step = int(self._steps.values[n - 1]) if len(self._steps) >= n else self.first_step + n - 1
            last = self._epochs[-1] if self._epochs else None
            done, since = (int(last["epoch"]), step - int(last["step"])) if last else (0, step)
            best = min((float(r["test_loss"]) for r in self._epochs), default=status.best_test_loss)
        if status.batches_per_epoch > 0 and since >= status.batches_per_epoch:  # epochs too short to each have a record
            done, since = done + since // status.batches_per_epoch, since % status.batches_per_epoch
        epoch = min(done + 1, status.epochs) if status.epochs else done + 1
        return dataclasses.replace(status, step=step, epoch=epoch, best_test_loss=best, batch_in_epoch=since)

    def latest_status(self) -> Status:
        """The status with the furthest progress the run has told: its loss records' (they run ahead of
        status.json), or status.json's own when a record is yet to come."""
        with self._lock:
            charted, status = self.charted_status(), self._status
        return charted if charted.step >= status.step else status

    def epochs(self, since: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            return self._epochs[since:]

    def events(self, since: int = 0) -> list[Event]:
        with self._lock:
            return self._events[since:]

    def snapshot(self) -> Snapshot | None:
        with self._lock:
            return self._snapshot

    def analysis(self) -> dict[str, np.ndarray] | None:
        with self._lock:
            return self._analysis
