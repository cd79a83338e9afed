"""Hooks that record progress: metrics.jsonl, and the status and series that views read."""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import numpy as np
import torch

from vae_tui.models import describe_model, parameter_count
from vae_tui.pacing import Credit
from vae_tui.runfile.files import truncate_scalars, write_scalars
from vae_tui.runfile.io import os_reason
from vae_tui.runfile.layout import RunDir
from vae_tui.runfile.metrics import MetricsWriter, batch_lines, epoch_line, gather, interval_lines, truncate_metrics
from vae_tui.runfile.schema import SPAN_FIELDS, RunState, change_words
from vae_tui.training.hooks import Hook

if TYPE_CHECKING:
    from vae_tui.training.loop import Trainer, TrainResult
    from vae_tui.training.losses import LossChunk

Points = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]  # records' last step indices, term means, spans


RECORDS_PER_S = 10  # records a second, in steady state: a run's files grow with time, not with steps
RECORDS_BURST = 50  # a short run, or the start of one, has a record for every step
EPOCHS_PER_S = 4  # epochs a second evaluated and recorded when epochs are shorter than this (digits on a GPU)
EPOCHS_BURST = 50  # the first epochs always


class RecordBudget:
    """How many records a chunk of steps may take: every step its own while steps are slow; above
    RECORDS_PER_S, intervals of consecutive steps (means, min and max), so that a run at 20,000 steps a
    second writes about 3 KB/s of metrics and a watcher replays ten hours of it in seconds."""

    def __init__(self) -> None:
        self.credit = Credit(RECORDS_PER_S, RECORDS_BURST)

    def points(self, chunk: "LossChunk") -> Points:
        """The chunk as records: (index of each record's last step, means of recon, kl, loss and the other
        terms, spans or None)."""
        self.credit.earn(chunk.seconds)
        columns = [chunk.recon, chunk.kl, chunk.loss, *chunk.extra.values()]
        most, terms = max(1, int(self.credit.value)), np.column_stack(columns).astype(np.float64)
        if len(chunk.steps) <= most:
            self.credit.spend(len(chunk.steps))
            return np.arange(len(chunk.steps)), terms, None
        last, means, spans = gather(chunk.steps, terms, most)
        self.credit.spend(len(last))
        return last, means, spans

    def lines(self, epoch: int, chunk: "LossChunk") -> str:
        """The chunk's metrics.jsonl lines: a batch record a step, or interval records."""
        return self.records(epoch, chunk).text

    def records(self, epoch: int, chunk: "LossChunk") -> "Records":
        """The chunk's metrics.jsonl lines, and the steps each record stands for, with the other terms'
        means over them (scalars.jsonl records the same steps)."""
        last, terms, spans = self.points(chunk)
        lr = chunk.lr if chunk.lr is not None else np.full(len(chunk.steps), np.nan)
        beta = chunk.beta if chunk.beta is not None else np.full(len(chunk.steps), np.nan)
        extra = {name: terms[:, 3 + i] for i, name in enumerate(chunk.extra)}
        if spans is None:
            text = batch_lines(epoch, chunk.steps, chunk.recon, chunk.kl, chunk.loss, chunk.times, lr, beta)
            return Records(text, chunk.steps, chunk.steps, extra)
        text = interval_lines(epoch, chunk.steps[last], terms[:, :3], chunk.times[last], lr[last], beta[last], spans[:, : len(SPAN_FIELDS)])
        return Records(text, chunk.steps[last], spans[:, 0].astype(np.int64), extra)


class Records(NamedTuple):
    """A chunk as records: metrics.jsonl's lines, each record's last and first step, and the other terms'
    means over each record's steps."""

    text: str
    ends: np.ndarray
    firsts: np.ndarray
    extra: dict[str, np.ndarray]

    def term_records(self) -> list[dict[str, Any]]:
        """scalars.jsonl's records of the other terms, over the same steps as the loss records."""
        out = []
        for i, (first, end) in enumerate(zip(self.firsts.tolist(), self.ends.tolist())):
            record: dict[str, Any] = {"step": int(end), **({"first": int(first)} if first != end else {})}
            record.update({name: _finite_or_none(float(values[i])) for name, values in self.extra.items()})
            out.append(record)
        return out


def _finite_or_none(value: float) -> float | None:
    return value if np.isfinite(value) else None


class MetricsHook(Hook):
    """Every batch (or, when steps are fast, every interval of them) and epoch into metrics.jsonl,
    flushed chunk by chunk so watchers can follow.

    On (re)start the file is cut back to the state's step, so a resumed or rolled-back run
    repeats no step and skips none. A write that fails (full disk) is a warning, once.
    """

    def __init__(self, run: RunDir) -> None:
        self.run, self.path = run, run.metrics_path
        self._writer: MetricsWriter | None = None
        self.budget = RecordBudget()

    def on_start(self, trainer: "Trainer") -> None:
        self._close()
        truncate_metrics(self.path, trainer.state.step, trainer.state.epoch)
        truncate_scalars(self.run, trainer.state.step)
        self._writer = MetricsWriter(self.path)

    def on_losses(self, trainer: "Trainer", chunk: "LossChunk") -> None:
        records = self.budget.records(trainer.state.epoch + 1, chunk)
        self._write(trainer, records.text)
        if records.extra:  # the other terms (--tc-beta's tc), over the same steps
            try:
                write_scalars(self.run, records.term_records())
            except OSError as exc:
                trainer.telemetry.trouble("writing scalars.jsonl", f"could not write {self.run.scalars_path}: {os_reason(exc, self.run.scalars_path)}")

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        self._write(trainer, epoch_line(record))

    def on_finish(self, trainer: "Trainer", result: "TrainResult") -> None:
        self._close()

    def _write(self, trainer: "Trainer", text: str) -> None:
        try:
            assert self._writer is not None
            self._writer.write(text)
        except OSError as exc:  # said once, then counted: not twenty times a second
            trainer.telemetry.trouble("writing metrics.jsonl", f"could not write {self.path}: {os_reason(exc, self.path)}; training goes on")
        else:
            trainer.telemetry.cleared("writing metrics.jsonl")

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class EpochPace:
    """Which epochs' ends are evaluated and recorded: every one while epochs last a quarter of a second
    or more, and the last; shorter ones (12 steps of digits end a hundred times a second) about
    EPOCHS_PER_S a second, so that neither the held-out evaluation nor the epoch records grow with speed."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.credit = Credit(EPOCHS_PER_S, EPOCHS_BURST)
        self.clock = clock
        self._at = clock()

    def due(self, last: bool = False) -> bool:
        now = self.clock()
        self.credit.earn(now - self._at)
        self._at = now
        if not (last or self.credit.value >= 1):
            return False
        self.credit.spend(1)
        return True


RATE_SECONDS = 5.0  # samples/s is measured over this much training time: steady, and still recent
CHANGES_SHOWN = 200  # live changes of lr and beta in status.json (the charts mark these): the latest
RANKS_SECONDS = 3.0  # under torchrun, each rank's samples/s reaches the status this often


class Throughput:
    """Samples per second over the last few seconds of training (pauses not counted)."""

    def __init__(self) -> None:
        self._chunks: deque[tuple[int, float]] = deque()  # (samples, seconds)
        self._seconds = 0.0

    def add(self, samples: int, seconds: float) -> float:
        self._chunks.append((samples, seconds))
        self._seconds += seconds
        while len(self._chunks) > 1 and self._seconds - self._chunks[0][1] >= RATE_SECONDS:
            self._seconds -= self._chunks.popleft()[1]
        return sum(n for n, _ in self._chunks) / self._seconds if self._seconds > 0 else 0.0


def _ranks(trainer: "Trainer") -> list[dict[str, Any]]:
    """Each rank's device and samples/s, as the ranks' last meeting had them (empty for a run alone)."""
    if trainer.agreement is None:
        return []
    return [{"device": device, "samples_per_s": round(rate, 1)} for device, rate in zip(trainer.rank_devices, trainer.agreement.rates)]


class TelemetryHook(Hook):
    """The run's status, loss series and events, for the views in this process and the publisher."""

    def __init__(self) -> None:
        self.throughput = Throughput()
        self._ranks_shown = 0.0
        self.budget = RecordBudget()

    def on_start(self, trainer: "Trainer") -> None:
        state, config, tele = trainer.state, trainer.config, trainer.telemetry
        tele.reset()
        tele.update_status(
            state=RunState.PAUSED if trainer.controls.paused else RunState.TRAINING,
            message="",
            dataset=trainer.data.name,
            device=trainer.device.words,
            data_placement=trainer.placement,
            step_mode=trainer.plan.mode,
            step_why=trainer.plan.why,
            model=describe_model(config, trainer.data.shape),
            parameters=parameter_count(state.model),
            epoch=min(state.epoch + 1, trainer.epochs),
            epochs=trainer.epochs,
            step=state.step,
            batch_in_epoch=state.batch_in_epoch,
            batches_per_epoch=trainer.batches,
            beta=trainer.beta(),
            run_dir=str(trainer.run_dir.path) if trainer.run_dir else "",
            best_test_loss=state.best_test_loss,
            last_checkpoint=str(trainer.checkpointer.existing("last") or ""),
            world_size=trainer.world.size,
            global_batch=trainer.global_batch,
            ranks=_ranks(trainer),
            lr=state.lr,
            changes=state.changes[-CHANGES_SHOWN:],
        )

    def on_losses(self, trainer: "Trainer", chunk: "LossChunk") -> None:
        state, tele = trainer.state, trainer.telemetry
        last, terms, _ = self.budget.points(chunk)  # the series in memory grow with time too, as the file does
        tele.add_batches(chunk.steps[last], *terms[:, :3].T)
        if chunk.extra:
            tele.add_terms(chunk.steps[last], {name: terms[:, 3 + i] for i, name in enumerate(chunk.extra)})
        rate = self.throughput.add(int(chunk.sizes.sum()), chunk.seconds)
        changes: dict[str, Any] = {
            "step": state.step,
            "epoch": state.epoch + 1,
            "batch_in_epoch": state.batch_in_epoch,
            "beta": trainer.beta(),
            "samples_per_s": rate,
        }
        device = trainer.device.torch_device
        if device.type == "cuda":
            changes["device_memory"] = torch.cuda.memory_allocated(device)
        now = time.monotonic()
        if trainer.world.distributed and now - self._ranks_shown >= RANKS_SECONDS:
            changes["ranks"], self._ranks_shown = _ranks(trainer), now
        gpus = trainer.agreement.gpus if trainer.agreement is not None else [trainer.gpu_meter.read()]
        changes["gpus"] = list(gpus) if any(g is not None for g in gpus) else []  # rank order; none without NVML
        tele.update_status(**changes)

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        state = trainer.state
        trainer.telemetry.add_epoch(record)
        trainer.telemetry.update_status(best_test_loss=state.best_test_loss, epoch=min(state.epoch + 1, trainer.epochs), batch_in_epoch=state.batch_in_epoch)

    def on_change(self, trainer: "Trainer", change: dict[str, float]) -> None:
        state, tele = trainer.state, trainer.telemetry
        words = change_words(change)
        tele.event("change", f"{words} from step {int(change['step']) + 1:,}")
        tele.update_status(lr=state.lr, beta=trainer.beta(), changes=state.changes[-CHANGES_SHOWN:])

    def on_checkpoint(self, trainer: "Trainer", path: Path, why: str, routine: bool) -> None:
        trainer.telemetry.event("autosave" if routine else "checkpoint", f"{why}: saved {path}")
        if path.name == "last.pt":
            trainer.telemetry.update_status(last_checkpoint=str(path))

    def on_finish(self, trainer: "Trainer", result: "TrainResult") -> None:
        changes: dict[str, Any] = {"state": result.state, "message": result.message}
        if trainer.built:
            state = trainer.state
            changes.update(step=state.step, epoch=min(state.epoch + 1, trainer.epochs), batch_in_epoch=state.batch_in_epoch)
        trainer.telemetry.update_status(**changes)
        if result.state == RunState.ERROR:
            trainer.telemetry.event("error", result.message)
