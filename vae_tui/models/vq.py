"""A small VQ-VAE (van den Oord et al. 2017), to set beside the Gaussian VAE and see what a discrete code changes.

The encoder maps an image to `positions` vectors; each is replaced by the nearest of `CODES` entries of
a codebook shared by all positions, and the decoder sees only those entries:

    Encoder:  x -> h = relu(W1 x) -> z_e, `positions` vectors of CODE_DIM values
    quantize: z_q[p] = e_k with k = argmin_j |z_e[p] - e_j|      (a code: one of CODES per position)
    Decoder:  z_q -> h = relu(W3 z_q) -> the likelihood's parameters, as the Gaussian VAE's decoder

argmin has no gradient, so the decoder's gradient is copied onto z_e (the straight-through estimator:
z_e + (z_q - z_e).detach()). The codebook learns without one: each entry moves to the running mean of
the encoder's vectors it was chosen for (exponential moving averages, van den Oord et al.'s appendix and
VQ-VAE-2's choice; on digits, training its entries by gradient instead spiked the loss to 600 nats and
back in each of four seeds). The encoder is kept near its entries by the commitment term, summed per image
as the reconstruction is:

    commitment = |z_e - sg[z_q]|^2,  weighed COMMITMENT = 0.25, charted as vq_loss

Read as a VAE, the posterior q(z|x) puts all its mass on one code, and the prior is uniform over the
CODES^positions codes, so the KL is the constant positions * log CODES nats: the loss vae-tui charts,
reconstruction + beta * KL + vq_loss, has the negative ELBO in its first two terms.
The prior is the weak part: codes drawn uniformly are mostly combinations no image has. The model counts how often each
position used each code in training (`usage`), and samples draw each position's code from those counts
on their own, a crude prior a PixelCNN over codes would replace. Perplexity, exp of the entropy of the
batch's codes, says how many entries are really in use: far below CODES, most of the codebook is dead.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from vae_tui.models.vae import make_likelihood

CODES = 64  # codebook entries
CODE_DIM = 8  # values in each entry
COMMITMENT = 0.25  # the commitment term's weight, the paper's
DECAY = 0.99  # the moving averages' (entries, and the counts behind samples): codes as used now, not at the start
SMOOTHING = 1e-5  # an entry chosen for nothing keeps a finite mean (Laplace smoothing of the counts)


class VectorQuantizer(nn.Module):
    """The codebook, its entries buffers moved by moving averages while training (device operations only:
    a CUDA graph captures them; under torchrun, DistributedDataParallel hands rank 0's to every rank)."""

    entries: torch.Tensor
    chosen_count: torch.Tensor
    chosen_sum: torch.Tensor
    usage: torch.Tensor

    def __init__(self, positions: int, codes: int = CODES, dim: int = CODE_DIM) -> None:
        super().__init__()
        self.codes = codes
        entries = torch.empty(codes, dim).uniform_(-1.0 / codes, 1.0 / codes)
        self.register_buffer("entries", entries)
        self.register_buffer("chosen_count", torch.ones(codes))  # moving averages of how often each entry is
        self.register_buffer("chosen_sum", entries.clone())  # chosen, and of the vectors it is chosen for
        self.register_buffer("usage", torch.ones(positions, codes))  # (position, entry): the samples' prior

    def nearest(self, z_e: torch.Tensor) -> torch.Tensor:
        """Each vector's nearest entry: (batch, positions) codes, by squared distance."""
        entries = self.entries
        distances = z_e.pow(2).sum(-1, keepdim=True) - 2 * z_e @ entries.t() + entries.pow(2).sum(-1)
        return distances.argmin(-1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        return F.embedding(codes, self.entries)

    def forward(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z_q with the straight-through gradient, the commitment term as a mean per image, perplexity)."""
        codes = self.nearest(z_e)
        chosen = z_e.new_zeros(*codes.shape, self.codes).scatter_(-1, codes.unsqueeze(-1), 1.0)  # one-hot (batch, positions, entries);
        # F.one_hot would check its codes' range on the host, which a CUDA graph cannot capture
        z_q = self.lookup(codes)  # the entries as they were: they move for the next batch
        if self.training:
            self._follow(chosen, z_e.detach())
        commitment = (z_e - z_q.detach()).pow(2).flatten(1).sum(1).mean()
        share = chosen.mean((0, 1))
        perplexity = torch.exp(-(share * torch.log(share + 1e-10)).sum())
        return z_e + (z_q - z_e).detach(), commitment, perplexity

    @torch.no_grad()
    def _follow(self, chosen: torch.Tensor, z_e: torch.Tensor) -> None:
        flat = chosen.flatten(0, 1).float()
        self.chosen_count.mul_(DECAY).add_(flat.sum(0), alpha=1 - DECAY)
        self.chosen_sum.mul_(DECAY).add_(flat.t() @ z_e.flatten(0, 1).float(), alpha=1 - DECAY)
        total = self.chosen_count.sum()
        smoothed = (self.chosen_count + SMOOTHING) / (total + self.codes * SMOOTHING) * total
        self.entries.copy_(self.chosen_sum / smoothed.unsqueeze(1))
        self.usage.mul_(DECAY).add_(chosen.sum(0).float())


class VQVAE(nn.Module):
    """The MLP VAE's encoder and decoder around a vector quantizer: `z_dim` positions of one code each."""

    term_names = ("vq_loss", "perplexity")  # the named terms a training step gives (protocol.elbo_terms)
    commitment_weight = COMMITMENT

    def __init__(self, image_shape: tuple[int, int, int] = (1, 28, 28), hidden_dim: int = 400, z_dim: int = 20, likelihood: str = "bernoulli") -> None:
        super().__init__()
        channels, height, width = image_shape
        self.input_shape = (channels, height, width)
        self.input_dim, self.latent_dim = channels * height * width, z_dim  # latent_dim: positions, one code each
        self.encoder = nn.Sequential(nn.Linear(self.input_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, z_dim * CODE_DIM))
        self.quantizer = VectorQuantizer(z_dim)
        self.decoder = nn.Sequential(nn.Linear(z_dim * CODE_DIM, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, self.input_dim))
        self.likelihood = make_likelihood(likelihood, channels)
        self.prior_kl = z_dim * math.log(CODES)  # KL(one code || uniform over all), nats per image

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the likelihood's parameters, commitment term, perplexity) for a batch."""
        z_q, commitment, perplexity = self.quantizer(self.encode_vectors(x))
        return self.decode_vectors(z_q), commitment, perplexity

    def encode_vectors(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.flatten(1)).view(len(x), self.latent_dim, CODE_DIM)

    def decode_vectors(self, z_q: torch.Tensor) -> torch.Tensor:
        return self.decoder(z_q.flatten(1)).view(-1, *self.input_shape)

    # What vae-tui asks of a model with a discrete code (vae_tui/models/protocol.py).
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Each image's code: (batch, positions) entries of the codebook."""
        return self.quantizer.nearest(self.encode_vectors(x))

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decode_vectors(self.quantizer.lookup(codes))

    def code_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        """The entries a code stands for, flat: (batch, positions * CODE_DIM), the points the latent view projects."""
        return self.quantizer.lookup(codes).flatten(1)

    def prior_codes(self, draws: torch.Tensor) -> torch.Tensor:
        """Codes from the usage prior for uniform `draws` in [0, 1), (count, positions): each position's
        code by the inverse of its counts' distribution, so the same draws follow the prior as it learns."""
        cumulative = self.quantizer.usage.cumsum(-1)
        cumulative = cumulative / cumulative[:, -1:]
        targets = draws.t().contiguous().to(cumulative.dtype)  # (positions, count)
        codes = torch.searchsorted(cumulative, targets, right=True).clamp(max=self.quantizer.codes - 1)  # never an unused entry
        return codes.t()

    def reconstruction_loss(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.likelihood.nll(params, x)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return self.likelihood.mean(params)
