"""The trainer process behind the monitor and `--detach`, started by `vae-tui train` (spawn.py).

    python -m vae_tui.launch.worker REPORT_FD REQUEST_JSON

It checks the request and creates the run directory, tells its parent on the REPORT_FD pipe
("checked", or an error line and exit status), then moves its own output to train.log, imports
torch, trains, and says "started" once training is under way. The parent never loads the data or
builds the model: it only waits for those words, then watches the run directory.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

from rich.console import Console

from vae_tui.errors import VaeTuiError, say_error
from vae_tui.launch.prepare import Prepared, Request, check, describe, ready
from vae_tui.runfile.files import read_status, write_status
from vae_tui.runfile.schema import RunState, Status


class Reporter:
    """JSON lines to the parent; a parent that stopped listening (it opened the monitor) is fine."""

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd
        self._last = 0.0

    def send(self, **message: object) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, (json.dumps(message) + "\n").encode())
        except OSError:
            self.close()

    def progress(self, done: int, total: int, what: str) -> None:
        """How decoding goes, at most a few times a second (and always the last), for the parent to draw."""
        now = time.monotonic()
        if done >= total or now - self._last >= 0.2:
            self._last = now
            self.send(progress=[done, total, what])

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        say_error("usage: python -m vae_tui.launch.worker REPORT_FD REQUEST_JSON (started by vae-tui train, not by hand)")
        return 2
    report = Reporter(int(argv[0]))
    try:
        prepared = check(Request(**json.loads(argv[1])), progress=report.progress)
    except VaeTuiError as exc:
        report.send(error=str(exc), code=exc.exit_code)
        return exc.exit_code
    report.send(checked=str(prepared.run.path), lines=describe(prepared))
    _output_to_log(prepared)
    if prepared.request.nproc > 1:  # torchrun's ranks train; this process launches and waits for them
        from vae_tui.launch.torchrun import launch_behind

        return launch_behind(prepared, report)
    console = Console(highlight=False, soft_wrap=True)
    try:
        ready(prepared)
    except VaeTuiError as exc:
        _failed(prepared, str(exc))
        report.send(error=str(exc), code=exc.exit_code)
        return exc.exit_code
    for line in describe(prepared):
        console.print(line)

    def announce() -> None:
        report.send(started=True, lines=describe(prepared))
        report.close()

    from vae_tui.launch.run_here import train_here  # the trainer, once every check has passed

    code = train_here(prepared, console, on_started=announce)
    if report.fd is not None:  # it ended before it started: building the model failed, say why
        status, _ = read_status(prepared.run)
        report.send(error=status.message if status and status.message else f"see {prepared.run.log_path}", code=code or 1)
    return code


def _output_to_log(prepared: Prepared) -> None:
    """From here on, this process's output goes to the run's train.log, not the parent's terminal."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(prepared.run.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o666)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _failed(prepared: Prepared, message: str) -> None:
    """A failure after the run directory exists: say it there too, for the monitor that is watching."""
    say_error(message)
    try:
        write_status(
            prepared.run,
            Status(state=RunState.ERROR, message=message, run_dir=str(prepared.run.path), pid=os.getpid(), host=socket.gethostname(), updated=time.time()),
        )
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
