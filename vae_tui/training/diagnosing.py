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

DIAGNOSED_IMAGES = 1000  # held-out images the posterior findings read (as many as the latent view)
POSTERIOR_KEYS = ("collapse", "holes")
KEYS = (*POSTERIOR_KEYS, "overfitting", "spikes")


class DiagnosisHook(Hook):
    """Says each finding once as it starts and once as it ends (events.jsonl), keeps those that hold in
    status.json (`diagnoses`), and leaves the posterior ones unsaid where the model has no Gaussian posterior."""

    def __init__(self, seconds: float = REPORT_SECONDS) -> None:
        """`seconds`: the least time between two looks (the latent reports' pace)."""
        self.seconds = seconds
        self.diagnoser = Diagnoser()
        self.losses: deque[float] = deque(maxlen=diagnoses.SPIKE_WINDOW)
        self.epochs: list[tuple[int, float, float]] = []
        self._looked = -math.inf
        self._spikes_looked = -math.inf
        self._spike_steps: deque[int] = deque(maxlen=diagnoses.SPIKE_WINDOW)

    def on_losses(self, trainer: "Trainer", chunk: "LossChunk") -> None:
        self.losses.extend(chunk.loss.tolist())
        self._spike_steps.extend(chunk.steps.tolist())
        if time.perf_counter() - self._spikes_looked >= self.seconds:
            self._spikes_looked = time.perf_counter()
            self._say(trainer, {"spikes": self._spikes(trainer)}, ("spikes",))

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        self.epochs.append((int(record["epoch"]), float(record["train_loss"]), float(record["test_loss"])))
        if time.perf_counter() - self._looked < self.seconds and trainer.state.epoch < trainer.epochs:
            return
        self._looked = time.perf_counter()
        found = self.overfitting(trainer)
        keys: tuple[str, ...] = ("overfitting",)
        if quantized(trainer.state.model) is None and not self.warming_up(trainer):
            found |= self.posterior(trainer)
            keys += POSTERIOR_KEYS
        self._say(trainer, found, keys)

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
                gain = decoder_gain(state.vae, x, mu, trainer.config.seed + 4)
            except NoDecoder:  # a decoder only inside forward: collapse is not said, holes still are
                gain = math.inf
        return diagnoses.posterior_figures(mu.float(), logvar.float(), gain)

    def _spikes(self, trainer: "Trainer") -> Finding | None:
        found, median = diagnoses.spikes(np.asarray(self.losses))
        if found.sum() < diagnoses.SPIKES_SAID:
            return None
        first = int(np.asarray(self._spike_steps)[-len(found) :][found][0])
        return diagnoses.lr_spikes(int(found.sum()), median, trainer.state.lr, self.diagnoser.since("spikes", f"step {first:,}"))

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
