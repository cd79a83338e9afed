"""VaeApp: the monitor. It shows a run directory that a trainer process writes, pulled on timers.

`vae-tui train` starts the trainer in a worker process and opens this app on its run directory
(the app owns that run: quitting stops it); `vae-tui watch` opens it on any run (a guest:
quitting leaves training alone). Either way the trainer never waits for the app (a message per
batch from a trainer to a UI cost it a quarter of its speed, measured), and the app's Python work
never holds the trainer's interpreter lock. The app reads the run directory only, through the
follower: it never imports torch or the trainer. Charts are
pulled about four times a second, pictures about once a second, the status line twice, and each
widget skips its redraw when its data did not change.
"""

from __future__ import annotations

import os
import time
from functools import lru_cache
from typing import Any, Callable, Iterator, Sequence

from rich.color import Color as RichColor
from rich.color import ColorType
from rich.segment import Segment
from rich.style import Style
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.color import Color
from textual.containers import Horizontal, Vertical
from textual.driver import Driver
from textual.filter import ANSIToTruecolor, LineFilter
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import ContentSwitcher

from vae_tui.runfile.control import set_command
from vae_tui.runfile.findings import findings_of
from vae_tui.runfile.schema import Event, Liveness, RunState, Status, change_words, going_on_words
from vae_tui.tui.charts import ChartSettings
from vae_tui.tui.graphics import GraphicsPane, PictureMode
from vae_tui.tui.messages import RunEvent, RunStateChanged
from vae_tui.tui.screens import ConfirmQuit, ConfirmStop, ExplainScreen, HelpScreen, RunPicker, SteerScreen
from vae_tui.tui.widgets import (
    MIN_CHART,
    ActiveUnitsChart,
    Budget,
    DiagnosisLine,
    DiffView,
    EpochChart,
    FittingFooter,
    ImagePane,
    LatentSummary,
    LossChart,
    OutputPane,
    Panel,
    ScatterPanel,
    StatusBar,
    TermChart,
    TraversalPane,
    loss_words,
    samples_title,
)
from vae_tui.tui.wire import CHART_SHARE, CHART_WAIT_S, DEFAULT_WIRE_KB, PICTURE_SHARE, PICTURE_WAIT_S, Pace, WireBudget, counted
from vae_tui.views.art import MODES
from vae_tui.watching.compare import Comparison
from vae_tui.watching.follow import STOP_GRACE_S, RunWatch

CHART_ROWS = MIN_CHART[1] + 1  # the rows a chart is drawn in (rather than said in words), with its line of where it came from
SATURATED_BUDGET_SCALE = 0.3  # panels' CPU budgets while CPU training keeps every core of this machine busy
CHART_SECONDS = 0.25  # the fastest the charts may redraw; together they keep within FRAME_BUDGET of a core
FRAME_BUDGET = 0.03
IMAGE_SECONDS = 1.0
STATUS_SECONDS = 0.5
RESIZE_SETTLE_SECONDS = 0.15
NOTIFY_KINDS = {"checkpoint": "information", "warning": "warning", "error": "error", "restart": "warning", "diagnosis": "warning"}
LIVENESS_NOTES = {
    Liveness.GONE: "The trainer's process is gone (killed or crashed). Its last checkpoint is intact: {going_on}.",
    Liveness.NOT_ANSWERING: "The trainer has not written its status for a while: it may be stuck or its disk full.",
}


class KeepGreys(LineFilter):
    """Textual's filter that turns every colour without an RGB triple into one (`truecolor`), except
    for the pictures' greys: kept as the 256-colour greys they are ("38;5;244" is half the bytes of
    "38;2;128;128;128" on the wire)."""

    def __init__(self, truecolor: ANSIToTruecolor) -> None:
        super().__init__(enabled=truecolor.enabled)
        self.truecolor = truecolor

    @lru_cache(1024)
    def style(self, style: Style, background: RichColor) -> Style:
        if _grey_code(style.color) and _grey_code(style.bgcolor) and not style.dim:
            return style
        return self.truecolor.truecolor_style(style, background)

    def apply(self, segments: list[Segment], background: Color) -> list[Segment]:
        back = background.rich_color
        return [Segment(text, None if style is None else self.style(style, back), None) for text, style, _ in segments]


def _grey_code(color: RichColor | None) -> bool:
    return color is not None and color.type == ColorType.EIGHT_BIT and color.number is not None and (color.number in (16, 231) or color.number >= 232)


class VaeApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "vae-tui"
    ENABLE_COMMAND_PALETTE = False

    # In the order of need: a narrow footer keeps the first and drops the last (? lists them all).
    BINDINGS = [
        Binding("space", "pause", "Pause", id="pause"),
        Binding("space", "resume", "Resume", id="resume"),
        Binding("q", "quit_run", "Quit", id="quit"),
        Binding("c", "checkpoint", "Checkpoint", id="checkpoint"),
        Binding("left_square_bracket", "scale_lr(0.5)", "lr/2", show=False, id="halve-lr"),
        Binding("right_square_bracket", "scale_lr(2)", "lr*2", show=False, id="double-lr"),
        Binding("k", "steer", "lr/beta", id="steer"),
        Binding("p", "pick_runs", "Compare", id="compare"),
        Binding("n", "next_term", "Terms", id="next-term"),
        Binding("o", "toggle_setting('by_epoch')", "Align", show=False, id="align"),
        Binding("t", "toggle_view", "Latent", id="latent-view"),
        Binding("question_mark", "help", "Help", id="help"),
        Binding("e", "explain", "Explain", id="explain"),
        Binding("x", "stop_run", "Stop", id="stop"),
        Binding("d", "detach", "Detach", id="detach"),
        Binding("l", "toggle_setting('log')", "Log", id="log-scale"),
        Binding("s", "toggle_setting('smooth')", "Smooth", id="smooth"),
        Binding("w", "toggle_setting('window')", "Window", id="window"),
        Binding("a", "art_mode", "Art", id="art-mode"),
        Binding("ctrl+c", "interrupt", "Interrupt", show=False, priority=True, id="interrupt"),
    ]

    def __init__(
        self,
        source: RunWatch,
        pictures: PictureMode = PictureMode("blocks"),
        wire_kb: float = DEFAULT_WIRE_KB,
        clock: Callable[[], float] = time.monotonic,
        driver: type[Driver] | None = None,
    ) -> None:
        """`clock`: what every pace and budget of the monitor measures time by; `driver`: the terminal
        driver to count the bytes of (Textual's own for this platform when None)."""
        self.clock = clock
        self.wire = WireBudget(wire_kb, clock)  # every byte to the terminal, counted by the driver: made before it
        self._driver_base = driver
        super().__init__()
        self.chart_pace = Pace(self.wire, CHART_SHARE, CHART_WAIT_S)
        self.picture_pace = Pace(self.wire, PICTURE_SHARE, PICTURE_WAIT_S)
        self._greys: KeepGreys | None = None
        self.pictures = pictures  # real pixels (a graphics protocol), half blocks or the ramp
        self.source = source
        self.telemetry = source.telemetry
        if source.comparison is None:  # other runs over this one's charts: none until --compare or the picker
            source.comparison = Comparison()
        self.comparison = source.comparison
        self.settings = ChartSettings(monochrome=bool(os.environ.get("NO_COLOR")))
        self.art_mode = "ramp" if pictures.mode == "ramp" else MODES[0]
        self._events_seen = 0
        self._state = ""
        self._stop_timer: Timer | None = None
        self._stop_asked = 0.0
        self._liveness: Liveness | None = None
        self._budgets_scaled = False
        self.frame_budget = Budget(FRAME_BUDGET, clock)
        self._redraw_after_resize: Timer | None = None
        self._exit_code = 0  # 130 after Ctrl+C, as the shell's interrupt would give

    def get_driver_class(self) -> type[Driver]:
        """Textual's driver for this terminal, counting what it writes: the wire's budget is in bytes that left."""
        return counted(self._driver_base or super().get_driver_class(), self.wire)

    def get_line_filters(self) -> Sequence[LineFilter]:
        """Textual's filters, with its truecolor one keeping the pictures' greys (a theme change makes a new one)."""
        filters = list(super().get_line_filters())
        for i, f in enumerate(filters):
            if type(f) is ANSIToTruecolor:
                if self._greys is None or self._greys.truecolor is not f:
                    self._greys = KeepGreys(f)
                filters[i] = self._greys
        return filters

    def compose(self) -> ComposeResult:
        yield StatusBar(id="status", clock=self.clock)
        with ContentSwitcher(initial="main", id="views"):
            with Vertical(id="main"):
                with Horizontal(id="panes"):
                    with Vertical(id="charts"):
                        yield LossChart("recon", "reconstruction, nats/image", self.settings, id="recon-chart")
                        yield LossChart("kl", "KL divergence, nats/image", self.settings, id="kl-chart")
                        yield TermChart(self.settings, id="term-chart")
                        yield EpochChart(self.settings, id="epoch-chart")
                    with Vertical(id="pictures"):
                        yield from self._picture_panes(("reconstructions", "recon-images"), ("samples", "sample-images"))
                yield DiagnosisLine(id="diagnosis")
                yield OutputPane(self.source.output, id="output")
            with Vertical(id="latent"):
                yield LatentSummary(id="latent-summary")
                with Horizontal(id="latent-plots"):
                    with Vertical(classes="latent-column"):
                        yield ScatterPanel("latent_2d", "latent means", id="latent-scatter")
                        yield ScatterPanel("pixels_2d", "raw pixels, PCA to 2-D", id="pixel-scatter")
                    with Vertical(classes="latent-column"):
                        yield ActiveUnitsChart(id="active-units")
                        yield from self._picture_panes(("traversals", "traversals"))
        yield FittingFooter()

    def _picture_panes(self, *panes: tuple[str, str]) -> Iterator[Widget]:
        """Each picture pane in real pixels where the terminal can show them, else as terminal art."""
        for kind, pane_id in panes:
            if self.pictures.mode == "graphics":
                yield GraphicsPane(kind, self.pictures.protocol, id=pane_id)
            elif kind == "traversals":
                yield TraversalPane(id=pane_id)
            else:
                yield ImagePane(kind, id=pane_id)

    def _pane(self, selector: str) -> "Panel | GraphicsPane":
        """A pane of pictures or charts: drawn as terminal text (a Panel), or as real pixels."""
        pane = self.query_one(selector)
        assert isinstance(pane, (Panel, GraphicsPane)), selector
        return pane

    def on_mount(self) -> None:
        self.term_chart = self.query_one("#term-chart", TermChart)
        self.term_chart.display = False  # until the run has a term beyond recon and kl
        self.charts_column = self.query_one("#charts")  # kept: a frame's timer may fire while no screen is on the stack
        self.charts: list[LossChart | EpochChart] = [
            self.query_one("#recon-chart", LossChart),
            self.query_one("#kl-chart", LossChart),
            self.term_chart,
            self.query_one("#epoch-chart", EpochChart),
        ]
        for chart in self.charts:
            chart.comparison = self.comparison
        self.panes = [self._pane("#recon-images"), self._pane("#sample-images")]
        self.latent_panels = [self._pane(f"#{name}") for name in ("latent-scatter", "pixel-scatter", "active-units", "traversals")]
        self.latent_summary = self.query_one(LatentSummary)
        self.query_one("#traversals").border_title = "traversals"
        self.status_bar = self.query_one(StatusBar)
        self.switcher = self.query_one(ContentSwitcher)  # kept: with a dialog open, queries look in the dialog
        self.traversals = self._pane("#traversals")
        self.output_pane = self.query_one(OutputPane)
        self.diagnosis_line = self.query_one(DiagnosisLine)
        self.views: list[DiffView | GraphicsPane] = [*self.charts, *self.panes, *self.latent_panels, self.latent_summary, self.status_bar, self.output_pane]
        for view in self.views:
            if isinstance(view, Panel) and view.budget is not None:
                view.budget.clock = self.clock
        for pane in self.panes + [self.traversals]:
            if isinstance(pane, (ImagePane, TraversalPane)):  # terminal art follows the `a` key; real pixels do not
                pane.mode = self.art_mode
        self.panes[0].border_title = "reconstructions: input | output"
        self.panes[1].border_title = samples_title(self.telemetry.status().model)
        self.sub_title = str(self.source.run.path) + ("" if self.source.owns_trainer else " (watching)")
        self.app_resume_signal.subscribe(self, self._repaint_everything)
        self._events_seen = len(self.telemetry.events())  # the history is replayed silently: notify only what is new
        self._notes_seen = 0  # but all that this watcher found itself
        self.source.start()
        self.set_interval(CHART_SECONDS, self.tick_frame)
        self.set_interval(IMAGE_SECONDS, self.tick_images)
        self.set_interval(STATUS_SECONDS, self.tick_status)
        self.call_after_refresh(self.redraw_all)

    def on_unmount(self) -> None:
        self.source.close()  # its thread ends, and the process is scheduled again as it was found

    # -- pulling from telemetry --------------------------------------------------------------
    @property
    def covered(self) -> bool:
        """A dialog (help, explain, a question) is over the monitor. Nothing behind it is redrawn: a cell
        changed behind a dialog repaints the whole screen through it, every cell of it on the wire."""
        return len(self.screen_stack) > 1

    def tick_frame(self, force: bool = False) -> None:
        """The charts (and a script's output under them), from one moment of the run, when the CPU budget
        and the wire's pace allow."""
        if self.covered or not (force or (self.frame_budget.allows() and self.chart_pace.due())):
            return
        with self.frame_budget.spend(), self.telemetry.frozen():
            self._show_terms_chart()
            views = [] if self.showing_latent else [*self.charts, self.output_pane]
            self._drew(self.chart_pace, [chart.draw(self.telemetry, force=force) for chart in views], force)

    def _show_terms_chart(self) -> None:
        """The terms chart (and its key) appear once the run has a term beyond recon and kl; where the
        charts' column has no room to draw four (100x30 under a script's output), it takes the epoch chart's place."""
        wanted = bool(self.telemetry.term_names())
        epochs = not wanted or self.charts_column.size.height >= 4 * CHART_ROWS
        epoch_chart = self.charts[-1]
        if self.term_chart.display != wanted or epoch_chart.display != epochs:
            self.term_chart.display, epoch_chart.display = wanted, epochs
            self._refresh_keys()

    def tick_images(self, force: bool = False) -> None:
        """The pictures (or the latent view), when the wire's pace allows: a thin link sees them less often."""
        if self.covered or not (force or self.picture_pace.due()):
            return
        if self.showing_latent:
            drew = [panel.draw(self.telemetry, force=force) for panel in self.latent_panels]
            self.latent_summary.show(self.telemetry)
        else:
            self.panes[1].border_title = samples_title(self.telemetry.status().model)
            drew = [pane.draw(self.telemetry, force=force) for pane in self.panes]
        self._drew(self.picture_pace, drew, force)

    def _drew(self, pace: Pace, drew: list[bool], force: bool) -> None:
        """A paced frame went: its bytes, once written, teach its pace what one costs (a forced one is part
        of a repaint, whose bytes are nobody's frame)."""
        if force:
            self.wire.mark()
        elif any(drew):
            self.call_after_refresh(pace.drawn())

    @property
    def showing_latent(self) -> bool:
        return self.switcher.current == "latent"

    def action_toggle_view(self) -> None:
        """Main view (charts, pictures) or the latent view (what the encoder learned)."""
        self.switcher.current = "main" if self.showing_latent else "latent"
        self.call_after_refresh(self.redraw_all)

    def tick_status(self) -> None:
        """The status line from the run as it is now, whatever the charts show: never paced (only hidden
        while a dialog covers it)."""
        source = self.source
        status = self.telemetry.latest_status()
        liveness = source.liveness()
        if not self.covered:
            self.status_bar.show_status(status, stopping=source.stopping, liveness=liveness, losses=loss_words(self.telemetry))
            self.diagnosis_line.show(status)
            self.show_script(status)
        events, notes = self.telemetry.events(self._events_seen), source.notes_since(self._notes_seen)
        self._events_seen, self._notes_seen = self._events_seen + len(events), self._notes_seen + len(notes)
        for event in events + notes:
            if event.kind in NOTIFY_KINDS:
                self.post_message(RunEvent(event))
        for command in source.unanswered():
            self.post_message(RunEvent(Event("warning", f"the trainer has not taken '{command}' yet: it is not answering")))
        if (status.state, liveness) != (self._state, self._liveness):
            self.post_message(RunStateChanged(status.state, liveness, self._liveness))
            self._state, self._liveness = status.state, liveness
        if source.saturates_cpu and not self._budgets_scaled:  # known once the trainer says where it trains
            self._budgets_scaled = True
            for budget in [self.frame_budget] + [p.budget for p in self.panes if p.budget is not None]:
                budget.fraction *= SATURATED_BUDGET_SCALE
        if source.stopping and source.owns_trainer and self._stop_timer is None:
            self._stop_timer = self.set_interval(0.1, self._exit_when_stopped)

    def on_run_event(self, message: RunEvent) -> None:
        event = message.event
        self.notify(event.message, severity=NOTIFY_KINDS[event.kind], timeout=30 if event.kind == "error" else 6, markup=False)  # type: ignore[arg-type]

    def on_run_state_changed(self, message: RunStateChanged) -> None:
        liveness, source = message.liveness, self.source
        if liveness != message.was and message.was and liveness in LIVENESS_NOTES and not source.deleted:
            going_on = going_on_words(self.telemetry.status().script)
            self.notify(LIVENESS_NOTES[liveness].format(going_on=going_on), severity="error" if liveness == Liveness.GONE else "warning", timeout=30)
        self._refresh_keys()
        if message.state == RunState.FINISHED and not source.stopping:
            self.notify("Training finished. The results stay here until you press q.", timeout=10)

    def show_script(self, status: Status) -> None:
        """Your own script's run: a pane for its output under the charts (drawn with them), and where
        each picture comes from."""
        if not status.script:
            return
        if not self.output_pane.display:
            self.output_pane.display = True
            self.output_pane.border_title = f"output of {status.script}"
        for pane, term, kind in ((self.panes[0], "pictures", "reconstructions"), (self.panes[1], "samples", "samples")):
            title = f"{kind}: {status.terms[term]}" if term in status.terms else None
            if title is not None and pane.border_title != title:  # a new title repaints the whole pane: only when it changes
                pane.border_title = title

    def push_screen(self, *args: Any, **kwargs: Any) -> Any:
        self._repainting()  # a screen opened repaints the terminal
        return super().push_screen(*args, **kwargs)

    def pop_screen(self) -> Any:
        self._repainting()  # and so does one closed
        return super().pop_screen()

    def _repainting(self) -> None:
        """Textual paints the whole screen again at its next refresh: no paced frame drawn until then
        may count those bytes as its own."""
        self.wire.mark()
        self.call_after_refresh(self.wire.mark)

    def redraw_all(self) -> None:
        self.tick_frame(force=True)
        self.tick_images(force=True)
        self.tick_status()

    def _repaint_everything(self, _: object = None) -> None:
        """Back from Ctrl+Z and fg: the shell drew on the terminal meanwhile, so every cell is painted
        again (the views otherwise send only the cells that changed since their last frame)."""
        for view in self.views:
            view.forget_frame()
        self.screen.refresh(repaint=True, layout=True)
        self.call_after_refresh(self.redraw_all)

    def on_resize(self) -> None:
        """Redraw once the size settles: dragging a window corner sends dozens of resizes a second."""
        self._repainting()
        if self._redraw_after_resize is not None:
            self._redraw_after_resize.stop()
        self._redraw_after_resize = self.set_timer(RESIZE_SETTLE_SECONDS, self.redraw_all)

    # -- keys --------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        source = self.source
        state = self.telemetry.status().state
        running = source.running and not source.stopping
        if action == "pause":  # the trainer pauses and checkpoints while training, not while it evaluates
            return running and state == RunState.TRAINING
        if action == "resume":
            return running and state == RunState.PAUSED
        if action == "art_mode":  # real pixels have no art mode to switch
            return self.pictures.mode != "graphics"
        if action in ("checkpoint", "scale_lr", "steer"):
            return running and state in (RunState.TRAINING, RunState.PAUSED)
        if action == "stop_run":  # the owner stops with q; a guest has its own key
            return running and not source.owns_trainer
        if action == "detach":
            return source.owns_trainer and running
        if action == "next_term":
            return bool(self.telemetry.term_names())
        return True

    def _command(self, command: str, note: str) -> None:
        problem = self.source.send(command)
        if problem:
            self.notify(problem, severity="warning", timeout=6)
        elif note:
            self.notify(note, timeout=2)
        for delay in (0.3, 0.6, 1.0):  # show the trainer's answer as soon as it is there
            self.set_timer(delay, self.tick_status)
        self._refresh_keys()

    def _refresh_keys(self) -> None:
        """The footer's keys as the run's state allows them now; none while the app closes (a last message
        or frame then finds no screen on the stack)."""
        if self.screen_stack:
            self.refresh_bindings()

    def action_pause(self) -> None:
        self._command("pause", "")

    def action_resume(self) -> None:
        self._command("resume", "")

    def action_checkpoint(self) -> None:
        self._command("checkpoint", "Saving a checkpoint...")

    def action_scale_lr(self, factor: float) -> None:
        lr = self.telemetry.status().lr
        if lr <= 0:
            self.notify("the trainer has not said its learning rate yet", severity="warning", timeout=4)
            return
        self._change({"lr": lr * factor})

    def action_steer(self) -> None:
        status = self.telemetry.status()
        offered = next((f for f in findings_of(status) if f.fix), None)  # the first finding with a fix, filled in
        self.push_screen(SteerScreen(status.lr, status.beta, offered), self._change)

    def _change(self, values: dict[str, float] | None) -> None:
        if values:
            words = change_words(values)
            self._command(set_command(values), f"{words} from the trainer's next step")

    def action_toggle_setting(self, name: str) -> None:
        setattr(self.settings, name, not getattr(self.settings, name))
        labels = {
            "log": ("log scale", "linear scale"),
            "smooth": ("smoothing on", "smoothing off"),
            "window": ("recent window", "whole run"),
            "by_epoch": ("runs aligned by epoch", "runs aligned by step"),
        }
        on, off = labels[name]
        self.notify(on if getattr(self.settings, name) else off, timeout=1.5)
        self.tick_frame(force=True)

    def action_next_term(self) -> None:
        """The terms chart shows the run's next named term (lpips, d_loss, perplexity...)."""
        names = self.telemetry.term_names()
        if not names:
            self.notify("this run logs no terms beyond reconstruction and KL", timeout=2)
            return
        self.term_chart.index = (names.index(self.term_chart.shown(self.telemetry)) + 1) % len(names)
        self.notify(f"chart: {self.term_chart.shown(self.telemetry)}", timeout=1.5)
        self.tick_frame(force=True)

    def action_art_mode(self) -> None:
        self.art_mode = MODES[(MODES.index(self.art_mode) + 1) % len(MODES)]
        for pane in self.panes + [self.traversals]:
            if isinstance(pane, (ImagePane, TraversalPane)):
                pane.mode = self.art_mode
        self.notify(f"art: {'half blocks' if self.art_mode == 'blocks' else 'character ramp'}", timeout=1.5)
        self.tick_images(force=True)

    def action_pick_runs(self) -> None:
        self.push_screen(RunPicker(self.source.run.path, self.comparison), lambda _: self.tick_frame(force=True))

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_explain(self) -> None:
        status = self.telemetry.status()
        self.push_screen(ExplainScreen(status.model, findings_of(status)))

    async def action_quit(self) -> None:  # ctrl+q and friends go through the same door
        self.action_quit_run()

    def action_quit_run(self) -> None:
        """The owner's q stops the run (after asking); a guest's q just closes this watcher."""
        source = self.source
        if source.stopping:
            return
        if source.owns_trainer and not source.process_ended():
            if not self.telemetry.status().final:
                self.push_screen(ConfirmQuit(), self._confirmed)
            else:  # finished or failed: the worker is writing its last words; wait for it
                source.stop_coming()
                self._stop_timer = self.set_interval(0.1, self._exit_when_stopped)
        else:
            self.exit(return_code=self._exit_code)

    def action_stop_run(self) -> None:
        self.push_screen(ConfirmStop(going_on_words(self.telemetry.status().script)), self._confirmed)

    def action_detach(self) -> None:
        """Leave the trainer running in the background and close the monitor."""
        self.source.detach()
        self.exit()

    def _confirmed(self, yes: bool | None) -> None:
        if yes:
            self.stop_training()

    def stop_training(self) -> None:
        """Ask the trainer to checkpoint and stop; the owner exits once the trainer has ended."""
        problem = self.source.stop()
        if problem:
            self.notify(problem, severity="warning", timeout=6)
            if self.source.owns_trainer:
                self.source.stop_coming()
                self.source.terminate()
        else:
            self.notify("Saving a checkpoint and stopping...", timeout=10)
        self._stop_asked = time.monotonic()
        self.tick_status()

    def action_interrupt(self) -> None:
        """Ctrl+C does what it does to any command: the owner's run saves a checkpoint and stops
        (no question asked), and the app exits with status 130; a watcher just closes, with 130."""
        self._exit_code = 130
        if self.source.owns_trainer and not self.source.process_ended():
            if not self.source.stopping:
                self.stop_training()
            self._stop_timer = self._stop_timer or self.set_interval(0.1, self._exit_when_stopped)
        else:
            self.exit(return_code=130)

    def _exit_when_stopped(self) -> None:
        if self.source.process_ended():
            self.exit(return_code=self._exit_code)
        elif self._stop_asked and time.monotonic() - self._stop_asked > STOP_GRACE_S:
            self._stop_asked = 0.0
            self.source.terminate()  # it did not take the request: its signal handler saves and stops
