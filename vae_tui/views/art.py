"""Images as terminal text: pure functions over numpy arrays, no UI framework.

Images come as (height, width) or (channels, height, width) arrays in [0, 1], grey or colour.

Two modes:
- "ramp": one character per pixel from a density ramp of the picture's brightness, twice as wide
  as tall so a square image looks square. Needs no colour at all (plain terminals, NO_COLOR).
- "blocks": half blocks, two pixels per cell (the upper one as foreground of "▀", the lower one
  as background), in grey levels or in colour. Colour is quantised to the terminal's depth
  (`colour_levels`): 6 levels a channel where it has 256 colours (the palette's own cube, which
  Rich writes as 256-colour codes), every level where it promises 24 bits. Textual turns
  everything grey under NO_COLOR.

Images are scaled by whole factors (8x8 digits up, 28x28 MNIST down) to fit the space given.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from rich.color import Color
from rich.segment import Segment
from rich.style import Style

RAMP = " .:-=+*#%@"
MODES = ("blocks", "ramp")
IMAGE_MODES = ("auto", "graphics", *MODES)  # --images: real pixels where the terminal can (tui/graphics.py), or art
GREY_LEVELS = 8  # quantised greys: fewer cells change between frames, so less crosses the link
LUMINANCE = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601 weights of red, green, blue
COLOUR_LEVELS = 6  # per channel, 216 colours: the 256-colour palette's own cube, and few changes on the wire
TRUE_COLOUR_LEVELS = 256  # per channel where the terminal has 24-bit colour: the picture as it is


def picture(image: np.ndarray) -> np.ndarray:
    """(height, width) for grey, (height, width, 3) for colour: the layouts the drawing takes."""
    image = np.clip(np.nan_to_num(np.asarray(image, dtype=np.float32)), 0.0, 1.0)
    if image.ndim == 2:
        return image
    if image.shape[0] == 3:
        return image.transpose(1, 2, 0)
    return image.mean(axis=0)  # one channel (or an odd number): grey


def brightness(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else image @ LUMINANCE


def rescale(image: np.ndarray, factor: float) -> np.ndarray:
    """Enlarge by repeating pixels (nearest neighbour), shrink by averaging whole blocks; a
    trailing colour axis comes along."""
    if factor >= 1:
        h, w = _scaled(image.shape, factor)
        rows = (np.arange(h) / factor).astype(int)
        cols = (np.arange(w) / factor).astype(int)
        return image[rows][:, cols]
    k = int(round(1 / factor))
    h, w = (image.shape[0] // k) * k, (image.shape[1] // k) * k
    return image[:h, :w].reshape(h // k, k, w // k, k, *image.shape[2:]).mean(axis=(1, 3))


def cell_size(shape: tuple[int, int], mode: str, factor: float = 1) -> tuple[int, int]:
    """(rows, columns) of terminal cells one image takes at this scale."""
    h, w = _scaled(shape, factor)
    return ((h + 1) // 2, w) if mode == "blocks" else (h, 2 * w)


def _scaled(shape: tuple[int, ...], factor: float) -> tuple[int, int]:
    if factor >= 1:
        return int(round(shape[0] * factor)), int(round(shape[1] * factor))
    k = int(round(1 / factor))
    return shape[0] // k, shape[1] // k


FACTORS = (6, 5, 4, 3, 2.5, 2, 1.5, 1, 1 / 2, 1 / 4, 1 / 8, 1 / 16)  # the smallest: a row of 64px pictures in half a screen
LEGIBLE_ROWS = 6  # an image shorter than this many terminal rows is hard to read


@dataclass(frozen=True)
class Layout:
    factor: float
    columns: int  # groups per row
    rows: int  # rows of groups
    cell_h: int
    cell_w: int

    @property
    def capacity(self) -> int:
        return self.columns * self.rows


def fit(shape: tuple[int, int], mode: str, width: int, height: int, groups: int, per_group: int = 1) -> Layout:
    """The largest legible scale at which all `groups` fit in width x height; failing that, the
    legible scale that shows the most of them; failing that, whatever shows anything.

    A group is `per_group` images side by side (an input and its reconstruction), groups are
    separated by one blank column and rows of groups by one blank line.
    """
    layouts = []
    for factor in FACTORS:
        ch, cw = cell_size(shape, mode, factor)
        if ch < 1 or cw < 1:
            continue
        group_w = per_group * cw + (per_group - 1)
        columns = max(0, (width + 1) // (group_w + 1))
        rows = max(0, (height + 1) // (ch + 1))
        layouts.append(Layout(factor, columns, rows, ch, cw))
    legible = [lay for lay in layouts if lay.cell_h >= LEGIBLE_ROWS]
    for layout in legible:
        if layout.capacity >= groups:
            return layout
    showing = [lay for lay in legible if lay.capacity > 0]
    if showing:
        return max(showing, key=lambda lay: (min(lay.capacity, groups), lay.factor))
    showing = [lay for lay in layouts if lay.capacity > 0]  # too small to be legible: biggest that shows
    return showing[0] if showing else layouts[-1]


@lru_cache(maxsize=None)
def _grey_style(top: int, bottom: int) -> Style:
    """Style of a half block: upper pixel as foreground, lower as background (quantised levels), as
    256-colour greys: "38;5;244" crosses the link in fewer bytes than "38;2;128;128;128", and every
    terminal that draws 24-bit colour draws these."""
    return Style(color=_grey(top), bgcolor=_grey(bottom))


def _grey(level: int) -> Color:
    """The xterm grey nearest a quantised level: black (16), white (231), or the ramp 232-255 (8 to 238)."""
    value = round(level * 255 / (GREY_LEVELS - 1))
    if value < 4:
        return Color.from_ansi(16)
    if value > 246:
        return Color.from_ansi(231)
    return Color.from_ansi(232 + min(23, max(0, round((value - 8) / 10))))


def colour_levels(color_system: str | None) -> int:
    """Levels a channel for a terminal of this depth (Rich's console.color_system)."""
    return TRUE_COLOUR_LEVELS if color_system == "truecolor" else COLOUR_LEVELS


@lru_cache(maxsize=4096)
def _colour_style(top: tuple[int, int, int], bottom: tuple[int, int, int], levels: int) -> Style:
    step = 255 / (levels - 1)
    t, b = (tuple(round(v * step) for v in rgb) for rgb in (top, bottom))
    return Style(color=Color.from_rgb(*t), bgcolor=Color.from_rgb(*b))


Line = list  # a line of terminal text: a list of rich Segments


def image_lines(image: np.ndarray, mode: str, colours: int = COLOUR_LEVELS) -> list[Line]:
    """One image (values in [0, 1], grey or colour) as lines of Segments; runs of equal cells share a
    segment. `colours`: levels a channel of a colour picture (colour_levels)."""
    return _lines(picture(image), mode, colours)


def _lines(image: np.ndarray, mode: str, colours: int = COLOUR_LEVELS) -> list[Line]:
    """The same, from a picture already laid out by `picture`."""
    if mode == "ramp":
        index = np.minimum((brightness(image) * len(RAMP)).astype(int), len(RAMP) - 1)
        return [[Segment("".join(RAMP[i] * 2 for i in row))] for row in index]
    colour = image.ndim == 3
    levels = np.round(image * ((colours if colour else GREY_LEVELS) - 1)).astype(int)
    if len(levels) % 2:
        levels = np.concatenate([levels, np.zeros_like(levels[:1])])
    lines = []
    for top, bottom in zip(levels[0::2].tolist(), levels[1::2].tolist()):
        line: Line = []
        run_style, run = None, 0
        for t, b in zip(top, bottom):
            style = _colour_style(tuple(t), tuple(b), colours) if colour else _grey_style(t, b)
            if style is run_style:
                run += 1
                continue
            if run:
                line.append(Segment("▀" * run, run_style))
            run_style, run = style, 1
        line.append(Segment("▀" * run, run_style))
        lines.append(line)
    return lines


def grid(groups: list[list[np.ndarray]], mode: str, width: int, height: int, colours: int = COLOUR_LEVELS) -> list[Line]:
    """Lay groups of same-sized images out to fit width x height cells; extra groups are left out."""
    if not groups or width < 1 or height < 1:
        return []
    groups = [[picture(image) for image in group] for group in groups]
    per_group = len(groups[0])
    layout = fit(groups[0][0].shape, mode, width, height, len(groups), per_group)
    shown = groups[: layout.capacity]
    if not shown:
        return [[Segment("(too small)")]]
    rendered = [[_lines(rescale(img, layout.factor), mode, colours) for img in group] for group in shown]
    gap = Segment(" ")
    out: list[Line] = []
    for start in range(0, len(rendered), layout.columns):
        if start:
            out.append([])
        row = rendered[start : start + layout.columns]
        for line_no in range(layout.cell_h):
            line: Line = []
            for g, group in enumerate(row):
                for i, lines in enumerate(group):
                    if g or i:
                        line.append(gap)
                    line.extend(lines[line_no])
            out.append(line)
    return out
