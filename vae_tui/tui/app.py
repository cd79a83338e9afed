"""VaeApp: the live monitor. It starts the trainer thread and pulls from its telemetry on timers.

The trainer never waits for the app (DESIGN principle 2): no per-batch messages, no
call_from_thread. Charts are pulled about four times a second, pictures about once a second,
the status line twice, and each widget skips its redraw when its data did not change.
"""

from __future__ import annotations

import threading

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer

from vae_tui.art import MODES
from vae_tui.trainer import Trainer
from vae_tui.tui.charts import ChartSettings
from vae_tui.tui.screens import ConfirmQuit, ExplainScreen, HelpScreen
from vae_tui.tui.widgets import EpochChart, ImagePane, LossChart, Panel, StatusBar

CHART_SECONDS = 0.25  # the fastest a chart may redraw; each also keeps within a CPU budget
SATURATED_BUDGET_SCALE = 0.35  # panels' CPU budgets when CPU training already uses every core
IMAGE_SECONDS = 1.0
STATUS_SECONDS = 0.5
NOTIFY_KINDS = {"checkpoint": "information", "warning": "warning", "error": "error"}


class VaeApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "vae-tui"
    ENABLE_COMMAND_PALETTE = False

    BINDINGS = [
        Binding("space", "pause", "Pause", id="pause"),
        Binding("space", "resume", "Resume", id="resume"),
        Binding("c", "checkpoint", "Checkpoint", id="checkpoint"),
        Binding("q", "quit_run", "Quit", id="quit"),
        Binding("l", "toggle_setting('log')", "Log", id="log-scale"),
        Binding("s", "toggle_setting('smooth')", "Smooth", id="smooth"),
        Binding("w", "toggle_setting('window')", "Window", id="window"),
        Binding("a", "art_mode", "Art", id="art-mode"),
        Binding("e", "explain", "Explain", id="explain"),
        Binding("question_mark", "help", "Help", id="help"),
    ]

    def __init__(self, trainer: Trainer, thread: threading.Thread | None = None) -> None:
        super().__init__()
        self.trainer = trainer
        self.telemetry = trainer.telemetry
        self.controls = trainer.controls
        self.thread = thread
        self.settings = ChartSettings()
        self.art_mode = MODES[0]
        self._events_seen = 0
        self._state = ""
        self._stop_timer = None

    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        with Horizontal(id="main"):
            with Vertical(id="charts"):
                yield LossChart("recon", "reconstruction, nats/image", self.settings, id="recon-chart")
                yield LossChart("kl", "KL divergence, nats/image", self.settings, id="kl-chart")
                yield EpochChart(self.settings, id="epoch-chart")
            with Vertical(id="pictures"):
                yield ImagePane("reconstructions", id="recon-images")
                yield ImagePane("samples", id="sample-images")
        yield Footer()

    def on_mount(self) -> None:
        self.charts = list(self.query(".chart").results(Panel))
        self.panes = list(self.query(ImagePane))
        self.status_bar = self.query_one(StatusBar)
        if self.trainer.device.saturates_cpu:
            for panel in self.charts + self.panes:
                panel.budget *= SATURATED_BUDGET_SCALE
        self.panes[0].border_title = "reconstructions: input | output"
        self.panes[1].border_title = "samples: decoder(z), fixed z ~ N(0, I)"
        if self.thread is None:
            self.thread = self.trainer.start()
        self.set_interval(CHART_SECONDS, self.tick_charts)
        self.set_interval(IMAGE_SECONDS, self.tick_images)
        self.set_interval(STATUS_SECONDS, self.tick_status)
        self.call_after_refresh(self.redraw_all)

    # -- pulling from telemetry --------------------------------------------------------------
    def tick_charts(self, force: bool = False) -> None:
        for chart in self.charts:
            chart.draw(self.telemetry, force=force)

    def tick_images(self, force: bool = False) -> None:
        for pane in self.panes:
            pane.draw(self.telemetry, force=force)

    def tick_status(self) -> None:
        status = self.telemetry.status()
        self.status_bar.show_status(status, stopping=self.controls.stopping)
        for event in self.telemetry.events(self._events_seen):
            self._events_seen += 1
            if event.kind in NOTIFY_KINDS:
                timeout = 30 if event.kind == "error" else 6
                self.notify(event.message, severity=NOTIFY_KINDS[event.kind], timeout=timeout)  # type: ignore[arg-type]
        if status.state != self._state:
            self._state = status.state
            self.refresh_bindings()
            if status.state == "finished" and not self.controls.stopping:
                self.notify("Training finished. The results stay here until you press q.", timeout=10)
        if self.controls.stopping and self._stop_timer is None:
            self._stop_timer = self.set_interval(0.1, self._exit_when_stopped)

    def redraw_all(self) -> None:
        self.tick_charts(force=True)
        self.tick_images(force=True)
        self.tick_status()

    def on_resize(self) -> None:
        self.call_after_refresh(self.redraw_all)

    # -- keys --------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        state = self.telemetry.status().state
        running = self.thread is not None and self.thread.is_alive() and not self.controls.stopping
        if action == "pause":
            return running and state != "paused"
        if action == "resume":
            return running and state == "paused"
        if action == "checkpoint":
            return True if running else None
        return True

    def action_pause(self) -> None:
        self.controls.pause()
        self.refresh_bindings()

    def action_resume(self) -> None:
        self.controls.resume()
        self.refresh_bindings()

    def action_checkpoint(self) -> None:
        self.controls.request_checkpoint()
        self.notify("Saving a checkpoint...", timeout=2)

    def action_toggle_setting(self, name: str) -> None:
        setattr(self.settings, name, not getattr(self.settings, name))
        labels = {"log": ("log scale", "linear scale"), "smooth": ("smoothing on", "smoothing off"),
                  "window": ("recent window", "whole run")}
        on, off = labels[name]
        self.notify(on if getattr(self.settings, name) else off, timeout=1.5)
        self.tick_charts(force=True)

    def action_art_mode(self) -> None:
        self.art_mode = MODES[(MODES.index(self.art_mode) + 1) % len(MODES)]
        for pane in self.panes:
            pane.mode = self.art_mode
        self.notify(f"art: {'half blocks' if self.art_mode == 'blocks' else 'character ramp'}", timeout=1.5)
        self.tick_images(force=True)

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_explain(self) -> None:
        self.push_screen(ExplainScreen())

    async def action_quit(self) -> None:  # ctrl+q and friends go through the same door
        self.action_quit_run()

    def action_quit_run(self) -> None:
        if self.controls.stopping:
            return
        if self.thread is not None and self.thread.is_alive() and self.telemetry.status().state in ("training", "paused", "starting"):
            self.push_screen(ConfirmQuit(), self._confirmed)
        else:
            self.exit()

    def _confirmed(self, quit_now: bool | None) -> None:
        if quit_now:
            self.stop_training()

    def stop_training(self) -> None:
        """Ask the trainer to checkpoint and stop; exit once its thread has ended."""
        self.controls.stop(save=True)
        self.notify("Saving a checkpoint and stopping...", timeout=10)
        self.tick_status()

    def _exit_when_stopped(self) -> None:
        if self.thread is None or not self.thread.is_alive():
            self.exit()
