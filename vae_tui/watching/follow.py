"""The watcher's side: follow a run directory into a Telemetry, and control its trainer.

`RunFollower` replays metrics.jsonl, events.jsonl, status.json, snapshot.npz and analysis.npz,
then picks up what is appended or replaced, so the monitor shows a run in another process
exactly as it would one of its own. `RunWatch` adds liveness (running, finished, killed, not
answering) and commands, and owns the trainer process when `vae-tui train` started it here.
Damaged files are reported once as warnings and skipped; nothing here raises on them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from vae_tui.runfile import control
from vae_tui.runfile.files import read_analysis, read_snapshot, read_status, scalar_records, term_columns
from vae_tui.runfile.io import Tail
from vae_tui.runfile.layout import RunDir
from vae_tui.runfile.metrics import parse, parse_events
from vae_tui.runfile.schema import Event, Liveness, Status
from vae_tui.telemetry import Telemetry
from vae_tui.watching.output import ScriptOutput

if TYPE_CHECKING:
    from vae_tui.watching.compare import Comparison

POLL_SECONDS = 0.25
SATURATED_POLL_SECONDS = 0.5  # CPU training on this machine: every cycle here is the trainer's
HURRY_POLL_SECONDS = 0.1
STALE_SECONDS = 5.0  # a heartbeat older than this: the trainer is not answering
STOP_GRACE_S = 15.0  # a trainer that has not taken a stop request by then is sent SIGTERM
MONITOR_NICE = 10


class RunFollower:
    def __init__(self, path: str | os.PathLike[str], pictures: bool = True) -> None:
        """`pictures`: read snapshots and the latent report too (not for a run only overlaid on charts)."""
        self.run = RunDir(Path(path))
        self.pictures = pictures
        self.telemetry = Telemetry()
        self.telemetry.update_status(run_dir=str(self.run.path))
        self._metrics = Tail(self.run.metrics_path)
        self._events = Tail(self.run.events_path)
        self._terms = Tail(self.run.scalars_path)
        self._mtimes: dict[Path, int] = {}  # of the files replaced whole: status.json, *.npz
        self._reported: set[str] = set()
        self.status_seen = False
        self.deleted = False  # the run directory was deleted while being watched
        self.notes: list[Event] = []  # what this watcher itself found (damage, a deletion): news, never history
        self.output = ScriptOutput(self.run.log_path)  # read for your own script's runs only (status.script)

    def poll(self) -> None:
        """Take in everything new. Safe to call from one thread while views read the telemetry."""
        if not self.deleted and not self.run.path.is_dir():
            self.deleted = True
            self.notes.append(Event("error", f"the run directory {self.run.path} was deleted; its trainer stops, and what was in it is gone"))
        while True:
            data, restarted = self._metrics.read()
            if restarted:
                self.telemetry.reset()
                self._terms = Tail(self.run.scalars_path)  # their history went with the rest: read again whole
            if not data:
                break
            self._take_metrics(data)
        self._take_terms()
        data, _ = self._events.read()
        events, skipped = parse_events(data)
        for event in events:
            self.telemetry.event(event.kind, event.message, event.time)
        self._report("events", f"{skipped} damaged lines skipped" if skipped else None)
        self._take_status()
        if self.pictures:
            self._take_pictures()
            if self.telemetry.status().script:
                self.output.poll()

    def _take_metrics(self, data: bytes) -> None:
        metrics = parse(data, extremes=False)  # the charts draw means
        for record in metrics.epochs:
            self.telemetry.add_epoch(record)
        if len(metrics.batches):
            self.telemetry.add_batches(metrics.column("step").astype(np.int64), *(metrics.column(name).astype(np.float32) for name in ("recon", "kl", "loss")))
        self._report("metrics", f"{metrics.skipped} damaged lines skipped" if metrics.skipped else None)

    def _take_terms(self) -> None:
        """The other named terms (scalars.jsonl): their own series, beside recon and kl."""
        while True:
            data, restarted = self._terms.read()
            if restarted:
                self.telemetry.reset_terms()
            if not data:
                return
            records = scalar_records(data)
            if records:
                self.telemetry.add_terms(*term_columns(records))

    def _changed(self, path: Path) -> int | None:
        """The file's mtime when it was replaced since the last read, else None (also when missing)."""
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:
            return None
        return None if self._mtimes.get(path) == mtime else mtime

    def _take_status(self) -> None:
        mtime = self._changed(self.run.status_path)
        if mtime is None:
            return
        self._mtimes[self.run.status_path] = mtime
        status, problem = read_status(self.run)
        self._report("status", problem)
        if status is not None:
            self.status_seen = True
            self.telemetry.set_status(status)

    def _take_pictures(self) -> None:
        if (mtime := self._changed(self.run.snapshot_path)) is not None:
            self._mtimes[self.run.snapshot_path] = mtime
            snapshot, problem = read_snapshot(self.run)
            self._report("snapshot", problem)
            if snapshot is not None:
                self.telemetry.set_snapshot(snapshot)
        if (mtime := self._changed(self.run.analysis_path)) is not None:
            self._mtimes[self.run.analysis_path] = mtime
            analysis, problem = read_analysis(self.run)
            self._report("analysis", problem)
            if analysis is not None:
                self.telemetry.set_analysis(analysis)

    def _report(self, what: str, problem: str | None) -> None:
        """A damaged file is said once (until it is readable again), never raised."""
        if problem is None or problem == "missing":
            self._reported.discard(what)
        elif what not in self._reported:
            self._reported.add(what)
            self.notes.append(Event("warning", f"{what} file of {self.run.path} is damaged ({problem}); skipped"))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def on_this_machine(status: Status) -> bool:
    """The trainer runs here (or did not say where): its pid means something on this machine."""
    return status.host in ("", socket.gethostname())


def liveness_of(status: Status | None, now: float | None = None) -> Liveness:
    """From a trainer's last word, as of `now` (the wall clock's time.time(), which status.json's
    heartbeat is written in): running, not answering, ended, or gone (died without saying so)."""
    if status is None:
        return Liveness.GONE
    if status.final:
        return Liveness.ENDED
    if on_this_machine(status) and status.pid and not pid_alive(status.pid):
        return Liveness.GONE
    if (time.time() if now is None else now) - status.updated > STALE_SECONDS:
        return Liveness.NOT_ANSWERING
    return Liveness.RUNNING


def every_thread_scheduled(policy: int, param: Any) -> None:
    """Each thread of this process (Linux sets the policy per thread)."""
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that has just ended
            os.sched_setscheduler(int(tid), policy, param)


class RunWatch:
    """A run directory seen from a monitor: its telemetry, whether its trainer lives, and commands.

    With `process` (the trainer `vae-tui train` started for this terminal) the monitor owns the
    run: quitting stops it. Without, it is a guest: quitting the monitor leaves training alone.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        process: subprocess.Popen[bytes] | None = None,
        clock: Callable[[], float] = time.time,
        on_exit: Callable[[int], object] | None = None,
    ) -> None:
        """`clock`: the wall clock the trainer's heartbeat is compared with; `on_exit`: told the
        process's return code once it has ended (a script's launcher settles what its run says)."""
        self.clock = clock
        self.on_exit = on_exit
        self.follower = RunFollower(path)
        self.run = self.follower.run
        self.telemetry = self.follower.telemetry
        self.process = process
        self.stopping = False
        self.detached = False
        self._pending: list[tuple[str, Path, float]] = []
        self._done = threading.Event()
        self._wake = threading.Event()
        self._hurry_until = 0.0
        self._yielded = False
        self._scheduling: tuple[int, Any] | None = None  # (policy, param) before yield_cpu, given back by close
        self._thread: threading.Thread | None = None
        self._polling = threading.Lock()
        self._stop_when_ready = False  # a stop asked of a trainer that could not take it yet
        self.comparison: "Comparison | None" = None  # other runs overlaid on the charts, followed on this watcher's thread
        self.follower.poll()  # history first, so the first frame already shows it

    @property
    def owns_trainer(self) -> bool:
        return self.process is not None and not self.detached

    # -- what a view asks of the run it watches, and tells it ------------------------------------------
    @property
    def output(self) -> ScriptOutput:
        """A script's own output (vae-tui run), as it is read from train.log."""
        return self.follower.output

    @property
    def deleted(self) -> bool:
        """The run directory was removed while watched."""
        return self.follower.deleted

    def notes_since(self, seen: int) -> list[Event]:
        """What the follower noticed of the run directory itself (a damaged file, a deleted run), after the first `seen`."""
        return self.follower.notes[seen:]

    def stop_coming(self) -> None:
        """The trainer has been asked to end (or is ending by itself): from now on the view waits for it."""
        self.stopping = True

    def detach(self) -> None:
        """Leave the trainer running on its own: quitting this view no longer stops it."""
        self.detached = True

    def start(self) -> None:
        self.yield_cpu()
        self._thread = threading.Thread(target=self._loop, name="vae-follower", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop following, and leave this process scheduled as it was found (a process it starts later
        would otherwise inherit the idle policy)."""
        self._done.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(2)
        if self._scheduling is not None:
            with contextlib.suppress(OSError):
                every_thread_scheduled(*self._scheduling)
            self._scheduling = None

    def _loop(self) -> None:
        while not self._done.is_set():
            if time.monotonic() < self._hurry_until:
                period = HURRY_POLL_SECONDS  # a command was just sent: show its effect promptly
            else:
                period = SATURATED_POLL_SECONDS if self.saturates_cpu else POLL_SECONDS
            self._wake.wait(period)
            self._wake.clear()
            self.poll()
            self.yield_cpu()

    def poll(self) -> None:
        """Take in what is new in the run and the runs compared with it: on the watcher's thread, or
        from anywhere that cannot wait for its next look."""
        with self._polling:
            if self.on_exit is not None and self.process is not None and self.process.poll() is not None:
                on_exit, self.on_exit = self.on_exit, None
                with contextlib.suppress(OSError):  # a run folder that cannot be written: the watcher still says what it read
                    on_exit(self.process.returncode)
            self.follower.poll()
            if self.comparison is not None:
                self.comparison.poll()
            if self._stop_when_ready and self.run.control_dir.is_dir():  # the trainer is ready for it now
                self._stop_when_ready = self.send("stop") is not None

    # -- liveness ---------------------------------------------------------------------------
    def liveness(self) -> Liveness:
        status = self.telemetry.status() if self.follower.status_seen else None
        if self.process is not None and self.process.poll() is not None:
            return Liveness.ENDED if status is not None and status.final else Liveness.GONE
        if status is None and self.process is not None:
            return Liveness.STARTING
        return liveness_of(status, self.clock())

    @property
    def running(self) -> bool:
        return self.liveness() == Liveness.RUNNING

    @property
    def saturates_cpu(self) -> bool:
        """Training on the CPU of this machine: every core the view takes is the trainer's."""
        status = self.telemetry.status()
        return status.device.startswith("cpu") and on_this_machine(status)

    def yield_cpu(self) -> None:
        """Training on this machine's CPU: let the monitor run only where the trainer leaves room.

        The trainer's OpenMP threads keep every core busy and spin-wait for each other at the end
        of each parallel step, so a monitor that preempts one of them stalls all of them: measured
        on a 2-core box, a monitor using 3% of one core cost the trainer 10-15% of its speed. As a
        SCHED_IDLE process (Linux) the monitor never preempts the trainer and runs in the gaps;
        elsewhere it drops to nice 10. Done once the trainer's status says where it trains, for
        every thread of this process.
        """
        if self._yielded or not self.saturates_cpu:
            return
        self._yielded = True
        try:
            if hasattr(os, "SCHED_IDLE"):
                self._scheduling = (os.sched_getscheduler(0), os.sched_getparam(0))
                every_thread_scheduled(os.SCHED_IDLE, os.sched_param(0))
            elif hasattr(os, "nice"):
                os.nice(MONITOR_NICE)
        except OSError:
            pass

    # -- commands ---------------------------------------------------------------------------
    def send(self, command: str) -> str | None:
        """Send a command; return a line to show if it could not be sent, else None."""
        state = self.liveness()
        if state in (Liveness.ENDED, Liveness.GONE):
            return "the trainer is not running: " + ("the run has ended" if state == Liveness.ENDED else "its process is gone")
        try:
            path = control.send(self.run, command)
        except control.ControlError as exc:
            return str(exc)
        self._pending.append((command, path, time.monotonic()))
        self._hurry_until = time.monotonic() + 2.0
        return None

    def unanswered(self) -> list[str]:
        """Commands the trainer has not taken within a few seconds (said once each)."""
        late, waiting = [], []
        for command, path, sent in self._pending:
            if control.taken(path):
                continue
            if time.monotonic() - sent > control.ANSWER_SECONDS:
                late.append(command)
            else:
                waiting.append((command, path, sent))
        self._pending = waiting
        return late

    def stop(self) -> str | None:
        """Ask the trainer to save and stop; when its control folder cannot take the request (a
        read-only or full disk), a signal still reaches it. A line to show when neither could.

        A trainer this watcher started that has not opened its control folder yet (it is importing
        torch, or reading the data) gets the request as soon as it does: a signal then would end it
        before it can save or say anything."""
        if self.liveness() == Liveness.STARTING and not self.run.control_dir.is_dir():
            self.stopping = self._stop_when_ready = True
            return None
        problem = self.send("stop")
        if problem is None or self.liveness() in (Liveness.ENDED, Liveness.GONE):
            self.stopping = problem is None
            return problem
        if self.signal_trainer():
            self.stopping = True
            return f"{problem}; sent the trainer SIGTERM instead: it saves a checkpoint and stops"
        return problem

    def signal_trainer(self) -> bool:
        """SIGTERM to the trainer's process (it saves and stops), when this machine and user can."""
        if self.process is not None:
            self.terminate()
            return True
        status = self.telemetry.status()
        if not status.pid or not on_this_machine(status):
            return False
        try:
            os.kill(status.pid, signal.SIGTERM)
        except OSError:
            return False
        return True

    def terminate(self) -> None:
        """The trainer did not take a stop request: ask its process by signal (it saves and exits)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def process_ended(self) -> bool:
        if self.process is not None:
            return self.process.poll() is not None
        return self.liveness() in (Liveness.ENDED, Liveness.GONE)
