"""One trainer per run: RUN_DIR/trainer.lock, held with flock for the trainer's whole life.

The kernel releases the lock when the process ends, however it ends, so a killed run is never
locked out; a second trainer that finds it held says who holds it and touches nothing. The file
also names the holder (pid, host) for that message.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time

from vae_tui.runfile.layout import RunDir, RunDirError


class RunLock:
    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, run: RunDir) -> "RunLock":
        """Take the run's lock, or raise RunDirError naming the trainer that has it."""
        try:
            fd = os.open(run.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise RunDirError(f"cannot lock {run.lock_path} ({exc.strerror or exc}); pick another --run-dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise RunDirError(
                f"{run.path} is already being trained by pid {holder.get('pid', '?')} on {holder.get('host', '?')}; watch it with vae-tui watch {run.path}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode(), 0)
        return cls(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read(fd: int) -> dict[str, object]:
    try:
        value = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


_HELD: dict[str, RunLock] = {}  # the runs this process trains: held until it exits


def hold(run: RunDir) -> None:
    """Make this process the run's trainer for the rest of its life (a second call is a no-op)."""
    key = os.path.realpath(run.path)
    if key not in _HELD:
        _HELD[key] = RunLock.acquire(run)


def release(run: RunDir) -> None:
    """Training here has ended: another process may train the run now."""
    lock = _HELD.pop(os.path.realpath(run.path), None)
    if lock is not None:
        lock.release()
