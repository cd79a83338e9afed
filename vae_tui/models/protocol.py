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

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One training pass, the model's forward: (the likelihood's parameters, mu, logvar), as
        decode(reparameterize(*encode(x))) gives them; then any single numbers to record (term_names)."""

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior q(z|x): its mean and log-variance, each (batch, latent_dim)."""

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The likelihood p(x|z)'s parameters (for a Bernoulli: logits), shaped like the images."""

    def reconstruction_loss(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x|z) for each image, in nats: shape (batch,)."""

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """The likelihood's mean, an image in [0, 1]: what pictures show."""


@runtime_checkable
class QuantizedModel(Protocol):
    """A model whose code is discrete (a VQ-VAE, vae_tui/models/vq.py): one codebook entry per position."""

    latent_dim: int  # positions
    input_shape: tuple[int, int, int]
    term_names: tuple[str, ...]  # the named terms forward returns after the likelihood's parameters
    commitment_weight: float
    prior_kl: float  # KL(q(z|x) || the uniform prior over codes): a constant, nats per image

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(the likelihood's parameters, commitment term, perplexity)."""

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, positions) codebook entries."""

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor: ...

    def code_vectors(self, codes: torch.Tensor) -> torch.Tensor: ...

    def prior_codes(self, draws: torch.Tensor) -> torch.Tensor: ...

    def reconstruction_loss(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor: ...

    def mean(self, params: torch.Tensor) -> torch.Tensor: ...


def quantized(model: object) -> QuantizedModel | None:
    """The model as a discrete-code model, or None for a Gaussian posterior's."""
    return cast(QuantizedModel, model) if callable(getattr(model, "decode_codes", None)) else None


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
    The other terms: the single numbers your model's forward returns besides (UserVAE.term_names), then with
    `tc` the total correlation, which the loss weighs by `tc.weight` in all:
    beta * KL holds it once at beta (the KL is mutual information + total correlation + each dimension's
    KL), so (weight - beta) * TC is added."""
    discrete = quantized(model)
    if discrete is not None:
        return _quantized_terms(discrete, x, beta, forward)
    params, mu, logvar, *named = (forward if forward is not None else model)(x)  # named: your model's own numbers
    loss, recon, kl = vae_loss(model.reconstruction_loss(params, x), mu, logvar, beta)
    if tc is None:
        return loss, recon, kl, tuple(named)
    correlation = total_correlation(reparameterize(mu, logvar), mu, logvar, tc.dataset_size)
    return loss + (tc.weight - beta) * correlation, recon, kl, (*named, correlation)


def _quantized_terms(
    model: QuantizedModel, x: torch.Tensor, beta: float | torch.Tensor, forward: Callable[[torch.Tensor], tuple[torch.Tensor, ...]] | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """A VQ-VAE's step: the negative ELBO's two terms (the KL a constant, log CODES per position) plus the
    weighed commitment term, which keeps the encoder near its entries; perplexity charted beside it."""
    params, commitment, perplexity = (forward if forward is not None else model)(x)
    recon = model.reconstruction_loss(params, x).mean()
    kl = torch.full_like(recon, model.prior_kl)
    vq_loss = model.commitment_weight * commitment  # the codebook follows moving averages, not a loss term
    return recon + beta * kl + vq_loss, recon, kl, (vq_loss, perplexity)


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
    whose decoder cannot be called alone is run whole, a sampled z and all. A VQ-VAE decodes its code."""
    discrete = quantized(model)
    if discrete is not None:
        return discrete.mean(discrete.decode_codes(discrete.codes(x)))
    mu, _ = model.encode(x)
    try:
        return model.mean(model.decode(mu))
    except NoDecoder:
        return model.mean(model(x)[0])


@torch.no_grad()
def generate(model: VAEModel, z: torch.Tensor) -> torch.Tensor:
    """Images the decoder makes from latent codes z."""
    return model.mean(model.decode(z))


def prior_draws(model: torch.nn.Module, count: int, generator: torch.Generator) -> torch.Tensor:
    """Fixed random numbers that `from_prior` turns into samples: z ~ N(0, I), or for a VQ-VAE uniform
    draws that pick each position's code by the usage prior. Fixed, so a watcher sees the same samples sharpen."""
    shape = (count, as_vae(model).latent_dim)
    return torch.rand(shape, generator=generator) if quantized(model) is not None else torch.randn(shape, generator=generator)


@torch.no_grad()
def from_prior(model: torch.nn.Module, draws: torch.Tensor) -> torch.Tensor:
    """Images decoded from the prior, for `prior_draws`' numbers."""
    discrete = quantized(model)
    if discrete is not None:
        return discrete.mean(discrete.decode_codes(discrete.prior_codes(draws)))
    return generate(as_vae(model), draws)


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
