"""Chart content: what points to draw and the plotext figure for them. No Textual here.

A chart never gets more than its width in points, whatever the length of the run, so
building it costs the same at step 1k and 1M.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from textual_plotext.plot import Plot

from vae_tui.telemetry import Telemetry
from vae_tui.watching.compare import per_epoch

if TYPE_CHECKING:
    from vae_tui.watching.compare import Comparison

RAW_COLOR = (110, 110, 110)
MARK_COLOR = (215, 175, 0)  # a live change of lr or beta
SMOOTH_COLORS = {"recon": (95, 175, 255), "kl": (255, 175, 95), "loss": (175, 255, 135)}
TRAIN_COLOR, TEST_COLOR = (95, 175, 255), (255, 135, 135)


@dataclass
class ChartSettings:
    log: bool = False
    smooth: bool = True
    window: bool = False  # recent window (raw batches) instead of the whole run
    monochrome: bool = False  # NO_COLOR: lines told apart by their marks
    by_epoch: bool = False  # overlaid runs lined up by epoch rather than by step


@dataclass
class Line:
    """Another run's series, drawn over this one's in its colour, named in the legend."""

    label: str
    x: np.ndarray
    y: np.ndarray
    color: tuple[int, int, int]


def ema(values: np.ndarray, span: float) -> np.ndarray:
    """Exponential moving average, seeded with the first value."""
    if len(values) == 0:
        return values
    alpha = 2.0 / (max(span, 1.0) + 1.0)
    out = np.empty(len(values), dtype=np.float64)
    acc = float(values[0])
    for i, v in enumerate(values.astype(np.float64)):
        acc = acc + alpha * (v - acc) if np.isfinite(v) else acc
        out[i] = acc
    return out


def points_for(width: int) -> int:
    """Points handed to a chart this many cells wide: one a column (plotext's cost is linear in them)."""
    return max(width, 2)


def batch_points(telemetry: Telemetry, name: str, width: int, settings: ChartSettings) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) for one per-batch series: the recent raw window, or the whole run bucketed."""
    budget = points_for(width)
    if settings.window:
        values = telemetry.tail(name, budget).astype(np.float64)
        return telemetry.last_steps(len(values), name), values
    d = telemetry.decimated(name, budget)
    return telemetry.steps_at(d.x, name), d.mean.astype(np.float64)


def overlay_lines(comparison: "Comparison | None", name: str, width: int, settings: ChartSettings, x: np.ndarray) -> tuple[Line, ...]:
    """Each overlaid run's series `name` at this chart's resolution (in the recent window: over the
    same steps as this run's `x`), by step or by fractional epoch."""
    if comparison is None:
        return ()
    lines = []
    for overlay in comparison.overlays:
        other = overlay.follower.telemetry
        ox, oy = batch_points(other, name, width, ChartSettings())
        if settings.window and len(x):
            keep = (ox >= x[0]) & (ox <= x[-1])
            ox, oy = ox[keep], oy[keep]
        if settings.by_epoch:
            ox = per_epoch(ox, other.status().batches_per_epoch)
        lines.append(Line(overlay.name, ox, oy, overlay.color))
    return tuple(lines)


def _prepare(plt: Plot, width: int, height: int, title: str, log: bool) -> None:
    plt.clear_figure()
    plt.plotsize(width, height)
    plt.theme("clear")
    plt.title(title)
    if log:
        plt.yscale("log")


def _count_label(value: float) -> str:
    return f"{value / 1e6:.3g}M" if value >= 1e6 else f"{value / 1e3:.3g}k" if value >= 1e4 else f"{value:.0f}"


def _integer_xticks(plt: Plot, lo: float, hi: float, count: int = 5) -> None:
    """Whole-number ticks (steps and epochs are counts), e.g. 0, 250, 500 or 12.5k."""
    ticks = sorted({int(round(v)) for v in np.linspace(lo, hi, count)})
    plt.xticks([float(t) for t in ticks], [_count_label(t) for t in ticks])


def _positive(values: np.ndarray) -> np.ndarray:
    return np.maximum(values, 1e-6)


def build_batch_chart(
    plt: Plot,
    x: np.ndarray,
    y: np.ndarray,
    width: int,
    height: int,
    title: str,
    name: str,
    settings: ChartSettings,
    marks: tuple[float, ...] = (),
    overlays: tuple[Line, ...] = (),
    label: str = "",
) -> str:
    """The figure for one per-batch series: raw line in grey, EMA over it in colour, a vertical line
    at each step where the learning rate or beta was changed live (`marks`), and other runs'
    smoothed lines over it (`overlays`, with `label` naming this run in the legend)."""
    _prepare(plt, width, height, title, settings.log)
    if len(x) == 0:
        plt.text("waiting for the first batches...", x=0.5, y=0.5, alignment="center")
        plt.xlim(0, 1)
        plt.ylim(0, 1)
        return plt.build()
    finite = np.isfinite(y)
    x, y = x[finite], y[finite]
    if settings.log:
        y = _positive(y)
    span = 20 if settings.window else max(len(y) / 25, 2)
    _overlay(plt, overlays, span, settings.log)  # first: this run's own lines are drawn over them
    plt.plot(x.tolist(), y.tolist(), marker="braille", color=RAW_COLOR)
    if (settings.smooth or overlays) and len(y) > 2:
        plt.plot(x.tolist(), ema(y, span).tolist(), marker="braille", color=SMOOTH_COLORS.get(name, (255, 255, 255)), label=label if overlays else None)
    for step in marks:
        if x[0] <= step <= x[-1]:
            plt.vline(step, color=MARK_COLOR)
    _integer_xticks(plt, *_span(float(x[0]), float(x[-1]), overlays))
    plt.xlabel("epoch" if settings.by_epoch else "step")
    return plt.build()


def _span(lo: float, hi: float, overlays: tuple[Line, ...]) -> tuple[float, float]:
    """The x range every line drawn covers: ticks for all of it."""
    for line in overlays:
        if len(line.x):
            lo, hi = min(lo, float(line.x[0])), max(hi, float(line.x[-1]))
    return lo, hi


def _overlay(plt: Plot, overlays: tuple[Line, ...], span: float, log: bool) -> None:
    """Other runs, smoothed like this one, each in its colour and named."""
    for line in overlays:
        finite = np.isfinite(line.y)
        x, y = line.x[finite], line.y[finite]
        if log:
            y = _positive(y)
        if len(y):
            plt.plot(x.tolist(), (ema(y, span) if len(y) > 2 else y).tolist(), marker="braille", color=line.color, label=line.label)


def epoch_points(records: list[dict], width: int) -> list[dict]:
    """At most `points_for(width)` epochs, evenly spaced, always keeping the latest."""
    budget = points_for(width)
    if len(records) <= budget:
        return records
    stride = -(-len(records) // budget)
    picked = records[::stride]
    return picked if picked[-1] is records[-1] else picked + [records[-1]]


def build_epoch_chart(
    plt: Plot,
    records: list[dict],
    width: int,
    height: int,
    log: bool,
    monochrome: bool = False,
    overlays: tuple[Line, ...] = (),
    by_step: bool = False,
) -> str:
    """Train vs test loss per epoch (the negative ELBO when beta = 1), and other runs' test loss
    (`overlays`); `by_step` puts each epoch at its last step. Without colour (NO_COLOR) the two
    lines differ by their marks, since both would be the same grey. The figure has neither title nor
    legend: a few rows tall, it has no room for a legend off the lines, so the caller names them
    above it (overlays with no epoch yet are not drawn: leave them unnamed too)."""
    _prepare(plt, width, height, "", log)
    if not records:
        plt.text("the first epoch is under way...", x=0.5, y=0.5, alignment="center")
        plt.xlim(0, 1)
        plt.ylim(0, 1)
        return plt.build()
    epochs = [r["step" if by_step else "epoch"] for r in records]
    train = np.array([r["train_loss"] for r in records], dtype=np.float64)
    test = np.array([r["test_loss"] for r in records], dtype=np.float64)
    if log:
        train, test = _positive(train), _positive(test)
    marker = "braille" if len(records) > width // 2 else "dot"
    plt.plot(epochs, train.tolist(), marker=marker, color=TRAIN_COLOR)
    tested = np.isfinite(test)
    if tested.any():  # a loop that logs no test loss: train alone
        test_marker = "x" if monochrome else marker
        plt.plot([e for e, t in zip(epochs, tested) if t], test[tested].tolist(), marker=test_marker, color=TEST_COLOR)
    for line in overlays:
        y = (_positive(line.y) if log else line.y).tolist()
        plt.plot(line.x.tolist(), y, marker=marker, color=line.color)
    if len(records) == 1 and not overlays:  # one point: give plotext a range around it (a resumed run starts late)
        plt.xlim(epochs[0] - 0.5, epochs[0] + 0.5)
    lo, hi = _span(epochs[0], epochs[-1], overlays)
    _integer_xticks(plt, lo, hi, count=min(5, len(epochs) + sum(len(line.x) for line in overlays)))
    plt.xlabel("step" if by_step else "epoch")
    return plt.build()


# -- the latent view ----------------------------------------------------------------------------
CLASS_COLORS = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (67, 99, 216),
    (245, 130, 49),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (188, 246, 12),
    (250, 190, 190),
]


def build_scatter(plt: Plot, points: np.ndarray, labels: np.ndarray, width: int, height: int, title: str) -> str:
    """Points coloured by class (digit 0-9), one braille dot each: clusters by class mean the
    representation separates digits it was never told about."""
    _prepare(plt, width, height, title, log=False)
    for cls in np.unique(labels)[: len(CLASS_COLORS)]:
        mine = points[labels == cls]
        plt.scatter(mine[:, 0].tolist(), mine[:, 1].tolist(), marker="braille", color=CLASS_COLORS[int(cls) % len(CLASS_COLORS)])
    plt.xticks([])
    plt.yticks([])
    return plt.build()


def build_bars(plt: Plot, values: np.ndarray, width: int, height: int, title: str, axis: str = "latent dimension") -> str:
    """KL per latent dimension (or a VQ-VAE's code entropy per position): near zero carries no information."""
    _prepare(plt, width, height, title, log=False)
    plt.bar(list(range(len(values))), values.astype(float).tolist(), color=(95, 175, 255), width=0.6)
    plt.xticks(list(range(len(values))), [str(i) for i in range(len(values))] if len(values) <= width // 3 else None)
    plt.xlabel(axis)
    return plt.build()
