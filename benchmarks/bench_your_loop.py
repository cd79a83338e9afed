"""What `run.log` costs your own loop: the classic example's training loop (the 784-400-20 MLP,
BCE + KL, Adam 1e-3, batch 128) with and without `vae_tui.init` and a `run.log` per batch, side
by side.

    python benchmarks/bench_your_loop.py                 # MNIST's 10k test images from ../shared/data/mnist
    python benchmarks/bench_your_loop.py --device cuda   # on a GPU box

Two loops, each run both ways, alternating, every run a fresh process:
  - "dataloader": the classic example as written, torchvision's MNIST through
    DataLoader(ToTensor()), the images flattened in the loop;
  - "tensors": the same model with the images already in one tensor, so a step is as cheap as
    it gets and any cost of run.log shows most.
The goal is at least 97% of the samples/s without run.log. Whole runs on a shared machine vary
by more than that, so the script also times run.log alone (microseconds per call, flushes and
the publisher thread included) and says what share of a step that is.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import DEFAULT_MNIST, prepare_data  # noqa: E402

BATCH = 128


def run_loop(data_root: str, loop: str, logged: bool, epochs: int, seed: int, device: str) -> dict:
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from vae_tui.models.vae import VAE

    torch.manual_seed(seed)
    dev = torch.device(device)
    dataset = datasets.MNIST(data_root, train=True, download=False, transform=transforms.ToTensor())
    if loop == "dataloader":
        batches = DataLoader(dataset, batch_size=BATCH, shuffle=True)
    else:
        images = dataset.data.float().div(255).view(-1, 784).to(dev)
        batches = None
    model = VAE((1, 28, 28)).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    run = None
    if logged:
        import vae_tui

        run = vae_tui.init(
            run_dir=Path(data_root) / f"run-{loop}-{seed}-{time.time_ns()}", model=model, optimizer=optimizer, config={"lr": 1e-3, "epochs": epochs}
        ).__enter__()
    seen, start = 0, time.perf_counter()
    for _ in range(epochs):
        if batches is not None:
            epoch = ((x.view(-1, 784).to(dev), None) for x, _ in batches)
        else:
            order = torch.randperm(len(images), device=dev)
            epoch = ((images[order[i : i + BATCH]], None) for i in range(0, len(images), BATCH))
        for x, _ in epoch:
            mu, logvar = model.encoder(x)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            x_reconstructed = torch.sigmoid(model.decoder(z))
            recon = F.binary_cross_entropy(x_reconstructed, x, reduction="sum")
            kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            optimizer.zero_grad()
            (recon + kl).backward()
            optimizer.step()
            seen += len(x)
            if run is not None:
                run.log(recon=recon / len(x), kl=kl / len(x), size=len(x))
        if run is not None:
            run.log_epoch()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if run is not None:
        run.__exit__(None, None, None)
    return {"samples_per_s": seen / seconds}


def run_calls(data_root: str) -> dict:
    """run.log alone, on 0-d tensors, flushes and the publisher included: its own cost per call."""
    import torch

    import vae_tui

    model = torch.nn.Linear(2, 2)
    recon, kl = torch.tensor(1.0), torch.tensor(0.5)
    with vae_tui.init(run_dir=Path(data_root) / f"calls-{time.time_ns()}", model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1)) as run:
        start, n = time.perf_counter(), 50_000
        for _ in range(n):
            run.log(recon=recon, kl=kl, size=BATCH)
        return {"us_per_call": (time.perf_counter() - start) / n * 1e6}


def measure(data_root: Path, loop: str, logged: bool, epochs: int, seed: int, device: str) -> float:
    cmd = [sys.executable, __file__, "--one", loop, "--data-root", str(data_root), "--epochs", str(epochs), "--seed", str(seed), "--device", device] + (
        ["--logged"] if logged else []
    )
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])["samples_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", type=Path, default=DEFAULT_MNIST, help="folder with t10k-*-ubyte.gz")
    parser.add_argument("--epochs", type=int, help="epochs per run [default: 3 through the DataLoader, 15 from tensors]")
    parser.add_argument("--repeats", type=int, default=6, help="pairs of runs of each loop, alternating which goes first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", choices=("dataloader", "tensors"), help=argparse.SUPPRESS)
    parser.add_argument("--logged", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--calls", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data-root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.calls:
        print(json.dumps(run_calls(args.data_root)))
        return
    if args.one:
        print(json.dumps(run_loop(args.data_root, args.one, args.logged, args.epochs, args.seed, args.device)))
        return
    epochs = {"dataloader": args.epochs or 3, "tensors": args.epochs or 15}
    print(f"machine: {os.cpu_count()} CPUs, device {args.device}; epochs of 8,000 images, batch {BATCH}: {epochs}")
    with tempfile.TemporaryDirectory() as tmp:
        prepare_data(args.mnist, Path(tmp))
        calls = [
            json.loads(
                subprocess.run([sys.executable, __file__, "--calls", "--data-root", tmp], check=True, capture_output=True, text=True, cwd=ROOT)
                .stdout.strip()
                .splitlines()[-1]
            )["us_per_call"]
            for _ in range(3)
        ]
        print(f"run.log alone: {statistics.median(calls):.1f} us per call (median of {', '.join(f'{c:.1f}' for c in calls)})")
        for loop in ("dataloader", "tensors"):
            ratios, without = [], []
            for repeat in range(args.repeats):
                order = (False, True) if repeat % 2 == 0 else (True, False)
                rates = {logged: measure(Path(tmp), loop, logged, epochs[loop], args.seed + repeat, args.device) for logged in order}
                ratios.append(rates[True] / rates[False])
                without.append(rates[False])
                print(
                    f"  {loop:10s} seed {args.seed + repeat}: without {rates[False]:9,.0f}  with run.log "
                    f"{rates[True]:9,.0f} samples/s  ({rates[True] / rates[False]:.3f})",
                    flush=True,
                )
            step_us = BATCH / statistics.median(without) * 1e6
            print(
                f"{loop}: with run.log / without, median of {args.repeats}: {statistics.median(ratios):.3f} "
                f"(per pair {', '.join(f'{r:.3f}' for r in ratios)}); a step takes {step_us:,.0f} us, so run.log "
                f"alone is {statistics.median(calls) / step_us:.2%} of it"
            )


if __name__ == "__main__":
    main()
