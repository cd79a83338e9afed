"""Writing and reading a run's files: one atomic writer, and readers that never raise on damage.

Files replaced whole (config.json, status.json, *.npz, eval.json, checkpoints) go through
`atomic_write`: a temporary file created exclusively in the same folder, then renamed over the
old one, so a reader sees the old file or the new one, never half of one. Readers return the
value and, when the file was damaged, a short description of what was wrong instead of raising:
a watcher's thread must survive anything a crash or a person leaves in a run directory.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)  # read once, at import: the new files get the usual permissions, as open() gives


def atomic_write(path: str | os.PathLike[str], data: bytes | memoryview | Callable[[IO[bytes]], None], durable: bool = False) -> None:
    """Replace `path` by `data` (or what the callback writes) in one step; raise OSError on failure.

    `durable` also fsyncs the file and its folder: for checkpoints, which must survive a power cut.
    On any failure the old file is untouched and the temporary one is removed.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)
            if callable(data):
                data(f)
            else:
                f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(path.parent)


def os_reason(exc: OSError, where: str | os.PathLike[str]) -> str:
    """Why a write failed, in words a person can act on."""
    if exc.errno == errno.ENOSPC:
        try:
            stats = os.statvfs(Path(where).parent)
            free = f" ({stats.f_bavail * stats.f_frsize / 2**20:,.0f} MB free)"
        except OSError:
            free = ""
        return f"no space left on the file system of {where}{free}"
    words = {
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied (is the folder read-only?)",
        errno.EPERM: "not permitted",
        errno.EFBIG: "the file is too large (a file size limit is set)",
        errno.ENOENT: "its folder is gone",
    }
    return words.get(exc.errno or 0, exc.strerror or str(exc))


def rewrite_in_place(path: str | os.PathLike[str], data: bytes) -> None:
    """Overwrite one of our existing files without a new name: what still works in a folder that
    became read-only. Not atomic (a reader may see it half written, and reads again), and never
    through a link."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_partial_writes(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files of writes interrupted by a kill (the files beside them are whole)."""
    removed = []
    for leftover in Path(folder).glob(".*.*.tmp"):
        with contextlib.suppress(OSError):
            if leftover.is_file() and not leftover.is_symlink():
                leftover.unlink()
                removed.append(leftover)
    return removed


def write_json(path: str | os.PathLike[str], value: dict[str, Any], durable: bool = False) -> None:
    atomic_write(path, (json.dumps(value, indent=2) + "\n").encode(), durable)


def read_json_object(path: str | os.PathLike[str]) -> tuple[dict[str, Any] | None, str | None]:
    """(the object, None), or (None, what was wrong): missing, unreadable, not JSON, not an object."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return None, "missing"
    except OSError as exc:
        return None, f"unreadable ({exc.strerror or exc})"
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None, "not JSON"
    if not isinstance(value, dict):
        return None, f"holds {type(value).__name__}, not an object"
    return value, None


def write_npz(path: str | os.PathLike[str], arrays: dict[str, Any]) -> None:
    """`arrays`: arrays and NumPy scalars by name."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(path, buffer.getvalue())


def read_npz(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """All arrays of an .npz (never pickled objects), or (None, what was wrong)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {name: z[name] for name in z.files}, None
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError, EOFError) as exc:
        return None, f"damaged ({type(exc).__name__})"
    except Exception as exc:  # zipfile raises several kinds on a damaged archive
        return None, f"damaged ({type(exc).__name__})"


def open_append(path: str | os.PathLike[str]) -> IO[str]:
    """Open one of the run's own files for appending; a link planted in its place is not followed."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    return os.fdopen(fd, "a", encoding="utf-8")


def append_text(path: str | os.PathLike[str], text: str) -> None:
    with open_append(path) as f:
        f.write(text)


class Tail:
    """What was appended to a file since the last read, in whole lines.

    A torn last line (its writer is mid-record, or died there) waits for the rest of it; a file
    that was replaced or shrank (a resume rewrote it) is read again from the start.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.inode: int | None = None

    def read(self, limit: int = 8 << 20) -> tuple[bytes, bool]:
        """(complete new lines, whether the file was replaced and reading restarted)."""
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
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(limit)
        except OSError:
            return b"", restarted
        end = data.rfind(b"\n") + 1
        self.offset += end
        return data[:end], restarted
