"""What `vae-tui train --headless` costs per step against a bare loop, run as a user runs it.

    python benchmarks/bench_command.py                  # 10 pairs of turns, torch's own thread count
    python benchmarks/bench_command.py --threads 1      # both with one torch thread (OMP_NUM_THREADS=1)

bench_loop.py measures the trainer inside one process. This measures the command: a fresh process
with everything a headless run has beside the step (the plain view on the main thread, the
publisher writing status.json and the pictures, metrics.jsonl, routine checkpoints by a thread of
their own), on the tiny model of bench_loop.py (8x8 digits, hidden 8, latent 2, batch 8: a step
that is nearly all overhead). The bare loop is that model and optimizer in the plainest loop
(bench_loop.bare_tiny), also in a fresh process. Each pair of turns runs both, the first of the
pair alternating; the figure is the median of the pairs' ratios (machines here are shared and
noisy, and a whole turn can run slow).

Per step inside epochs (the command's from its epoch records' samples/s, which count the time
inside epochs), and for the command also with its epoch ends (the time between its first and last
epoch records over the steps between them).
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

import torch

HERE = Path(__file__).resolve().parent
TINY = ["--hidden-dim", "8", "--latent-dim", "2", "--batch-size", "8"]
BARE = (
    "import sys; sys.path.insert(0, {here!r}); import bench_loop; from vae_tui.data import load_dataset; "
    "print(bench_loop.bare_tiny(load_dataset('digits', '/tmp', download=False), {epochs}))"
)
CLI = "from vae_tui.cli import main; main()"


def command(epochs: int, env: dict[str, str]) -> tuple[float, float]:
    """Microseconds per step: inside epochs, and with the epoch ends."""
    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder) / "run"
        train = ["train", "--headless", "--dataset", "digits", *TINY, "--epochs", str(epochs), "--iw-samples", "0", "--run-dir", str(run)]
        subprocess.run([sys.executable, "-c", CLI, *train], check=True, capture_output=True, env=env)
        lines = (json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())
        records = [r for r in lines if r["kind"] == "epoch"]
        images = json.loads((run / "config.json").read_text())["dataset"]["train_size"]
    inside = sum(images / r["samples_per_s"] for r in records) / records[-1]["step"] * 1e6
    whole = (records[-1]["time"] - records[0]["time"]) / (records[-1]["step"] - records[0]["step"]) * 1e6
    return inside, whole


def bare(epochs: int, env: dict[str, str]) -> float:
    out = subprocess.run([sys.executable, "-c", BARE.format(here=str(HERE), epochs=epochs)], check=True, capture_output=True, text=True, env=env).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=10, help="pairs of turns (each: the command and the bare loop)")
    parser.add_argument("--epochs", type=int, default=8, help="epochs a turn (188 steps each)")
    parser.add_argument("--threads", type=int, help="torch threads for both (OMP_NUM_THREADS); default: torch's own choice")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the time with epoch ends is taken between the first epoch's record and the last")
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    ours, ends, plain = [], [], []
    for pair in range(args.pairs):
        if pair % 2:
            plain.append(bare(args.epochs, env))
        inside, whole = command(args.epochs, env)
        ours.append(inside)
        ends.append(whole)
        if not pair % 2:
            plain.append(bare(args.epochs, env))
        print(f"pair {pair + 1}: vae-tui train {inside:.0f} us a step ({whole:.0f} with epoch ends), bare loop {plain[-1]:.0f}", file=sys.stderr)
    ratios = [a / b for a, b in zip(ours, plain)]
    ratio, ratio_ends = statistics.median(ratios), statistics.median(a / b for a, b in zip(ends, plain))
    threads = args.threads or torch.get_num_threads()
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {threads} torch thread(s); {args.pairs} pairs of {args.epochs} epochs")
    print("| | µs per step (median) |")
    print("|---|---|")
    print(f"| `vae-tui train --headless`, inside epochs | {statistics.median(ours):.0f} |")
    print(f"| the same, with its epoch ends | {statistics.median(ends):.0f} |")
    print(f"| bare loop | {statistics.median(plain):.0f} |")
    print(f"| **ratio, median of pairs** | **{ratio:.3f}x** (with epoch ends {ratio_ends:.3f}x; pairs {min(ratios):.2f} to {max(ratios):.2f}) |")


if __name__ == "__main__":
    main()
