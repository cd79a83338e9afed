"""Starting the worker process and hearing back from it. No torch here: this is the monitor's side.

The worker runs in its own session: the terminal's signals and hang-up reach it only through
whoever started it (the monitor forwards them; after --detach nothing does), so closing an SSH
session that detached a run never ends it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, NoReturn

from vae_tui.errors import VaeTuiError

# what `vae-tui train` passes on: the same request its own in-process path would check
REQUEST_FIELDS = ("options", "run_dir", "resume", "view", "nproc", "world_size", "made")


class WorkerError(VaeTuiError):
    """The worker refused the run (its message, its exit status) or failed to start."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    _report: IO[str] = field(repr=False)
    _early_output: IO[bytes] = field(repr=False)
    run_dir: Path | None = None  # once it has checked the run
    lines: list[str] = field(default_factory=list)  # what is about to train, for the terminal

    def wait_checked(self, progress: Callable[[int, int, str], None]) -> None:
        """Until it has checked the run and made its run directory (telling `progress` how reading the
        data goes: done, total (0: not counted), what); a refusal raises WorkerError with its line."""
        try:
            message = self.next_report()
            while message is not None and "progress" in message:
                progress(*message["progress"])
                message = self.next_report()
        except KeyboardInterrupt:  # Ctrl+C while it checks: nothing is training yet, end it too
            self.end()
            raise
        self.checked(message)

    def checked(self, message: dict[str, Any] | None) -> None:
        """The report that ended the checks: the run directory and what will train, or WorkerError."""
        if message is None or "checked" not in message:
            self._fail(message)
        assert message is not None
        self.run_dir, self.lines = Path(message["checked"]), list(message["lines"])

    def end(self) -> None:
        """Stop a worker that has not started training (nothing of a run is lost)."""
        self.process.terminate()
        self.process.wait()

    def wait_started(self) -> list[str]:
        """Block until training is under way (for --detach): the description, device included."""
        message = self.next_report()
        if message is None or "started" not in message:
            self._fail(message)
        return list(message["lines"])

    def stop_listening(self) -> None:
        self._report.close()
        self._early_output.close()

    def next_report(self) -> dict[str, Any] | None:
        line = self._report.readline()
        try:
            message = json.loads(line) if line else None
        except ValueError:
            message = None
        return message if isinstance(message, dict) else None

    def _fail(self, message: dict[str, Any] | None) -> NoReturn:
        self.process.wait()
        self.stop_listening()
        if message is not None and "error" in message:
            raise WorkerError(str(message["error"]), int(message.get("code", 1)))
        raise WorkerError(f"the trainer failed to start (exit status {self.process.returncode}): {self._tail()}")

    def _tail(self) -> str:
        """The last line it printed: in train.log once the run directory exists, before that to us."""
        log = self.run_dir / "train.log" if self.run_dir is not None else None
        if log is not None and log.is_file():
            text = log.read_text(encoding="utf-8", errors="replace")
        else:
            self._early_output.seek(0)
            text = self._early_output.read().decode(errors="replace")
        lines = text.strip().splitlines()
        return lines[-1] if lines else "it printed nothing"


def start_worker(request: Any) -> Worker:
    """Start `python -m vae_tui.launch.worker` and wait until it has checked the run (or refused it)."""
    worker = spawn_worker(request)
    worker.wait_checked(show_progress)
    return worker


def spawn_worker(request: Any) -> Worker:
    """Start `python -m vae_tui.launch.worker`; it reports how it gets on (Worker.wait_checked)."""
    read_fd, write_fd = os.pipe()
    early = tempfile.TemporaryFile()  # its output until the run directory (and train.log) exists
    payload = json.dumps({k: v for k, v in dataclasses.asdict(request).items() if k in REQUEST_FIELDS})
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "vae_tui.launch.worker", str(write_fd), payload],
            stdin=subprocess.DEVNULL,
            stdout=early,
            stderr=subprocess.STDOUT,
            pass_fds=(write_fd,),
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    finally:
        os.close(write_fd)
    return Worker(process, os.fdopen(read_fd, encoding="utf-8"), early)


def show_progress(done: int, total: int, what: str) -> None:
    """One line on the terminal, rewritten in place, while the worker reads the data (--detach)."""
    if not sys.stderr.isatty():
        return
    if total <= 0:  # a stage that is not counted
        print(f"{what}...", file=sys.stderr, flush=True)
        return
    width = 30
    filled = width * done // max(total, 1)
    end = "\n" if done >= total else ""
    print(f"\r{what}: [{'#' * filled}{'.' * (width - filled)}] {done:,} / {total:,}", end=end, file=sys.stderr, flush=True)
