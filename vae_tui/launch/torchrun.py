"""`vae-tui train --nproc N`: torchrun, started by vae-tui, behind the monitor, detached or in the foreground.

This process checks the run and makes its run directory (holding its lock for the run's whole
life), then starts PyTorch's own launcher, `python -m torch.distributed.run --standalone`, on
`vae_tui.launch.ranks` in a session of its own: a Ctrl+C reaches the ranks once, through here and
torchrun, not twice. torchrun ends every rank when one fails; this process then says what became
of the run in one line (torchrun's own report goes to train.log). No torch here: the monitor's side.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable

from rich.console import Console

from vae_tui.errors import EXIT_SIGNAL, say_error
from vae_tui.launch.prepare import Prepared, Request
from vae_tui.runfile.files import read_run_info, read_status, write_status
from vae_tui.runfile.schema import RunInfo, RunState, Status, StepPlan
from vae_tui.training.controls import take_signals

if TYPE_CHECKING:
    from vae_tui.launch.worker import Reporter

MAX_NPROC = 64
STARTED_STATES = (RunState.TRAINING, RunState.PAUSED, RunState.EVALUATING)


def command(p: Prepared) -> list[str]:
    """torchrun on the ranks' entry, with the request as checked here: the run directory is made."""
    request = dataclasses.replace(p.request, run_dir=str(p.run.path), made=True, world_size=p.request.nproc, view="here")
    payload = json.dumps(dataclasses.asdict(request))
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={p.request.nproc}", "-m", "vae_tui.launch.ranks", payload]


class Ranks:
    """torchrun and its ranks, as one process to signal and wait for."""

    def __init__(self, p: Prepared, stdout: IO[bytes] | int | None, stderr: IO[bytes] | int | None) -> None:
        self.prepared, self.forwarded = p, 0
        self.process = subprocess.Popen(
            command(p), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )

    def forward_signals(self) -> None:
        """Ctrl+C, SIGTERM, SIGHUP: passed on once; torchrun hands it to every rank, which save and stop.
        A second Ctrl+C ends every process of the run at once (its files are written atomically)."""

        def first(sig: signal.Signals) -> None:
            self.forwarded = EXIT_SIGNAL[sig]
            self.process.send_signal(sig)

        def at_once(sig: signal.Signals) -> None:
            self.kill()
            os._exit(self.forwarded)

        take_signals(first, at_once)

    def kill(self) -> None:
        """torchrun and its ranks (each in a session of its own, so found as torchrun's children), now."""
        try:
            ranks = [int(p) for p in Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()]
        except (OSError, ValueError):
            ranks = []
        for pid in [*ranks, self.process.pid]:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def wait_started(self, poll: float = 0.1) -> bool:
        """Until rank 0 says it trains (True) or torchrun has ended (False)."""
        while self.process.poll() is None:
            status, _ = read_status(self.prepared.run)
            if status is not None and status.state in STARTED_STATES:
                return True
            time.sleep(poll)
        return False

    def finish(self, say: Callable[[str], None] = say_error) -> int:
        """Wait for the end; the exit status, and one line when the ranks did not end well."""
        returncode = self.process.wait()
        if self.forwarded:
            return self.forwarded
        status, _ = read_status(self.prepared.run)
        if returncode == 0:
            return 0
        if status is None or not status.final:  # rank 0 itself died without a word
            message = (
                f"a rank of this run ended without a word (killed, or out of memory), and torchrun stopped the "
                f"others; torchrun's report is in {self.prepared.run.log_path}"
            )
            _write_error(self.prepared, message, status)
        else:
            message = status.message or f"torchrun exited with status {returncode}; see {self.prepared.run.log_path}"
        last = status.last_checkpoint if status is not None else ""
        say(message + (f" (last good checkpoint: {last})" if last else ""))
        return 1


def _write_error(p: Prepared, message: str, status: Status | None) -> None:
    """The run's last word, for watchers, when no rank could write it."""
    base = status or Status(run_dir=str(p.run.path))
    try:
        write_status(p.run, dataclasses.replace(base, state=RunState.ERROR, message=message, pid=os.getpid(), host=socket.gethostname(), updated=time.time()))
    except OSError:
        pass


def launch_here(request: Request, console: Console) -> int:
    """--headless --nproc N: rank 0's plain view on this terminal, everything else in train.log."""
    from vae_tui.launch.prepare import check
    from vae_tui.views.plain import DecodeProgress

    prepared = check(request, progress=DecodeProgress(console))
    with open(prepared.run.log_path, "ab") as log:
        ranks = Ranks(prepared, None, log)
    ranks.forward_signals()
    return ranks.finish()


def launch_behind(p: Prepared, report: "Reporter") -> int:
    """Behind the monitor or --detach (this is the worker, its output already in train.log): say
    "started" once rank 0 trains, or why it never did."""
    from vae_tui.launch.prepare import describe

    ranks = Ranks(p, None, None)
    ranks.forward_signals()
    if ranks.wait_started():
        info = read_run_info(p.run)[0] or RunInfo()
        device, step = info.device, info.step  # as rank 0 picked them
        kind, name = device.get("kind", "?"), f"{device.get('name', '?')}, rank 0 of {p.request.nproc}"
        p.device = types.SimpleNamespace(kind=kind, name=name, words=f"{kind} ({name})")
        p.step = StepPlan(str(step.get("mode", "eager")), str(step.get("why", "")))
        report.send(started=True, lines=describe(p))
        report.close()
        return ranks.finish()
    said: list[str] = []
    code = ranks.finish(say=said.append)
    report.send(error=said[0] if said else f"torchrun ended before training started; see {p.run.log_path}", code=code or 1)
    return code or 1
