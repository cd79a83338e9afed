"""What the live diagnoses cost the trainer: the real Trainer with its default hooks, the diagnosis hook
timed from inside (every call of it, on the training thread) against the run's whole training time,
and the same runs with the hook left out, side by side, alternating which goes first.

    python benchmarks/bench_diagnoses.py                     # digits, and MNIST's 10k test images from ../shared/data/mnist
    python benchmarks/bench_diagnoses.py --device cuda       # on a GPU box

The goal: at most 1% of training time. The in-run share is the figure to read (a shared machine moves
whole runs by more than 1% from one to the next); the with/without ratio is there to show no cost
hides outside the hook's own calls.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import DEFAULT_MNIST, prepare_data  # noqa: E402

from vae_tui.config import TrainConfig  # noqa: E402
from vae_tui.data import load_dataset, load_digits  # noqa: E402
from vae_tui.runfile.layout import open_run_dir  # noqa: E402
from vae_tui.training.device import pick_device  # noqa: E402
from vae_tui.training.diagnosing import DiagnosisHook  # noqa: E402
from vae_tui.training.loop import Trainer, default_hooks  # noqa: E402


class Timed(DiagnosisHook):
    """The diagnosis hook, its seconds on the training thread added up."""

    def __init__(self) -> None:
        super().__init__()
        self.spent = 0.0

    def _timed(self, method: Any, *args: Any) -> None:
        start = time.perf_counter()
        method(*args)
        self.spent += time.perf_counter() - start

    def on_losses(self, trainer: Any, chunk: Any) -> None:
        self._timed(super().on_losses, trainer, chunk)

    def on_epoch_end(self, trainer: Any, record: Any) -> None:
        self._timed(super().on_epoch_end, trainer, record)


def one_run(data: Any, config: TrainConfig, device: Any, diagnosed: bool) -> tuple[float, float, int]:
    """(seconds training, seconds in the diagnosis hook, findings said)."""
    with tempfile.TemporaryDirectory() as folder:
        run = open_run_dir(Path(folder) / "run", resuming=True)
        hooks = [h for h in default_hooks(run) if not isinstance(h, DiagnosisHook)]
        timed = Timed()
        trainer = Trainer(config, data, device, run_dir=run, hooks=hooks + ([timed] if diagnosed else []))
        start = time.perf_counter()
        trainer.run()
        said = sum(1 for e in trainer.telemetry.events() if e.kind == "diagnosis")
        return time.perf_counter() - start, timed.spent, said


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mnist", type=Path, default=DEFAULT_MNIST)
    args = parser.parse_args()
    device = pick_device(args.device)
    cases = [("digits, 300 epochs", load_digits(), TrainConfig(dataset="digits", epochs=300, iw_samples=0))]
    if args.mnist.exists():
        split = prepare_data(args.mnist, Path(tempfile.mkdtemp()) / "mnist")
        cases.append(("MNIST 8k, 10 epochs", load_dataset("mnist", str(split)), TrainConfig(dataset="mnist", epochs=10, iw_samples=0)))
    for name, data, config in cases:
        config = config.validate()
        shares, ratios = [], []
        for repeat in range(args.repeats):
            order = [True, False] if repeat % 2 == 0 else [False, True]
            times = {}
            for diagnosed in order:
                seconds, spent, said = one_run(data, config, device, diagnosed)
                times[diagnosed] = seconds
                if diagnosed:
                    shares.append(spent / seconds)
                    print(f"{name}: {seconds:.1f} s, {spent * 1000:.0f} ms in the diagnosis hook ({spent / seconds:.2%}), {said} findings said")
                else:
                    print(f"{name}: {seconds:.1f} s without it")
            ratios.append(times[True] / times[False])
        print(f"{name}: the hook's share of training time, median {statistics.median(shares):.2%}; with / without, median {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
