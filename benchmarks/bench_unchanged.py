"""What watching an unchanged script costs it: the classic example (PyTorch's examples/vae main.py:
argparse and DataLoaders at module level, `loss.item()` every batch, print every 10 batches) run
alone and under `vae-tui run` (PyTorch's hooks, no vae-tui call in the script), side by side.

    python benchmarks/bench_unchanged.py                  # MNIST's 10k test images from ../shared/data/mnist
    python benchmarks/bench_unchanged.py --device cuda    # on a GPU box

Every run is a fresh process; the two ways alternate which goes first. The script times its own
training loop (imports, data loading and the run folder's start-up excluded) and prints samples/s.
The goal is at least 0.97 of the script alone. Two ratios: samples per wall-clock second, and per
CPU second of the script's process (all its threads, vae-tui's publisher included), which a shared
machine disturbs less. A second script, "tiny" (a 2-2 linear model, a step as cheap as PyTorch
makes one), shows the hooks' own CPU cost per step in microseconds. Last, the classic loop in one
process with the hooks on for every other epoch: their cost without one process's luck against
another's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import DEFAULT_MNIST, prepare_data  # noqa: E402

CLASSIC = """
import argparse, json, time
import torch
from torch import nn, optim
from torch.nn import functional as F
from torchvision import datasets, transforms

parser = argparse.ArgumentParser(description="VAE MNIST Example")
parser.add_argument("--batch-size", type=int, default=128)
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--seed", type=int, default=1)
parser.add_argument("--log-interval", type=int, default=10)
parser.add_argument("--data", default="../data")
parser.add_argument("--device", default="cpu")
args = parser.parse_args()
torch.manual_seed(args.seed)
device = torch.device(args.device)
train_loader = torch.utils.data.DataLoader(
    datasets.MNIST(args.data, train=True, download=False, transform=transforms.ToTensor()),
    batch_size=args.batch_size, shuffle=True)


class VAE(nn.Module):
    def __init__(self):
        super(VAE, self).__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


model = VAE().to(device)
optimizer = optim.Adam(model.parameters(), lr=1e-3)


def loss_function(recon_x, x, mu, logvar):
    BCE = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return BCE + KLD


def train(epoch):
    model.train()
    train_loss = 0
    for batch_idx, (data, _) in enumerate(train_loader):
        data = data.to(device)
        optimizer.zero_grad()
        recon_batch, mu, logvar = model(data)
        loss = loss_function(recon_batch, data, mu, logvar)
        loss.backward()
        train_loss += loss.item()
        optimizer.step()
        if batch_idx % args.log_interval == 0:
            print("Train Epoch: {} [{}/{}]\\tLoss: {:.6f}".format(epoch, batch_idx * len(data), len(train_loader.dataset),
                                                                loss.item() / len(data)))
    return len(train_loader.dataset)


if __name__ == "__main__":
    seen, start, cpu = 0, time.perf_counter(), time.process_time()
    for epoch in range(1, args.epochs + 1):
        seen += train(epoch)
    print(json.dumps({"samples_per_s": seen / (time.perf_counter() - start), "cpu_samples_per_s": seen / (time.process_time() - cpu)}))
"""

TINY = """
import json, sys, time
import torch

model = torch.nn.Linear(2, 2)
optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
x = torch.ones(4, 2)
n = int(sys.argv[1])
start, cpu = time.perf_counter(), time.process_time()
for _ in range(n):
    optimizer.zero_grad()
    model(x).pow(2).mean().backward()
    optimizer.step()
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
print(json.dumps({"samples_per_s": 4 * n / seconds, "cpu_samples_per_s": 4 * n / cpu, "us_per_step": cpu / n * 1e6}))
"""


def measure(script: Path, args: list[str], watched: bool, tmp: Path, n: int) -> dict:
    command = [sys.executable, str(script), *args]
    if watched:
        command = [sys.executable, "-m", "vae_tui", "run", "--headless", "--run-dir", str(tmp / f"run-{script.stem}-{n}"), "--", *command]
    out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=tmp).stdout
    return json.loads(next(line for line in reversed(out.splitlines()) if line.startswith("{")))


def compare(name: str, script: Path, args: list[str], repeats: int, tmp: Path) -> None:
    """Pairs of fresh runs; the ratio of samples per wall-clock second, and per CPU second of the process (all its
    threads, vae-tui's included): on a shared machine the second moves less with what else runs."""
    wall, cpu = [], []
    for repeat in range(repeats):
        order = (False, True) if repeat % 2 == 0 else (True, False)
        got = {watched: measure(script, args, watched, tmp, repeat) for watched in order}
        wall.append(got[True]["samples_per_s"] / got[False]["samples_per_s"])
        cpu.append(got[True]["cpu_samples_per_s"] / got[False]["cpu_samples_per_s"])
        steps = f"; CPU per step alone {got[False]['us_per_step']:.1f} us, watched {got[True]['us_per_step']:.1f} us" if "us_per_step" in got[True] else ""
        print(
            f"  {name:8s} pair {repeat + 1:2d}: alone {got[False]['samples_per_s']:9,.0f}  under vae-tui run "
            f"{got[True]['samples_per_s']:9,.0f} samples/s  (wall {wall[-1]:.3f}, CPU {cpu[-1]:.3f}){steps}",
            flush=True,
        )
    print(
        f"{name}: under vae-tui run / alone, median of {repeats}: wall clock {statistics.median(wall):.3f}, CPU time {statistics.median(cpu):.3f}", flush=True
    )


ALTERNATE = """
import contextlib, io, json, shutil, statistics, sys, time
from pathlib import Path
from vae_tui.hooked.session import ScriptWatch

script, run_root, epochs = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
sys.argv = [script, *sys.argv[4:]]
ns = {"__name__": "classic"}
exec(compile(open(script).read(), script, "exec"), ns)
rates = {False: [], True: []}
for i in range(epochs):
    for watched in ((False, True) if i % 2 == 0 else (True, False)):
        watch = ScriptWatch(run_root / f"epoch-{i}", lambda: {}) if watched else None
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            seen = ns["train"](i + 1)
        rates[watched].append(seen / (time.perf_counter() - start))
        if watch is not None:
            watch.step_aside()
print(json.dumps({"ratios": [w / a for w, a in zip(rates[True], rates[False])]}))
"""


def alternate(script: Path, args: list[str], epochs: int, tmp: Path) -> None:
    """One process, the hooks on for every other epoch of the same loop: what they cost, without the noise of
    one process against another."""
    (tmp / "alternate.py").write_text(ALTERNATE)
    out = subprocess.run(
        [sys.executable, str(tmp / "alternate.py"), str(script), str(tmp), str(epochs), *args], check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout
    ratios = json.loads(out.strip().splitlines()[-1])["ratios"]
    print(
        f"classic, one process, hooks on every other epoch ({epochs} pairs): watched / alone, median "
        f"{statistics.median(ratios):.3f} (per pair {', '.join(f'{r:.3f}' for r in ratios)})",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", type=Path, default=DEFAULT_MNIST, help="folder with t10k-*-ubyte.gz")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of 8,000 images per run")
    parser.add_argument("--repeats", type=int, default=6, help="pairs of runs, alternating which goes first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tiny-steps", type=int, default=20_000)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, device {args.device}; the classic example, {args.epochs} epochs of 8,000 images, batch 128")
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        prepare_data(args.mnist, tmp / "data")
        (tmp / "main.py").write_text(CLASSIC)
        (tmp / "tiny.py").write_text(TINY)
        compare("classic", tmp / "main.py", ["--epochs", str(args.epochs), "--data", str(tmp / "data"), "--device", args.device], args.repeats, tmp)
        alternate(tmp / "main.py", ["--data", str(tmp / "data"), "--device", args.device], 2 * args.repeats, tmp)
        compare("tiny", tmp / "tiny.py", [str(args.tiny_steps)], max(2, args.repeats // 2), tmp)


if __name__ == "__main__":
    main()
