"""`vae-tui runs`: what each run under a folder is, from the files it left, without loading torch."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from vae_tui.follow import liveness_of, read_status
from vae_tui.metrics import read_metrics
from vae_tui.rundir import RunDir


@dataclass
class RunSummary:
    path: Path
    dataset: str
    status: str  # running, paused, not answering, finished, stopped, crashed
    epochs_done: int
    epochs: int
    best_test_loss: float
    updated: float  # Unix seconds of the last sign of life


def summarize(path: Path) -> RunSummary:
    run = RunDir(path)
    try:
        config = json.loads(run.config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    dataset = str(config.get("dataset", {}).get("name") or config.get("config", {}).get("dataset", "?"))
    epochs = int(config.get("config", {}).get("epochs") or 0)
    status = read_status(run)
    updated = max((p.stat().st_mtime for p in (run.metrics_path, run.status_path) if p.exists()), default=0.0)
    if status is not None:
        done = status.epoch if status.state == "finished" else max(status.epoch - 1, 0)
        best = status.best_test_loss
        epochs = status.epochs or epochs
        state = _state(status.state, liveness_of(status))
    else:  # a run from before status.json existed, or one killed before its first word
        records = [r for r in read_metrics(run.metrics_path) if r.get("kind") == "epoch"] if run.metrics_path.exists() else []
        done = len(records)
        best = min((float(r["test_loss"]) for r in records), default=math.inf)
        state = "finished" if epochs and done >= epochs else "crashed"
    return RunSummary(path, dataset, state, done, epochs, best, updated)


def _state(recorded: str, liveness: str) -> str:
    if liveness == "gone" or recorded == "error":
        return "crashed"
    if liveness == "ended":
        return recorded  # finished or stopped
    if liveness == "not answering":
        return "not answering"
    return "paused" if recorded == "paused" else "running"


def find_runs(folder: Path) -> list[Path]:
    """Run directories (those with a config.json) directly under folder, oldest first."""
    if not folder.is_dir():
        return []
    runs = [p for p in folder.iterdir() if p.is_dir() and (p / "config.json").is_file()]
    return sorted(runs, key=lambda p: (p / "config.json").stat().st_mtime)


def ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def describe_updated(updated: float, now: float | None = None) -> str:
    if not updated:
        return "-"
    now = time.time() if now is None else now
    return f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(updated))} ({ago(now - updated)})"

