"""Training throughput and quality: vae-tui's trainer against the classic PyTorch example's loop.

Each measurement runs in a fresh subprocess (so one loop's OpenMP threads never slow the other),
alternating baseline and vae-tui, and the figures are reported side by side as ratios.

    python benchmarks/bench_train.py                      # real MNIST from ../shared/data/mnist
    python benchmarks/bench_train.py --epochs 3 --repeats 3
    python benchmarks/bench_train.py --device cuda        # on a GPU box: vae-tui's CUDA-graph step and its
                                                          # eager one, and how busy the GPU was (nvidia-smi)

The data: the 10k-image MNIST test split at ../shared/data/mnist (the train split is not
shipped here), cut into 8,000 training and 2,000 held-out images, written as plain IDX files in
torchvision's layout so both loops read the same files.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MNIST = ROOT.parent / "shared" / "data" / "mnist" / "MNIST" / "raw"
N_TRAIN = 8000


def prepare_data(source: Path, target: Path, train_images: int = N_TRAIN) -> Path:
    """Split MNIST's test files into train/test IDX files under target/MNIST/raw; `train_images`
    beyond 8,000 repeats them (60,000: MNIST's own training set's size, for a full-size epoch)."""
    raw = target / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    images = gzip.decompress((source / "t10k-images-idx3-ubyte.gz").read_bytes())
    labels = gzip.decompress((source / "t10k-labels-idx1-ubyte.gz").read_bytes())
    x = np.frombuffer(images, np.uint8, offset=16).reshape(-1, 28, 28)
    y = np.frombuffer(labels, np.uint8, offset=8)

    def write(name: str, array: np.ndarray) -> None:
        header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
        (raw / name).write_bytes(header + array.tobytes())

    write("train-images-idx3-ubyte", np.resize(x[:N_TRAIN], (train_images, 28, 28)))
    write("train-labels-idx1-ubyte", np.resize(y[:N_TRAIN], train_images))
    write("t10k-images-idx3-ubyte", x[N_TRAIN:])
    write("t10k-labels-idx1-ubyte", y[N_TRAIN:])
    return target


# --- the baseline: the classic minimal example (PyTorch's examples/vae), as people write it -----
def run_seed_loop(data_root: str, epochs: int, seed: int, device: str) -> dict:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import torch.optim as optim
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    class Encoder(nn.Module):
        def __init__(self, input_dim, hidden_dim, z_dim):
            super().__init__()
            self.fc1 = nn.Linear(input_dim, hidden_dim)
            self.fc2_mu = nn.Linear(hidden_dim, z_dim)
            self.fc2_logvar = nn.Linear(hidden_dim, z_dim)

        def forward(self, x):
            h = F.relu(self.fc1(x))
            return self.fc2_mu(h), self.fc2_logvar(h)

    class Decoder(nn.Module):
        def __init__(self, z_dim, hidden_dim, output_dim):
            super().__init__()
            self.fc3 = nn.Linear(z_dim, hidden_dim)
            self.fc4 = nn.Linear(hidden_dim, output_dim)

        def forward(self, z):
            h = F.relu(self.fc3(z))
            return torch.sigmoid(self.fc4(h))

    class VAE(nn.Module):
        def __init__(self, input_dim, hidden_dim, z_dim):
            super().__init__()
            self.encoder = Encoder(input_dim, hidden_dim, z_dim)
            self.decoder = Decoder(z_dim, hidden_dim, input_dim)

        def reparameterize(self, mu, logvar):
            std = torch.exp(0.5 * logvar)
            return mu + torch.randn_like(std) * std

        def forward(self, x):
            mu, logvar = self.encoder(x)
            return self.decoder(self.reparameterize(mu, logvar)), mu, logvar

    def loss_function(x, x_reconstructed, mu, logvar):
        reconstruction_loss = F.binary_cross_entropy(x_reconstructed, x, reduction="sum")
        kl_divergence = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        return reconstruction_loss + kl_divergence

    torch.manual_seed(seed)
    dev = torch.device(device)
    train_dataset = datasets.MNIST(data_root, train=True, download=False, transform=transforms.ToTensor())
    train_dataloader = DataLoader(train_dataset, batch_size=128, shuffle=True)
    model = VAE(784, 400, 20).to(dev)
    optimizer = optim.Adam(model.parameters(), lr=1e-3)
    seconds = 0.0
    for epoch in range(epochs):
        model.train()
        start = time.perf_counter()
        train_loss = 0.0
        for data, _ in train_dataloader:
            data = data.view(-1, 784).to(dev)
            optimizer.zero_grad()
            x_reconstructed, mu, logvar = model(data)
            loss = loss_function(data, x_reconstructed, mu, logvar)
            loss.backward()
            train_loss += loss.item()
            optimizer.step()
        seconds += time.perf_counter() - start

    # held-out negative ELBO per image, same formula and noise seed as vae-tui's evaluation
    test = datasets.MNIST(data_root, train=False, download=False)
    x = (test.data.reshape(len(test.data), -1).float() / 255).to(dev)
    gen = torch.Generator(device=dev).manual_seed(seed + 2)
    with torch.no_grad():
        mu, logvar = model.encoder(x)
        eps = torch.randn(mu.shape, generator=gen, device=dev)
        probs = model.decoder(mu + eps * torch.exp(0.5 * logvar))
        test_loss = loss_function(x, probs, mu, logvar).item() / len(x)
    return {"samples_per_s": epochs * len(train_dataset) / seconds, "train_seconds": seconds, "test_loss": test_loss}


def run_vae_tui(data_root: str, epochs: int, seed: int, device: str, step: str = "auto") -> dict:
    """The real trainer, on its own thread, writing metrics and checkpoints as the CLI does."""
    from vae_tui.config import TrainConfig
    from vae_tui.data import load_dataset
    from vae_tui.runfile.layout import open_run_dir
    from vae_tui.training.device import pick_device
    from vae_tui.training.loop import Trainer

    config = TrainConfig(dataset="mnist", data_dir=data_root, epochs=epochs, seed=seed, device=device, step=step).validate()
    data = load_dataset("mnist", data_root, download=False)
    with tempfile.TemporaryDirectory() as tmp:
        run = open_run_dir(Path(tmp) / "run")
        trainer = Trainer(config, data, pick_device(device), run_dir=run)
        busy = GpuBusy() if device == "cuda" else None
        start = time.perf_counter()
        thread = trainer.start()
        thread.join()
        wall = time.perf_counter() - start
        if trainer.result.state != "finished":
            raise SystemExit(trainer.result.message)
        records = trainer.telemetry.epochs()
    seconds = sum(len(data.train_x) / r["samples_per_s"] for r in records)
    return {
        "samples_per_s": epochs * len(data.train_x) / seconds,
        "train_seconds": seconds,
        "wall_seconds": wall,  # including evaluation, snapshots, metrics and checkpoint writes
        "test_loss": records[-1]["test_loss"],
        "step": trainer.plan.mode,
        "gpu_busy": busy.stop() if busy is not None else None,
    }


class GpuBusy:
    """nvidia-smi's utilization.gpu (the share of time a kernel was running) every 200 ms while training."""

    def __init__(self) -> None:
        try:
            self.proc: subprocess.Popen | None = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200", "-i", "0"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        except OSError:
            self.proc = None

    def stop(self) -> float | None:
        """The median sample, leaving out the first second (start-up) and the last (evaluation)."""
        if self.proc is None:
            return None
        self.proc.terminate()
        samples = [float(v) for v in self.proc.communicate()[0].split() if v.replace(".", "").isdigit()]
        samples = samples[5:-5] if len(samples) > 12 else samples
        return statistics.median(samples) if samples else None


RUNNERS = {"seed": run_seed_loop, "vae-tui": run_vae_tui, "vae-tui-eager": lambda *a: run_vae_tui(*a, step="eager")}
NAMES = {"seed": "classic loop", "vae-tui": "vae-tui", "vae-tui-eager": "vae-tui, --step eager"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", type=Path, default=DEFAULT_MNIST, help="folder with t10k-*-ubyte.gz")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each loop, seeds seed..seed+repeats-1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--train-images", type=int, default=N_TRAIN, help="training images (the 8,000 repeated): 60000 for an MNIST-sized epoch")
    parser.add_argument("--one", choices=RUNNERS, help=argparse.SUPPRESS)
    parser.add_argument("--data-root", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:  # a child process: one measurement, printed as JSON
        print(json.dumps(RUNNERS[args.one](args.data_root, args.epochs, args.seed, args.device)))
        return

    import torch

    runners = ["seed", "vae-tui"] + (["vae-tui-eager"] if args.device == "cuda" else [])  # the graph's gain, side by side
    with tempfile.TemporaryDirectory() as tmp:
        root = prepare_data(args.mnist, Path(tmp), args.train_images)
        results: dict[str, list[dict]] = {name: [] for name in runners}
        for repeat in range(args.repeats):
            for name in runners:
                cmd = [
                    sys.executable,
                    __file__,
                    "--one",
                    name,
                    "--data-root",
                    str(root),
                    "--epochs",
                    str(args.epochs),
                    "--seed",
                    str(args.seed + repeat),
                    "--device",
                    args.device,
                ]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
                results[name].append(json.loads(out.strip().splitlines()[-1]))
                r = results[name][-1]
                busy = f"  GPU busy {r['gpu_busy']:.0f}%" if r.get("gpu_busy") is not None else ""
                step = f"  ({r['step']} step)" if "step" in r else ""
                print(f"  seed {args.seed + repeat} {name:13s} {r['samples_per_s']:9,.0f} samples/s  test loss {r['test_loss']:.2f}{busy}{step}", flush=True)

    rates = {name: statistics.median(r["samples_per_s"] for r in runs) for name, runs in results.items()}
    print()
    print(
        f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, device {args.device}"
        + (f" ({torch.cuda.get_device_name(0)})" if args.device == "cuda" else "")
    )
    seeds = f"{args.seed}..{args.seed + args.repeats - 1}"
    print(f"data: MNIST, {args.train_images:,} train / {10000 - N_TRAIN} test images, batch 128, 784-400-20, {args.epochs} epochs, seeds {seeds}")
    print(
        f"| loop | samples/s (median of {args.repeats}) | epoch time (s) | vs the classic loop | GPU busy (median) | test loss after "
        f"{args.epochs} epochs, per seed (nats) | mean |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, rate in rates.items():
        losses = [r["test_loss"] for r in results[name]]
        busy = [r["gpu_busy"] for r in results[name] if r.get("gpu_busy") is not None]
        print(
            f"| {NAMES[name]} | {rate:,.0f} | {args.train_images / rate:.3f} | {rate / rates['seed']:.2f}x | "
            f"{f'{statistics.median(busy):.0f}%' if busy else '-'} | {', '.join(f'{v:.2f}' for v in losses)} | {statistics.mean(losses):.2f} |"
        )
    walls = ", ".join(f"{r['wall_seconds']:.1f}" for r in results["vae-tui"])
    steps = sorted({r["step"] for r in results["vae-tui"]})
    print(f"speed-up: {rates['vae-tui'] / rates['seed']:.2f}x ({'/'.join(steps)} step); vae-tui wall time with evaluation and checkpoints: {walls} s")


if __name__ == "__main__":
    main()
