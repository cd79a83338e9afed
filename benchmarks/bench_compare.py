"""What comparing runs costs: five runs of a million steps over the watched one.

    python benchmarks/bench_compare.py                      # 6 runs of 1,000,000 steps
    python benchmarks/bench_compare.py --steps 100000

It writes six run directories (bench_watch.py's writer: the trainer's own record format, an
epoch every 469 batches), then measures:

1. redraw: one per-batch chart (58x11 cells, its size at 120x40) drawn from the watched run's
   history alone, and with the five others overlaid, in the same process, side by side;
2. wire: `vae-tui watch RUN --compare FIVE OTHERS` in a 120x40 pseudo-terminal while the
   watched run and one overlaid run keep growing (about 1,000 steps a second each, as a
   trainer writes them, status heartbeats included): bytes sent to the terminal per second over
   a 20 s window, after the history has been read.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
from bench_pictures import pty_bytes_per_second  # noqa: E402
from bench_watch import PER_EPOCH, make_run  # noqa: E402

from vae_tui.runfile.metrics import batch_lines  # noqa: E402
from vae_tui.watching.compare import Comparison  # noqa: E402
from vae_tui.watching.follow import RunFollower  # noqa: E402


def redraw_ms(watched: RunFollower, comparison: Comparison | None, repeats: int = 30, width: int = 58, height: int = 11) -> float:
    """Median ms of one per-batch chart redraw (series to cells), as the monitor's LossChart does it."""
    from rich.console import Console
    from rich.text import Text
    from textual_plotext.plot import Plot

    from vae_tui.tui.charts import ChartSettings, batch_points, build_batch_chart, overlay_lines

    console = Console(width=width, color_system="truecolor", file=open(os.devnull, "w"))
    options = console.options.update(width=width, height=height, no_wrap=True, overflow="crop")
    plt, settings, times = Plot(), ChartSettings(), []
    for _ in range(repeats):
        start = time.perf_counter()
        x, y = batch_points(watched.telemetry, "recon", width, settings)
        lines = overlay_lines(comparison, "recon", width, settings, x)
        chart = build_batch_chart(plt, x, y, width, height, "reconstruction", "recon", settings, (), lines, "run0")
        console.render_lines(Text.from_ansi(chart), options)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


class Grower(threading.Thread):
    """Appends batches to a run as a trainer would, with a live status heartbeat."""

    def __init__(self, run: Path, first_step: int, rate: float = 1000.0) -> None:
        super().__init__(daemon=True)
        self.path, self.step, self.rate = run, first_step, rate
        self.done = threading.Event()

    def run(self) -> None:
        rng = np.random.default_rng(1)
        status = json.loads((self.path / "status.json").read_text())
        status.update(state="training", pid=os.getpid(), host=os.uname().nodename)
        with open(self.path / "metrics.jsonl", "a") as f:
            while not self.done.wait(0.1):
                steps = np.arange(self.step + 1, self.step + int(self.rate * 0.1) + 1)
                recon = (80 + rng.normal(size=len(steps))).astype(np.float32)
                kl = (20 + rng.normal(size=len(steps))).astype(np.float32)
                f.write(batch_lines(int(steps[0]) // PER_EPOCH + 1, steps, recon, kl, recon + kl, time.time() + steps * 0))
                f.flush()
                self.step = int(steps[-1])
                status.update(step=self.step, updated=time.time())
                (self.path / "status.tmp").write_text(json.dumps(status))
                os.replace(self.path / "status.tmp", self.path / "status.json")


def wire(watched: Path, others: list[Path], settle_s: float, window_s: float) -> float:
    """Bytes per second `vae-tui watch --compare` sends to a 120x40 terminal, after settle_s."""
    argv = [sys.executable, "-m", "vae_tui", "watch", str(watched), "--compare", *map(str, others)]
    return pty_bytes_per_second(argv, {"TERM": "xterm-256color", "COLORTERM": "truecolor"}, settle_s, window_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--settle", type=float, default=40.0, help="seconds for the monitor to read six histories")
    parser.add_argument("--window", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [Path(tmp) / f"run{i}" for i in range(6)]
        start = time.perf_counter()
        for run in runs:
            make_run(run, args.steps)
        print(f"wrote 6 runs of {args.steps:,} steps in {time.perf_counter() - start:.0f} s")
        watched = RunFollower(runs[0])
        start = time.perf_counter()
        watched.poll()
        comparison = Comparison(runs[1:])
        comparison.poll()
        print(f"read all six histories: {time.perf_counter() - start:.1f} s")
        alone, overlaid = [], []
        for _ in range(3):  # side by side, taking turns
            alone.append(redraw_ms(watched, None))
            overlaid.append(redraw_ms(watched, comparison))
        print(
            f"redraw of a per-batch chart, median of 3 x 30: alone {statistics.median(alone):.1f} ms, "
            f"with 5 runs overlaid {statistics.median(overlaid):.1f} ms (ratio {statistics.median(overlaid) / statistics.median(alone):.2f})"
        )
        growers = [Grower(runs[0], args.steps), Grower(runs[1], args.steps)]
        for grower in growers:
            grower.start()
        rate = wire(runs[0], runs[1:], args.settle, args.window)
        for grower in growers:
            grower.done.set()
        print(
            f"wire: {rate / 1024:.1f} KB/s at 120x40 (truecolor), the watched run and one overlaid run growing "
            f"{growers[0].rate:,.0f} steps/s each, over {args.window:g} s after {args.settle:g} s of start-up"
        )


if __name__ == "__main__":
    main()
