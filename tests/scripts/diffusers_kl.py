"""diffusers' AutoencoderKL with a tiny config (no weights downloaded), trained as its examples do."""

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

torch.manual_seed(0)
vae = AutoencoderKL(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",),
    up_block_types=("UpDecoderBlock2D",),
    block_out_channels=(8,),
    layers_per_block=1,
    latent_channels=2,
    norm_num_groups=4,
    sample_size=16,
)
optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3)
images = torch.rand(48, 3, 16, 16) * 2 - 1
for step in range(6):
    x = images[(step * 8) % 48 :][:8]
    posterior = vae.encode(x).latent_dist
    recon = vae.decode(posterior.sample()).sample
    kl = posterior.kl().mean()
    loss = F.mse_loss(recon, x) + 1e-6 * kl
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(f"loss {loss.item():.6f} kl {kl.item():.6f}", flush=True)
