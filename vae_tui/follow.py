"""The watcher's side: follow a run directory into a Telemetry, and control its trainer.

`RunFollower` replays metrics.jsonl, events.jsonl, status.json and snapshot.npz and then picks
up what is appended or replaced, so the monitor shows a run in another process exactly as it
shows one of its own. `RunWatch` adds liveness (running, finished, killed, not answering) and the
commands, and owns the trainer process when `vae-tui train` started it for this terminal.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

from vae_tui import control
from vae_tui.rundir import RunDir
from vae_tui.telemetry import Snapshot, Status, Telemetry

POLL_SECONDS = 0.25
SATURATED_POLL_SECONDS = 0.5  # CPU training on this machine: every cycle here is the trainer's
HURRY_POLL_SECONDS = 0.1
STALE_SECONDS = 5.0  # a heartbeat older than this: the trainer is not answering
MONITOR_NICE = 10
READ_CHUNK = 8 << 20  # bytes of metrics.jsonl parsed at a time: bounded memory on a 1M-batch replay

# A batch record as metrics.py writes it (and json.dumps rewrites it), for lines the fast path
# in _batch_table cannot take.
_BATCH = re.compile(
    rb'^\{"kind": "batch", "epoch": (-?\d+), "step": (\d+), "recon": ([^,]+), "kl": ([^,]+), '
    rb'"loss": ([^,]+), "time": ([^,}]+)\}$'
)


_EPOCH_START = b'{"kind": "epoch"'
# With JSON's punctuation turned into spaces, a chunk of batch records (as metrics.py and
# json.dumps write them) is a table of words and numbers that numpy's C reader parses.
_BATCH_START = b'{"kind": "batch", "epoch": '
_PUNCTUATION_TO_SPACE = bytes.maketrans(b'{}":,', b"     ")


def _split_records(data: bytes) -> tuple[bytes, list[bytes]]:
    """The batch lines as one block, and the (rare: one an epoch) epoch lines apart."""
    epochs, pieces, start = [], [], 0
    while (at := data.find(_EPOCH_START, start)) >= 0:
        end = data.find(b"\n", at) + 1 or len(data)
        pieces.append(data[start:at])
        epochs.append(data[at:end])
        start = end
    pieces.append(data[start:])
    return b"".join(pieces), epochs


def _batch_table(block: bytes) -> np.ndarray:
    """Rows of (epoch, step, recon, kl, loss) from whole batch lines (time is not shown).

    About ten times faster than a regex or json.loads per line, which is what keeps opening a
    million-batch run within a couple of seconds. A block with anything else in it (a garbled
    line) takes the careful path, line by line.
    """
    if not block:
        return np.empty((0, 5))
    n = block.count(b"\n")
    if block.count(_BATCH_START) == n:
        # the prefix out, punctuation to spaces: "3 step 1 recon 1.5 kl 0.2 loss 1.7 time 1.0"
        words = io.BytesIO(block.replace(_BATCH_START, b" ").translate(_PUNCTUATION_TO_SPACE))
        try:
            values = np.loadtxt(words, usecols=(0, 2, 4, 6, 8), ndmin=2)
        except ValueError:
            values = np.empty((0, 5))
        if len(values) == n:
            return values
    rows = [m.groups()[:5] for m in map(_BATCH.match, block.splitlines()) if m]
    return np.array(rows, dtype=np.bytes_).astype(np.float64) if rows else np.empty((0, 5))


class _Tail:
    """Reads what was appended to a file since last time, whole lines only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.inode: int | None = None

    def read(self, limit: int = READ_CHUNK) -> tuple[bytes, bool]:
        """(complete new lines, whether the file was replaced or shrunk and reading restarted)."""
        try:
            info = os.stat(self.path)
        except OSError:
            return b"", False
        restarted = False
        if self.inode is not None and (info.st_ino != self.inode or info.st_size < self.offset):
            self.offset, restarted = 0, True
        self.inode = info.st_ino
        if info.st_size <= self.offset:
            return b"", restarted
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(limit)
        end = data.rfind(b"\n") + 1  # a torn last line waits for the rest of it
        self.offset += end
        return data[:end], restarted


class RunFollower:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.run = RunDir(Path(path))
        self.telemetry = Telemetry()
        self.telemetry.update_status(run_dir=str(self.run.path))
        self._metrics = _Tail(self.run.metrics_path)
        self._events = _Tail(self.run.events_path)
        self._mtimes: dict[Path, int] = {}  # of the files replaced whole: status.json, *.npz
        self.status_seen = False

    def poll(self) -> None:
        """Take in everything new. Safe to call from one thread while views read the telemetry."""
        while True:
            data, restarted = self._metrics.read()
            if restarted:
                self.telemetry.reset()
            if not data:
                break
            self._parse_metrics(data)
        data, _ = self._events.read()
        for line in data.splitlines():
            try:
                event = json.loads(line)
                self.telemetry.event(str(event["kind"]), str(event["message"]), float(event["time"]))
            except (ValueError, KeyError, TypeError):
                continue
        self._read_status()
        self._read_snapshot()
        self._read_analysis()

    def _parse_metrics(self, data: bytes) -> None:
        batches, epochs = _split_records(data)
        for line in epochs:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            record.pop("kind", None)
            self.telemetry.add_epoch(record)
        table = _batch_table(batches)
        if len(table):
            steps = table[:, 1].astype(np.int64)
            recon, kl, loss = (table[:, i].astype(np.float32) for i in (2, 3, 4))
            self.telemetry.add_batches(0, steps, recon, kl, loss, np.zeros(len(steps)))

    def _changed(self, path: Path) -> int | None:
        """The file's mtime when it was replaced since the last read, else None (also when missing)."""
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:
            return None
        return None if self._mtimes.get(path) == mtime else mtime

    def _read_status(self) -> None:
        mtime = self._changed(self.run.status_path)
        try:
            status = Status.from_dict(json.loads(self.run.status_path.read_bytes())) if mtime is not None else None
        except (OSError, ValueError):
            return
        if status is not None and mtime is not None:
            self._mtimes[self.run.status_path] = mtime
            self.status_seen = True
            self.telemetry.update_status(**vars(status))

    def _read_npz(self, path: Path) -> dict[str, np.ndarray] | None:
        """A whole .npz the trainer replaced since the last read (written atomically, so never half)."""
        mtime = self._changed(path)
        if mtime is None:
            return None
        try:
            with np.load(path) as z:
                arrays = {name: z[name] for name in z.files}
        except (OSError, ValueError):
            return None
        self._mtimes[path] = mtime
        return arrays

    def _read_snapshot(self) -> None:
        z = self._read_npz(self.run.snapshot_path)
        if z is not None and {"step", "epoch", "originals", "reconstructions", "samples"} <= z.keys():
            pictures = [z[name].astype(np.float32) / 255 for name in ("originals", "reconstructions", "samples")]
            self.telemetry.set_snapshot(Snapshot(int(z["step"]), int(z["epoch"]), *pictures))

    def _read_analysis(self) -> None:
        analysis = self._read_npz(self.run.analysis_path)
        if analysis is not None:
            self.telemetry.set_analysis(analysis)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def read_status(run: RunDir) -> Status | None:
    """The trainer's last word, or None when it never wrote one (or it cannot be read)."""
    try:
        return Status.from_dict(json.loads(run.status_path.read_bytes()))
    except (OSError, ValueError, TypeError):
        return None


def liveness_of(status: Status | None) -> str:
    """running, not answering, ended, or gone (the process died without saying so, or never spoke)."""
    if status is None:
        return "gone"
    if status.final:
        return "ended"
    same_host = status.host in ("", socket.gethostname())
    if same_host and status.pid and not pid_alive(status.pid):
        return "gone"
    if time.time() - status.updated > STALE_SECONDS:
        return "not answering"
    return "running"


class RunWatch:
    """A run directory seen from a monitor: its telemetry, whether its trainer lives, and commands.

    With `process` (the trainer `vae-tui train` started for this terminal) the monitor owns the
    run: quitting stops it. Without, it is a guest: quitting the monitor leaves training alone.
    """

    def __init__(
        self, path: str | os.PathLike[str], process: subprocess.Popen[bytes] | None = None, cpu_training: bool | None = None
    ) -> None:
        self._cpu_training = cpu_training  # known before the trainer's first status when we started it
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
        self._thread: threading.Thread | None = None
        self.follower.poll()  # history first, so the first frame already shows it

    @property
    def owns_trainer(self) -> bool:
        return self.process is not None and not self.detached

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="vae-follower", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._done.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(2)

    def _loop(self) -> None:
        while not self._done.is_set():
            if time.monotonic() < self._hurry_until:
                period = HURRY_POLL_SECONDS  # a command was just sent: show its effect promptly
            else:
                period = SATURATED_POLL_SECONDS if self.saturates_cpu else POLL_SECONDS
            self._wake.wait(period)
            self._wake.clear()
            self.follower.poll()

    # -- liveness ---------------------------------------------------------------------------
    def liveness(self) -> str:
        """starting, running, not answering, ended or gone (killed or crashed before saying so)."""
        status = self.telemetry.status() if self.follower.status_seen else None
        if self.process is not None and self.process.poll() is not None:
            return "ended" if status is not None and status.final else "gone"
        if status is None and self.process is not None:
            return "starting"
        return liveness_of(status)

    @property
    def running(self) -> bool:
        return self.liveness() == "running"

    @property
    def saturates_cpu(self) -> bool:
        """Training on the CPU of this machine: every core the view takes is the trainer's."""
        if self._cpu_training is not None:
            return self._cpu_training
        status = self.telemetry.status()
        return status.device.startswith("cpu") and status.host in ("", socket.gethostname())

    def yield_cpu(self) -> None:
        """Training on this machine's CPU: let the monitor run only where the trainer leaves room.

        The trainer's OpenMP threads keep every core busy and spin-wait for each other at the end
        of each parallel step, so a monitor that preempts one of them stalls all of them: measured
        on a 2-core box, a monitor using 3% of one core cost the trainer 10-15% of its speed. As a
        SCHED_IDLE process (Linux) the monitor never preempts the trainer and runs in the gaps;
        elsewhere it drops to nice 10. Call it before threads start: they inherit it.
        """
        if not self.saturates_cpu:
            return
        try:
            if hasattr(os, "SCHED_IDLE"):
                os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            elif hasattr(os, "nice"):
                os.nice(MONITOR_NICE)
        except OSError:
            pass

    # -- commands ---------------------------------------------------------------------------
    def send(self, command: str) -> str | None:
        """Send a command; return a line to show if it could not be sent, else None."""
        state = self.liveness()
        if state in ("ended", "gone"):
            return "the trainer is not running: " + ("the run has ended" if state == "ended" else "its process is gone")
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
        problem = self.send("stop")
        if problem is None:
            self.stopping = True
        return problem

    def terminate(self) -> None:
        """The trainer did not take a stop request: ask its process by signal (it saves and exits)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def process_ended(self) -> bool:
        if self.process is not None:
            return self.process.poll() is not None
        return self.liveness() in ("ended", "gone")
