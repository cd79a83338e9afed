"""A VQ-VAE in the usual tutorial's shape: forward returns (x_hat, vq_loss, perplexity)."""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset


class VectorQuantizer(nn.Module):
    def __init__(self, codes=16, dim=4, commitment=0.25):
        super().__init__()
        self.codebook = nn.Embedding(codes, dim)
        self.codebook.weight.data.uniform_(-1 / codes, 1 / codes)
        self.commitment = commitment

    def forward(self, z):
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        indices = torch.cdist(flat, self.codebook.weight).argmin(1)
        quantized = self.codebook(indices).view(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
        vq_loss = F.mse_loss(quantized, z.detach()) + self.commitment * F.mse_loss(z, quantized.detach())
        quantized = z + (quantized - z).detach()
        probs = F.one_hot(indices, self.codebook.num_embeddings).float().mean(0)
        perplexity = torch.exp(-torch.sum(probs * torch.log(probs + 1e-10)))
        return quantized, vq_loss, perplexity


class VQVAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 8, 4, 2, 1), nn.ReLU(), nn.Conv2d(8, 4, 3, 1, 1))
        self.vq = VectorQuantizer()
        self.decoder = nn.Sequential(nn.ConvTranspose2d(4, 8, 4, 2, 1), nn.ReLU(), nn.Conv2d(8, 1, 3, 1, 1))

    def forward(self, x):
        quantized, vq_loss, perplexity = self.vq(self.encoder(x))
        x_hat = torch.sigmoid(self.decoder(quantized))
        return x_hat, vq_loss, perplexity


torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.rand(128, 1, 8, 8)), batch_size=16, shuffle=True)
model = VQVAE()
optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
for epoch in range(2):
    for (x,) in loader:
        x_hat, vq_loss, perplexity = model(x)
        recon = F.mse_loss(x_hat, x)
        loss = recon + vq_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"loss {loss.item():.6f} vq {vq_loss.item():.6f} perplexity {perplexity.item():.6f}", flush=True)
