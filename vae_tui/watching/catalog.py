"""`vae-tui runs`: what each run under a folder is, from the files it left, without loading torch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from vae_tui.runfile.files import read_run_info, read_status
from vae_tui.runfile.findings import findings_of
from vae_tui.runfile.layout import RunDir
from vae_tui.runfile.metrics import read_metrics
from vae_tui.runfile.schema import RunState, devices_words, gpu_words, ranks_words, shown_state
from vae_tui.watching.follow import liveness_of


@dataclass
class RunSummary:
    path: Path
    dataset: str
    status: str  # shown_state's word, or "damaged"
    epochs_done: int
    epochs: int
    best_test_loss: float
    updated: float  # Unix seconds of the last sign of life
    problem: str | None = None  # what is wrong with a damaged run's files
    ranks: str = "1"  # processes that trained it, and under torchrun their samples/s
    gpu: str = ""  # a live run's GPU as NVML last read it ("GPU 87% busy, ..."), else empty
    diagnoses: str = ""  # what the run is telling you, by headline ("posterior collapse"), as it last said


def epochs_words(summary: RunSummary) -> str:
    """ "3/10" epochs done of all; "3" for a loop that never said how many it would run."""
    return f"{summary.epochs_done}/{summary.epochs}" if summary.epochs else str(summary.epochs_done)


def summarize(path: Path) -> RunSummary:
    run = RunDir(path)
    info, config_problem = read_run_info(run)
    settings = info.config if info is not None else {}
    dataset = str((info.dataset.get("name") if info is not None else None) or settings.get("dataset", "?"))
    epochs: int = settings["epochs"] if isinstance(settings.get("epochs"), int) else 0
    status, status_problem = read_status(run)
    updated = max((p.stat().st_mtime for p in (run.metrics_path, run.status_path) if p.exists()), default=0.0)
    problem = config_problem or (status_problem if status_problem != "missing" else None)
    if status is not None and status.dataset:
        done = status.epoch if status.state == RunState.FINISHED else max(status.epoch - 1, 0)
        state = shown_state(status.state, liveness_of(status))
        ranks = ranks_words(status, training=state == "training") if status.world_size > 1 else "1"
        if status.world_size > 1 and devices_words(status) != status.device:
            ranks += f" on {devices_words(status)}"
        gpu = gpu_words(status) if state in ("training", "paused", "evaluating") else ""
        findings = ", ".join(f.headline for f in findings_of(status))
        return RunSummary(
            path, dataset, state if problem is None else "damaged", done, status.epochs or epochs, status.best_test_loss, updated, problem, ranks, gpu, findings
        )
    # no status: a run from before status.json existed, one killed before its first word, or a damaged one
    records = read_metrics(run.metrics_path).epochs
    done = max((int(r["epoch"]) for r in records), default=0)  # short epochs are not each recorded
    best = min((float(r["test_loss"]) for r in records), default=math.inf)
    state = "damaged" if problem else "finished" if epochs and done >= epochs else "crashed"
    return RunSummary(path, dataset, state, done, epochs, best, updated, problem)
