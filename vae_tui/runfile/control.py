"""The control channel: watchers in other processes ask a running trainer to pause, resume,
checkpoint or stop, or to change its learning rate or beta ("set lr=0.0005 beta=2").

A command is a small file dropped into `RUN_DIR/control/`, which the trainer creates with mode
0700 when it starts and removes when it ends. Only the user who owns the run (and root) can
create files there; the trainer also ignores and deletes any command file owned by another user.
A command file is gone once the trainer has taken it, so a watcher can tell "not answering"
(its file is still there after a few seconds) from "done". Files rather than a Unix socket:
they work on every platform, have no 108-byte path limit, and need no server thread.
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
import time
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, NamedTuple

from vae_tui.errors import VaeTuiError
from vae_tui.runfile.io import atomic_write
from vae_tui.runfile.layout import RunDir

COMMANDS = ("pause", "resume", "checkpoint", "stop")
SETTINGS = ("lr", "beta")  # what `set` may change while a run trains
ANSWER_SECONDS = 3.0  # how long a command may wait to be taken before the trainer counts as not answering


class Command(NamedTuple):
    """A command as the trainer takes it: `kind` is one of COMMANDS or "set", with its `values` (lr, beta)."""

    kind: str
    values: Mapping[str, float] = MappingProxyType({})  # read-only: one empty mapping shared by every command


def read_command(text: str) -> Command | None:
    """The one reader of a command file's text: a Command, or None when it is not one vae-tui writes."""
    if text in COMMANDS:
        return Command(text)
    values = parse_set(text)
    return Command("set", values) if values is not None else None


class ControlError(VaeTuiError):
    """No trainer is listening, or this user may not command it."""


def open_channel(run: RunDir) -> Path:
    """Create the control folder for a starting trainer; only its owner may write there.

    A control/ that is a link, not a folder, or another user's is refused: only a folder of ours is
    chmodded, and only command files in it are ever deleted.
    """
    folder = run.control_dir
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        _check_ours(folder)
    os.chmod(folder, 0o700)  # mkdir's mode is filtered by the umask, and the folder may be left from a crash
    _remove_commands(folder)  # commands left by watchers of a run that has since ended
    return folder


def close_channel(run: RunDir) -> None:
    """Remove the control folder: from now on watchers are told that nobody is listening."""
    folder = run.control_dir
    try:
        _check_ours(folder)
    except (ControlError, FileNotFoundError):
        return
    _remove_commands(folder)
    try:
        folder.rmdir()
    except OSError:
        pass  # something that is not ours is in it: leave it, and the folder


def _check_ours(folder: Path) -> None:
    info = os.lstat(folder)
    if stat.S_ISLNK(info.st_mode):
        raise ControlError(f"{folder} is a symbolic link; vae-tui will not use or empty it: remove the link")
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise ControlError(f"{folder} is not a folder of this user's; remove it to let the trainer take commands")


def _remove_commands(folder: Path) -> None:
    """Delete command files and their temporary files (links themselves, never what they point to)."""
    for entry in os.scandir(folder):
        if entry.name.endswith(".cmd") or (entry.name.startswith(".") and entry.name.endswith(".tmp")):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def setting_problem(name: str, value: object) -> str | None:
    """Why a new learning rate or beta cannot be taken (None when it can): the one rule for the app,
    `vae-tui set` and the trainer."""
    if name.startswith("lr.") and name[3:].replace("_", "").replace("-", "").isalnum():
        name = "lr"  # one optimizer's of several, by the name of the module it trains: lr.discriminator
    if name not in SETTINGS:
        return f"unknown setting {name!r}: one of {', '.join(SETTINGS)}"
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if name == "lr" and not (number and value > 0):  # type: ignore[operator]
        return f"the learning rate must be a positive number such as 1e-3, got {value!r}"
    if name == "beta" and not (number and value >= 0):  # type: ignore[operator]
        return f"beta must be a number of at least 0 (1 is the plain ELBO), got {value!r}"
    return None


def set_command(values: dict[str, float]) -> str:
    return "set " + " ".join(f"{name}={float(value)!r}" for name, value in values.items())


def parse_set(text: str) -> dict[str, float] | None:
    """A `set` command's values, or None when it is not one vae-tui writes (or a value is not allowed)."""
    words = text.split()
    if not words or words[0] != "set" or len(words) == 1:
        return None
    values: dict[str, float] = {}
    for word in words[1:]:
        name, _, raw = word.partition("=")
        try:
            value = float(raw)
        except ValueError:
            return None
        if setting_problem(name, value) is not None:
            return None
        values[name] = value
    return values


def send(run: RunDir, command: str) -> Path:
    """Drop a command for the trainer (a word of COMMANDS, or `set_command(...)`); return the file,
    which disappears once it is taken."""
    if command not in COMMANDS and parse_set(command) is None:
        raise ControlError(f"unknown command {command!r}: one of {', '.join(COMMANDS)}, or set lr=X beta=Y")
    folder = run.control_dir
    try:
        if not folder.is_dir():
            raise ControlError(f"no trainer is running in {run.path}")
    except PermissionError:
        raise ControlError(f"permission denied: the run in {run.path} belongs to another user") from None
    path = folder / f"{time.time_ns()}-{os.getpid()}-{command.split()[0]}.cmd"
    try:
        atomic_write(path, (command + "\n").encode())  # the trainer never sees a half-written command
    except PermissionError:
        raise ControlError(f"permission denied: the run in {run.path} belongs to another user") from None
    except FileNotFoundError:
        raise ControlError(f"no trainer is running in {run.path} (it has just ended)") from None
    except OSError as exc:  # a read-only or full file system: the caller may still signal the trainer
        raise ControlError(f"cannot write a command into {folder} ({exc.strerror or exc})") from None
    return path


def taken(path: Path) -> bool:
    return not path.exists()


def take(run: RunDir) -> tuple[list[Command], list[str]]:
    """Commands waiting, oldest first, each removed as it is read; and the refusals to report."""
    commands: list[Command] = []
    refused: list[str] = []
    try:
        _check_ours(run.control_dir)  # again each time: a folder swapped for a link mid-run is not emptied
        entries = [e for e in os.scandir(run.control_dir) if e.name.endswith(".cmd")]
    except ControlError as exc:
        return commands, [f"commands are ignored: {exc}"]
    except OSError:
        return commands, refused
    uid = os.getuid()
    for entry in sorted(entries, key=lambda e: e.name):
        path = Path(entry.path)
        try:
            info = os.lstat(path)
            text = path.read_text(encoding="utf-8", errors="replace").strip() if stat.S_ISREG(info.st_mode) else ""
            path.unlink(missing_ok=True)
        except OSError:
            continue
        if stat.S_ISLNK(info.st_mode):
            refused.append(f"ignored a command file that is a symbolic link ({entry.name}): commands are plain files")
        elif info.st_uid != uid or not stat.S_ISREG(info.st_mode):
            refused.append(f"ignored a command from user id {info.st_uid}: only the run's owner may control it")
        elif (command := read_command(text)) is not None:
            commands.append(command)
        else:
            refused.append(f"ignored an unknown command {text[:40]!r}")
    return commands, refused
