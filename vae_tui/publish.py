"""The trainer's side of watching from another process: mirror telemetry into the run directory
and take commands from the control channel.

A light thread in the trainer's process, a few file writes a second: status.json (with a
heartbeat, so a watcher can tell a live trainer from a killed one), snapshot.npz when the
pictures change, events.jsonl as events happen. metrics.jsonl is already written by Telemetry.
Nothing here waits on a watcher, and with nobody watching it costs the same.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import threading
import time

from io import BytesIO
from typing import TYPE_CHECKING, Callable

import numpy as np

from vae_tui import control
from vae_tui.rundir import RunDir
from vae_tui.telemetry import Snapshot, Telemetry

if TYPE_CHECKING:
    from vae_tui.trainer import Controls

PERIOD_SECONDS = 0.25  # how often commands are taken and changes written
HEARTBEAT_SECONDS = 1.0  # status.json is rewritten at least this often while the trainer lives


def write_atomic(path: os.PathLike[str] | str, data: bytes) -> None:
    """Readers see the old file or the new one, never half of one (no fsync: these are views)."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class Publisher:
    def __init__(self, run: RunDir, telemetry: Telemetry, controls: "Controls") -> None:
        self.run, self.telemetry, self.controls = run, telemetry, controls
        self._status_version = -1
        self._snapshot_version = 0
        self._analysis_version = 0
        self._events_written = 0
        self._last_status = 0.0
        self._failed: set[str] = set()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._identity = {"pid": os.getpid(), "host": socket.gethostname()}
        control.open_channel(run)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="vae-publisher", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Write the final state and close the control channel: the trainer has ended."""
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        self.publish(force=True)
        control.close_channel(self.run)

    def _loop(self) -> None:
        while not self._done.wait(PERIOD_SECONDS):
            self.publish()

    def publish(self, force: bool = False) -> None:
        self._take_commands()
        tele = self.telemetry
        for event in tele.events(self._events_written):
            line = json.dumps({"kind": event.kind, "message": event.message, "time": round(event.time, 3)}) + "\n"
            if self._try("events", lambda: self._append(self.run.events_path, line)):
                self._events_written += 1
            else:
                break
        if tele.snapshot_version != self._snapshot_version:
            snapshot = tele.snapshot()
            if snapshot is not None and self._try("snapshot", lambda: self._write_snapshot(snapshot)):
                self._snapshot_version = tele.snapshot_version
        if tele.analysis_version != self._analysis_version:
            analysis = tele.analysis()
            if analysis is not None and self._try("analysis", lambda: self._write_npz(self.run.analysis_path, analysis)):
                self._analysis_version = tele.analysis_version
        now = time.time()
        if force or tele.status_version != self._status_version or now - self._last_status >= HEARTBEAT_SECONDS:
            version = tele.status_version
            status = dataclasses.replace(tele.status(), updated=now, **self._identity)
            data = json.dumps(dataclasses.asdict(status)).encode()
            if self._try("status", lambda: write_atomic(self.run.status_path, data)):
                self._status_version, self._last_status = version, now

    def _take_commands(self) -> None:
        commands, refused = control.take(self.run)
        for message in refused:
            self.telemetry.event("warning", message)
        for command in commands:
            if command == "pause":
                self.controls.pause()
            elif command == "resume":
                self.controls.resume()
            elif command == "checkpoint":
                self.controls.request_checkpoint()
            elif command == "stop":
                self.controls.stop(save=True)

    def _write_snapshot(self, snapshot: Snapshot) -> None:
        # bytes, not floats: a quarter of the size, and 256 levels are more than any terminal shows
        pictures = {name: np.round(np.clip(getattr(snapshot, name), 0, 1) * 255).astype(np.uint8)
                    for name in ("originals", "reconstructions", "samples")}
        self._write_npz(self.run.snapshot_path, {"step": np.int64(snapshot.step), "epoch": np.int64(snapshot.epoch), **pictures})

    @staticmethod
    def _write_npz(path: os.PathLike[str], arrays: dict[str, np.ndarray]) -> None:
        buffer = BytesIO()
        np.savez(buffer, **arrays)
        write_atomic(path, buffer.getvalue())

    @staticmethod
    def _append(path: os.PathLike[str], line: str) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)

    def _try(self, what: str, write: Callable[[], None]) -> bool:
        """A full or read-only disk must not stop training: warn once per file, keep going."""
        try:
            write()
        except OSError as exc:
            if what not in self._failed:
                self._failed.add(what)
                self.telemetry.event("warning", f"could not write the run's {what} file ({exc.strerror or exc}); watchers may lag, training goes on")
            return False
        self._failed.discard(what)
        return True
