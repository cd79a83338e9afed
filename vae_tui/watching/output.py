"""The last lines a script printed (its train.log), as a terminal would have left them: a progress
bar redrawn with carriage returns is its latest state, colour and cursor codes are dropped."""

from __future__ import annotations

import os
import re
from collections import deque
from pathlib import Path

KEPT_LINES = 200
READ_LIMIT = 1 << 20  # a burst of output is read in pieces; the newest piece is what is shown
ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[@-Z\\-_]")


class ScriptOutput:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: deque[str] = deque(maxlen=KEPT_LINES)
        self.partial = ""  # the line being written (a progress bar between its redraws)
        self.version = 0  # changes whenever what is shown changes
        self._offset = 0
        self._inode: int | None = None
        self._pending = b""

    def poll(self) -> None:
        try:
            info = os.stat(self.path)
            if self._inode is not None and (info.st_ino != self._inode or info.st_size < self._offset):
                self._offset, self._pending = 0, b""
                self.lines.clear()
            self._inode = info.st_ino
            if info.st_size <= self._offset:
                return
            if info.st_size - self._offset > READ_LIMIT:  # far behind: only the newest output matters
                self._offset, self._pending = info.st_size - READ_LIMIT, b""
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read(READ_LIMIT)
        except OSError:
            return
        self._offset += len(data)
        self.take(data)

    def take(self, data: bytes) -> None:
        data = self._pending + data
        end = data.rfind(b"\n") + 1
        whole, self._pending = data[:end], data[end:]  # a line still being written is read again, whole, next time
        if whole:
            self.lines.extend(shown(line) for line in whole[:-1].decode("utf-8", errors="replace").split("\n"))
        self.partial = shown(self._pending.decode("utf-8", errors="replace"))
        self.version += 1

    def last(self, count: int) -> list[str]:
        """The newest `count` lines, the one being written last."""
        lines = [*self.lines, *([self.partial] if self.partial else [])]
        return lines[-count:] if count > 0 else []


def shown(line: str) -> str:
    """What a terminal shows of a line: after its last carriage return (ignoring one at the very end,
    as Windows line ends and some bars leave), without escape codes or tabs."""
    line = ESCAPES.sub("", line).rstrip("\r")
    return line[line.rfind("\r") + 1 :].expandtabs(4)
