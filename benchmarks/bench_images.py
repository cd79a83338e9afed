"""A folder of your own pictures: decoding, start-up, and --arch conv training speed against the
loop a PyTorch user writes (torchvision ImageFolder + ToTensor + DataLoader(num_workers=2,
shuffle=True)), and streamed against on-device images.

    python benchmarks/bench_images.py                     # 20,000 64x64 RGB PNGs, 1 epoch, 3 repeats
    python benchmarks/bench_images.py --images 4000 --repeats 1
    python benchmarks/bench_images.py --device cuda       # on a GPU box

It writes the folder (10 class sub-folders of coloured shapes) into a temporary directory, then
measures, each in a fresh process so no measurement inherits another's threads or page cache
warmth unfairly:
  1. the first run's decode into the cache (an empty cache folder);
  2. time to the first trained batch, from starting the process: vae-tui's second run (cache
     filled) against the reference loop;
  3. training samples/s, the loops taking turns (each first once in three repeats), with the same
     ConvVAE and Adam;
  4. vae-tui with its images streamed from the cache against them on the device (what
     --data-placement auto picks when they fit in half the device's free memory);
  5. the ceiling: the same model and optimizer on one batch already on the device, no data
     loading at all (and under bf16 autocast, for comparison), the most any loop can reach.
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
sys.path.insert(0, str(ROOT / "scripts"))

from make_pictures import CLASSES, write_folder  # noqa: E402  (the same pictures the screenshots use)

BATCH = 128


# -- the reference: how a PyTorch user trains on a folder ------------------------------------------
def run_reference(folder: str, epochs: int, seed: int, device: str, started: float) -> dict:
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from vae_tui.models.conv import ConvVAE

    torch.manual_seed(seed)
    dev = torch.device(device)
    dataset = datasets.ImageFolder(folder, transform=transforms.ToTensor())
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=2)
    model = ConvVAE(tuple(dataset[0][0].shape)).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    first_batch, seconds, seen = None, 0.0, 0
    for _ in range(epochs):
        start = time.perf_counter()
        for x, _ in loader:
            x = x.to(dev)
            mu, logvar = model.encoder(x)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            recon = F.binary_cross_entropy_with_logits(model.decoder(z), x, reduction="sum") / len(x)
            kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / len(x)
            loss = recon + kl
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(x)
            if first_batch is None:
                loss.item()
                first_batch = time.time() - started
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
    return {"samples_per_s": seen / seconds, "first_batch_s": first_batch, "loss": loss.item()}


# -- vae-tui, through the same steps as `vae-tui train` ---------------------------------------------
def run_vae_tui(folder: str, epochs: int, seed: int, device: str, started: float, placement: str, step: str = "auto") -> dict:
    import torch

    from vae_tui.launch.prepare import Request, check, ready
    from vae_tui.training.hooks import Hook
    from vae_tui.training.loop import Trainer, default_hooks

    class FirstBatch(Hook):
        seconds: float | None = None

        def on_batch_end(self, trainer: Trainer) -> None:
            if self.seconds is None:
                if trainer.device.kind == "cuda":
                    torch.cuda.synchronize()  # the step has run, not only been queued
                self.seconds = time.time() - started

    options = {"dataset": folder, "arch": "conv", "epochs": epochs, "seed": seed, "device": device, "iw_samples": 0, "data_placement": placement, "step": step}
    with tempfile.TemporaryDirectory() as tmp:
        p = check(Request(options, run_dir=str(Path(tmp) / "run")))
        ready(p)
        first = FirstBatch()
        trainer = Trainer(p.config, p.data, p.device, run_dir=p.run, hooks=default_hooks(p.run) + [first], placement=p.placement)
        result = trainer.run()
        if result.state != "finished":
            raise SystemExit(result.message)
        records = trainer.telemetry.epochs()
    seconds = sum(len(p.data.train_x) / r["samples_per_s"] for r in records)
    return {
        "samples_per_s": epochs * len(p.data.train_x) / seconds,
        "first_batch_s": first.seconds,
        "placement": p.placement,
        "loss": records[-1]["train_loss"],
        "step": trainer.plan.mode,
    }


def run_decode(folder: str, epochs: int, seed: int, device: str, started: float) -> dict:
    from vae_tui.data import load_dataset

    start = time.perf_counter()
    data = load_dataset(folder, "unused")
    return {"decode_s": time.perf_counter() - start, "images": len(data.train_x) + len(data.test_x), "skipped": len(data.skipped)}


def run_ceiling(folder: str, epochs: int, seed: int, device: str, started: float) -> dict:
    """The same model and optimizer on one batch held on the device, no data loading at all: the
    most any loop can reach. Also under bf16 autocast, to show what lower precision would give."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from vae_tui.models import memory_format
    from vae_tui.models.conv import ConvVAE

    torch.manual_seed(seed)
    dev = torch.device(device)
    layout = memory_format("conv", dev)
    with Image.open(next(Path(folder).rglob("*.png"))) as picture:
        width, height = picture.size  # the folder's pictures' own size
    x = torch.rand(BATCH, 3, height, width, device=dev).contiguous(memory_format=layout)
    rates = {}
    for precision in ("float32", "bfloat16"):
        model = ConvVAE((3, height, width)).to(dev, memory_format=layout)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for step in range(CEILING_STEPS + 3):  # three to warm up
            if step == 3:
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
                mu, logvar = model.encoder(x)
                z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
                logits = model.decoder(z)
            recon = F.binary_cross_entropy_with_logits(logits.float(), x, reduction="sum") / len(x)
            loss = recon - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()).float() / len(x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        rates[precision] = CEILING_STEPS * BATCH / (time.perf_counter() - start)
    return {"samples_per_s": rates["float32"], "bf16_samples_per_s": rates["bfloat16"]}


CEILING_STEPS = 30


RUNNERS = {
    "reference": run_reference,
    "decode": run_decode,
    "ceiling": run_ceiling,
    "vae-tui-device": lambda *a: run_vae_tui(*a, placement="device"),
    "vae-tui-stream": lambda *a: run_vae_tui(*a, placement="stream"),
    "vae-tui-eager": lambda *a: run_vae_tui(*a, placement="device", step="eager"),
}


def measure(name: str, folder: Path, cache: Path, epochs: int, seed: int, device: str) -> dict:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    cmd = [
        sys.executable,
        __file__,
        "--one",
        name,
        "--folder",
        str(folder),
        "--epochs",
        str(epochs),
        "--seed",
        str(seed),
        "--device",
        device,
        "--started",
        repr(time.time()),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def report(args: argparse.Namespace, written: float, decode: dict, ceiling: dict, results: dict[str, list[dict]]) -> None:
    import torch

    med = {name: statistics.median(r["samples_per_s"] for r in runs) for name, runs in results.items()}
    first = {name: statistics.median(r["first_batch_s"] for r in runs) for name, runs in results.items()}
    print()
    print(
        f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, device {args.device}"
        + (f" ({torch.cuda.get_device_name(0)})" if args.device == "cuda" else "")
    )
    print(
        f"data: {args.images:,} {args.size}x{args.size} RGB PNGs in {CLASSES} class folders (written in {written:.1f} s); "
        f"--arch conv, batch {BATCH}, Adam 1e-3, {args.epochs} epoch(s), {args.repeats} repeat(s)"
    )
    print(
        f"first run's decode into the cache: {decode['decode_s']:.1f} s for {decode['images']:,} images ({decode['images'] / decode['decode_s']:,.0f} images/s)"
    )
    print("| loop | samples/s (median) | vs reference | time to first batch, process start (s, median) |")
    print("|---|---|---|---|")
    names = {
        "reference": "reference (ImageFolder + DataLoader, 2 workers)",
        "vae-tui-device": "vae-tui, images on the device",
        "vae-tui-stream": "vae-tui, images streamed",
        "vae-tui-eager": "vae-tui, images on the device, --step eager",
    }
    for name, rate in med.items():
        step = {r["step"] for r in results[name]} if name.startswith("vae-tui") else set()
        words = f" ({'/'.join(sorted(step))} step)" if step else ""
        print(f"| {names[name]}{words} | {rate:,.0f} | {rate / med['reference']:.2f}x | {first[name]:.1f} |")
    print(f"streamed / on device: {med['vae-tui-stream'] / med['vae-tui-device']:.2f}")
    print(
        f"the model alone, one batch already on the device ({CEILING_STEPS} steps): {ceiling['samples_per_s']:,.0f} "
        f"samples/s, {ceiling['samples_per_s'] / med['reference']:.2f}x the reference: the most any loop reaches here; "
        f"under bf16 autocast {ceiling['bf16_samples_per_s']:,.0f} ({ceiling['bf16_samples_per_s'] / med['reference']:.2f}x)"
    )
    print(
        f"vae-tui with its images on the device / the eager model alone: {med['vae-tui-device'] / ceiling['samples_per_s']:.2f}x "
        "(a CUDA-graph step can pass the eager ceiling: it leaves out the launches, not the arithmetic)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each loop")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", choices=RUNNERS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--started", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:  # a child process: one measurement, printed as JSON
        print(json.dumps(RUNNERS[args.one](args.folder, args.epochs, args.seed, args.device, args.started)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        folder, cache = Path(tmp) / "pictures", Path(tmp) / "cache"
        written = write_folder(folder, args.images, args.size)
        decode = measure("decode", folder, cache, args.epochs, args.seed, args.device)
        print(f"  decoded {decode['images']:,} images in {decode['decode_s']:.1f} s", flush=True)
        ceiling = measure("ceiling", folder, cache, args.epochs, args.seed, args.device)
        print(f"  the model alone: {ceiling['samples_per_s']:,.0f} samples/s, {ceiling['bf16_samples_per_s']:,.0f} under bf16 autocast", flush=True)
        loops = ("reference", "vae-tui-device", "vae-tui-stream") + (("vae-tui-eager",) if args.device == "cuda" else ())
        results: dict[str, list[dict]] = {name: [] for name in loops}
        names = list(results)
        for repeat in range(args.repeats):
            turn = repeat % len(names)
            for name in names[turn:] + names[:turn]:  # each loop takes each place in the order in turn
                r = measure(name, folder, cache, args.epochs, args.seed + repeat, args.device)
                results[name].append(r)
                print(
                    f"  seed {args.seed + repeat} {name:15s} {r['samples_per_s']:9,.0f} samples/s  "
                    f"first batch at {r['first_batch_s']:.1f} s  loss {r['loss']:.1f}",
                    flush=True,
                )
    report(args, written, decode, ceiling, results)


if __name__ == "__main__":
    main()
