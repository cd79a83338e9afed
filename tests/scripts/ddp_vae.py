"""A DDP VAE script as a launcher starts it: each rank prints its step, learning rate and losses."""

import argparse
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--sleep", type=float, default=0.0)
args = parser.parse_args()
dist.init_process_group("gloo")
rank = dist.get_rank()


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc, self.dec = nn.Linear(64, 8), nn.Linear(4, 64)

    def forward(self, x):
        mu, logvar = self.enc(x.flatten(1)).chunk(2, 1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return torch.sigmoid(self.dec(z)), mu, logvar


torch.manual_seed(0)
data = TensorDataset((torch.rand(256, 1, 8, 8) > 0.5).float())
loader = DataLoader(data, batch_size=16, sampler=DistributedSampler(data))
model = DDP(VAE())
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
step = 0
for epoch in range(args.epochs):
    loader.sampler.set_epoch(epoch)
    for (x,) in loader:
        recon, mu, logvar = model(x)
        rec = F.binary_cross_entropy(recon, x.flatten(1), reduction="sum") / len(x)
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / len(x)
        loss = rec + kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        step = getattr(opt, "_steps_done", 0) + 1
        opt._steps_done = step
        print(f"rank {rank} step {step} lr {opt.param_groups[0]['lr']:g} loss {loss.item():.5f} kl {kl.item():.5f}", flush=True)
        time.sleep(args.sleep)
dist.destroy_process_group()
