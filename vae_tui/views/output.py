"""Standard output that may go away: the reader of a pipe (`vae-tui train | head -1`) can end long
before the run does. Writing into it then fails with EPIPE; the run is stopped as a hang-up stops
it (its checkpoint saved, so it resumes), and nothing more is written there, not even by the
interpreter's last flush."""

from __future__ import annotations

import os
import threading
from typing import Callable, TextIO

BROKEN_PIPE_STATUS = 141  # 128 + SIGPIPE: what a shell reports for a command whose reader went away


class Output:
    """A text stream for rich's Console that survives its reader going away."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.gone = threading.Event()
        self._when_gone: list[Callable[[], None]] = []

    def when_gone(self, act: Callable[[], None]) -> None:
        """Call `act` once the reader has gone (at once, if it has)."""
        self._when_gone.append(act)
        if self.gone.is_set():
            act()

    def write(self, text: str) -> int:
        if not self.gone.is_set():
            try:
                self.stream.write(text)
            except OSError:
                self._lose()
        return len(text)

    def flush(self) -> None:
        if not self.gone.is_set():
            try:
                self.stream.flush()
            except OSError:
                self._lose()

    def isatty(self) -> bool:
        return not self.gone.is_set() and self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self.stream, "encoding", None) or "utf-8"

    def _lose(self) -> None:
        self.gone.set()
        try:  # what the stream still holds, and the interpreter's flush at exit, go nowhere
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self.stream.fileno())
            os.close(null)
        except (OSError, ValueError):
            pass
        for act in self._when_gone:
            act()
