"""What the live monitor costs: trainer throughput, chart redraw time, bytes on the wire.

    python benchmarks/bench_app.py                 # all three, real MNIST from ../shared/data/mnist
    python benchmarks/bench_app.py --only redraw   # just the chart redraw timings (no data needed)
    python benchmarks/bench_app.py --dataset colour --only windows   # coloured pictures, --arch conv

1. Throughput: `vae-tui train` with the app (in a 120x40 pseudo-terminal) against `--headless`,
   same settings, alternating runs; samples/s from each run's metrics.jsonl epoch records,
   counting the epochs that end after the first WARMUP_S seconds (the app's start-up, imports
   and first full paint, is not the steady state being measured).
2. Redraw: one per-batch chart redraw (decimate, EMA, plotext build, ANSI to segments) with
   1k, 100k and 1M batches of history, at the chart size of a 120x40 terminal.
3. Wire: bytes the app writes to the terminal per second while training, at 120x40, counted on
   the pty (the first full paint and start-up excluded: from the first epoch record to the last).
   The terminal is xterm-256color with COLORTERM as --colorterm says (truecolor by default: 24-bit
   colours are the longest escape codes, the worst case for a colour dataset).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import select
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from bench_train import DEFAULT_MNIST, prepare_data  # noqa: E402
from make_pictures import write_folder  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TERMINAL = {"TERM": "xterm-256color", "COLORTERM": "truecolor"}  # what the app's pty says it is (--colorterm)
COLOUR_PICTURES = 3000  # 32x32 RGB, for --dataset colour


def epoch_records(run: Path) -> list[dict]:
    from vae_tui.runfile.metrics import read_metrics

    return read_metrics(run / "metrics.jsonl").epochs


def run_app(args: list[str], size: tuple[int, int], run: Path, timeout: float) -> dict:
    """Run the app in a pty of the given size; quit when training ends; count output bytes."""
    pid, fd = pty.fork()
    if pid == 0:
        os.environ.update(TERMINAL)
        os.execvp(sys.executable, [sys.executable, "-m", "vae_tui", *args])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size[1], size[0], 0, 0))
    chunks: list[tuple[float, int]] = []
    start, quit_sent = time.time(), False
    while time.time() - start < timeout:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append((time.time(), len(data)))
        done = (run / "metrics.jsonl").exists() and len(epoch_records(run)) >= int(args[args.index("--epochs") + 1])
        if done and not quit_sent:
            time.sleep(1.0)
            os.write(fd, b"q")
            quit_sent = True
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    records = epoch_records(run)
    t0, t1 = records[0]["time"], records[-1]["time"]
    window = sum(n for t, n in chunks if t0 <= t <= t1)
    return {"records": records, "bytes_per_s": window / (t1 - t0) if t1 > t0 else float("nan")}


def run_headless(args: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "vae_tui", *args, "--headless"], check=True, capture_output=True, cwd=ROOT)


WARMUP_S = 6.0  # start-up (torch warm-up, and the app importing and mounting) is not steady state


def mean_rate(records: list[dict]) -> float:
    """Mean samples/s over the epochs that ended at least WARMUP_S after the first one."""
    steady = [r for r in records if r["time"] >= records[0]["time"] + WARMUP_S] or records[1:] or records
    return statistics.mean(r["samples_per_s"] for r in steady)


def throughput_and_wire(dataset_args: list[str], epochs: int, repeats: int, size: tuple[int, int]) -> None:
    app_rates, headless_rates, wire = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            for mode in ("headless", "app"):
                run = Path(tmp) / f"{mode}-{i}"
                args = ["train", *dataset_args, "--epochs", str(epochs), "--run-dir", str(run), "--seed", "0"]
                if mode == "app":
                    result = run_app(args, size, run, timeout=600)
                    app_rates.append(mean_rate(result["records"]))
                    wire.append(result["bytes_per_s"])
                else:
                    run_headless(args)
                    headless_rates.append(mean_rate(epoch_records(run)))
                rate = (app_rates if mode == "app" else headless_rates)[-1]
                extra = f"  {wire[-1] / 1024:.1f} KB/s to the terminal" if mode == "app" else ""
                print(f"  run {i + 1} {mode:8s} {rate:9,.0f} samples/s{extra}", flush=True)
    h, a = statistics.median(headless_rates), statistics.median(app_rates)
    print(f"| view | samples/s (median of {repeats}) |\n|---|---|\n| headless | {h:,.0f} |\n| app, {size[0]}x{size[1]} | {a:,.0f} |")
    print(f"app cost: {100 * (1 - a / h):+.1f}% of headless throughput (negative: app run was faster)")
    print(f"wire: {statistics.median(wire) / 1024:.1f} KB/s median at {size[0]}x{size[1]} (runs: {', '.join(f'{w / 1024:.1f}' for w in wire)})")


def watched_windows(dataset_args: list[str], cycles: int, window_s: float, size: tuple[int, int]) -> None:
    """One headless trainer; a monitor (`vae-tui watch`, the same app `vae-tui train` shows) comes
    and goes in alternating windows. Epochs wholly inside a window count for it. Comparing within
    one run cancels the drift between runs that makes separate runs on a shared box so noisy."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        trainer = subprocess.Popen(
            [sys.executable, "-m", "vae_tui", "train", *dataset_args, "--epochs", "100000", "--run-dir", str(run), "--headless"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
        )
        try:
            while not (run / "status.json").exists():
                time.sleep(0.2)
            time.sleep(WARMUP_S)
            windows: list[tuple[str, float, float, int]] = []
            for cycle in range(cycles + 1):
                t0 = time.time()
                time.sleep(window_s)
                windows.append(("alone", t0, time.time(), 0))
                if cycle < cycles:  # unwatched windows on both ends
                    windows.append(("watched", *watch_for(run, size, settle_s=3.0, window_s=window_s)))
                    time.sleep(1.5)  # the watcher's exit settles
        finally:
            trainer.send_signal(signal.SIGTERM)
            trainer.wait()
        records = epoch_records(run)
    rates: dict[str, list[float]] = {"alone": [], "watched": []}
    print("| window | epochs | samples/s (mean) | KB/s to the terminal |\n|---|---|---|---|")
    for mode, t0, t1, nbytes in windows:
        inside = [b["samples_per_s"] for a, b in zip(records, records[1:]) if a["time"] >= t0 and b["time"] <= t1]
        if not inside:
            continue
        rates[mode].append(statistics.mean(inside))
        wire = f"{nbytes / (t1 - t0) / 1024:.1f}" if mode == "watched" else "-"
        print(f"| {mode} | {len(inside)} | {rates[mode][-1]:,.0f} | {wire} |")
    alone, watched = statistics.median(rates["alone"]), statistics.median(rates["watched"])
    # each watched window against the unwatched windows on either side of it, which cancels drift
    pairs = []
    for i, w in enumerate(rates["watched"]):
        around = rates["alone"][i : i + 2]
        pairs.append(1 - w / statistics.mean(around))
    print(f"median alone {alone:,.0f}, watched {watched:,.0f} samples/s ({100 * (1 - watched / alone):+.1f}%)")
    print(
        f"the monitor costs {100 * statistics.median(pairs):+.1f}% (median over windows of watched against the unwatched "
        f"windows either side; per window: {', '.join(f'{100 * p:+.1f}%' for p in pairs)})"
    )
    print(
        f"the monitor's own CPU: {100 * statistics.median(MONITOR_CPU):.1f}% of one core (median of windows: "
        f"{', '.join(f'{100 * c:.1f}' for c in MONITOR_CPU)})"
    )


MONITOR_CPU: list[float] = []  # the watcher's CPU time per second of each watched window


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def watch_for(run: Path, size: tuple[int, int], settle_s: float, window_s: float) -> tuple[float, float, int]:
    """Run `vae-tui watch RUN` in a pty; after settle_s (start-up, history replay), count a window."""
    pid, fd = pty.fork()
    if pid == 0:
        os.environ.update(TERMINAL)
        os.execvp(sys.executable, [sys.executable, "-m", "vae_tui", "watch", str(run)])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size[1], size[0], 0, 0))
    start = time.time()
    t0, t1 = start + settle_s, start + settle_s + window_s
    nbytes, cpu0 = 0, None
    while time.time() < t1:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if cpu0 is None and time.time() >= t0:
            cpu0 = cpu_seconds(pid)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if t0 <= time.time() <= t1:
                nbytes += len(data)
    MONITOR_CPU.append((cpu_seconds(pid) - (cpu0 or 0.0)) / window_s)
    os.kill(pid, signal.SIGTERM)
    os.waitpid(pid, 0)
    os.close(fd)
    return t0, t1, nbytes


def redraw_timings(width: int = 58, height: int = 11) -> None:
    from rich.console import Console
    from rich.text import Text
    from textual_plotext.plot import Plot

    from vae_tui.telemetry import Telemetry
    from vae_tui.tui.charts import ChartSettings, batch_points, build_batch_chart

    console = Console(width=width, color_system="256", file=open(os.devnull, "w"))
    options = console.options.update(width=width, height=height, no_wrap=True, overflow="crop")
    print(f"| history (batches) | one redraw, {width}x{height} chart, median of 20 (ms) | with window mode (ms) |")
    print("|---|---|---|")
    rng = np.random.default_rng(0)
    for n in (1_000, 100_000, 1_000_000):
        telemetry = Telemetry()
        steps = np.arange(1, n + 1)
        values = (100 * np.exp(-steps / (n / 5)) + 20 + rng.normal(size=n)).astype(np.float32)
        for lo in range(0, n, 50_000):  # arrives in chunks, as from the trainer
            hi = min(lo + 50_000, n)
            telemetry.add_batches(steps[lo:hi], values[lo:hi], values[lo:hi] / 10, values[lo:hi])
        plt = Plot()
        figures = []
        for settings in (ChartSettings(), ChartSettings(window=True)):
            times = []
            for _ in range(20):
                t = time.perf_counter()
                x, y = batch_points(telemetry, "recon", width, settings)
                ansi = build_batch_chart(plt, x, y, width, height, "reconstruction", "recon", settings)
                console.render_lines(Text.from_ansi(ansi), options, pad=False)
                times.append(time.perf_counter() - t)
            figures.append(statistics.median(times) * 1000)
        print(f"| {n:,} | {figures[0]:.1f} | {figures[1]:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", type=Path, default=DEFAULT_MNIST)
    parser.add_argument(
        "--dataset",
        choices=("mnist", "digits", "colour"),
        default="mnist",
        help=f"colour: {COLOUR_PICTURES:,} generated 32x32 RGB pictures, trained with --arch conv",
    )
    parser.add_argument("--colorterm", default="truecolor", help="COLORTERM for the app's terminal; '' for 256 colours")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--cycles", type=int, default=6, help="watched/unwatched window pairs in the one-run comparison")
    parser.add_argument("--window", type=float, default=8.0, help="seconds per window")
    parser.add_argument("--only", choices=("windows", "runs", "redraw"))
    args = parser.parse_args()
    TERMINAL["COLORTERM"] = args.colorterm
    print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}; terminal {TERMINAL}")
    if args.only in (None, "redraw"):
        print("\n## chart redraw time")
        redraw_timings()
    with tempfile.TemporaryDirectory() as data:
        if args.dataset == "mnist":
            prepare_data(args.mnist, Path(data))
            dataset_args = ["--dataset", "mnist", "--data-dir", data]
        elif args.dataset == "colour":
            os.environ["XDG_CACHE_HOME"] = data  # the runs' decoded pictures go with the folder
            write_folder(Path(data) / "colour", COLOUR_PICTURES, 32)
            dataset_args = ["--dataset", str(Path(data) / "colour"), "--arch", "conv"]
        else:
            dataset_args = ["--dataset", "digits"]
        if args.only in (None, "windows"):
            print(f"\n## one run, a monitor watching in alternate {args.window:g} s windows: {args.dataset}, 120x40")
            watched_windows(dataset_args, args.cycles, args.window, (120, 40))
        if args.only in (None, "runs"):
            print(f"\n## separate runs, vae-tui train with the app vs --headless: {args.dataset}, {args.epochs} epochs, 120x40")
            throughput_and_wire(dataset_args, args.epochs, args.repeats, (120, 40))


if __name__ == "__main__":
    main()
