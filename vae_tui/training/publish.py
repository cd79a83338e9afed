"""The trainer's side of being watched from other processes: mirror telemetry into the run
directory and take commands from its control folder.

A light thread in the trainer's process, a few file writes a second: status.json (with a
heartbeat, so a watcher can tell a live trainer from a killed one), snapshot.npz and
analysis.npz when they change, events.jsonl as events happen. metrics.jsonl is written by the
metrics hook. Nothing here waits on a watcher, and with nobody watching it costs the same.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
from typing import Any, Callable

from vae_tui.runfile import control
from vae_tui.runfile.files import append_events, write_analysis, write_snapshot, write_status
from vae_tui.runfile.io import os_reason
from vae_tui.runfile.layout import RunDir
from vae_tui.telemetry import Telemetry
from vae_tui.training.controls import Controls

PERIOD_SECONDS = 0.25  # how often commands are taken and changes written
HEARTBEAT_SECONDS = 1.0  # status.json is rewritten at least this often while the trainer lives


class Publisher:
    def __init__(self, run: RunDir, telemetry: Telemetry, controls: Controls) -> None:
        self.run, self.telemetry, self.controls = run, telemetry, controls
        self._status_version = -1
        self._snapshot_version = 0
        self._analysis_version = 0
        self._events_written = 0
        self._last_status = 0.0
        self._inode = os.stat(run.path).st_ino
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._identity: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname()}
        control.open_channel(run)

    def start(self) -> None:
        self.publish(force=True)  # status.json from the start: the trainer is alive, even before its first step
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
        if self._run_dir_gone() and not self.controls.stopping:
            self.telemetry.event(
                "warning", f"the run directory {self.run.path} was deleted: stopping; nothing is written there any more, and it is not made again"
            )
            self.controls.stop(save=True)  # a checkpoint where one can still be written: nowhere, if it is all gone
        self._take_commands()
        tele = self.telemetry
        events = tele.events(self._events_written)
        if events and self._try("events", lambda: append_events(self.run, events)):
            self._events_written += len(events)
        if tele.snapshot_version != self._snapshot_version:
            version, snapshot = tele.snapshot_version, tele.snapshot()
            if snapshot is not None and self._try("snapshot", lambda: write_snapshot(self.run, snapshot)):
                self._snapshot_version = version
        if tele.analysis_version != self._analysis_version:
            version, analysis = tele.analysis_version, tele.analysis()
            if analysis is not None and self._try("analysis", lambda: write_analysis(self.run, analysis)):
                self._analysis_version = version
        now = time.time()
        if force or tele.status_version != self._status_version or now - self._last_status >= HEARTBEAT_SECONDS:
            version = tele.status_version
            status = dataclasses.replace(tele.status(), updated=now, **self._identity)
            if self._try("status", lambda: write_status(self.run, status)):
                self._status_version, self._last_status = version, now

    def _take_commands(self) -> None:
        commands, refused = control.take(self.run)
        for message in refused:
            if message.startswith("commands are ignored"):  # said once, not four times a second
                self.telemetry.trouble("taking commands", message)
            else:
                self.telemetry.event("warning", message)
        for command in commands:
            self.controls.follow(command)

    def _try(self, what: str, write: Callable[[], None]) -> bool:
        """A full or read-only disk must not stop training: warn once per file, then count, keep going."""
        key = f"writing the {what} file"
        try:
            write()
        except OSError as exc:
            self.telemetry.trouble(key, f"could not write the run's {what} file: {os_reason(exc, self.run.path / what)}; watchers may lag, training goes on")
            return False
        self.telemetry.cleared(key)
        return True

    def _run_dir_gone(self) -> bool:
        """The run directory was deleted (or replaced by another folder) under the trainer."""
        try:
            return os.stat(self.run.path).st_ino != self._inode
        except OSError:
            return True
