"""One way of pacing by time: a credit that grows with the seconds that pass, up to a saved-up most.

The run's records, its epochs' held-out evaluations and the monitor's bytes to the terminal all
spend from one, so that what a run writes and sends grows with time, not with its speed."""

from __future__ import annotations


class Credit:
    """`rate` a second, at most `most` saved up (what a short run, or the start of one, may spend at once)."""

    def __init__(self, rate: float, most: float) -> None:
        self.rate, self.most = rate, most
        self.value = float(most)

    def earn(self, seconds: float) -> None:
        self.value = min(self.most, self.value + seconds * self.rate)

    def spend(self, amount: float) -> None:
        self.value -= amount
