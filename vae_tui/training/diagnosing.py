"""The hook that diagnoses the run as it trains (vae_tui/evaluation/diagnoses.py): at the latent reports'
pace, from the held-out images' posteriors and the loss records the host already has, never per step."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from vae_tui.evaluation import diagnoses
from vae_tui.evaluation.diagnoses import PosteriorFigures
from vae_tui.evaluation.live_diagnosis import LiveDiagnosis
from vae_tui.models.protocol import NoDecoder, VAEModel, encode_means, evaluating, quantized, rng_kept
from vae_tui.training.hooks import Hook

if TYPE_CHECKING:
    from vae_tui.training.loop import Trainer
    from vae_tui.training.losses import LossChunk

DIAGNOSED_IMAGES = 500  # held-out images the posterior findings read
DECODED_IMAGES = 256  # and of them, those decoded twice for the decoder's gain (38 ms for 1,000 on MNIST, 2 cores)


class DiagnosisHook(Hook):
    """The trainer's side of LiveDiagnosis: its losses, its epochs, and the posterior of held-out images."""

    def __init__(self, paced: bool = True) -> None:
        self.paced = paced

    def on_start(self, trainer: "Trainer") -> None:
        self.live = LiveDiagnosis(trainer.telemetry, self.paced)

    def on_losses(self, trainer: "Trainer", chunk: "LossChunk") -> None:
        self.live.take_losses(chunk.steps, chunk.loss, trainer.state.lr)

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        self.live.take_epoch(int(record["epoch"]), float(record["train_loss"]), float(record["test_loss"]))
        if quantized(trainer.state.model) is not None:
            self.live.unknown("posterior collapse and holes are not diagnosed: a VQ-VAE's code has no Gaussian posterior")
        elif trainer.beta() >= trainer.state.beta and self.live.posterior_due(final=trainer.state.epoch >= trainer.epochs):
            # (during a KL warm-up beta still rises: a collapsed-looking posterior is expected, not said)
            self.live.take_posterior(lambda: self.figures(trainer), trainer.state.beta, f"epoch {trainer.state.epoch}")

    def figures(self, trainer: "Trainer") -> PosteriorFigures:
        state = trainer.state
        x = trainer.images.test_x[:DIAGNOSED_IMAGES]
        with evaluating(state.model), rng_kept(state.device), torch.no_grad():
            mu, logvar = encode_means(state.vae, x)
            try:
                gain: float | None = decoder_gain(state.vae, x[:DECODED_IMAGES], mu[:DECODED_IMAGES], trainer.config.seed + 4)
            except NoDecoder:  # a decoder only inside forward: collapse is judged by the KL alone
                gain = None
        return diagnoses.posterior_figures(mu.float(), logvar.float(), gain)


@torch.no_grad()
def decoder_gain(model: VAEModel, x: torch.Tensor, mu: torch.Tensor, seed: int) -> float:
    """How much better the decoder reconstructs from an image's code (its posterior mean) than from a z of
    the prior, in nats per image: about 0 when the decoder ignores z (collapse), tens of nats when healthy."""
    z = torch.randn(mu.shape, generator=torch.Generator(device="cpu").manual_seed(seed)).to(mu.device, mu.dtype)
    with_code = model.reconstruction_loss(model.decode(mu), x).mean()
    from_prior = model.reconstruction_loss(model.decode(z), x).mean()
    return float(from_prior - with_code)
