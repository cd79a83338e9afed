"""A VAE whose forward returns (x_hat, z, mu, logvar), named or (--unnamed) built so no name can be read."""

import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc, self.dec = nn.Linear(64, 8), nn.Linear(4, 64)

    def encode(self, x):
        return self.enc(x.flatten(1)).chunk(2, 1)

    def forward(self, x):
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        x_hat = torch.sigmoid(self.dec(z))
        return x_hat, z, mu, logvar


class Unnamed(VAE):
    def forward(self, x):
        stats = self.encode(x)
        z = stats[0] + torch.randn_like(stats[0]) * torch.exp(0.5 * stats[1])
        return (torch.sigmoid(self.dec(z)), z, *stats)


torch.manual_seed(0)
loader = DataLoader(TensorDataset((torch.rand(96, 1, 8, 8) > 0.5).float()), batch_size=16)
model = Unnamed() if "--unnamed" in sys.argv else VAE()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
for (x,) in loader:
    x_hat, z, mu, logvar = model(x)
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / len(x)
    loss = F.binary_cross_entropy(x_hat, x.flatten(1), reduction="sum") / len(x) + kl
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(f"loss {loss.item():.6f} kl {kl.item():.6f}", flush=True)
