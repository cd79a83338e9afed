"""The plain view: a Rich progress bar within the epoch and one line per epoch.

Like every view it pulls from Telemetry on its own clock; the trainer never waits for it.
"""

from __future__ import annotations

import threading
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from vae_tui.runfile.schema import Event, RunState, epoch_words
from vae_tui.telemetry import Telemetry

REFRESH_SECONDS = 0.25


def epoch_summary(record: dict, epochs: int) -> str:
    width = len(str(epochs))
    return (
        f"epoch {record['epoch']:>{width}}/{epochs}  train {record['train_loss']:9.3f}  "
        f"test {record['test_loss']:9.3f}  recon {record['test_recon']:9.3f}  KL {record['test_kl']:7.3f}  "
        f"{record['samples_per_s']:>9,.0f} samples/s"
    )


def follow(thread: threading.Thread, telemetry: Telemetry, console: Console, said: int = 0) -> None:
    """Show progress until the trainer thread ends; KeyboardInterrupt propagates to the caller.
    `said`: the events printed before the trainer started (its own first ones may come before this runs)."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[rate]} samples/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    seen_epochs, seen_events = 0, said
    with progress:
        task = progress.add_task("starting", total=None, loss="-", rate="-")
        while True:
            alive = thread.is_alive()
            status = telemetry.status()
            records = telemetry.epochs(seen_epochs)
            events = telemetry.events(seen_events)
            seen_epochs, seen_events = seen_epochs + len(records), seen_events + len(events)
            said_now = [(r["time"], epoch_summary(r, status.epochs)) for r in records] + [(e.time, line) for e in events if (line := event_line(e))]
            for _, line in sorted(said_now, key=lambda pair: pair[0]):  # as they happened
                progress.console.print(line)
            tail = telemetry.tail("loss", 1)
            progress.update(
                task,
                description=status.message
                if status.state == RunState.EVALUATING
                else epoch_words(status.epoch, status.epochs) + (" (paused)" if status.state == RunState.PAUSED else ""),
                total=status.batches_per_epoch or None,
                completed=status.batch_in_epoch,
                loss=f"{tail[0]:.2f}" if len(tail) else "-",
                rate=f"{status.samples_per_s:,.0f}",
            )
            if not alive:
                return
            thread.join(REFRESH_SECONDS)


EVENT_STYLES = {"warning": "[yellow]warning:[/] ", "change": "[cyan]changed:[/] ", "info": "[dim]note:[/] ", "diagnosis": "[bold yellow]diagnosis:[/] "}


def event_line(event: Event) -> str | None:
    """An event as the plain view says it (checkpoints and errors are said elsewhere)."""
    message = escape(event.message)  # a message is text: "Cov_x(E[z|x])" or a path with brackets is not markup
    if event.kind == "restart":
        return f"[yellow]{message}[/]"
    return EVENT_STYLES[event.kind] + message if event.kind in EVENT_STYLES else None


class DecodeProgress:
    """What getting the run ready is doing: a line for each stage (reading the checkpoint, importing
    torchvision...), a bar while pictures are decoded the first time (the cache makes later runs quick)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._bars: dict[str, tuple[Progress, Any]] = {}
        self._said: set[str] = set()

    def __call__(self, done: int, total: int, what: str) -> None:
        if total <= 0:  # a stage that is not counted: said once, as the monitor's first screen says it
            if what not in self._said and self.console.is_terminal:
                self._said.add(what)
                self.console.print(f"{what}...", style="dim")
            return
        if what not in self._bars:
            bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
                disable=not self.console.is_terminal,
            )
            bar.start()
            self._bars[what] = (bar, bar.add_task(what, total=total))
        bar, task = self._bars[what]
        bar.update(task, completed=done)
        if done >= total:
            bar.stop()
