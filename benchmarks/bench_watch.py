"""Opening a long run with `vae-tui watch`: how long until it shows, and what a redraw costs then.

    python benchmarks/bench_watch.py                   # 100k and 1M batch records
    python benchmarks/bench_watch.py --sizes 3000000
    python benchmarks/bench_watch.py --sizes --hours 10   # ten hours at 20,000 steps/s, as intervals

For each size it writes a finished run directory whose metrics.jsonl holds that many batch
records (in the trainer's own format, an epoch record every 469 batches as on MNIST), then
measures:
1. replay: reading the whole history into the monitor's telemetry (RunFollower.poll);
2. open: `vae-tui watch RUN` in a 120x40 pseudo-terminal, from starting the process to the
   first frame whose status line shows the last step (imports and first paint included);
3. redraw: one per-batch chart redraw from that history, as in bench_app.py.
With --hours H: a run of H hours at 20,000 steps a second, written as the trainer writes such a run
(RECORDS_PER_S interval records a second, format 4), measured the same way.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import select
import signal
import statistics
import struct
import sys
import tempfile
import termios
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vae_tui.runfile.metrics import batch_lines, interval_lines  # noqa: E402
from vae_tui.training.reporting import RECORDS_PER_S  # noqa: E402
from vae_tui.watching.follow import RunFollower  # noqa: E402

PER_EPOCH = 469


def make_run(path: Path, n: int) -> None:
    path.mkdir(parents=True)
    (path / "checkpoints").mkdir()
    (path / "config.json").write_text(json.dumps({"config": {"dataset": "mnist", "epochs": n // PER_EPOCH}}))
    rng = np.random.default_rng(0)
    with open(path / "metrics.jsonl", "w") as f:
        for lo in range(0, n, PER_EPOCH):
            steps = np.arange(lo + 1, min(lo + PER_EPOCH, n) + 1)
            recon = (100 * np.exp(-steps / (n / 5)) + 80 + rng.normal(size=len(steps))).astype(np.float32)
            kl = (20 + rng.normal(size=len(steps))).astype(np.float32)
            epoch = lo // PER_EPOCH + 1
            f.write(batch_lines(epoch, steps, recon, kl, recon + kl, 1.7e9 + steps * 0.01))
            f.write(
                json.dumps(
                    {
                        "kind": "epoch",
                        "epoch": epoch,
                        "step": int(steps[-1]),
                        "train_loss": float(recon[-1] + kl[-1]),
                        "test_loss": float(recon[-1] + kl[-1] + 1),
                        "test_recon": float(recon[-1]),
                        "test_kl": float(kl[-1]),
                        "samples_per_s": 15000.0,
                        "time": 1.7e9 + steps[-1] * 0.01,
                    }
                )
                + "\n"
            )
    status = {
        "state": "finished",
        "dataset": "mnist",
        "device": "cpu",
        "model": "784-400-20",
        "epoch": n // PER_EPOCH,
        "epochs": n // PER_EPOCH,
        "step": n,
        "batches_per_epoch": PER_EPOCH,
        "message": "finished",
        "run_dir": str(path),
        "updated": time.time(),
    }
    (path / "status.json").write_text(json.dumps(status))


def make_interval_run(path: Path, hours: float, rate: int = 20_000, records_per_s: int = RECORDS_PER_S) -> int:
    """A finished run of `hours` at `rate` steps a second, its metrics as intervals; returns its last step."""
    path.mkdir(parents=True)
    (path / "checkpoints").mkdir()
    (path / "config.json").write_text(json.dumps({"config": {"dataset": "mnist", "epochs": 1}}))
    per = rate // records_per_s  # steps an interval
    seconds, epoch_s = int(hours * 3600), 60  # an epoch record a minute
    rng = np.random.default_rng(0)
    with open(path / "metrics.jsonl", "w") as f:
        for t in range(0, seconds, epoch_s):
            n = epoch_s * records_per_s
            first = t * rate + 1 + np.arange(n) * per
            last = first + per - 1
            recon = 100 * np.exp(-last / (seconds * rate / 5)) + 80 + rng.normal(size=n)
            terms = np.column_stack([recon, np.full(n, 20.0), recon + 20])
            spans = np.column_stack([first, recon - 3, recon + 3, np.full(n, 19.0), np.full(n, 21.0), recon + 17, recon + 23])
            epoch = t // epoch_s + 1
            f.write(interval_lines(epoch, last, terms, 1.7e9 + last / rate, np.full(n, 1e-3), np.ones(n), spans))
            f.write(
                json.dumps(
                    {
                        "kind": "epoch",
                        "epoch": epoch,
                        "step": int(last[-1]),
                        "train_loss": float(recon[-1] + 20),
                        "test_loss": float(recon[-1] + 21),
                        "test_recon": float(recon[-1]),
                        "test_kl": 20.0,
                        "samples_per_s": rate * 128.0,
                        "time": 1.7e9 + last[-1] / rate,
                    }
                )
                + "\n"
            )
    steps = seconds * rate
    status = {
        "state": "finished",
        "dataset": "mnist",
        "device": "cuda",
        "model": "784-400-20",
        "epoch": seconds // epoch_s,
        "epochs": seconds // epoch_s,
        "step": steps,
        "batches_per_epoch": epoch_s * rate,
        "message": "finished",
        "run_dir": str(path),
        "updated": time.time(),
    }
    (path / "status.json").write_text(json.dumps(status))
    return steps


def open_time(run: Path, n: int, size: tuple[int, int] = (120, 40)) -> float:
    """Seconds from exec to a frame showing the last step, e.g. 'step 1,000,000'."""
    pid, fd = pty.fork()
    if pid == 0:
        os.environ["TERM"] = "xterm-256color"
        os.execvp(sys.executable, [sys.executable, "-m", "vae_tui", "watch", str(run)])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size[1], size[0], 0, 0))
    start, seen, marker = time.perf_counter(), b"", f"{n:,}".encode()
    elapsed = float("nan")
    while time.perf_counter() - start < 60:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:
                break
            if marker in seen:
                elapsed = time.perf_counter() - start
                break
    os.kill(pid, signal.SIGTERM)
    os.waitpid(pid, 0)
    os.close(fd)
    return elapsed


def redraw_ms(follower: RunFollower, width: int = 58, height: int = 11) -> float:
    from rich.console import Console
    from rich.text import Text
    from textual_plotext.plot import Plot

    from vae_tui.tui.charts import ChartSettings, batch_points, build_batch_chart

    console = Console(width=width, color_system="256", file=open(os.devnull, "w"))
    options = console.options.update(width=width, height=height, no_wrap=True, overflow="crop")
    plt, times = Plot(), []
    for _ in range(20):
        t = time.perf_counter()
        x, y = batch_points(follower.telemetry, "recon", width, ChartSettings())
        console.render_lines(Text.from_ansi(build_batch_chart(plt, x, y, width, height, "recon", "recon", ChartSettings())), options)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--hours", type=float, nargs="*", default=[], help="runs of H hours at 20,000 steps/s, as intervals")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}")
    print("| batch records | metrics.jsonl | replay (s) | vae-tui watch to first full frame (s) | chart redraw (ms) |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            run = Path(tmp) / f"run-{n}"
            make_run(run, n)
            replay, opened, size_mb, redraw, records = measure(run, n, args.repeats)
            assert records == n
            print(f"| {n:,} | {size_mb:.0f} MB | {replay:.2f} | {opened:.2f} | {redraw:.1f} |", flush=True)
        for hours in args.hours:
            run = Path(tmp) / f"run-{hours}h"
            steps = make_interval_run(run, hours)
            replay, opened, size_mb, redraw, records = measure(run, steps, args.repeats)
            print(
                f"| {records:,} intervals ({hours:g} h at 20,000 steps/s, {steps:,} steps) | {size_mb:.0f} MB | {replay:.2f} | {opened:.2f} | {redraw:.1f} |",
                flush=True,
            )


def measure(run: Path, last_step: int, repeats: int) -> tuple[float, float, float, float, int]:
    """Median replay and open seconds, the file's MB, a redraw's ms, and the points replayed."""
    replays = []
    for _ in range(repeats):
        follower = RunFollower(run)
        t = time.perf_counter()
        follower.poll()
        replays.append(time.perf_counter() - t)
    opens = [open_time(run, last_step) for _ in range(repeats)]
    size_mb = (run / "metrics.jsonl").stat().st_size / 2**20
    return statistics.median(replays), statistics.median(opens), size_mb, redraw_ms(follower), follower.telemetry.batches


if __name__ == "__main__":
    main()
