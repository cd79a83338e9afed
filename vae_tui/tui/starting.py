"""The first screen of `vae-tui train`: what the trainer is doing before there is a run to show.

The trainer's process checks the options, imports torch, reads (downloads, decodes) the data and
makes the run directory before anything trains: seconds, or minutes for a first download. This
screen is up at once and says what it is doing, how many and how far, from the reports the worker
sends; when the run is checked it closes and the monitor opens on the run directory. A refusal
ends it, and the caller says the refusal in one line.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import ProgressBar, Static

from vae_tui.timefmt import duration

CANCELLED = {"cancelled": True}  # the app's result when a person pressed q or Ctrl+C


class StartingApp(App[dict[str, Any]]):
    CSS_PATH = "app.tcss"
    DEFAULT_CSS = "Screen { align: center middle; }"
    TITLE = "vae-tui"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [Binding("q,ctrl+c", "cancel", "Cancel", priority=True)]

    def __init__(self, reports: Callable[[], dict[str, Any] | None]) -> None:
        """`reports`: the worker's next report, blocking (None once it is gone)."""
        super().__init__()
        self.reports = reports
        self._started = time.monotonic()
        self._what = "starting the trainer (checking the options)"

    def compose(self) -> ComposeResult:
        with Vertical(id="starting-box", classes="dialog"):
            yield Static("vae-tui · getting the run ready", id="starting-title", classes="dialog-title")
            yield Static(self._what, id="starting-what")
            yield ProgressBar(total=None, show_eta=False, id="starting-bar")
            yield Static("", id="starting-time")

    def on_mount(self) -> None:
        self.set_interval(0.5, self._tick)
        threading.Thread(target=self._listen, name="vae-starting", daemon=True).start()

    def _listen(self) -> None:
        """The worker's reports, as they come (a blocking pipe: on a thread of its own)."""
        while True:
            message = self.reports()
            if message is not None and "progress" in message:
                self.call_from_thread(self.show_progress, *message["progress"])
                continue
            self.call_from_thread(self.exit, message or {})  # checked, refused, or gone: the caller says which
            return

    def show_progress(self, done: int, total: int, what: str) -> None:
        """`total` 0: a stage that is not counted (importing torch, a download)."""
        self._what = what
        self.query_one("#starting-what", Static).update(what + (f": {done:,} of {total:,}" if total > 0 else "..."))
        self.query_one("#starting-bar", ProgressBar).update(total=total if total > 0 else None, progress=done)

    def _tick(self) -> None:
        self.query_one("#starting-time", Static).update(f"{duration(time.monotonic() - self._started)} · q or Ctrl+C: cancel (nothing has started yet)")

    def action_cancel(self) -> None:
        self.exit(CANCELLED)
