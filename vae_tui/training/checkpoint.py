"""Checkpoint files that survive crashes and never run code: durable atomic writes, weights-only reads.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (the training state,
the configuration and the data description), so `torch.load(weights_only=True)` reads it without
unpickling arbitrary objects. It is written through the run format's atomic writer with fsync,
so a crash or a full disk mid-write leaves the previous checkpoint as it was.
"""

from __future__ import annotations

import io
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from vae_tui.config import TrainConfig
from vae_tui.errors import VaeTuiError
from vae_tui.runfile.io import atomic_write

FORMAT_VERSION = 2  # 1: before the data description (grey images only, "input_dim" and "image_shape")
REQUIRED_KEYS = ("format_version", "config", "data", "model", "optimizer", "epoch", "step")


class CheckpointError(VaeTuiError):
    """A checkpoint that is missing, unreadable, untrusted or does not fit the run."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write durably and atomically; on failure the old file at `path` is untouched and OSError propagates."""
    path = Path(path)  # its folder must exist: a run directory deleted mid-run is not quietly made again
    buffer = io.BytesIO()  # serialised first: a full disk then fails as an OSError, not inside torch's writer
    torch.save({**state, "format_version": FORMAT_VERSION}, buffer)
    atomic_write(path, buffer.getbuffer(), durable=True)
    return path


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
        raise CheckpointError(f"{path} is corrupt or truncated ({detail}); use an earlier checkpoint, e.g. best.pt") from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"{path} is a PyTorch file but not a vae-tui checkpoint")
    version = state["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {version}, newer than this vae-tui reads ({FORMAT_VERSION}); upgrade vae-tui")
    if version == 1:
        state = _from_version_1(state)
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{path} is not a complete vae-tui checkpoint (missing {', '.join(missing)})")
    return state


def _starts_like_pickle(path: Path) -> bool:
    """A raw pickle (protocol 2+) begins with the PROTO opcode; torch's own files are zip archives."""
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def _from_version_1(state: dict[str, Any]) -> dict[str, Any]:
    """A format-1 checkpoint (grey images, flat sizes) in today's terms."""
    if "data" not in state and "image_shape" in state:
        state = {**state, "data": {"name": state.get("dataset", "?"), "shape": [1, *state["image_shape"]], "train_size": state.get("train_size")}}
    return state


def image_shape(state: dict[str, Any]) -> tuple[int, int, int]:
    channels, height, width = (int(n) for n in state["data"]["shape"])
    return channels, height, width


def data_mismatch(state: dict[str, Any], shape: tuple[int, int, int], name: str, train_size: int) -> str | None:
    """Why this data cannot go on with the checkpoint's run, in one line (None when it can): the
    model's picture shape, and the training set's size, on which the epoch's permutation depends."""
    saved = state.get("data", {})
    if tuple(image_shape(state)) != tuple(shape):
        return (
            f"the checkpoint's model takes images of shape {list(image_shape(state))} but {name} images are "
            f"{list(shape)}; resume with the dataset it was trained on ({saved.get('name', '?')})"
        )
    size = saved.get("train_size")
    if size is not None and size != train_size:
        return (
            f"the checkpoint was trained on {size:,} {saved.get('name', '?')} images but this {name} has "
            f"{train_size:,}; its shuffling cannot continue here. Resume with the same data, or start a new run from its "
            "weights with --init-from (a schedule of its own on this data)"
        )
    return None


def saved_config(state: dict[str, Any]) -> TrainConfig:
    return TrainConfig.from_dict(state["config"])


def saved_global_batch(state: dict[str, Any]) -> int:
    """Images per step, all ranks together, when the checkpoint was written (older ones: one process)."""
    return int(state.get("global_batch") or state.get("config", {}).get("batch_size") or 1)


def describe_shape(state: dict[str, Any]) -> str:
    from vae_tui.models import describe_model

    return describe_model(saved_config(state), image_shape(state))


def check_model_shape(state: dict[str, Any]) -> None:
    """Refuse a checkpoint whose weights do not match the model its configuration describes."""
    from vae_tui.models import parameter_shapes

    source = state.get("model_source") or {}
    if isinstance(source, dict) and source.get("file") and not Path(source["file"]).is_file():
        raise CheckpointError(
            f"the checkpoint holds the weights of your model {source.get('spec') or ''}, whose file "
            f"{source['file']} is gone; put the file back there to load it"
        )
    try:
        expected = parameter_shapes(saved_config(state), image_shape(state))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"the checkpoint does not say what model it holds ({exc})") from None
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
