"""What the monitor sends to the terminal, counted, and paced by a byte budget (--wire KB/s).

Over SSH every byte crosses the link. The views already send only the cells that changed; when
training is fast nearly every chart cell changes every frame, so on top of that the charts and the
pictures are redrawn only while the budget has bytes left: a fast run is shown less often, never
with more bytes. The status line and the keys' answers are never held back. A picture waits at
most PICTURE_MAX_AGE_S, whatever the budget says.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from vae_tui.pacing import Credit

DEFAULT_WIRE_KB = 10.0  # KB/s in steady state, at 120x40
PACED_SHARE = 0.85  # of the budget, for charts and pictures; the rest is the status line's and the keys'
BURST_S = 2.0  # a budget saved up while nothing changed buys at most this many seconds' worth at once
PICTURE_MAX_AGE_S = 4.0


class WireBudget:
    def __init__(self, kb_per_s: float = DEFAULT_WIRE_KB, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = kb_per_s * 1000 * PACED_SHARE  # bytes a second for what is paced
        self.clock = clock
        self.sent = 0  # bytes written to the terminal since the app started
        self._credit = Credit(self.rate, self.rate * BURST_S)
        self._at = clock()
        self._counted = 0

    def allows(self) -> bool:
        """Whether a paced redraw may go now: the bytes sent so far are paid, and some budget is left."""
        now = self.clock()
        self._credit.earn(now - self._at)
        self._credit.spend(self.sent - self._counted)
        self._at, self._counted = now, self.sent
        return self._credit.value > 0

    def counting(self, write: Callable[[str], Any]) -> Callable[[str], Any]:
        """`write` (the terminal driver's), counting what it sends, in bytes as they leave."""

        def counted(data: str) -> Any:
            self.sent += len(data.encode("utf-8", errors="replace"))
            return write(data)

        return counted


def parse_wire(value: float) -> float:
    """--wire: KB/s, a positive number."""
    from vae_tui.errors import ConfigError

    if not isinstance(value, (int, float)) or not value > 0 or value != value or value == float("inf"):
        raise ConfigError(f"--wire must be a positive number of KB/s (10 is the default; 100 for a fast link), got {value!r}")
    return float(value)
