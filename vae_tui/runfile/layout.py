"""Where each of a run's files lives. docs/run-format.md describes them for other programs.

config.json      the resolved configuration, dataset, model, device and library versions
metrics.jsonl    every batch and epoch, appended as training goes (metrics.py)
scalars.jsonl    named terms beyond recon and kl (lpips, d_loss, perplexity), per step or interval
status.json      the trainer's state and a heartbeat, replaced about every second
snapshot.npz     the latest reconstructions and prior samples (uint8 images)
analysis.npz     the latent view: projections, KL per dimension, traversals, PCA scores
eval.json        the final evaluation: negative ELBO and importance-weighted -log p(x)
events.jsonl     checkpoints saved, warnings and errors
control/         commands from watchers (control.py); present only while a trainer runs
train.log        the output of a background (`--detach`) or monitored trainer
hooks.txt        whether a script under `vae-tui run` took vae-tui's hooks, or why not
checkpoints/     last.pt and best.pt
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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
    def scalars_path(self) -> Path:
        return self.path / "scalars.jsonl"

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
    def hooks_path(self) -> Path:
        """One line from a script's start-up (vae_tui/hooked/boot): "armed", or "unwatched: WHY"."""
        return self.path / "hooks.txt"

    @property
    def skipped_path(self) -> Path:
        """The dataset's files that could not be read, one path a line (the warning names the first few)."""
        return self.path / "skipped.txt"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def lock_path(self) -> Path:
        return self.path / "trainer.lock"

    def is_run(self) -> bool:
        """A run directory is a folder with a config.json: the first file a trainer writes."""
        return self.config_path.is_file()

    def own_paths(self) -> list[Path]:
        """Every path vae-tui writes in a run directory: nothing else in it, or outside it, is ever touched."""
        files = (
            self.config_path,
            self.metrics_path,
            self.status_path,
            self.snapshot_path,
            self.analysis_path,
            self.eval_path,
            self.events_path,
            self.log_path,
            self.hooks_path,
            self.lock_path,
            self.last_checkpoint,
            self.best_checkpoint,
        )
        return [*files, self.control_dir, self.checkpoints]

    def refuse_links(self) -> None:
        """A link where one of our files or folders should be would make a write land outside the run
        (a control/ linked to another folder once had every file in it deleted): refuse, touching nothing."""
        folders = (self.control_dir, self.checkpoints)
        for path in self.own_paths():
            if path.is_symlink():
                raise RunDirError(f"{path} is a symbolic link; vae-tui writes only its own files in a run directory. Remove the link, or use another --run-dir")
            if path in folders and path.exists() and not path.is_dir():
                raise RunDirError(f"{path} should be a folder but is a file; remove it, or use another --run-dir")


RUN_DIR_ENV = "VAE_TUI_RUN_DIR"  # a run directory handed to a child process: for the hooks and for vae_tui.init
SCRIPT_ENV = "VAE_TUI_SCRIPT"  # the command `vae-tui run` started, as the monitor says it


def default_run_path(dataset: str, root: str | os.PathLike[str] = "runs") -> Path:
    """runs/<YYYYmmdd-HHMMSS>-<dataset>, with -2, -3... if two runs start in the same second."""
    base = Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{dataset}"
    path, n = base, 2
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path


def open_run_dir(path: str | os.PathLike[str], resuming: bool = False, claim: Callable[[RunDir], None] | None = None) -> RunDir:
    """Create (or, when resuming, reopen) a run directory and prove it is writable.

    `claim` (the trainer's lock, runfile/lock.py) runs once the folder exists and before anything
    in it is changed: a run that another process trains is refused, untouched.
    """
    run = RunDir(Path(path).expanduser())
    if run.path.exists() and not run.path.is_dir():
        raise RunDirError(f"--run-dir {run.path} is a file, not a folder; pick another path")
    _refuse_a_run(run, resuming)
    run.refuse_links()
    try:
        run.path.mkdir(parents=True, exist_ok=True)
        if claim is not None:
            claim(run)
            _refuse_a_run(run, resuming)  # again, now that no other trainer can be making it
        run.checkpoints.mkdir(exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=run.path)  # a fresh name: nothing planted is followed
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise RunDirError(f"cannot write to run directory {run.path} ({reason}); pick another --run-dir") from None
    return run


def _refuse_a_run(run: RunDir, resuming: bool) -> None:
    if not resuming and run.config_path.exists():
        raise RunDirError(f"{run.path} already holds a run; pick another --run-dir, or continue it with --resume {run.path}")


def find_runs(folder: Path) -> list[Path]:
    """Run directories directly under folder, oldest first."""
    if not folder.is_dir():
        return []
    runs = [p for p in folder.iterdir() if p.is_dir() and RunDir(p).is_run()]
    return sorted(runs, key=lambda p: (p / "config.json").stat().st_mtime)
