"""What the monitor sends to the terminal, counted, and paced by a byte budget (--wire KB/s).

Over SSH every byte crosses the link. The views already send only the cells that changed; when
training is fast nearly every chart cell changes every frame, so on top of that the charts and the
pictures are redrawn as often as the budget pays for. The budget decides how often, never whether:

- Never paced: the status line (its numbers come from the run every tick), the keys' answers, a
  screen opened or closed, a resize. They go at once and their bytes are counted like any others.
- Paced: chart frames and pictures. The budget saves up to BUCKET_S seconds of the wire; charts and
  pictures go while more than RESERVE_S seconds' worth is left, so a repaint finds it there. When a
  repaint spent the reserve (or more: the budget then owes), each kind still goes once it has
  waited its turn: `Pace.wait`, the longest of its floor (CHART_WAIT_S, PICTURE_WAIT_S) and the time
  its share of the wire takes to pay for one of its frames. The shares add up to half the wire, so
  what a repaint spent is paid back over the following seconds while the screen keeps moving (at
  the default, within about 20 s of a help screen opened and closed at 120x40).

Besides repaints, over any span of T seconds the monitor sends at most the wire's worth of
T + BUCKET_S seconds; a repaint goes at once and is paid back as above, so over a long watch the
total is the wire's worth too.
"""

from __future__ import annotations

import time
from typing import Callable

from textual.driver import Driver

from vae_tui.pacing import Credit

DEFAULT_WIRE_KB = 10.0  # KB/s in steady state, at 120x40
BUCKET_S = 8.0  # the most the budget saves up: a repaint of 120x40 in half blocks costs about 6 s of the default
RESERVE_S = 6.0  # what charts and pictures leave saved for the next repaint
CHART_WAIT_S = 2.0  # the longest the charts stand still while the run moves, where their share pays for that
PICTURE_WAIT_S = 4.0  # the same for the pictures: they cost the most bytes, and change once a second at most
CHART_SHARE = 0.4  # of the wire, for the charts' frames while the budget is spent
PICTURE_SHARE = 0.1  # the same for the pictures; the rest pays back what a repaint owes
COST_WEIGHT = 0.3  # how fast a kind's bytes-a-frame estimate follows its latest frame


class WireBudget:
    """Every byte written to the terminal, against `kb_per_s`: a credit that grows with time (at most
    BUCKET_S seconds' worth saved up) and goes below zero when a repaint spends more than it has."""

    def __init__(self, kb_per_s: float = DEFAULT_WIRE_KB, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = kb_per_s * 1000  # bytes a second
        self.clock = clock
        self.sent = 0  # bytes written to the terminal since the app started
        self._credit = Credit(self.rate, self.rate * BUCKET_S)
        self._at = clock()
        self._counted = 0
        self._marks = 0  # frames begun: what is sent between two marks is one frame's
        self._marked = 0  # bytes sent at the last mark

    def mark(self) -> int:
        """A frame begins (paced, or part of a repaint): what follows is its bytes, until the next mark."""
        self._marks += 1
        self._marked = self.sent
        return self._marks

    def sent_since(self, mark: int) -> int | None:
        """The bytes sent since `mark`, or None when another frame began meanwhile (they are not all its own)."""
        return self.sent - self._marked if mark == self._marks else None

    def count(self, data: str) -> None:
        self.sent += len(data.encode("utf-8", errors="replace"))

    def balance(self) -> float:
        """Bytes left to spend now (below zero: owed), with every byte sent so far paid."""
        now = self.clock()
        self._credit.earn(now - self._at)
        self._credit.spend(self.sent - self._counted)
        self._at, self._counted = now, self.sent
        return self._credit.value

    def allows(self) -> bool:
        """Whether a paced frame may go now: more than the reserve for a repaint is saved up."""
        return self.balance() > self.rate * RESERVE_S


class Pace:
    """When one kind of paced redraw (the charts, the pictures) may go, and what its frames cost."""

    def __init__(self, wire: WireBudget, share: float, floor_s: float) -> None:
        self.wire, self.share, self.floor_s = wire, share, floor_s
        self.drawn_at = -float("inf")
        self.cost = 0.0  # bytes one of its frames sends, smoothed over the last few

    def wait(self) -> float:
        """The longest it waits while the budget is spent: its floor, or what its share takes to pay a frame."""
        return max(self.floor_s, self.cost / (self.share * self.wire.rate))

    def due(self) -> bool:
        return self.wire.clock() - self.drawn_at >= self.wait() or self.wire.allows()

    def drawn(self) -> Callable[[], None]:
        """A frame goes now; the returned call, made once the screen has been written, notes what it cost
        (unless another frame or a repaint began meanwhile)."""
        self.drawn_at, mark = self.wire.clock(), self.wire.mark()

        def cost() -> None:
            sent = self.wire.sent_since(mark)
            if sent is not None:
                self.cost += COST_WEIGHT * (sent - self.cost)

        return cost


def counted(base: type[Driver], wire: WireBudget) -> type[Driver]:
    """`base` (the terminal driver Textual would use), counting every byte it writes into `wire`."""

    def write(self: Driver, data: str) -> None:
        wire.count(data)
        base.write(self, data)

    return type(f"Counted{base.__name__}", (base,), {"write": write})


def parse_wire(value: float) -> float:
    """--wire: KB/s, a positive number."""
    from vae_tui.errors import ConfigError

    if not isinstance(value, (int, float)) or not value > 0 or value != value or value == float("inf"):
        raise ConfigError(f"--wire must be a positive number of KB/s (10 is the default; 100 for a fast link), got {value!r}")
    return float(value)
