"""Other runs drawn over the one watched: `vae-tui watch RUN --compare OTHER ...`, or picked with `p`.

Each overlay is followed like the watched run (its metrics and status, not its pictures), on the
watcher's thread, so a run still training moves on the charts as it goes. A series is kept
decimated in time (telemetry/series.py), so five runs of a million steps cost each redraw what five short
ones do.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from vae_tui.errors import ConfigError
from vae_tui.runfile.layout import RunDir
from vae_tui.watching.follow import RunFollower

MAX_OVERLAYS = 8  # distinct colours and a legend that still fits
# Apart from this run's own lines (blue, orange, red, green-yellow) and the yellow of a live change
COLORS = ((175, 135, 255), (95, 215, 175), (255, 95, 215), (235, 235, 235), (135, 215, 95), (95, 215, 255), (215, 135, 95), (135, 135, 255))


@dataclass
class Overlay:
    name: str  # the run directory's name: the legend
    follower: RunFollower
    color: tuple[int, int, int]

    @property
    def path(self) -> Path:
        return self.follower.run.path


class Comparison:
    def __init__(self, paths: Iterable[Path] = ()) -> None:
        self._lock = threading.Lock()
        self._overlays: list[Overlay] = []
        self.version = 0  # bumped when an overlay is added or removed, so charts redraw
        for path in paths:
            self.add(path)

    @staticmethod
    def check(path: Path) -> Path:
        """A run directory to compare with, or ConfigError saying why not."""
        if not RunDir(path).is_run():
            raise ConfigError(f"--compare {path}: not a vae-tui run directory (no config.json)")
        return path.resolve()

    def add(self, path: Path) -> None:
        path = self.check(path)
        with self._lock:
            if any(o.path.resolve() == path for o in self._overlays):
                return
            if len(self._overlays) >= MAX_OVERLAYS:
                raise ConfigError(f"at most {MAX_OVERLAYS} runs can be overlaid at once")
            used = {o.color for o in self._overlays}
            color = next(c for c in COLORS if c not in used)
            self._overlays.append(Overlay(path.name, RunFollower(path, pictures=False), color))
            self.version += 1

    def remove(self, path: Path) -> None:
        with self._lock:
            self._overlays = [o for o in self._overlays if o.path.resolve() != path.resolve()]
            self.version += 1

    def toggle(self, path: Path) -> bool:
        """Add the run, or remove it when it is there; True when it is overlaid now."""
        if self.has(path):
            self.remove(path)
            return False
        self.add(path)
        return True

    def has(self, path: Path) -> bool:
        return any(o.path.resolve() == path.resolve() for o in self.overlays)

    @property
    def overlays(self) -> list[Overlay]:
        with self._lock:
            return list(self._overlays)

    def poll(self) -> None:
        """Take in what the overlaid runs wrote since (on the watcher's thread)."""
        for overlay in self.overlays:
            overlay.follower.poll()

    def key(self) -> tuple[int, ...]:
        """Changes when anything drawn of the overlays does."""
        return (self.version, *(o.follower.telemetry.batches for o in self.overlays), *(o.follower.telemetry.epoch_count for o in self.overlays))


def per_epoch(steps: np.ndarray, batches_per_epoch: int) -> np.ndarray:
    """Steps as fractional epochs: runs with different batch sizes or datasets line up by epoch."""
    return steps / max(batches_per_epoch, 1)
