"""Pictures at their real resolution, where the terminal can show pixels (kitty's graphics protocol
or sixel, through textual-image), and the choice between that and half blocks (--images).

The terminal is asked once, before the app starts (afterwards Textual reads every answer): a
terminal that answers neither protocol, tmux that does not pass graphics through, or no terminal
at all gets half blocks. A picture is sent again only when the trainer's snapshot changed.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from textual.app import ComposeResult
from textual.widget import Widget
from textual.widgets import Static

from vae_tui.errors import ConfigError
from vae_tui.runfile.files import of_codes
from vae_tui.telemetry import Telemetry
from vae_tui.views.art import IMAGE_MODES

KITTY_TERMINALS = ("kitty", "ghostty", "wezterm")  # TERM or TERM_PROGRAM naming a terminal that speaks kitty's protocol
GAP = 2  # pixels between pictures, before scaling
PICTURE_SECONDS = 2.0  # real pixels are sent at most this often (a picture is tens of KB; half blocks are cells)
MAX_PIXELS = 250_000  # the sharp upscale stops here: beyond, the terminal's own scaling does the rest


@dataclass(frozen=True)
class PictureMode:
    """How pictures are drawn: "graphics" (with `protocol` "kitty" or "sixel"), "blocks" or "ramp"."""

    mode: str
    protocol: str = ""
    why: str = ""  # when auto chose half blocks: why, in a few words


def choose(option: str, env: Mapping[str, str] = os.environ, tty: bool | None = None, detect: Any = None) -> PictureMode:
    """--images: auto asks the terminal; graphics insists (the protocol it answered, else the one its
    name suggests); blocks and ramp never ask. `detect` stands in for asking, in tests."""
    if option not in IMAGE_MODES:
        raise ConfigError(f"unknown --images {option!r}: choose one of {', '.join(IMAGE_MODES)}")
    if option in ("blocks", "ramp"):
        return PictureMode(option)
    tty = sys.stdout.isatty() and sys.stdin.isatty() if tty is None else tty
    if not tty or env.get("TERM") in (None, "", "dumb"):
        if option == "graphics":
            raise ConfigError("--images graphics needs a terminal that shows pixels; this is not one (use --images blocks)")
        return PictureMode("blocks", why="not a graphics terminal")
    answered = (detect or ask_terminal)()
    if answered:
        return PictureMode("graphics", answered)
    if option == "graphics" and env.get("TMUX"):  # no answer through tmux: pictures sent would be dropped
        raise ConfigError(
            "--images graphics: inside tmux, which does not pass graphics through here, pixels cannot show (use --images blocks, or run outside tmux)"
        )
    if option == "graphics":
        return PictureMode("graphics", _by_name(env))
    why = "inside tmux, which does not pass graphics through" if env.get("TMUX") else "the terminal answered no graphics protocol"
    return PictureMode("blocks", why=why)


def _by_name(env: Mapping[str, str]) -> str:
    names = (env.get("TERM", "") + " " + env.get("TERM_PROGRAM", "")).lower()
    return "kitty" if "KITTY_WINDOW_ID" in env or any(n in names for n in KITTY_TERMINALS) else "sixel"


def ask_terminal() -> str:
    """The protocol the terminal answered: "kitty", "sixel" or "" (textual-image asks on import)."""
    from textual_image import renderable

    if renderable.Image is renderable.TGPImage:
        return "kitty"
    if renderable.Image is renderable.SixelImage:
        return "sixel"
    return ""


def grid(groups: list[list[np.ndarray]], columns: int) -> np.ndarray:
    """PictureMode (channels, h, w, uint8) as one RGB array: each group side by side, groups in rows
    of `columns`, a dark gap between."""
    first = groups[0][0]
    _, h, w = first.shape
    per = len(groups[0])
    rows = math.ceil(len(groups) / columns)
    cell_w = per * w + (per - 1) * (GAP // 2) + GAP
    out = np.full((rows * (h + GAP) - GAP, columns * cell_w - GAP, 3), 24, dtype=np.uint8)
    for i, group in enumerate(groups):
        top, left = (i // columns) * (h + GAP), (i % columns) * cell_w
        for j, picture in enumerate(group):
            rgb = np.repeat(picture, 3, axis=0) if picture.shape[0] == 1 else picture[:3]
            x = left + j * (w + GAP // 2)
            out[top : top + h, x : x + w] = rgb.transpose(1, 2, 0)
    return out


def columns_for(groups: int, group_aspect: float, cells: tuple[int, int], cell_aspect: float = 2.0) -> int:
    """Columns of groups that make the grid fill a pane of cells (width, height) best."""
    width, height = cells
    best, best_scale = 1, 0.0
    for columns in range(1, groups + 1):
        rows = math.ceil(groups / columns)
        scale = min(width / (columns * group_aspect), height * cell_aspect / rows)
        if scale > best_scale:
            best, best_scale = columns, scale
    return best


def sharp(pixels: np.ndarray, cells: tuple[int, int], cell_pixels: tuple[int, int]) -> Any:
    """A PIL image scaled up by a whole factor (nearest neighbour: every pixel a sharp square) to about
    the size of the pane in the terminal's pixels; the protocol fits the rest."""
    from PIL import Image

    target_w, target_h = cells[0] * cell_pixels[0], cells[1] * cell_pixels[1]
    factor = max(1, min(target_w // pixels.shape[1], target_h // pixels.shape[0], int((MAX_PIXELS / (pixels.shape[0] * pixels.shape[1])) ** 0.5)))
    image = Image.fromarray(pixels)
    return image.resize((pixels.shape[1] * factor, pixels.shape[0] * factor), Image.Resampling.NEAREST)


def walks_title(analysis: Mapping[str, np.ndarray]) -> str:
    return "traversals: a position's common codes" if of_codes(analysis) else "traversals: z from -3 to +3"


class GraphicsPane(Widget):
    """Reconstructions (input beside output), samples or traversals in real pixels."""

    def __init__(self, kind: str, protocol: str, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="images graphics")
        self.kind, self.protocol = kind, protocol
        self.mode = "graphics"
        self.budget = None
        self._shown: object = None  # the snapshot (or analysis) version on screen
        self._drawn_size: tuple[int, int] = (0, 0)  # not _size: that is Textual's own
        self._sent = 0.0  # when the last picture went to the terminal

    def compose(self) -> ComposeResult:
        from textual_image.widget import SixelImage, TGPImage

        yield Static("waiting for the first snapshot...", classes="graphics-note")
        yield (TGPImage if self.protocol == "kitty" else SixelImage)(None, classes="graphics-image")

    def draw(self, telemetry: Telemetry, force: bool = False) -> bool:
        """Send a new picture only when the trainer's changed (or the pane's size did)."""
        version = telemetry.analysis_version if self.kind == "traversals" else telemetry.snapshot_version
        size = (self.size.width, self.size.height)
        if not force and version == self._shown and size == self._drawn_size:
            return False
        if not force and size == self._drawn_size and time.monotonic() - self._sent < PICTURE_SECONDS:
            return False
        groups = self._groups(telemetry)
        if not groups or min(size) <= 0:
            return False
        from textual_image._terminal import get_cell_size

        cell = get_cell_size()
        _, h, w = groups[0][0].shape
        columns = 1 if self.kind == "traversals" else columns_for(len(groups), len(groups[0]) * w / h, size, cell.height / cell.width)
        image: Any = self.query_one(".graphics-image")  # textual-image's widget, kitty's or sixel's
        image.image = sharp(grid(groups, columns), size, (cell.width, cell.height))
        self.query_one(".graphics-note", Static).display = False
        self._shown, self._drawn_size, self._sent = version, size, time.monotonic()
        return True

    def forget_frame(self) -> None:
        self._shown = None

    def _groups(self, telemetry: Telemetry) -> list[list[np.ndarray]]:
        if self.kind == "traversals":
            analysis = telemetry.analysis()
            walks = analysis.get("traversals") if analysis else None
            if analysis is not None:
                self.border_title = walks_title(analysis)
            return [list(row) for row in _as_uint8(walks)] if walks is not None and len(walks) else []
        snapshot = telemetry.snapshot()
        if snapshot is None:
            return []
        if self.kind == "reconstructions":
            return [[a, b] for a, b in zip(_as_uint8(snapshot.originals), _as_uint8(snapshot.reconstructions))]
        return [[s] for s in _as_uint8(snapshot.samples)]


def _as_uint8(pictures: np.ndarray) -> np.ndarray:
    """PictureMode as the terminal gets them: floats in [0, 1] to bytes."""
    if pictures.dtype == np.uint8:
        return pictures
    return (np.clip(pictures, 0, 1) * 255 + 0.5).astype(np.uint8)
