"""`vae-tui export`: a run's metrics as CSV files, or as TensorBoard event files."""

from __future__ import annotations

import csv
from pathlib import Path

from vae_tui.errors import VaeTuiError
from vae_tui.metrics import read_metrics
from vae_tui.rundir import RunDir

BATCH_FIELDS = ("epoch", "step", "recon", "kl", "loss", "time")
EPOCH_FIELDS = ("epoch", "step", "train_loss", "test_loss", "test_recon", "test_kl", "samples_per_s", "time")
FORMATS = ("csv", "tensorboard")


class ExportError(VaeTuiError):
    pass


def _records(run: RunDir):
    if not run.metrics_path.is_file():
        raise ExportError(f"{run.path} has no metrics.jsonl to export; is it a vae-tui run directory?")
    return read_metrics(run.metrics_path)


def export_csv(run: RunDir, out: Path) -> list[Path]:
    """batches.csv (one row per batch) and epochs.csv (one per epoch), in the metrics' own units."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "batches.csv", out / "epochs.csv"]
    with open(paths[0], "w", newline="", encoding="utf-8") as fb, open(paths[1], "w", newline="", encoding="utf-8") as fe:
        writers = {
            "batch": csv.DictWriter(fb, BATCH_FIELDS, extrasaction="ignore"),
            "epoch": csv.DictWriter(fe, EPOCH_FIELDS, extrasaction="ignore"),
        }
        for writer in writers.values():
            writer.writeheader()
        for record in _records(run):
            writer = writers.get(record.get("kind"))  # type: ignore[arg-type]
            if writer is not None:
                writer.writerow(record)
    return paths


def export_tensorboard(run: RunDir, out: Path) -> list[Path]:
    """Scalars batch/recon, batch/kl, batch/loss by step and epoch/* by epoch, for `tensorboard --logdir`."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ExportError("TensorBoard export needs the tensorboard package: pip install 'vae-tui[tensorboard]'") from None
    out.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(log_dir=str(out))
    try:
        for record in _records(run):
            kind = record.get("kind")
            if kind == "batch":
                for name in ("recon", "kl", "loss"):
                    writer.add_scalar(f"batch/{name}", record[name], record["step"], walltime=record.get("time"))
            elif kind == "epoch":
                for name in EPOCH_FIELDS[2:-1]:
                    if name in record:
                        writer.add_scalar(f"epoch/{name}", record[name], record["epoch"], walltime=record.get("time"))
    finally:
        writer.close()
    return sorted(out.glob("events.out.tfevents.*"))
