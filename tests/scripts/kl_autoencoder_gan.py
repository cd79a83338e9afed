"""A latent-diffusion style KL autoencoder: encode(x).latent_dist, decode(z).sample, an LPIPS-like
perceptual term, and a patch discriminator with its own Adam that starts after --disc-start steps."""

import argparse
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import vae_tui

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=12)
parser.add_argument("--disc-start", type=int, default=4)
parser.add_argument("--disc-first", action="store_true")
parser.add_argument("--kl-weight", type=float, default=1e-3)
args = parser.parse_args()


class DiagonalGaussian:
    def __init__(self, moments):
        self.mean, self.logvar = torch.chunk(moments, 2, dim=1)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self):
        return self.mean + self.std * torch.randn_like(self.mean)

    def kl(self):
        return 0.5 * torch.sum(self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar, dim=[1, 2, 3])


@dataclass
class EncoderOutput:
    latent_dist: DiagonalGaussian


@dataclass
class DecoderOutput:
    sample: torch.Tensor


class KLAutoencoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.SiLU(), nn.Conv2d(16, 8, 3, 2, 1))
        self.decoder = nn.Sequential(nn.ConvTranspose2d(4, 16, 4, 2, 1), nn.SiLU(), nn.ConvTranspose2d(16, 3, 4, 2, 1))

    def encode(self, x):
        return EncoderOutput(DiagonalGaussian(self.encoder(x)))

    def decode(self, z):
        return DecoderOutput(self.decoder(z))


class PatchDiscriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(8, 1, 4, 1, 1))

    def forward(self, x):
        return self.net(x)


torch.manual_seed(0)
perceptual_net = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1)).requires_grad_(False)  # stands in for LPIPS's backbone


def perceptual(a, b):
    return F.mse_loss(perceptual_net(a), perceptual_net(b))


images = torch.rand(96, 3, 16, 16) * 2 - 1
loader = DataLoader(TensorDataset(images), batch_size=16, shuffle=True)
vae = KLAutoencoder()
discriminator = PatchDiscriminator()
opt_ae = torch.optim.Adam(vae.parameters(), lr=1e-3)
opt_disc = torch.optim.Adam(discriminator.parameters(), lr=2e-4)
step = 0


def disc_step(x, recon):
    d_loss = 0.5 * (F.relu(1.0 - discriminator(x)).mean() + F.relu(1.0 + discriminator(recon.detach())).mean())
    opt_disc.zero_grad()
    d_loss.backward()
    opt_disc.step()
    return d_loss.item()


while step < args.steps:
    for (x,) in loader:
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        d = disc_step(x, recon) if args.disc_first and step >= args.disc_start else float("nan")
        rec = F.l1_loss(recon, x)
        p_loss = perceptual(recon, x)
        kl = posterior.kl().mean()
        g_loss = -discriminator(recon).mean() if step >= args.disc_start else torch.zeros(())
        loss = rec + p_loss + args.kl_weight * kl + 0.1 * g_loss
        opt_ae.zero_grad()
        loss.backward()
        vae_tui.log(recon=rec, lpips=p_loss, g_loss=g_loss)
        opt_ae.step()
        if not args.disc_first and step >= args.disc_start:
            d = disc_step(x, recon)
        step += 1
        print(
            f"step {step} loss {loss.item():.6f} rec {rec.item():.6f} kl {kl.item():.6f} lpips {p_loss.item():.6f} g {g_loss.item():.6f} d {d:.6f}", flush=True
        )
        if step >= args.steps:
            break
