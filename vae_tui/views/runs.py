"""`vae-tui runs`: the runs under a folder as a table a person reads."""

from __future__ import annotations

from rich.table import Table

from vae_tui.runfile.schema import STATE_COLOUR
from vae_tui.timefmt import moment
from vae_tui.watching.catalog import RunSummary, epochs_words


def runs_table(summaries: list[RunSummary]) -> Table:
    """One row a run: dataset, state (in its colour), epochs, best test loss, last update, ranks, and the
    GPU column only when a live run trains on a GPU NVML reads, the diagnosis column only when a run has one."""
    gpus, told = any(s.gpu for s in summaries), any(s.diagnoses for s in summaries)
    table = Table(box=None, pad_edge=False)
    for column in (
        "run",
        "dataset",
        "status",
        "epochs",
        "best test loss",
        "last update",
        "ranks",
        *(("gpu",) if gpus else ()),
        *(("diagnosis",) if told else ()),
    ):
        table.add_column(column, justify="right" if column in ("epochs", "best test loss") else "left", no_wrap=True)
    for s in summaries:
        best = f"{s.best_test_loss:.3f}" if s.best_test_loss < float("inf") else "-"
        table.add_row(
            s.path.name,
            s.dataset,
            f"[{STATE_COLOUR.get(s.status, '')}]{s.status}[/]",
            epochs_words(s),
            best,
            moment(s.updated),
            s.ranks,
            *((s.gpu,) if gpus else ()),
            *((f"[yellow]{s.diagnoses}[/]",) if told else ()),
        )
    return table
