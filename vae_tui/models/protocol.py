"""What vae-tui asks of a VAE, and the training and looking that use nothing else.

Any `nn.Module` with these members can be trained, pictured and analysed by vae-tui: the
trainer's step, the snapshots, the latent view, traversals and the importance-weighted
evaluation all go through the functions below, never through a model's own layers. Images are
tensors of shape (batch, channels, height, width) with values in [0, 1].
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, NamedTuple, Protocol, cast, runtime_checkable

import torch

from vae_tui.models.vae import reparameterize, total_correlation, vae_loss


@runtime_checkable
class VAEModel(Protocol):
    latent_dim: int
    input_shape: tuple[int, int, int]  # channels, height, width

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One training pass, the model's forward: (the likelihood's parameters, mu, logvar), as
        decode(reparameterize(*encode(x))) gives them."""

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior q(z|x): its mean and log-variance, each (batch, latent_dim)."""

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The likelihood p(x|z)'s parameters (for a Bernoulli: logits), shaped like the images."""

    def reconstruction_loss(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x|z) for each image, in nats: shape (batch,)."""

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """The likelihood's mean, an image in [0, 1]: what pictures show."""


class TotalCorrelation(NamedTuple):
    """--tc-beta: beta-TCVAE's weight on the total correlation, and the training images it is estimated for."""

    weight: float
    dataset_size: int


def elbo_terms(
    model: VAEModel,
    x: torch.Tensor,
    beta: float | torch.Tensor,
    forward: Callable[[torch.Tensor], tuple[torch.Tensor, ...]] | None = None,
    tc: TotalCorrelation | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """(loss, reconstruction, KL, other terms), each a mean per image over the batch: one training step's
    loss. `forward`: the model as trained, when that is a wrapper (DistributedDataParallel) around it.
    With `tc`, the other terms are (the total correlation,), and the loss weighs it by `tc.weight` in all:
    beta * KL holds it once at beta (the KL is mutual information + total correlation + each dimension's
    KL), so (weight - beta) * TC is added."""
    params, mu, logvar = (forward if forward is not None else model)(x)
    loss, recon, kl = vae_loss(model.reconstruction_loss(params, x), mu, logvar, beta)
    if tc is None:
        return loss, recon, kl, ()
    correlation = total_correlation(reparameterize(mu, logvar), mu, logvar, tc.dataset_size)
    return loss + (tc.weight - beta) * correlation, recon, kl, (correlation,)


def as_vae(model: torch.nn.Module) -> VAEModel:
    """A module as the functions here see it: built by vae-tui, or your model after the probe found
    its members (a type checker cannot join nn.Module and a Protocol, so this says it once)."""
    return cast(VAEModel, model)


class NoDecoder(RuntimeError):
    """Pictures from z need the decoder on its own, and this model does not name one."""


def decoder_of(model: torch.nn.Module) -> tuple[str, Callable[[torch.Tensor], object]] | None:
    """Your model's decoder on its own, and its name: its `decode` method, else its `decoder` module
    (the one rule for `--model` and `vae-tui run`); None where it has neither."""
    decode = getattr(model, "decode", None)
    if callable(decode):
        return "decode", decode
    decoder = getattr(model, "decoder", None)
    if callable(decoder):
        return "decoder", decoder
    return None


@torch.no_grad()
def reconstruct(model: VAEModel, x: torch.Tensor) -> torch.Tensor:
    """Decode the posterior mean (no sampling), so pictures do not flicker with noise; a model
    whose decoder cannot be called alone is run whole, a sampled z and all."""
    mu, _ = model.encode(x)
    try:
        return model.mean(model.decode(mu))
    except NoDecoder:
        return model.mean(model(x)[0])


@torch.no_grad()
def generate(model: VAEModel, z: torch.Tensor) -> torch.Tensor:
    """Images the decoder makes from latent codes z."""
    return model.mean(model.decode(z))


@torch.no_grad()
def encode_means(model: VAEModel, x: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [model.encode(x[i : i + chunk]) for i in range(0, len(x), chunk)]
    return torch.cat([m for m, _ in parts]), torch.cat([v for _, v in parts])


def rng_kept(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """Random draws made inside (a picture, a probe, a look at the latent space) leave the training's
    generators as they were: a model that samples in its forward would otherwise make a run's noise
    depend on when its pictures were drawn."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


@contextlib.contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode for a look at the model (layers such as batch norm then leave their statistics alone),
    then each module back as it was: `model.train(flag)` would set every submodule alike, waking a
    frozen part (a pretrained encoder left in eval mode) into training."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training
