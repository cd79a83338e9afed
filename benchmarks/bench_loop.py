"""What vae-tui's training loop costs per step, besides the step itself.

    python benchmarks/bench_loop.py                 # this machine's CPU
    python benchmarks/bench_loop.py --turns 5
    python benchmarks/bench_loop.py --instructions  # the same, counted in instructions by valgrind

Two measurements, taking turns in this one process (machines here are shared and noisy):

1. The loop's own cost: the real `Trainer` (its parts of the epoch, the loss buffer, the hooks, the
   controls check, the clock, the flushes about every 50 ms) with a step that does nothing, on a
   long epoch (so an epoch's end, with its evaluation and checkpoints, is not counted). Once a GPU
   step is one graph replay of a few microseconds, this is what is left. Goal: at most 10 us a step.
2. A tiny model (8x8 digits, hidden 8, latent 2, batch 8: a step that is nearly all overhead):
   vae-tui's eager step in its real loop, against a bare loop of the same model and optimizer with
   the images on the device, as anyone would write it. Goal: within 1.10x.

Both count training time only (the time inside epochs), in microseconds per step.

With --instructions the first two are counted in CPU instructions instead of timed (valgrind's
callgrind, one thread, instrumentation switched on only inside the epochs): slow (a few minutes),
but nearly the same figure every time, where timings on a shared 2-core machine swing by 20%. What
vae-tui paces by the clock (flushes, snapshots) is paced as it would be outside valgrind.

3. What a routine checkpoint (every epoch, a new best) holds the loop up for: the classic 784-400-20
   model with Adam's state (7.8 MB), saved as before (serialised, written and fsynced before the
   loop goes on) and as now (its tensors copied to host memory; a thread of its own writes them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from vae_tui.config import TrainConfig
from vae_tui.data import ImageData, load_dataset
from vae_tui.models import build_model
from vae_tui.models.protocol import elbo_terms
from vae_tui.training.device import pick_device
from vae_tui.training.loop import Trainer
from vae_tui.training.state import make_optimizer

TINY = dict(hidden_dim=8, latent_dim=2, batch_size=8)


class NoStep:
    """A step that trains nothing: what is left is the loop."""

    mode = "eager"

    def __init__(self) -> None:
        self.terms = ZeroTerms()

    def start_epoch(self, perm: torch.Tensor, parts: list) -> None:
        pass

    def __call__(self, part: object) -> bool:
        return True

    def settings_changed(self) -> None:
        pass


class ZeroTerms:
    capacity = 1 << 62

    def rows(self, n: int) -> torch.Tensor:
        return torch.zeros(n, 3)

    def clear(self) -> None:
        pass


class LoopAlone(Trainer):
    def _make_step(self) -> NoStep:
        return NoStep()


def per_step(trainer: Trainer) -> float:
    """Microseconds per step inside epochs, from the trainer's own epoch records."""
    seconds = sum(len(trainer.data.train_x) / r["samples_per_s"] for r in trainer.telemetry.epochs())
    return seconds / trainer.state.step * 1e6


def loop_cost(data: ImageData, epochs: int) -> float:
    config = TrainConfig(dataset="digits", epochs=epochs, iw_samples=0, **TINY).validate()
    trainer = LoopAlone(config, data, pick_device("cpu"))
    assert trainer.run().state == "finished"
    return per_step(trainer)


def vae_tui_tiny(data: ImageData, epochs: int) -> float:
    config = TrainConfig(dataset="digits", epochs=epochs, iw_samples=0, **TINY).validate()
    trainer = Trainer(config, data, pick_device("cpu"))
    assert trainer.run().state == "finished", trainer.result.message
    return per_step(trainer)


def bare_tiny(data: ImageData, epochs: int, instructions: "Instructions | None" = None) -> float:
    """The same model, optimizer and batches, in the plainest loop: no records, no controls.
    Microseconds per step; with `instructions`, counted there instead, and the steps returned."""
    config = TrainConfig(dataset="digits", epochs=epochs, **TINY).validate()
    torch.manual_seed(0)
    model = build_model(config, data.shape)
    optimizer = make_optimizer(model, config.lr)
    train_x = torch.from_numpy(np.asarray(data.train_x, dtype=np.float32) / (255 if data.train_x.dtype == np.uint8 else 1))
    n, batch, steps, seconds = len(train_x), config.batch_size, 0, 0.0
    for _ in range(epochs):
        start = time.perf_counter()
        with instructions.counting() if instructions is not None else contextlib.nullcontext():
            perm = torch.randperm(n)
            for i in range(0, n, batch):
                loss, _, _ = elbo_terms(model, train_x[perm[i : i + batch]], 1.0)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                steps += 1
        seconds += time.perf_counter() - start
    return steps if instructions is not None else seconds / steps * 1e6


def checkpoint_hold(folder: Path, saves: int) -> tuple[float, float]:
    """Milliseconds the loop waits for one routine checkpoint: written in place, and handed to the writer."""
    from vae_tui.runfile.layout import open_run_dir
    from vae_tui.telemetry import Telemetry
    from vae_tui.training.checkpointer import Checkpointer
    from vae_tui.training.state import TrainingState

    config = TrainConfig(dataset="mnist").validate()
    model = build_model(config, (1, 28, 28))
    state = TrainingState(model, make_optimizer(model, config.lr), 0, torch.device("cpu"))
    elbo_terms(model, torch.rand(8, 1, 28, 28), 1.0)[0].backward()
    state.optimizer.step()  # Adam's moments exist: a checkpoint as large as a real one
    checkpointer = Checkpointer(open_run_dir(folder / "run"), {"config": config.to_dict()}, Telemetry())
    held: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(saves):
        for background in (False, True):
            start = time.perf_counter()
            checkpointer.save("last", state, "routine", background=background)
            held[background].append((time.perf_counter() - start) * 1e3)
            checkpointer.drain()  # not counted: the loop goes on meanwhile
    return statistics.median(held[False]), statistics.median(held[True])


class Instructions:
    """Instructions this process executes inside `counting()` blocks, as callgrind counts them (the
    process runs under valgrind --tool=callgrind --instr-atstart=no; callgrind_control switches it)."""

    def __init__(self) -> None:
        self.total, self.pid = 0, str(os.getpid())

    def _control(self, *args: str) -> str:
        return subprocess.run(["callgrind_control", *args, self.pid], capture_output=True, text=True, check=True).stdout

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        self._control("--zero")
        self._control("--instr=on")
        try:
            yield
        finally:
            shown = self._control("-e", "Ir")  # "Th 1  8,333,096" per thread
            self._control("--instr=off")
            self.total += sum(int(line.split()[-1].replace(",", "")) for line in shown.splitlines() if line.strip().startswith("Th "))


def counted_per_step(data: ImageData, big: ImageData, epochs: int, instructions: Instructions, native_us: float) -> tuple[float, float, float]:
    """Instructions per step: the loop alone, vae-tui's tiny run, the bare loop (inside epochs only).
    Under valgrind everything runs some 50 times slower, so the work vae-tui paces by the clock (the
    flush every 50 ms, a snapshot every second) would come 50 times as often per step: its clocks
    are slowed by the factor measured on the bare loop (`native_us` a step, timed outside valgrind)."""
    instructions.total = 0
    start = time.perf_counter()
    steps = bare_tiny(data, epochs, instructions)
    bare = instructions.total / steps
    slower = (time.perf_counter() - start) / steps * 1e6 / native_us
    results = []
    for trainer_class, images, times in ((LoopAlone, big, 1), (Trainer, data, epochs)):

        class Counted(trainer_class):  # type: ignore[valid-type, misc]
            def _run_epoch(self) -> bool:
                with instructions.counting():
                    return super()._run_epoch()

        instructions.total = 0
        config = TrainConfig(dataset="digits", epochs=times, iw_samples=0, snapshot_seconds=slower, **TINY).validate()
        trainer = Counted(config, images, pick_device("cpu"))
        trainer.losses.flush_seconds *= slower
        assert trainer.run().state == "finished", trainer.result.message
        results.append(instructions.total / trainer.state.step)
    return results[0], results[1], bare


def under_callgrind(args: argparse.Namespace) -> None:
    """Run this script again under valgrind, one thread, and print what it counted."""
    torch.set_num_threads(1)
    native = statistics.median(bare_tiny(load_dataset("digits", "/tmp", download=False), args.epochs) for _ in range(3))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "--counted",
        "--epochs",
        str(args.epochs),
        "--images",
        str(args.images),
        "--native-us",
        repr(native),
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    loop, ours, bare = json.loads(out.strip().splitlines()[-1])
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, valgrind's callgrind, 1 thread; {args.epochs} epochs of the tiny model")
    print("| measurement | instructions per step |")
    print("|---|---|")
    print(f"| the loop alone, a step that does nothing | {loop:,.0f} |")
    print(f"| tiny model, vae-tui (eager step, real loop) | {ours:,.0f} |")
    print(f"| tiny model, bare loop | {bare:,.0f} |")
    print(f"vae-tui / bare loop: {ours / bare:.3f}x in instructions")


def long_epochs(data: ImageData, images: int) -> ImageData:
    """The digits repeated to `images` training images: epochs long enough that their ends do not count."""
    data.train_x = np.resize(data.train_x, (images, *data.train_x.shape[1:]))
    if data.train_y is not None:
        data.train_y = np.resize(data.train_y, images)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=11, help="short turns, alternating: the median ratio of many pairs is steadier than one long pair")
    parser.add_argument("--epochs", type=int, default=6, help="epochs of the tiny model in a turn (180 steps each)")
    parser.add_argument("--images", type=int, default=160_000, help="training images an epoch of the no-op loop takes")
    parser.add_argument("--instructions", action="store_true", help="count instructions under valgrind instead of timing")
    parser.add_argument("--counted", action="store_true", help=argparse.SUPPRESS)  # the child under valgrind
    parser.add_argument("--native-us", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.instructions:
        return under_callgrind(args)
    digits = load_dataset("digits", "/tmp", download=False)
    if args.counted:
        big = long_epochs(load_dataset("digits", "/tmp", download=False), args.images)
        print(json.dumps(counted_per_step(digits, big, args.epochs, Instructions(), args.native_us)))
        return
    big = long_epochs(load_dataset("digits", "/tmp", download=False), args.images)
    costs, ours, bare = [], [], []
    loop_cost(big, 1), vae_tui_tiny(digits, 1), bare_tiny(digits, 1)  # a turn not counted: first calls, caches, imports
    for turn in range(args.turns):
        costs.append(loop_cost(big, 1))
        first, second = (vae_tui_tiny, bare_tiny) if turn % 2 == 0 else (bare_tiny, vae_tui_tiny)  # each goes first in turn
        times = {run: run(digits, args.epochs) for run in (first, second)}
        ours.append(times[vae_tui_tiny])
        bare.append(times[bare_tiny])
        print(
            f"  turn {turn + 1}: loop alone {costs[-1]:.2f} us/step; tiny model: vae-tui {ours[-1]:.1f}, "
            f"bare loop {bare[-1]:.1f} us/step ({ours[-1] / bare[-1]:.3f}x)",
            flush=True,
        )
    print()
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"| measurement (median of {args.turns} turns) | us per step |")
    print("|---|---|")
    print(f"| the loop alone, a step that does nothing ({args.images:,} images an epoch, batch 8) | {statistics.median(costs):.2f} |")
    print(f"| tiny model, vae-tui (eager step, real loop) | {statistics.median(ours):.1f} |")
    print(f"| tiny model, bare loop | {statistics.median(bare):.1f} |")
    ratios = [o / b for o, b in zip(ours, bare)]
    print(f"vae-tui / bare loop: {statistics.median(ratios):.3f}x (per turn: {', '.join(f'{r:.3f}' for r in ratios)})")
    with tempfile.TemporaryDirectory() as tmp:
        written, handed = checkpoint_hold(Path(tmp), 9)
    print(
        f"a routine checkpoint of 784-400-20 with Adam (median of 9): the loop held {written:.1f} ms when written in place, "
        f"{handed:.1f} ms when handed to the writer thread ({written / handed:.1f}x less)"
    )


if __name__ == "__main__":
    main()
