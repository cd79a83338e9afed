"""A convolutional VAE for pictures from about 28 to 128 pixels, in colour or grey: `--arch conv`.

The same VAE as vae_tui/models/vae.py, with convolutions where the MLP has its first and last layers:

    Encoder:  x -> [3x3 convolution, stride 2, ReLU] x n -> flatten -> (mu, logvar)
              each convolution halves the picture (64 -> 32 -> 16 -> 8 -> 4) and adds channels,
              so nearby pixels are looked at together, as edges, then strokes, then parts
    Decoder:  z -> linear -> [3x3 transposed convolution, stride 2] x n -> the likelihood's parameters
              the same steps in reverse, each doubling the picture back to its exact size

Training, pictures and the latent view use it exactly as they use the MLP (the protocol in
vae_tui/models/protocol.py): encode, decode, the reconstruction term, the mean.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vae_tui.models.conv_plan import plan
from vae_tui.models.vae import make_likelihood, reparameterize


class ConvEncoder(nn.Module):
    def __init__(self, channels: int, widths: tuple[int, ...], flat: int, z_dim: int) -> None:
        super().__init__()
        ins = (channels,) + widths[:-1]
        self.convs = nn.ModuleList(nn.Conv2d(i, o, 3, stride=2, padding=1) for i, o in zip(ins, widths))
        self.fc_mu = nn.Linear(flat, z_dim)
        self.fc_logvar = nn.Linear(flat, z_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for conv in self.convs:
            x = F.relu(conv(x))
        h = x.flatten(1)
        return self.fc_mu(h), self.fc_logvar(h)


class ConvDecoder(nn.Module):
    def __init__(self, channels: int, widths: tuple[int, ...], sizes: tuple[tuple[int, int], ...], z_dim: int) -> None:
        super().__init__()
        self.start = (widths[-1], *sizes[-1])  # the smallest feature map, which the decoder grows back
        self.fc = nn.Linear(z_dim, widths[-1] * sizes[-1][0] * sizes[-1][1])
        outs = (channels,) + widths[:-1]
        layers = []
        for i in reversed(range(len(widths))):  # from the smallest map back to the picture's size
            (h, w), (small_h, small_w) = sizes[i], sizes[i + 1]
            padding = (h - (2 * small_h - 1), w - (2 * small_w - 1))  # 0 or 1: lands on the exact size
            layers.append(nn.ConvTranspose2d(widths[i], outs[i], 3, stride=2, padding=1, output_padding=padding))
        self.ups = nn.ModuleList(layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc(z)).view(-1, *self.start)
        for n, up in enumerate(self.ups):
            x = up(x)
            if n < len(self.ups) - 1:
                x = F.relu(x)
        return x  # the likelihood's parameters, shaped like the pictures


class ConvVAE(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], z_dim: int = 20, likelihood: str = "bernoulli") -> None:
        super().__init__()
        geometry = plan(image_shape, z_dim)
        self.input_shape, self.latent_dim = tuple(image_shape), z_dim
        self.encoder = ConvEncoder(image_shape[0], geometry.widths, geometry.flat, z_dim)
        self.decoder = ConvDecoder(image_shape[0], geometry.widths, geometry.sizes, z_dim)
        self.likelihood = make_likelihood(likelihood, image_shape[0])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the likelihood's parameters, mu, logvar) for a batch of images: one training pass."""
        mu, logvar = self.encode(x)
        return self.decode(reparameterize(mu, logvar)), mu, logvar

    # The model protocol (vae_tui/models/protocol.py): all vae-tui asks of a model.
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def reconstruction_loss(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.likelihood.nll(params, x)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return self.likelihood.mean(params)
