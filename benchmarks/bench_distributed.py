"""What training under torchrun costs, and what --precision buys, on this machine.

    python benchmarks/bench_distributed.py                  # both parts
    python benchmarks/bench_distributed.py --part ddp       # 2 ranks (gloo on CPU, NCCL on GPUs)
    python benchmarks/bench_distributed.py --part precision --device cuda

ddp: vae-tui's trainer under torchrun (its ranks meeting about every 100 ms to agree on losses
and commands, the losses kept on the device) against a plain DistributedDataParallel loop that
does nothing but step (it never reads a loss): the same 784-400-20 model, data on the device,
global batches cut from one permutation, the same number of steps. The two take turns, three
times, in the same processes; samples/s counts training time only (rank 0's held-out loss at
an epoch's end is left out of both).

precision: the same model and trainer stepping in fp32, bf16 and fp16 at batch 128 and 512,
one process, turns taken; and the CPU or GPU it ran on, since the answer depends on it. On a GPU,
each with the CUDA-graph step and the eager one (fp16 has no graph: its loss scaler reads the host).
The data: MNIST-sized (10,000 28x28 images, the real test split when ../shared/data/mnist has
it, else random pixels: speed does not depend on what the pixels show).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
MNIST = ROOT.parent / "shared" / "data" / "mnist"
REPEATS = 3


def images() -> "object":
    """10,000 MNIST-sized images as vae-tui's ImageData (9,000 train, 1,000 test)."""
    from vae_tui.data.images import ImageData

    pixels = None
    try:
        from torchvision import datasets

        pixels = datasets.MNIST(str(MNIST), train=False, download=False).data.numpy()[:, None]
        source = "MNIST test split"
    except Exception:  # not on this machine: random pixels train at the same speed
        pixels = np.random.default_rng(0).integers(0, 256, (10_000, 1, 28, 28), dtype=np.uint8)
        source = "random 28x28 pixels"
    x = pixels.astype(np.float32) / 255
    return ImageData("mnist-sized", x[:9000], x[9000:], source)


def trainer_rate(
    data: object,
    batch: int,
    precision: str,
    device: object,
    world: object,
    epochs: int,
    compiled: bool = False,
    skip: int = 0,
    first_epoch: bool = False,
    step: str = "auto",
) -> "float | tuple[float, float]":
    """vae-tui's Trainer, no run directory: samples/s over its training time (all ranks' images),
    leaving out the first `skip` epochs (where torch.compile compiles); with `first_epoch`, also that
    epoch's training seconds."""
    from vae_tui.config import TrainConfig
    from vae_tui.training.loop import Trainer
    from vae_tui.training.reporting import TelemetryHook

    config = TrainConfig(
        dataset="digits", epochs=epochs + skip, batch_size=batch, precision=precision, iw_samples=0, snapshot_seconds=1e9, compile=compiled, step=step
    ).validate()
    trainer = Trainer(config, data, device, hooks=[TelemetryHook()] if world.main else [], world=world)
    result = trainer.run()
    if result.state != "finished":
        raise SystemExit(result.message)
    if not world.main:
        return 0.0
    first, records = trainer.telemetry.epochs()[0], trainer.telemetry.epochs()[skip:]
    rate = sum(len(data.train_x) for _ in records) / sum(len(data.train_x) / r["samples_per_s"] for r in records)
    return (rate, len(data.train_x) / first["samples_per_s"]) if first_epoch else rate


def plain_ddp_rate(data: object, batch: int, device: torch.device, world: object, epochs: int) -> float:
    """The plain DDP loop: each rank its share of each global batch, forward, backward, step; nothing read back."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from vae_tui.models.vae import VAE, vae_loss

    torch.manual_seed(0)
    model = VAE((1, 28, 28)).to(device)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    x = torch.from_numpy(data.train_x).to(device)
    shuffle = torch.Generator(device=device).manual_seed(0)
    global_batch, seconds = batch * world.size, 0.0
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=shuffle, device=device)
        dist.barrier()
        start = time.perf_counter()
        for begin in range(0, len(x) - global_batch + 1, global_batch):
            xb = x[perm[begin + world.rank * batch : begin + (world.rank + 1) * batch]]
            params, mu, logvar = ddp(xb)
            loss, _, _ = vae_loss(model.reconstruction_loss(params, xb), mu, logvar, 1.0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
    return epochs * (len(x) // global_batch) * global_batch / seconds


def rank_main(args: argparse.Namespace) -> None:
    """One rank of the ddp part (started by torchrun): loops take turns, rank 0 prints JSON."""
    from vae_tui.training.device import pick_device
    from vae_tui.training.world import from_environment, join

    world = from_environment()
    kind = "cuda" if torch.cuda.is_available() else "cpu"
    join(world, kind)
    if not torch.distributed.is_initialized():  # one rank: vae-tui trains alone, the plain loop still wraps DDP
        torch.distributed.init_process_group("nccl" if kind == "cuda" else "gloo")
    device = pick_device(kind, world.local_rank if kind == "cuda" else None)
    data = images()
    rates: dict[str, list[float]] = {"plain DDP": [], "vae-tui": []}
    for _ in range(REPEATS):
        rates["plain DDP"].append(plain_ddp_rate(data, args.batch, device.torch_device, world, args.epochs))
        rates["vae-tui"].append(trainer_rate(data, args.batch, "fp32", device, world, args.epochs))
    if world.main:
        print(json.dumps({"rates": rates, "world": world.size, "device": f"{device.kind} ({device.name})"}))
    torch.distributed.destroy_process_group()


def ddp_part(batch: int, epochs: int, nproc: int) -> None:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        str(Path(__file__).resolve()),
        "--rank",
        "--batch",
        str(batch),
        "--epochs",
        str(epochs),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    found = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    plain, ours = (statistics.median(found["rates"][k]) for k in ("plain DDP", "vae-tui"))
    print(
        f"ddp: {found['world']} ranks on {found['device']}, 784-400-20 on 9,000 MNIST-sized images, batch {batch} per rank,"
        f" {epochs} epochs a turn, {REPEATS} turns (median)"
    )
    for name, values in found["rates"].items():
        print(f"  {name:10s} {statistics.median(values):10,.0f} samples/s   turns: {', '.join(f'{v:,.0f}' for v in values)}")
    print(f"  vae-tui / plain DDP = {ours / plain:.3f}")


def processor() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    name = platform.processor() or "?"
    try:
        info = Path("/proc/cpuinfo").read_text()
        name = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        flags = set(next(line for line in info.splitlines() if line.startswith("flags")).split())
        name += f"; {os.cpu_count()} cores; bf16 instructions: {', '.join(sorted(flags & {'avx512_bf16', 'amx_bf16', 'amx_tile'})) or 'none'}"
    except (OSError, StopIteration):
        pass
    return name


def precision_part(device_kind: str, epochs: int) -> None:
    from vae_tui.training.device import pick_device
    from vae_tui.training.world import ALONE

    device, data = pick_device(device_kind), images()
    print(
        f"precision: {processor()}; torch {torch.__version__}, {torch.get_num_threads()} threads; 784-400-20, "
        f"{epochs} epochs of 9,000 images a turn, {REPEATS} turns (median)"
    )
    steps = ("graph", "eager") if device.kind == "cuda" else ("eager",)  # on a GPU, the CUDA graph's gain too
    kinds = [(p, st) for p in ("fp32", "bf16", "fp16") for st in steps if not (p == "fp16" and st == "graph")]
    for batch in (128, 512):
        rates: dict[tuple[str, str], list[float]] = {kind: [] for kind in kinds}
        for _ in range(REPEATS):
            for precision, step in rates:
                rates[precision, step].append(trainer_rate(data, batch, precision, device, ALONE, epochs, step=step))
        fp32 = statistics.median(rates["fp32", steps[0]])
        line = ", ".join(
            f"{p}{f' {st}' if len(steps) > 1 else ''} {statistics.median(v):,.0f} ({statistics.median(v) / fp32:.2f}x)" for (p, st), v in rates.items()
        )
        print(f"  batch {batch:4d}: {line} samples/s")


def compile_part(device_kind: str, epochs: int) -> None:
    """--compile against the eager step: the rate once compiled, and what compiling costs at the start."""
    from vae_tui.training.device import pick_device
    from vae_tui.training.world import ALONE

    device, data = pick_device(device_kind), images()
    print(f"compile: {processor()}; 784-400-20, fp32, batch 128, {epochs} epochs a turn after a first one, {REPEATS} turns (median)")
    rates: dict[str, list[float]] = {"eager": [], "compiled": []}
    firsts: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(REPEATS):
        for name in rates:
            rate, first = trainer_rate(data, 128, "fp32", device, ALONE, epochs, compiled=name == "compiled", skip=1, first_epoch=True)
            rates[name].append(rate)
            firsts[name].append(first)
    eager = statistics.median(rates["eager"])
    for name, values in rates.items():
        print(
            f"  {name:9s} {statistics.median(values):10,.0f} samples/s ({statistics.median(values) / eager:.2f}x), first epoch "
            f"{statistics.median(firsts[name]):.2f} s   turns: {', '.join(f'{v:,.0f}' for v in values)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("ddp", "precision", "compile", "all"), default="all")
    parser.add_argument("--device", default="auto", help="precision part: cpu, cuda or auto")
    parser.add_argument("--batch", type=int, default=128, help="ddp part: batch per rank")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank:
        return rank_main(args)
    if args.part in ("ddp", "all"):
        ddp_part(args.batch, args.epochs, args.nproc)
    if args.part in ("precision", "all"):
        precision_part(args.device, args.epochs)
    if args.part in ("compile", "all"):
        compile_part(args.device, args.epochs)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
