"""Checkpoints that survive crashes and never run code: atomic writes, weights-only reads.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so
`torch.load(weights_only=True)` reads it without unpickling arbitrary objects. It is written to
a temporary file in the same folder, flushed, fsynced and renamed over the old one, so a crash
or a full disk mid-write leaves the previous checkpoint as it was.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from vae_tui.errors import VaeTuiError

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "config", "model", "optimizer", "epoch", "step", "input_dim")


class CheckpointError(VaeTuiError):
    """A checkpoint that is missing, unreadable, untrusted or does not fit the run."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write atomically; on failure the old file at `path` is untouched and OSError propagates."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format_version": FORMAT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(path.parent)
    return path


def remove_partial_writes(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files left by a process killed mid-save (the checkpoints beside them are whole)."""
    removed = []
    for leftover in Path(folder).glob(".*.pt.*.tmp"):
        with contextlib.suppress(OSError):
            leftover.unlink()
            removed.append(leftover)
    return removed


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def resolve_checkpoint_path(path: str | os.PathLike[str]) -> Path:
    """--resume takes a checkpoint file or a run directory (then its checkpoints/last.pt)."""
    path = Path(path).expanduser()
    if path.is_dir():
        last = path / "checkpoints" / "last.pt"
        if not last.is_file():
            raise CheckpointError(f"{path} is a folder with no checkpoints/last.pt; pass a run directory or a .pt file")
        return last
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a .pt file or a run directory")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a regular file")
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read with weights_only=True; every failure becomes one CheckpointError line."""
    path = resolve_checkpoint_path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about legacy formats; we report in one line
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc) or _starts_like_pickle(path):
            raise CheckpointError(
                f"refusing to load {path}: it holds Python objects, not only tensors and plain data, and "
                "loading it could run code. Use a checkpoint written by vae-tui"
            ) from None
        raise CheckpointError(f"{path} is corrupt or truncated (not a readable checkpoint); use an earlier one, e.g. best.pt") from None
    except Exception as exc:  # a damaged file makes torch's reader fail in many ways (KeyError, EOFError...)
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{path} is corrupt or truncated ({detail}); use an earlier checkpoint, e.g. best.pt"
        ) from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"{path} is a PyTorch file but not a vae-tui checkpoint")
    version = state["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version}, newer than this vae-tui reads ({FORMAT_VERSION}); upgrade vae-tui"
        )
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{path} is not a complete vae-tui checkpoint (missing {', '.join(missing)})")
    return state


def _starts_like_pickle(path: Path) -> bool:
    """A raw pickle (protocol 2+) begins with the PROTO opcode; torch's own files are zip archives."""
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def describe_shape(state: dict[str, Any]) -> str:
    config = state["config"]
    return f"{state['input_dim']}-{config['hidden_dim']}-{config['latent_dim']}"


def check_model_shape(state: dict[str, Any]) -> None:
    """Refuse a checkpoint whose weights do not match the model its config describes."""
    from vae_tui.model import parameter_shapes

    config = state["config"]
    expected = parameter_shapes(state["input_dim"], config["hidden_dim"], config["latent_dim"])
    weights = state["model"]
    if not isinstance(weights, dict):
        raise CheckpointError("the checkpoint holds no model weights")
    for name, shape in expected.items():
        found = tuple(weights[name].shape) if name in weights and hasattr(weights[name], "shape") else None
        if found != shape:
            raise CheckpointError(
                f"the checkpoint's weights do not fit its {describe_shape(state)} model: {name} is "
                f"{found if found is not None else 'missing'}, expected {shape}"
            )
