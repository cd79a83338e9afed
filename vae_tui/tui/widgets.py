"""The monitor's widgets. Each repaints only the cells that changed since its last frame.

Over SSH every repainted cell crosses the link, so `DiffView` keeps the last frame's lines and
marks dirty just the span of each line that differs; Textual then sends only those spans.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from rich.color import Color
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.geometry import Region
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Footer
from textual.widgets._footer import FooterKey
from textual_plotext.plot import Plot

from vae_tui.runfile.files import of_codes
from vae_tui.runfile.findings import findings_of
from vae_tui.runfile.schema import (
    LIKELIHOOD_WORDS,
    PLACEMENT_WORDS,
    STATE_COLOUR,
    STEP_WORDS,
    Liveness,
    RunState,
    Status,
    change_words,
    devices_words,
    epoch_words,
    gpu_words,
    model_words,
    ranks_words,
    shown_state,
)
from vae_tui.telemetry import Telemetry
from vae_tui.timefmt import duration
from vae_tui.tui.charts import (
    CLASS_COLORS,
    TEST_COLOR,
    TRAIN_COLOR,
    ChartSettings,
    Line,
    batch_points,
    build_bars,
    build_batch_chart,
    build_epoch_chart,
    build_scatter,
    epoch_points,
    overlay_lines,
)
from vae_tui.tui.graphics import walks_title
from vae_tui.views import art
from vae_tui.watching.compare import Comparison, per_epoch
from vae_tui.watching.output import ScriptOutput


def _cells(strip: Strip) -> list[tuple[str, Style | None]]:
    return [(ch, seg.style) for seg in strip for ch in seg.text]


def changed_span(old: Strip, new: Strip) -> tuple[int, int] | None:
    """[first, last) cells that differ between two lines, or None when they are the same."""
    if old == new:
        return None
    a, b = _cells(old), _cells(new)
    n = max(len(a), len(b))
    first = next((i for i in range(n) if i >= len(a) or i >= len(b) or a[i] != b[i]), n)
    last = n
    while last > first and last <= min(len(a), len(b)) and a[last - 1] == b[last - 1]:
        last -= 1
    return (first, last) if last > first else None


class DiffView(Widget):
    """Shows lines of text and repaints only the cells that changed since the last frame."""

    DEFAULT_CSS = "DiffView { height: 1fr; }"

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._strips: list[Strip] = []

    def show_text(self, text: Text, force: bool = False) -> None:
        width, height = self.size.width, self.size.height
        if width > 0 and height > 0:
            options = self.app.console.options.update(width=width, height=height, no_wrap=True, overflow="crop")
            self.show_lines(self.app.console.render_lines(text, options, pad=False), force)

    def show_lines(self, lines: list[list[Segment]], force: bool = False) -> None:
        width, height = self.size.width, self.size.height
        if width <= 0 or height <= 0:
            return
        base = self.rich_style
        blank = Strip.blank(width, base)
        new = [Strip(line).adjust_cell_length(width).apply_style(base) for line in lines[:height]]
        new += [blank] * (height - len(new))
        old, self._strips = self._strips, new
        if force or len(old) != len(new) or (old and old[0].cell_length != width):
            self.refresh()
            return
        for y, (before, after) in enumerate(zip(old, new)):
            span = changed_span(before, after)
            if span is not None:
                self.refresh(Region(span[0], y, span[1] - span[0], 1))

    def render_line(self, y: int) -> Strip:
        if y < len(self._strips):
            return self._strips[y]
        return Strip.blank(self.size.width, self.rich_style)

    def on_resize(self) -> None:
        self.forget_frame()  # the owner redraws at the new size on its next tick

    def forget_frame(self) -> None:
        """The next frame is drawn whole, not as changes to this one."""
        self._strips = []
        self.refresh()


class Budget:
    """Spend at most a fraction of one core: work that took c seconds of CPU is followed by a wait
    of c / fraction, never longer than MAX_WAIT_S (so a slow first frame does not freeze a view).

    A 10 ms plotext build with a budget of 1% allows one redraw a second. CPU time, not wall
    time: waiting for a busy core is not spending.
    """

    MAX_WAIT_S = 2.0

    def __init__(self, fraction: float, clock: Callable[[], float] = time.monotonic) -> None:
        """`clock`: the wall clock the waits are measured on (the app's)."""
        self.fraction = fraction
        self.clock = clock
        self._next = -float("inf")

    def allows(self) -> bool:
        return self.clock() >= self._next

    @contextlib.contextmanager
    def spend(self) -> Iterator[None]:
        start, cpu = self.clock(), time.thread_time()
        try:
            yield
        finally:
            self._next = start + min((time.thread_time() - cpu) / self.fraction, self.MAX_WAIT_S)


class Panel(DiffView):
    """A view that redraws from telemetry when there is news, within a CPU budget of its own (or,
    with `budget` None, whenever its owner draws a frame: the charts share the app's frame budget)."""

    BUDGET: float | None = 0.01  # fraction of one core this panel may spend redrawing

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.drawn_key: object = None  # what the last frame showed (a batch count, a version)
        self.budget = Budget(self.BUDGET) if self.BUDGET is not None else None

    def key(self, telemetry: Telemetry) -> object:
        """Changes whenever there is something new to show."""
        raise NotImplementedError

    def content(self, telemetry: Telemetry) -> Text | list[list[Segment]]:
        raise NotImplementedError

    def draw(self, telemetry: Telemetry, force: bool = False) -> bool:
        """Redraw if there is news and the budget allows (or when forced); say whether it did."""
        if self.size.width < 4 or self.size.height < 2:
            return False
        key = self.key(telemetry)
        allowed = self.budget is None or self.budget.allows()
        if not (force or not self._strips or (key != self.drawn_key and allowed)):
            return False
        self.drawn_key = key
        with self.budget.spend() if self.budget is not None else contextlib.nullcontext():
            try:
                content = self.content(telemetry)
            except Exception as exc:  # a plotting corner case must never take the monitor (and the run) down
                content = Text(f"(cannot draw this view: {type(exc).__name__}: {exc})", "dim")
            if isinstance(content, Text):
                self.show_text(content, force=force)
            else:
                self.show_lines(content, force=force)
        return True


MIN_CHART = (20, 6)  # below this plotext misplaces its axis labels: say it in words instead
CHART_FRAME_ROWS = 5  # a chart's title, frame and axis labels: the rest is rows for its lines and legend


def fits_a_chart(panel: Widget) -> bool:
    return panel.size.width >= MIN_CHART[0] and panel.size.height >= MIN_CHART[1]


class LossChart(Panel):
    """A per-batch series (reconstruction or KL) with its smoothed line, on its own scale."""

    BUDGET = None  # drawn in the app's frames, with the status line

    def __init__(self, series: str, title: str, settings: ChartSettings, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="chart")
        self.series, self.title, self.settings = series, title, settings
        self.plt = Plot()
        self.comparison: Comparison | None = None  # other runs overlaid, set by the app

    def key(self, telemetry: Telemetry) -> object:
        overlays = self.comparison.key() if self.comparison is not None else ()
        status = telemetry.status()
        return (telemetry.resets, telemetry.batches, len(status.changes), overlays, self.settings.by_epoch, tuple(status.terms.items()))

    def described(self, telemetry: Telemetry) -> tuple[str, str, str, str]:
        """(series, title, a line under the title or "", the unit said after a number)."""
        series, title, note = charted_term(self.series, self.title, telemetry.status())
        return series, title, note, "" if series == "loss" else " nats/image"  # a script's own loss is in its own units

    def content(self, telemetry: Telemetry) -> Text:
        settings, status = self.settings, telemetry.status()
        series, title, note, unit = self.described(telemetry)
        if not fits_a_chart(self):
            last = telemetry.tail(series, 1)
            line = Text(f"{series} {last[0]:.2f}{unit}" if len(last) and np.isfinite(last[0]) else note or series, "dim")
            return line + self.compared_in_words(series)
        if note and series == self.series and not len(finite_tail(telemetry, series)):
            return Text.assemble((title + "\n\n", "bold"), (note, "dim"))
        x, y = batch_points(telemetry, series, self.size.width, settings)
        title += (" (recent)" if settings.window else "") + (" log" if settings.log else "")
        marks = np.array([float(c["step"]) for c in status.changes if isinstance(c, dict) and isinstance(c.get("step"), (int, float))])
        overlays = overlay_lines(self.comparison, series, self.size.width, settings, x)
        if settings.by_epoch:
            x, marks = per_epoch(x, status.batches_per_epoch), per_epoch(marks, status.batches_per_epoch)
        named = len(overlays) + 1 > self.size.height - (1 if note else 0) - CHART_FRAME_ROWS  # plotext would drop the legend
        height = self.size.height - (1 if note else 0) - (1 if named else 0)
        chart = Text.from_ansi(
            build_batch_chart(
                self.plt, x, y, self.size.width, height, title, series, settings, tuple(marks.tolist()), overlays, Path(status.run_dir).name or "this run"
            )
        )
        if named:  # the legend in words: this run, then each compared one in its colour
            chart = Text.assemble(Text(Path(status.run_dir).name or "this run", "dim"), self.compared_in_words(series), "\n", chart)
        return Text.assemble((note + "\n", "dim"), chart) if note else chart

    def compared_in_words(self, series: str) -> Text:
        """Too small for a chart: each run compared with this one, by name in its colour, and its latest value
        (the legend a chart would have had)."""
        words = Text()
        for overlay in self.comparison.overlays if self.comparison is not None else ():
            last = overlay.follower.telemetry.tail(series, 1)
            value = f" {last[0]:.2f}" if len(last) and np.isfinite(last[0]) else ""
            words.append(" · ")
            words.append(f"{overlay.name}{value}", Style(color=Color.from_rgb(*overlay.color)))
        return words


TERM_UNITS = {  # what a term's number is, where its usual name says
    "vq_loss": "quantization loss, in the loss",
    "perplexity": "codes in use (perplexity)",
    "codebook_usage": "fraction of the codebook used",
    "usage": "fraction of the codebook used",
    "lpips": "perceptual distance (LPIPS)",
    "tc": "total correlation, nats/image",
    "mi": "mutual information, nats/image",
    "recon_test": "nats/image",
}


class TermChart(LossChart):
    """The run's other named terms (lpips, g_loss, d_loss, perplexity, a second optimizer's loss), one at a
    time: `n` shows the next. Hidden while the run has none."""

    def __init__(self, settings: ChartSettings, *, id: str | None = None) -> None:
        super().__init__("", "", settings, id=id)
        self.index = 0

    def shown(self, telemetry: Telemetry) -> str:
        names = telemetry.term_names()
        return names[self.index % len(names)] if names else ""

    def key(self, telemetry: Telemetry) -> object:
        return (super().key(telemetry), self.shown(telemetry), len(telemetry.term_names()))

    def described(self, telemetry: Telemetry) -> tuple[str, str, str, str]:
        names = telemetry.term_names()
        name = self.shown(telemetry)
        where = telemetry.status().terms.get(name, "")
        unit = TERM_UNITS.get(name.lower(), where or "as logged")
        count = f" ({names.index(name) + 1}/{len(names)}, n: next)" if len(names) > 1 else ""
        title = f"{name}: {unit}{count}"
        return name, title if len(title) <= self.size.width - 2 else f"{name}{count}", "", ""  # plotext drops a title wider than its chart


def charted_term(series: str, title: str, status: Status) -> tuple[str, str, str]:
    """What a chart draws for a script watched without vae-tui calls (status.terms names what was taken
    from where): (series, title, a line saying where it came from, or what is not known and the one
    line that would give it). Runs that log their own terms: as they are, no line."""
    terms = status.terms
    if not terms:
        return series, title, ""
    if series == "recon" and "recon" not in terms:
        return "loss", "loss, as your script computes it", (f"{terms.get('loss', 'the logged loss')} · recon: vae_tui.log(recon=r)")
    if series not in terms:
        why = terms.get(f"{series}_unknown", "forward() gave no mu, logvar")
        return series, title, f"not known ({why}) · vae_tui.log({series}=k)"
    return series, title, terms[series]


def finite_tail(telemetry: Telemetry, series: str) -> np.ndarray:
    tail = telemetry.tail(series, 64)
    return tail[np.isfinite(tail)]


class EpochChart(Panel):
    """Train vs test loss, one point per epoch."""

    BUDGET = None

    def __init__(self, settings: ChartSettings, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="chart")
        self.settings = settings
        self.plt = Plot()
        self.comparison: Comparison | None = None  # other runs overlaid, set by the app

    def key(self, telemetry: Telemetry) -> object:
        overlays = self.comparison.key() if self.comparison is not None else ()
        return (telemetry.resets, telemetry.epoch_count, overlays, self.settings.by_epoch)

    def content(self, telemetry: Telemetry) -> Text:
        records = telemetry.epochs()
        tested = any(np.isfinite(float(r["test_loss"])) for r in records)
        if not fits_a_chart(self):
            last = f": train {records[-1]['train_loss']:.2f}, test {records[-1]['test_loss']:.2f}" if records else ""
            return Text("loss per epoch" + last, "dim")
        status = telemetry.status()
        note = (
            ""
            if tested or not records
            else ("test loss not known: " + ("vae_tui.log_epoch(test_loss=t)" if status.terms else "run.log_epoch(test_loss=t)") + " gives it")
        )
        points = epoch_points(records, self.size.width)
        by_step = not self.settings.by_epoch and self.comparison is not None and bool(self.comparison.overlays)
        lines = []
        for overlay in self.comparison.overlays if self.comparison is not None else ():
            records = epoch_points(overlay.follower.telemetry.epochs(), self.size.width)
            x = np.array([r["step" if by_step else "epoch"] for r in records], dtype=np.float64)
            if records:  # a run with no epoch yet has nothing to draw
                lines.append(Line(overlay.name, x, np.array([r["test_loss"] for r in records], dtype=np.float64), overlay.color))
        # The lines named in the title, in their colours: a chart a few rows tall has no room for a legend off them
        height, log, monochrome = self.size.height - (1 if note else 0) - 1, self.settings.log, self.settings.monochrome
        chart = Text.from_ansi(build_epoch_chart(self.plt, points, self.size.width, height, log, monochrome, tuple(lines), by_step))
        title = epoch_lines_in_words(lines, monochrome, self.size.width)
        chart = Text.assemble(title, "\n", chart)
        return Text.assemble((note + "\n", "dim"), chart) if note else chart


def epoch_lines_in_words(lines: list[Line], monochrome: bool, width: int) -> Text:
    """The epoch chart's title naming its lines in their colours (without colour, the test line by its mark),
    centred in `width`; "loss per epoch: " left off where the names need the room."""
    named = [("train", TRAIN_COLOR), ("test (x)" if monochrome else "test", TEST_COLOR)]
    named += [(f"{line.label} test", line.color) for line in lines]
    words = Text()
    for n, (name, colour) in enumerate(named):
        words.append(" vs " if n == 1 else " · " if n else "")
        words.append(name, Style(color=None if monochrome else Color.from_rgb(*colour)))
    if words.cell_len + len("loss per epoch: ") <= width:
        words = Text("loss per epoch: ") + words
    words.align("center", width)
    return words


class ImagePane(Panel):
    """Reconstructions (input beside output) or prior samples, as terminal art."""

    BUDGET = 0.02

    def __init__(self, kind: str, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="images")
        self.kind = kind  # "reconstructions" or "samples"
        self.mode = art.MODES[0]

    def key(self, telemetry: Telemetry) -> object:
        return telemetry.snapshot_version

    def content(self, telemetry: Telemetry) -> list[list[Segment]]:
        snapshot = telemetry.snapshot()
        if snapshot is None:
            return [[Segment("waiting for the first snapshot...")]]
        if self.kind == "reconstructions":
            groups = [[a, b] for a, b in zip(snapshot.originals, snapshot.reconstructions)]
        else:
            groups = [[s] for s in snapshot.samples]
            if not groups and telemetry.status().terms:  # a script's model, watched through hooks
                return [[Segment("no samples: the model has no decode(z) that works on z alone")]]
            if not groups:  # a model whose decoder cannot be called on its own
                return [[Segment("no samples: the model has no decoder to call on z alone")], [Segment("(name it self.decoder)", Style(dim=True))]]
        return art.grid(groups, self.mode, self.size.width, self.size.height, art.colour_levels(self.app.console.color_system))


class OutputPane(Panel):
    """The last lines your script printed (its prints and progress bars), under `vae-tui run`."""

    BUDGET = 0.01

    def __init__(self, output: ScriptOutput, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="output")
        self.output = output

    def key(self, telemetry: Telemetry) -> object:
        return self.output.version

    def content(self, telemetry: Telemetry) -> Text:
        lines = self.output.last(self.size.height)
        if not lines:
            return Text("nothing printed yet", "dim")
        return Text("\n".join(lines))


STATE_STYLE = {state: colour if colour == "dim" else f"bold {colour}" for state, colour in STATE_COLOUR.items()}


class StatusBar(DiffView):
    """Dataset, device, model, progress, speed, ETA, state and run directory, on two lines.

    A fixed-height line view rather than a Static: updating a Static re-runs the screen's
    layout, and this changes twice a second.
    """

    RATE_WINDOW = 40  # ticks of the status line the speed is measured over: 20 s, so the ETA does not jitter

    def __init__(self, *, id: str | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(id=id)
        self.clock = clock
        self._rates: deque[tuple[float, int]] = deque(maxlen=self.RATE_WINDOW)

    def eta(self, status: Status) -> str:
        """The time left at the speed of the last RATE_WINDOW ticks, from the run's own progress."""
        now = self.clock()
        if status.state != RunState.TRAINING or status.batches_per_epoch <= 0 or status.epochs <= 0:  # not training, or a loop that does not say
            self._rates.clear()
            return "-"
        self._rates.append((now, status.step))
        (t0, s0), (t1, s1) = self._rates[0], self._rates[-1]
        if t1 - t0 < 1.0 or s1 <= s0:
            return "..."
        remaining = (status.epochs - status.epoch) * status.batches_per_epoch + (status.batches_per_epoch - status.batch_in_epoch)
        return duration(remaining / ((s1 - s0) / (t1 - t0)))

    def show_status(self, status: Status, stopping: bool = False, liveness: Liveness = Liveness.RUNNING, losses: str = "") -> None:
        """`status` as the run has it now; `losses`: its latest losses in words (loss_words)."""
        state = shown_state(status.state, liveness)
        if stopping and state in ("training", "paused", "evaluating"):
            state = "stopping"
        if not status.dataset:  # nothing heard from the trainer yet
            waiting = (
                "the trainer is starting (importing torch, loading the data)..."
                if liveness != Liveness.GONE
                else "no trainer has written to this run directory"
            )
            first = Text.assemble((f" {state.capitalize()} ", STATE_STYLE.get(state, "")), " " + waiting)
            self.show_text(Text("\n").join([first, Text(" " + status.run_dir, "dim")]))
            return
        eta = self.eta(status)  # every time: it also forgets the rate across a pause
        # which step runs is said where there is a choice (CUDA); a CPU or Apple's GPU steps eagerly
        device = devices_words(status)
        if status.device_memory:
            device += f", {status.device_memory / 2**20:,.0f} MiB"
        # In the order of need: what does not fit is dropped from the end, so lr and beta come early
        parts = [
            Text.assemble((f" {state.capitalize()} ", STATE_STYLE.get(state, "")), f" {epoch_words(status.epoch, status.epochs)}"),
            Text(f"step {status.step:,}"),
            *([Text(losses)] if losses else []),
            Text(f"{status.samples_per_s:,.0f} samples/s" if state == "training" else "- samples/s"),
            *([Text(settings)] if (settings := settings_words(status)) else []),
            Text(f"ETA {eta} (training)" if state == "training" else "ETA -"),
            *([Text(gpu)] if (gpu := gpu_words(status)) and state in ("training", "paused", "evaluating") else []),
            *([Text(ranks_words(status) if state == "training" else f"{status.world_size} ranks")] if status.world_size > 1 else []),
            Text(
                f"{status.dataset} on {device}"
                + (f", {PLACEMENT_WORDS[status.data_placement]}" if status.data_placement in PLACEMENT_WORDS else "")
                + (f", {STEP_WORDS[status.step_mode]}" if status.step_mode in STEP_WORDS and ("cuda" in device or status.step_mode == "emulated") else "")
            ),
            Text(
                f"{model_words(status.model)}, {status.parameters:,} parameters"
                + (f", batch {status.global_batch:,} ({status.world_size} x {status.global_batch // status.world_size})" if status.world_size > 1 else "")
            ),
            Text(status.run_dir, "dim"),
        ]
        first, used = pack(parts, self.size.width)
        if status.message and status.state in (RunState.ERROR, RunState.PAUSED, RunState.EVALUATING):  # paused: by a NaN
            second = Text(" " + status.message, "bold red" if status.state != RunState.EVALUATING else "bold")
        elif status.problems:  # a disk that fails again and again: the cause, where the eye is
            second = Text(" " + next(iter(status.problems.values())), "bold yellow")
        else:
            second = Text(" ") + pack_all(parts[used:], self.size.width - 1)
        self.show_text(Text("\n").join([first, second]))


def settings_words(status: Status) -> str:
    """ "lr 0.001, beta 4": each where it is known (a script's beta, in its own loss, never is)."""
    words = [f"lr {status.lr:.3g}"] if status.lr else []
    return ", ".join(words + [f"beta {status.beta:.3g}"] if math.isfinite(status.beta) else words)


def loss_words(telemetry: Telemetry) -> str:
    """The latest batch's losses, as numbers: "recon 23.41, KL 5.12". For a script watched through hooks,
    the terms it was seen to compute: its own loss where its reconstruction term is not known, and the
    KL only where it is."""
    terms = telemetry.status().terms
    names = ["recon", "kl"] if not terms else [*([] if "recon" in terms else ["loss"]), *(n for n in ("recon", "kl") if n in terms)]
    words = []
    for name in names:
        last = finite_tail(telemetry, name)[-1:]
        if len(last):
            words.append(f"{LOSS_NAMES.get(name, name)} {loss_number(float(last[0]))}")
    return ", ".join(words)


def loss_number(value: float) -> str:
    """23.41, 0.01234, 16,220: four figures, and a script's summed loss without an exponent."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


LOSS_NAMES = {"kl": "KL"}


def pack_all(parts: list[Text], width: int, between: str = " · ") -> Text:
    """Every part that fits in width, in order, skipping one too long for what is left (a long device
    description gives way to the run directory after it); the first one cut to fit if need be."""
    line = Text()
    for part in parts:
        sep = between if line.cell_len else ""
        if line.cell_len + len(sep) + part.cell_len <= width:
            line.append(sep)
            line.append_text(part)
        elif not line.cell_len:
            line.append_text(part[:width])
    return line


def pack(parts: list[Text], width: int, between: str = " · ") -> tuple[Text, int]:
    """As many parts as fit in width (at least one), joined by `between`; and how many that was."""
    line = Text()
    for used, part in enumerate(parts):
        sep = between if used else ""
        if used and line.cell_len + len(sep) + part.cell_len > width:
            return line, used
        line.append(sep)
        line.append_text(part)
    return line, len(parts)


# -- the latent view ----------------------------------------------------------------------------
class _AnalysisPanel(Panel):
    """Redraws when the trainer publishes a new latent report (at most every couple of seconds)."""

    WAITING = "the latent view appears after the first epoch..."

    def key(self, telemetry: Telemetry) -> object:
        return telemetry.analysis_version

    def content(self, telemetry: Telemetry) -> Text | list[list[Segment]]:
        analysis = telemetry.analysis()
        if analysis is None:
            return Text(self.WAITING, "dim")
        return self.draw_analysis(analysis)

    def draw_analysis(self, analysis: dict[str, np.ndarray]) -> Text | list[list[Segment]]:
        raise NotImplementedError


class ScatterPanel(_AnalysisPanel):
    """The test images as points: the encoder's means, or the raw pixels, projected to 2-D."""

    def __init__(self, field: str, title: str, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="chart")
        self.field, self.title = field, title
        self.plt = Plot()

    def draw_analysis(self, analysis: dict[str, np.ndarray]) -> Text:
        title = ("code entries" if self.field == "latent_2d" and of_codes(analysis) else self.title) + (
            f" at step {int(analysis['step']):,}" if self.field == "latent_2d" else ""
        )
        if not fits_a_chart(self):
            return Text(title, "dim")
        return Text.from_ansi(build_scatter(self.plt, analysis[self.field], analysis["labels"], self.size.width, self.size.height, title))


class ActiveUnitsChart(_AnalysisPanel):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="chart")
        self.plt = Plot()

    def draw_analysis(self, analysis: dict[str, np.ndarray]) -> Text:
        kl = analysis["kl_per_dim"]
        active = int((kl > 0.01).sum())
        if of_codes(analysis):
            title = f"code entropy, nats: {active} of {len(kl)} used"
        else:
            title = f"KL per dim, nats: {active} of {len(kl)} active"  # short enough for half of 80 columns
        if not fits_a_chart(self):
            return Text(title, "dim")
        axis = "code position" if of_codes(analysis) else "latent dimension"
        return Text.from_ansi(build_bars(self.plt, kl, self.size.width, self.size.height, title, axis))


class TraversalPane(_AnalysisPanel):
    """Rows of decoded images as one latent dimension walks from -3 to +3, the others at 0."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="images")
        self.mode = art.MODES[0]

    LABEL = 5  # columns for a row's name, "z12 "

    def draw_analysis(self, analysis: dict[str, np.ndarray]) -> list[list[Segment]]:
        """One row per dimension, named on its left ("z3"), each image as large as the rows allow."""
        rows, dims = analysis["traversals"], [int(d) for d in analysis["traversal_dims"]]
        self.border_title = walks_title(analysis)
        letter = "p" if of_codes(analysis) else "z"  # a position of codes, or a dimension of z
        height = max((self.size.height - (len(rows) - 1)) // max(len(rows), 1), 1)
        lines: list[list[Segment]] = []
        for n, (row, dim) in enumerate(zip(rows, dims)):
            if n:
                lines.append([])
            drawn = art.grid([list(row)], self.mode, self.size.width - self.LABEL, height, art.colour_levels(self.app.console.color_system))
            for i, line in enumerate(drawn):
                label = f"{letter}{dim}" if i == len(drawn) // 2 else ""
                lines.append([Segment(f"{label:>{self.LABEL - 1}} ", Style(bold=True))] + line)
        return lines


def samples_title(description: str) -> str:
    """What the samples pane draws from: the Gaussian prior's fixed z, or a VQ-VAE's codes by their usage."""
    return "samples: codes drawn by their usage" if description.startswith("VQ-VAE") else "samples: fixed z ~ N(0, I)"


class DiagnosisLine(DiffView):
    """What the run is telling you, in one line under the charts: each finding's headline and since when,
    `e` for the whole of it, `k` for its fix where one is offered. Hidden while there is none."""

    def show(self, status: Status) -> None:
        findings = findings_of(status)
        if self.display != bool(findings):
            self.display = bool(findings)
        if not findings:
            return
        text = Text("⚠ ", "bold yellow")
        for n, finding in enumerate(findings):
            text.append(" · " if n else "")
            text.append(finding.headline, "bold yellow")
            text.append(f" since {finding.since}")
        fix = next((f.fix for f in findings if f.fix), None)
        text.append("  e: what it means" + (f", k: set {change_words(fix)}" if fix else ""), "dim")
        self.show_text(text)


class LatentSummary(DiffView):
    """PCA against the VAE, the final evaluation (or beta until there is one), and which colour is
    which class in the scatters: in as many lines as the width needs, without cutting a number."""

    def show(self, telemetry: Telemetry) -> None:
        analysis, status = telemetry.analysis(), telemetry.status()
        width = max(self.size.width, 20)
        if analysis is not None:
            measure = LIKELIHOOD_WORDS.get(str(analysis["likelihood"]) if "likelihood" in analysis else "bernoulli", "")
            scores = [
                Text(f"test reconstruction of {'its code' if of_codes(analysis) else 'the mean z'}: {measure}, nats/image (MSE per value):", "bold"),
                Text(f"VAE {float(analysis['vae_nll']):.2f} ({float(analysis['vae_mse']):.4f})"),
                Text(f"PCA, k={len(analysis['kl_per_dim'])}: {float(analysis['pca_nll']):.2f} ({float(analysis['pca_mse']):.4f})"),
            ]
        else:
            scores = [Text("test reconstruction: after the first epoch", "dim")]
        evaluation = status.evaluation
        if evaluation:
            honest = [
                Text("honest evaluation:", "bold"),
                Text(f"-log p(x) <= {evaluation['iw_nll']:.2f} ± {evaluation['iw_se']:.2f} (K={evaluation['samples']})"),
                Text(f"negative ELBO {evaluation['elbo_nll']:.2f} ± {evaluation['elbo_se']:.2f}"),
            ]
        else:
            beta = f"beta now {status.beta:g}; " if math.isfinite(status.beta) else ""
            honest = [Text(f"{beta}-log p(x) comes when training ends", "dim")]
        lines = []
        for parts in (scores, honest):
            while parts:
                line, used = pack(parts, width, between="  ")
                lines.append(line)
                parts = parts[used:]
        if analysis is not None:
            lines.append(legend(analysis, width))
        self.show_text(Text("\n").join(lines))


def legend(analysis: dict[str, np.ndarray], width: int) -> Text:
    """Which colour is which class in the scatters (class names when the run recorded them)."""
    labels = [int(c) for c in np.unique(analysis["labels"]) if c >= 0][: len(CLASS_COLORS)]
    if not labels:
        return Text("the data has no labels: every point is one colour", "dim")
    names = [str(n) for n in analysis["class_names"]] if "class_names" in analysis else [str(c) for c in range(max(labels) + 1)]
    parts = [Text.assemble(("■ ", Style(color=Color.from_rgb(*CLASS_COLORS[c % len(CLASS_COLORS)]))), names[c] if c < len(names) else str(c)) for c in labels]
    line, _ = pack([Text("colours:", "bold")] + parts, width, between=" ")
    return line


class FittingFooter(Footer):
    """The key bar with as many keys as fit whole, in the order of need (? lists them all): Textual's own
    would cut the last one mid-word at the edge."""

    def compose(self) -> ComposeResult:
        room, width = self.app.size.width, 0
        for item in super().compose():
            if isinstance(item, FooterKey):
                width += len(item.key_display) + len(item.description) + 3  # " q Quit " with its padding
                if width > room:
                    return
            yield item

    async def on_resize(self) -> None:
        await self.recompose()
