"""The run directory: everything one training run writes, and all a watcher needs to follow it.

    config.json      the resolved configuration, dataset, device and library versions
    metrics.jsonl    every batch and epoch (metrics.py)
    status.json      the trainer's state and a heartbeat, replaced about every second
    snapshot.npz     the latest reconstructions and prior samples
    analysis.npz     the latent view: projections, KL per dimension, traversals, PCA scores
    eval.json        the final evaluation: negative ELBO and importance-weighted -log p(x)
    events.jsonl     checkpoints saved, warnings and errors
    control/         commands from watchers (control.py); present only while a trainer runs
    train.log        the output of a background (`--detach`) or monitored trainer
    checkpoints/     last.pt and best.pt
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vae_tui.errors import VaeTuiError


class RunDirError(VaeTuiError):
    """The run directory cannot be created or written, or would overwrite another run."""


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    @property
    def snapshot_path(self) -> Path:
        return self.path / "snapshot.npz"

    @property
    def analysis_path(self) -> Path:
        return self.path / "analysis.npz"

    @property
    def eval_path(self) -> Path:
        return self.path / "eval.json"

    @property
    def events_path(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def control_dir(self) -> Path:
        return self.path / "control"

    @property
    def log_path(self) -> Path:
        return self.path / "train.log"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.pt"

    def write_config(self, info: dict[str, Any]) -> None:
        tmp = self.config_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.config_path)


def default_run_path(dataset: str, root: str | os.PathLike[str] = "runs") -> Path:
    """runs/<YYYYmmdd-HHMMSS>-<dataset>, with -2, -3... if two runs start in the same second."""
    base = Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{dataset}"
    path, n = base, 2
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path


def open_run_dir(path: str | os.PathLike[str], resuming: bool = False) -> RunDir:
    """Create (or, when resuming, reopen) a run directory and prove it is writable."""
    run = RunDir(Path(path).expanduser())
    if run.path.exists() and not run.path.is_dir():
        raise RunDirError(f"--run-dir {run.path} is a file, not a folder; pick another path")
    if not resuming and run.config_path.exists():
        raise RunDirError(
            f"{run.path} already holds a run; pick another --run-dir, or continue it with --resume {run.path}"
        )
    try:
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        probe = run.path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise RunDirError(f"cannot write to run directory {run.path} ({reason}); pick another --run-dir") from None
    return run


def library_versions() -> dict[str, str]:
    import numpy
    import torch
    import torchvision

    from vae_tui import __version__

    return {
        "vae_tui": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
    }
