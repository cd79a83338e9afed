"""Each file a run directory holds, written and read in one place.

Writers raise OSError (the caller decides whether a full disk is worth a warning); readers never
raise, and say what was wrong with a damaged file instead.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Mapping

import numpy as np

from vae_tui.runfile.io import append_text, atomic_write, read_json_object, read_npz, rewrite_in_place, write_json, write_npz
from vae_tui.runfile.layout import RunDir
from vae_tui.runfile.metrics import event_line, is_number
from vae_tui.runfile.schema import FORMAT, SNAPSHOT_IMAGES, Event, RunInfo, Status


@dataclass
class Snapshot:
    """Pictures for the image panes: (n, channels, height, width) float32 arrays in [0, 1]."""

    step: int
    epoch: int
    originals: np.ndarray
    reconstructions: np.ndarray
    samples: np.ndarray


def write_config(run: RunDir, info: RunInfo) -> None:
    write_json(run.config_path, info.to_dict())


def update_config(run: RunDir, **fields: Any) -> None:
    """Replace some of config.json's fields (what the trainer learns once it starts); nothing to do
    when the run has no readable config.json."""
    info, _ = read_config(run)
    if info is not None:
        write_json(run.config_path, {**info, **fields})


def write_scalars(run: RunDir, records: list[dict[str, Any]]) -> None:
    """Named terms beyond recon and kl, appended: one JSON object per step ({"step": 12, "lpips": 0.31}),
    or per interval of steps ({"step": 940, "first": 901, ...}: their means)."""
    append_text(run.scalars_path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in records))


def read_scalars(run: RunDir) -> list[dict[str, Any]]:
    """The records of scalars.jsonl (none when there is no file); damaged lines are left out."""
    try:
        return scalar_records(run.scalars_path.read_bytes())
    except FileNotFoundError:
        return []


def truncate_scalars(run: RunDir, step: int) -> None:
    """Drop the records after a checkpoint's step, as metrics.jsonl's are on resume (replaced atomically;
    left alone when nothing follows it)."""
    try:
        data = run.scalars_path.read_bytes()
    except FileNotFoundError:
        return
    records = scalar_records(data)
    kept = [r for r in records if r["step"] <= step]
    if len(kept) < len(records) or len(records) < data.count(b"\n") or not data.endswith(b"\n") and data:
        atomic_write(run.scalars_path, "".join(json.dumps(r) + "\n" for r in kept).encode(), durable=True)


def scalar_records(data: bytes) -> list[dict[str, Any]]:
    """Whole lines of scalars.jsonl as records; damaged lines are left out."""
    out = []
    for line in data.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and not isinstance(record.get("step"), bool):
            out.append(record)
    return out


TERM_KEYS = ("step", "first")  # a scalars.jsonl record's place, not one of its terms


def term_columns(records: list[dict[str, Any]]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The records as charts take them: each record's step, and each numeric term's value at it (NaN
    where a record has none, or text)."""
    steps = np.array([r["step"] for r in records], dtype=np.float64)
    names = dict.fromkeys(k for r in records for k, v in r.items() if k not in TERM_KEYS and (v is None or is_number(v)))
    columns = {name: np.array([float(r[name]) if is_number(r.get(name)) else np.nan for r in records], dtype=np.float64) for name in names}
    return steps, columns


def read_config(run: RunDir) -> tuple[dict[str, Any] | None, str | None]:
    """config.json as it is written (fields a newer writer added included); read_run_info for the record."""
    return read_json_object(run.config_path)


def read_run_info(run: RunDir) -> tuple[RunInfo | None, str | None]:
    data, problem = read_json_object(run.config_path)
    return (RunInfo.from_dict(data) if data is not None else None), problem


def write_status(run: RunDir, status: Status) -> None:
    """Atomically; in a folder that turned read-only, in place, so the heartbeat and the cause still reach watchers."""
    data = (json.dumps(status.to_dict(), indent=2) + "\n").encode()
    try:
        atomic_write(run.status_path, data)
    except (PermissionError, FileExistsError) as exc:
        if not run.status_path.is_file() or run.status_path.is_symlink():
            raise exc from None
        rewrite_in_place(run.status_path, data)


def read_status(run: RunDir) -> tuple[Status | None, str | None]:
    """The trainer's last word, or (None, why not): missing, damaged, or fields of the wrong type."""
    data, problem = read_json_object(run.status_path)
    if data is None:
        return None, problem
    status, wrong = Status.from_dict(data)
    return status, (f"fields of the wrong type: {', '.join(wrong)}" if wrong else None)


def write_evaluation(run: RunDir, result: dict[str, Any], what: str) -> None:
    write_json(run.eval_path, {"format": FORMAT, "model": what, **result})


def append_events(run: RunDir, events: list[Event]) -> None:
    append_text(run.events_path, "".join(event_line(e) for e in events))


def write_snapshot(run: RunDir, snapshot: Snapshot) -> None:
    # bytes, not floats: a quarter of the size, and 256 levels are more than any terminal shows
    pictures = {name: np.round(np.clip(getattr(snapshot, name), 0, 1) * 255).astype(np.uint8) for name in SNAPSHOT_IMAGES}
    write_npz(run.snapshot_path, {"step": np.int64(snapshot.step), "epoch": np.int64(snapshot.epoch), **pictures})


def read_snapshot(run: RunDir) -> tuple[Snapshot | None, str | None]:
    arrays, problem = read_npz(run.snapshot_path)
    if arrays is None:
        return None, problem
    if not {"step", "epoch", *SNAPSHOT_IMAGES} <= arrays.keys() or any(arrays[n].ndim not in (3, 4) for n in SNAPSHOT_IMAGES):
        return None, "not a snapshot (arrays missing or of the wrong shape)"
    # format 1 stored grey images without a channel axis
    pictures = [(a if a.ndim == 4 else a[:, None]).astype(np.float32) / 255 for a in (arrays[n] for n in SNAPSHOT_IMAGES)]
    return Snapshot(int(arrays["step"]), int(arrays["epoch"]), *pictures), None


def write_analysis(run: RunDir, arrays: dict[str, np.ndarray]) -> None:
    write_npz(run.analysis_path, arrays)


ANALYSIS_ARRAYS = (
    "epoch",
    "step",
    "labels",
    "latent_2d",
    "pixels_2d",
    "kl_per_dim",
    "traversal_dims",
    "traversals",
    "vae_nll",
    "vae_mse",
    "pca_nll",
    "pca_mse",
)


def of_codes(arrays: Mapping[str, np.ndarray]) -> bool:
    """A VQ-VAE's report (`per_dim_measure`): its per-dimension figures are code entropies, its walks swap codes."""
    return "per_dim_measure" in arrays


def read_analysis(run: RunDir) -> tuple[dict[str, np.ndarray] | None, str | None]:
    arrays, problem = read_npz(run.analysis_path)
    if arrays is not None and not set(ANALYSIS_ARRAYS) <= arrays.keys():
        return None, "not a latent report (arrays missing)"
    return arrays, problem


def library_versions() -> dict[str, str]:
    """From the installed packages' metadata: no need to import torch to name its version."""
    from vae_tui import __version__

    versions = {"vae_tui": __version__, "python": platform.python_version()}
    for package in ("torch", "torchvision", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions
