"""`vae-tui export`: a run's metrics as CSV files, or as TensorBoard event files."""

from __future__ import annotations

import csv
from pathlib import Path

from vae_tui.errors import VaeTuiError
from vae_tui.runfile.files import read_scalars
from vae_tui.runfile.layout import RunDir
from vae_tui.runfile.metrics import Metrics, read_metrics
from vae_tui.runfile.schema import BATCH_FIELDS, EPOCH_FIELDS, SPAN_FIELDS

FORMATS = ("csv", "tensorboard")


class ExportError(VaeTuiError):
    pass


def _metrics(run: RunDir) -> Metrics:
    if not run.metrics_path.is_file():
        raise ExportError(f"{run.path} has no metrics.jsonl to export; is it a vae-tui run directory?")
    return read_metrics(run.metrics_path)


def _batch_rows(metrics: Metrics) -> list[dict[str, float | int]]:
    """A row per record; for a run with intervals of steps, each row also says its first step and the min
    and max of each term over it (a single step's own values for a step recorded alone)."""
    spans = metrics.span_table().tolist() if metrics.spans is not None else [[]] * len(metrics.batches)
    return [
        {
            **{name: (int(v) if name in ("epoch", "step") else float(v)) for name, v in zip(BATCH_FIELDS, row)},
            **{name: (int(v) if name == "first" else float(v)) for name, v in zip(SPAN_FIELDS, span)},
        }
        for row, span in zip(metrics.batches.tolist(), spans)
    ]


def export_csv(run: RunDir, out: Path) -> list[Path]:
    """batches.csv (one row per batch, or per interval of steps: `first` to `step`) and epochs.csv (one per
    epoch), in the metrics' own units."""
    metrics = _metrics(run)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "batches.csv", out / "epochs.csv"]
    fields = BATCH_FIELDS + (SPAN_FIELDS if metrics.spans is not None else ())
    tables = [(paths[0], fields, _batch_rows(metrics)), (paths[1], EPOCH_FIELDS, metrics.epochs)]
    scalars = read_scalars(run)
    if scalars:  # other values your own loop logged
        paths.append(out / "scalars.csv")
        tables.append((paths[2], tuple(dict.fromkeys(k for r in scalars for k in r)), scalars))
    for path, fields, rows in tables:
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    return paths


def export_tensorboard(run: RunDir, out: Path) -> list[Path]:
    """Scalars batch/recon, batch/kl, batch/loss by step and epoch/* by epoch, for `tensorboard --logdir`."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ExportError("TensorBoard export needs the tensorboard package: pip install 'vae-tui[tensorboard]'") from None
    metrics = _metrics(run)
    out.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(log_dir=str(out))
    try:
        for row in _batch_rows(metrics):
            for name in ("recon", "kl", "loss"):
                writer.add_scalar(f"batch/{name}", row[name], row["step"], walltime=row["time"])
        for record in read_scalars(run):
            for name, value in record.items():
                if name != "step" and isinstance(value, (int, float)):
                    writer.add_scalar(f"scalars/{name}", value, record["step"])
        for record in metrics.epochs:
            for name in EPOCH_FIELDS[2:-1]:
                writer.add_scalar(f"epoch/{name}", record[name], record["epoch"], walltime=record["time"])
    finally:
        writer.close()
    return sorted(out.glob("events.out.tfevents.*"))
