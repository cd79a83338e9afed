"""The variational autoencoder of the seed conversation, written to be read top to bottom.

An image x (flattened to a vector of pixel intensities in [0, 1]) goes through:

    Encoder:  x -> h = relu(W1 x) -> (mu, logvar)      the posterior q(z|x) = N(mu, exp(logvar))
    sample:   z = mu + exp(logvar / 2) * eps,  eps ~ N(0, I)    (the reparameterization trick)
    Decoder:  z -> h = relu(W3 z) -> logits            p(x|z): one Bernoulli per pixel

Training maximises the ELBO, a lower bound on log p(x):

    ELBO = E_q[log p(x|z)] - KL(q(z|x) || N(0, I))

so the loss we minimise is its negative, in two terms that vae-tui charts separately:

    loss = reconstruction + beta * KL          (beta = 1 gives exactly the negative ELBO)

Both terms are summed over pixels / latent dimensions and averaged over the batch, so
they read as "nats per image", the units the classic PyTorch example prints.

The one change from the seed's code: the decoder returns logits and the loss uses
`binary_cross_entropy_with_logits`, which is the same maths as sigmoid + BCE but
numerically stable and faster. `VAE.decode_probs` applies the sigmoid for pictures.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


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


class VAE(nn.Module):
    def __init__(self, input_dim: int = 784, hidden_dim: int = 400, z_dim: int = 20) -> None:
        super().__init__()
        self.input_dim, self.hidden_dim, self.z_dim = input_dim, hidden_dim, z_dim
        self.encoder = Encoder(input_dim, hidden_dim, z_dim)
        self.decoder = Decoder(z_dim, hidden_dim, input_dim)

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        # z = mu + sigma * eps keeps the randomness in eps, so gradients flow into mu, sigma.
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x)
        z = self.reparameterize(mu, logvar)
        return self.decoder(z), mu, logvar

    @torch.no_grad()
    def decode_probs(self, z: torch.Tensor) -> torch.Tensor:
        """Pixel intensities in [0, 1] for latents z: what the image panes draw."""
        return torch.sigmoid(self.decoder(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean (no sampling), so pictures do not flicker with noise."""
        mu, _ = self.encoder(x)
        return self.decode_probs(mu)


def reconstruction_loss(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x|z): Bernoulli negative log-likelihood summed over pixels, mean over the batch."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / x.shape[0]


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) in closed form, summed over z, mean over the batch.

    For one dimension: KL = -1/2 * (1 + logvar - mu^2 - exp(logvar)).
    """
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / mu.shape[0]


def vae_loss(
    logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, beta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, recon, kl), each per image. With beta = 1 the loss is the negative ELBO."""
    recon = reconstruction_loss(logits, x)
    kl = kl_divergence(mu, logvar)
    return recon + beta * kl, recon, kl


def parameter_shapes(input_dim: int, hidden_dim: int, z_dim: int) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of a VAE, found on the meta device: no memory, no real computation."""
    with torch.device("meta"):
        model = VAE(input_dim, hidden_dim, z_dim)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
