"""The classic variational autoencoder (the 784-400-20 MLP of PyTorch's example), to read top to bottom.

An image x (flattened to a vector of pixel intensities in [0, 1]) goes through:

    Encoder:  x -> h = relu(W1 x) -> (mu, logvar)      the posterior q(z|x) = N(mu, exp(logvar))
    sample:   z = mu + exp(logvar / 2) * eps,  eps ~ N(0, I)    (the reparameterization trick)
    Decoder:  z -> h = relu(W3 z) -> logits            p(x|z): one Bernoulli per pixel

Training maximises the ELBO, a lower bound on log p(x):

    ELBO = E_q[log p(x|z)] - KL(q(z|x) || N(0, I))

so the loss we minimise is its negative, in two terms that vae-tui charts separately:

    loss = reconstruction + beta * KL          (beta = 1 gives exactly the negative ELBO)

Both terms are summed over pixels / latent dimensions for each image, then averaged over the
batch, so they read as "nats per image", the units the classic PyTorch example prints.

The one change from the classic code: the decoder returns logits and the loss uses
`binary_cross_entropy_with_logits`, which is the same maths as sigmoid + BCE but numerically
stable and faster. `VAE.mean` applies the sigmoid for pictures.

The reconstruction term is a negative log-likelihood, -log p(x|z), and the Bernoulli is one
choice of p(x|z): natural for nearly black-and-white digits. For photographs a Gaussian with a
learned variance (`GaussianLikelihood`, at the end) often fits better; vae-tui takes either
(`--likelihood`), and both give an honest -log p(x|z) in nats per image.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from vae_tui.models.noise import noise_like


class Encoder(nn.Module):
    """Maps an image to the mean and log-variance of a Gaussian over the latent z."""

    def __init__(self, input_dim: int, hidden_dim: int, z_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.fc2_mu = nn.Linear(hidden_dim, z_dim)
        self.fc2_logvar = nn.Linear(hidden_dim, z_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.fc1(x))
        return self.fc2_mu(h), self.fc2_logvar(h)


class Decoder(nn.Module):
    """Maps a latent z to one logit per pixel (sigmoid(logit) = probability the pixel is on)."""

    def __init__(self, z_dim: int, hidden_dim: int, output_dim: int) -> None:
        super().__init__()
        self.fc3 = nn.Linear(z_dim, hidden_dim)
        self.fc4 = nn.Linear(hidden_dim, output_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc3(z))
        return self.fc4(h)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps keeps the randomness in eps, so gradients flow into mu and sigma."""
    std = torch.exp(0.5 * logvar)
    eps = noise_like(std)  # torch.randn_like(std); under torchrun, this rank's rows of the global batch's
    return mu + eps * std


class VAE(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int] = (1, 28, 28), hidden_dim: int = 400, z_dim: int = 20, likelihood: str = "bernoulli") -> None:
        super().__init__()
        channels, height, width = image_shape
        self.input_shape = (channels, height, width)
        self.input_dim, self.hidden_dim, self.latent_dim = channels * height * width, hidden_dim, z_dim
        self.encoder = Encoder(self.input_dim, hidden_dim, z_dim)
        self.decoder = Decoder(z_dim, hidden_dim, self.input_dim)
        self.likelihood = make_likelihood(likelihood, channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The classic example's forward pass: (logits, mu, logvar) for a batch of images."""
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar)
        return self.decode(z), mu, logvar

    # What vae-tui's trainer, pictures and latent view ask of any model (vae_tui/models/protocol.py).
    # This MLP is the one place that flattens images: its first layer takes a vector.
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x.flatten(1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The likelihood's parameters for each pixel (Bernoulli logits), shaped like the images."""
        return self.decoder(z).view(-1, *self.input_shape)

    def reconstruction_loss(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.likelihood.nll(params, x)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """Pixel intensities in [0, 1]: what the image panes draw."""
        return self.likelihood.mean(params)


def reconstruction_loss(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x|z) for each image: the Bernoulli negative log-likelihood summed over its pixels."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) for each image, in closed form, summed over z.

    For one dimension: KL = -1/2 * (1 + logvar - mu^2 - exp(logvar)).
    """
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def vae_loss(recon: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, beta: float | torch.Tensor = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, recon, kl), each a mean per image over the batch, from the reconstruction term of each
    image (`reconstruction_loss`) and the posterior. With beta = 1 the loss is the negative ELBO.

    vae-tui's trainer computes every model's loss with this function."""
    recon = recon.mean()
    kl = kl_divergence(mu, logvar).mean()
    return recon + beta * kl, recon, kl


def total_correlation(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, dataset_size: int) -> torch.Tensor:
    """beta-TCVAE's total correlation KL(q(z) || prod_d q(z_d)), in nats: how much the latent dimensions
    depend on one another across the data (0 when they are independent). q(z) and each q(z_d) are the
    data's posteriors averaged, estimated on the batch by minibatch stratified sampling (Chen et al. 2018):
    each z_i under every image's posterior, weighted as a batch of a dataset of `dataset_size` images
    stands for it (the weights of a row sum to 1, so posteriors all alike give 0). O(batch^2 * latent)
    memory: about 1.3 MB at batch 128 and 20 dimensions."""
    batch = z.shape[0]
    if batch < 2:
        return z.new_zeros(())
    diff = z.unsqueeze(1) - mu.unsqueeze(0)  # (i, j, d): z_i under x_j's posterior
    log_density = -0.5 * (diff.pow(2) * torch.exp(-logvar).unsqueeze(0) + logvar.unsqueeze(0) + math.log(2 * math.pi))
    log_weights = _stratified_log_weights(batch, max(dataset_size, batch), z)
    log_qz = torch.logsumexp(log_weights + log_density.sum(2), dim=1)
    log_prod_qzd = torch.logsumexp(log_weights.unsqueeze(2) + log_density, dim=1).sum(1)
    return (log_qz - log_prod_qzd).mean()


def _stratified_log_weights(batch: int, n: int, like: torch.Tensor) -> torch.Tensor:
    """log w_ij: z_i's own image weighs 1/n, one other image (the next) (n - m) / (n m), the rest 1/m, with
    m = batch - 1. Made on the device with device operations only (a CUDA graph captures them)."""
    m = batch - 1
    weights = torch.full((batch, batch), 1.0 / m, dtype=like.dtype, device=like.device)
    weights.fill_diagonal_(1.0 / n)
    rows = torch.arange(batch, device=like.device)
    weights[rows, (rows + 1) % batch] = (n - m) / (n * m)
    return weights.log()


# -- the likelihood p(x|z): which distribution the decoder's output parameterises ------------------
class BernoulliLikelihood:
    """One coin per pixel value, the decoder giving its logit: the classic example's choice."""

    def nll(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return reconstruction_loss(logits, x)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)


class GaussianLikelihood(nn.Module):
    """x ~ N(mean, sigma^2) per pixel value, the decoder giving the mean and sigma learned, one per
    channel. Its -log p(x|z) is a density's, in nats: for data in [0, 1] it can go below zero."""

    MIN_LOG_SIGMA = -4.6  # sigma >= 0.01: a density cannot grow without bound on values it sees exactly

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.log_sigma = nn.Parameter(torch.full((channels,), -1.0))  # sigma 0.37: a fair start for values in [0, 1]

    def nll(self, mean: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        log_sigma = self.log_sigma.clamp(min=self.MIN_LOG_SIGMA).view(1, -1, 1, 1)
        per_value = 0.5 * math.log(2 * math.pi) + log_sigma + 0.5 * ((x - mean) / log_sigma.exp()) ** 2
        return per_value.flatten(1).sum(1)

    def mean(self, mean: torch.Tensor) -> torch.Tensor:
        return mean.clamp(0, 1)


def make_likelihood(name: str, channels: int) -> BernoulliLikelihood | GaussianLikelihood:
    if name == "gaussian":
        return GaussianLikelihood(channels)
    if name == "bernoulli":
        return BernoulliLikelihood()
    raise ValueError(f"unknown likelihood {name!r}")
