"""metrics.jsonl: the run's append-only record, readable while it is written and after a crash.

Batch records: {"kind": "batch", "epoch", "step", "recon", "kl", "loss", "time"}
Epoch records: {"kind": "epoch", "epoch", "step", "train_loss", "test_loss", "test_recon",
                "test_kl", "samples_per_s", "time"}
Losses are per-image means in nats, `time` is Unix seconds, epochs count from 1. Other tools
(`vae-tui watch`, exports) read this file, so these field names are a public format.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def _num(value: float) -> str:
    """A float as JSON the way json.dumps writes it, NaN and infinities included."""
    if math.isfinite(value):
        return f"{value:.7g}"  # float32 precision: nothing is lost
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def batch_lines(
    epoch: int, steps: np.ndarray, recon: np.ndarray, kl: np.ndarray, loss: np.ndarray, times: np.ndarray
) -> str:
    """Batch records for a chunk of steps, formatted directly (json.dumps per line is slower)."""
    return "".join(
        f'{{"kind": "batch", "epoch": {epoch}, "step": {int(s)}, "recon": {_num(float(r))}, '
        f'"kl": {_num(float(k))}, "loss": {_num(float(l))}, "time": {t:.3f}}}\n'
        for s, r, k, l, t in zip(steps, recon, kl, loss, times)
    )


class MetricsWriter:
    """Appends lines and flushes each chunk, so another process can follow the file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, text: str) -> None:
        self._file.write(text)
        self._file.flush()

    def write_record(self, record: dict[str, Any]) -> None:
        self.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self._file.close()


def read_metrics(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield the records; a torn or garbled line (a crash mid-write) is skipped, not fatal."""
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.endswith("\n"):
                return  # a torn last line: the writer died mid-record
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record


def truncate_metrics(path: str | os.PathLike[str], step: int, epoch: int) -> None:
    """Drop records written after a checkpoint, so a resumed run repeats no step and skips none.

    Batch records beyond `step` and epoch records beyond `epoch` (completed epochs) go; the
    file is rewritten through a temporary file and os.replace, so a crash here loses nothing.
    """
    path = Path(path)
    if not path.exists():
        return
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        for record in read_metrics(path):
            kind = record.get("kind")
            if kind == "batch" and record.get("step", 0) > step:
                continue
            if kind == "epoch" and record.get("epoch", 0) > epoch:
                continue
            out.write(json.dumps(record) + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
