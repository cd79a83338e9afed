"""The hook that diagnoses the run as it trains (vae_tui/evaluation/diagnoses.py): at the latent reports'
pace, from the held-out images' posteriors and the loss records the host already has, never per step."""

from __future__ import annotations

import math
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vae_tui.evaluation import diagnoses
from vae_tui.evaluation.diagnoses import Diagnoser, PosteriorFigures
from vae_tui.models.protocol import NoDecoder, VAEModel, encode_means, evaluating, quantized, rng_kept
from vae_tui.runfile.findings import Finding
from vae_tui.training.hooks import Hook
from vae_tui.training.pictures import REPORT_SECONDS

if TYPE_CHECKING:
    from vae_tui.training.loop import Trainer
    from vae_tui.training.losses import LossChunk

DIAGNOSED_IMAGES = 500  # held-out images the posterior findings read
DECODED_IMAGES = 256  # and of them, those decoded twice for the decoder's gain (38 ms for 1,000 on MNIST, 2 cores)
SHARE = 0.005  # of the training time, at most, spent looking: after a look of t seconds the next waits t / SHARE
POSTERIOR_KEYS = ("collapse", "holes")
KEYS = (*POSTERIOR_KEYS, "overfitting", "spikes")


class DiagnosisHook(Hook):
    """Says each finding once as it starts and once as it ends (events.jsonl), keeps those that hold in
    status.json (`diagnoses`), and leaves the posterior ones unsaid where the model has no Gaussian posterior."""

    def __init__(self, paced: bool = True) -> None:
        """`paced`: look at most every REPORT_SECONDS and within SHARE of the time (tests look at every epoch)."""
        self.paced = paced
        self.diagnoser = Diagnoser()
        self.losses: deque[float] = deque(maxlen=diagnoses.SPIKE_WINDOW + diagnoses.SPIKE_BEFORE)
        self.flags: deque[bool] = deque(maxlen=diagnoses.SPIKE_WINDOW)  # each step's: a spike or not
        self._unflagged = 0  # losses taken since the last look at them
        self._said_unknown: set[str] = set()
        self.epochs: list[tuple[int, float, float]] = []
        self._due = -math.inf  # when the next look at the posterior may be
        self._spikes_due = -math.inf
        self._steps: deque[int] = deque(maxlen=diagnoses.SPIKE_WINDOW)

    def on_losses(self, trainer: "Trainer", chunk: "LossChunk") -> None:
        self.losses.extend(chunk.loss.tolist())
        self._steps.extend(chunk.steps.tolist())
        self._unflagged += len(chunk.loss)
        start = time.perf_counter()
        if start >= self._spikes_due:
            self._say(trainer, {"spikes": self._spikes(trainer)}, ("spikes",))
            self._spikes_due = self._next(start)

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        self.epochs.append((int(record["epoch"]), float(record["train_loss"]), float(record["test_loss"])))
        start = time.perf_counter()
        if start < self._due and trainer.state.epoch < trainer.epochs:
            return
        found = self.overfitting(trainer)
        keys: tuple[str, ...] = ("overfitting",)
        if quantized(trainer.state.model) is not None:
            self._unknown(trainer, "posterior collapse and holes are not diagnosed: a VQ-VAE's code has no Gaussian posterior")
        elif not self.warming_up(trainer):
            found |= self.posterior(trainer)
            keys += POSTERIOR_KEYS
        self._say(trainer, found, keys)
        self._due = self._next(start)

    def _next(self, start: float) -> float:
        """When the next look may be: the cost of looking stays within SHARE of the training time."""
        if not self.paced:
            return -math.inf
        now = time.perf_counter()
        return now + max(REPORT_SECONDS, (now - start) / SHARE)

    @staticmethod
    def warming_up(trainer: "Trainer") -> bool:
        """During a KL warm-up beta is still rising: a collapsed-looking posterior is expected, not said."""
        return trainer.beta() < trainer.state.beta

    def overfitting(self, trainer: "Trainer") -> dict[str, Finding | None]:
        found = diagnoses.overfitting(self.epochs)
        return {"overfitting": diagnoses.overfit(found, f"epoch {found[0] + 1}") if found else None}

    def posterior(self, trainer: "Trainer") -> dict[str, Finding | None]:
        figures = self.figures(trainer)
        if figures is None:
            return {}
        now, beta = f"epoch {trainer.state.epoch}", trainer.state.beta
        since = {key: self.diagnoser.since(key, now) for key in POSTERIOR_KEYS}
        return {"collapse": diagnoses.collapse(figures, since["collapse"], beta), "holes": diagnoses.holes(figures, since["holes"], beta)}

    def figures(self, trainer: "Trainer") -> PosteriorFigures | None:
        state = trainer.state
        x = trainer.images.test_x[:DIAGNOSED_IMAGES]
        with evaluating(state.model), rng_kept(state.device), torch.no_grad():
            mu, logvar = encode_means(state.vae, x)
            try:
                gain = decoder_gain(state.vae, x[:DECODED_IMAGES], mu[:DECODED_IMAGES], trainer.config.seed + 4)
            except NoDecoder:  # a decoder only inside forward: collapse is not said, holes still are
                self._unknown(trainer, "posterior collapse is not diagnosed: the model's decoder cannot be run on its own")
                gain = math.inf
        return diagnoses.posterior_figures(mu.float(), logvar.float(), gain)

    def _spikes(self, trainer: "Trainer") -> Finding | None:
        self.flags.extend(diagnoses.spike_flags(np.asarray(self.losses), min(self._unflagged, diagnoses.SPIKE_WINDOW)).tolist())
        self._unflagged = 0
        count = sum(self.flags)
        if count < diagnoses.SPIKES_SAID:
            return None
        flags = np.asarray(self.flags)
        first = int(np.asarray(self._steps)[-len(flags) :][flags][0])
        window = np.asarray(self.losses)[-len(flags) :]
        median = float(np.nanmedian(window))
        return diagnoses.lr_spikes(count, median, trainer.state.lr, self.diagnoser.since("spikes", f"step {first:,}"))

    def _unknown(self, trainer: "Trainer", words: str) -> None:
        """A diagnosis this model cannot have, said once (an info event), never guessed."""
        if words not in self._said_unknown:
            self._said_unknown.add(words)
            trainer.telemetry.event("info", words)

    def _say(self, trainer: "Trainer", found: dict[str, Finding | None], keys: tuple[str, ...]) -> None:
        started, ended = self.diagnoser.update(found, keys)
        tele = trainer.telemetry
        for finding in started:
            tele.event("diagnosis", finding.text)
        for finding in ended:
            tele.event("diagnosis", f"{finding.headline}: over at epoch {trainer.state.epoch} (since {finding.since})")
        if started or ended or self.diagnoser.active:
            tele.update_status(diagnoses=[f.to_dict() for f in self.diagnoser.active.values()])


@torch.no_grad()
def decoder_gain(model: VAEModel, x: torch.Tensor, mu: torch.Tensor, seed: int) -> float:
    """How much better the decoder reconstructs from an image's code (its posterior mean) than from a z of
    the prior, in nats per image: about 0 when the decoder ignores z (collapse), tens of nats when healthy."""
    z = torch.randn(mu.shape, generator=torch.Generator(device="cpu").manual_seed(seed)).to(mu.device, mu.dtype)
    with_code = model.reconstruction_loss(model.decode(mu), x).mean()
    from_prior = model.reconstruction_loss(model.decode(z), x).mean()
    return float(from_prior - with_code)
