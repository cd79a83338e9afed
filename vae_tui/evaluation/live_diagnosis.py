"""Diagnosing a run as it goes, from what it gives: batch losses, epoch records and, where the model's
posterior is known, its mu and logvar. One owner for vae-tui's trainer, your loop and your unchanged
script: each finding (vae_tui/evaluation/diagnoses.py) said once as it starts and once as it ends
(events.jsonl), those that hold kept in status.json's `diagnoses`, what cannot be known said once."""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Callable

import numpy as np

from vae_tui.evaluation import diagnoses
from vae_tui.evaluation.analysis import REPORT_SECONDS
from vae_tui.evaluation.diagnoses import Diagnoser, PosteriorFigures
from vae_tui.runfile.findings import Finding
from vae_tui.telemetry import Telemetry

# Looks come at most every REPORT_SECONDS (the latent view's pace) and within SHARE of the time: after a
# look of t seconds the next waits t / SHARE.
SHARE = 0.005
POSTERIOR_KEYS = ("collapse", "holes")


class LiveDiagnosis:
    def __init__(self, telemetry: Telemetry, paced: bool = True) -> None:
        """`paced`: look within REPORT_SECONDS and SHARE (tests look at every chance)."""
        self.telemetry, self.paced = telemetry, paced
        self.diagnoser = Diagnoser()
        self.losses: deque[float] = deque(maxlen=diagnoses.SPIKE_WINDOW + diagnoses.SPIKE_BEFORE)
        self.steps: deque[int] = deque(maxlen=diagnoses.SPIKE_WINDOW)
        self.flags: deque[bool] = deque(maxlen=diagnoses.SPIKE_WINDOW)  # each step's: a spike or not
        self.epochs: list[tuple[int, float, float]] = []  # (epoch, train loss, test loss)
        self._unflagged = 0  # losses taken since the last look at them
        self._said_unknown: set[str] = set()
        self._spikes_due = self._posterior_due = -math.inf
        self.step = 0  # the latest step taken, for the words

    def take_losses(self, steps: np.ndarray, losses: np.ndarray, lr: float) -> None:
        """A flush's batch losses; spikes looked for at the pace."""
        self.losses.extend(np.asarray(losses, dtype=np.float64).tolist())
        self.steps.extend(np.asarray(steps).tolist())
        self.step = int(steps[-1]) if len(steps) else self.step
        self._unflagged += len(losses)
        start = time.perf_counter()
        if start >= self._spikes_due:
            self._say({"spikes": self._spikes(lr)}, ("spikes",))
            self._spikes_due = self._next(start)

    def take_epoch(self, epoch: int, train: float, test: float) -> None:
        """An epoch's end (`epoch`: its number, 1 for the first); overfitting looked for where a test loss is known."""
        if not (math.isfinite(train) and math.isfinite(test)):
            return
        self.epochs.append((epoch, train, test))
        found = diagnoses.overfitting(self.epochs)
        self._say({"overfitting": diagnoses.overfit(found, f"epoch {found[0] + 1}") if found else None}, ("overfitting",))

    def posterior_due(self, final: bool = False) -> bool:
        return final or time.perf_counter() >= self._posterior_due

    def take_posterior(self, figures: Callable[[], PosteriorFigures | None], beta: float, now: str) -> None:
        """Collapse and holes from the posterior's figures (computed only here, when due); `beta`: the KL
        weight now (NaN: not known), for the fix offered."""
        start = time.perf_counter()
        found = figures()
        if found is not None:
            since = {key: self.diagnoser.since(key, now) for key in POSTERIOR_KEYS}
            self._say(
                {"collapse": diagnoses.collapse(found, since["collapse"], beta), "holes": diagnoses.holes(found, since["holes"], beta)},
                POSTERIOR_KEYS,
            )
        self._posterior_due = self._next(start)

    def unknown(self, words: str) -> None:
        """A diagnosis this run cannot have, said once (an info event), never guessed."""
        if words not in self._said_unknown:
            self._said_unknown.add(words)
            self.telemetry.event("info", words)

    def _next(self, start: float) -> float:
        """When the next look may be: looking stays within SHARE of the time."""
        if not self.paced:
            return -math.inf
        now = time.perf_counter()
        return now + max(REPORT_SECONDS, (now - start) / SHARE)

    def _spikes(self, lr: float) -> Finding | None:
        self.flags.extend(diagnoses.spike_flags(np.asarray(self.losses), min(self._unflagged, diagnoses.SPIKE_WINDOW)).tolist())
        self._unflagged = 0
        count = sum(self.flags)
        if count < diagnoses.SPIKES_SAID:
            return None
        flags = np.asarray(self.flags)
        first = int(np.asarray(self.steps)[-len(flags) :][flags][0])
        median = float(np.nanmedian(np.asarray(self.losses)[-len(flags) :]))
        return diagnoses.lr_spikes(count, median, lr, self.diagnoser.since("spikes", f"step {first:,}"))

    def _say(self, found: dict[str, Finding | None], keys: tuple[str, ...]) -> None:
        started, ended = self.diagnoser.update(found, keys)
        for finding in started:
            self.telemetry.event("diagnosis", finding.text)
        for finding in ended:
            self.telemetry.event("diagnosis", f"{finding.headline}: over at step {self.step:,} (since {finding.since})")
        if started or ended:
            self.telemetry.update_status(diagnoses=[f.to_dict() for f in self.diagnoser.active.values()])
