"""The bytes the monitor sends to the terminal in steady state, at 120x40, and the bytes the run
directory grows by, per second of training.

    python benchmarks/bench_wire.py                       # digits and a fast fake run, every colour mode
    python benchmarks/bench_wire.py --datasets digits mnist colour

Each case: `vae-tui train` (or, for "fast", `vae-tui watch` on a run a writer process fills at
20,000 steps a second with a snapshot every second: the GPU case, reproducible on this CPU) in a
120x40 pseudo-terminal, TERM=xterm-256color with COLORTERM=truecolor (24-bit), without it (256
colours) or NO_COLOR=1. After SETTLE_S the bytes read from the pty are counted over --window
seconds. Each case runs with the default --wire 10 and with --wire 1000 (nothing held back), side
by side. The goal: at most 10 KB/s at the default, whatever the training speed. After the window,
? is pressed five times (the help screen, ? again closes it): the time until its title reaches the
terminal is how fast the keys answer while the redraws are paced.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from bench_train import DEFAULT_MNIST, prepare_data  # noqa: E402
from make_pictures import write_folder  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SIZE = (120, 40)
SETTLE_S = 8.0
KEY_PRESSES = 5
HELP_SHOWN = b"arrows or the mouse wheel scroll"  # the help screen's title, as it reaches the terminal
MODES = {"24-bit": {"COLORTERM": "truecolor"}, "256 colours": {}, "NO_COLOR": {"NO_COLOR": "1"}}

FAST_WRITER = """
import sys, time
import numpy as np
from pathlib import Path
from vae_tui.runfile.files import Snapshot, write_config, write_snapshot, write_status
from vae_tui.runfile.layout import open_run_dir
from vae_tui.runfile.metrics import MetricsWriter
from vae_tui.runfile.schema import RunInfo, RunState, Status
from vae_tui.training.losses import FLUSH_SECONDS, LossChunk
from vae_tui.training.reporting import RecordBudget
import os, socket

run = open_run_dir(Path(sys.argv[1]))
rate, seconds = float(sys.argv[2]), float(sys.argv[3])
write_config(run, RunInfo(config={"dataset": "mnist", "epochs": 1000}, dataset={"name": "mnist", "shape": [1, 28, 28]}, view="monitor"))
writer, rng = MetricsWriter(run.metrics_path), np.random.default_rng(0)
images = (rng.random((16, 1, 28, 28)) > 0.7).astype(np.float32)
status = Status(state=RunState.TRAINING, dataset="mnist", device="cuda (fake, 20,000 steps/s)", model="784-400-20 MLP",
                parameters=652824, epochs=1000, batches_per_epoch=469, lr=1e-3, run_dir=str(run.path), pid=os.getpid(),
                host=socket.gethostname())
start, step, shot, budget, before = time.time(), 0, 0.0, RecordBudget(), time.time()
while time.time() - start < seconds:
    time.sleep(FLUSH_SECONDS)
    n = int((time.time() - start) * rate) - step
    steps = np.arange(step + 1, step + n + 1)
    step += n
    recon = 100 * np.exp(-steps / 1e5) + rng.normal(0, 1, n)
    chunk = LossChunk(steps, np.full(n, 128), np.full(n, time.time()), recon, np.full(n, 25.0), recon + 25,
                      time.time() - before, np.full(n, 1e-3), np.full(n, 1.0))
    before = time.time()
    writer.write(budget.lines(step // 469 + 1, chunk))  # as the trainer writes its records
    status.step, status.epoch, status.samples_per_s, status.updated = step, step // 469 + 1, rate * 128, time.time()
    write_status(run, status)
    if time.time() - shot >= 1.0:
        shot = time.time()
        noisy = np.clip(images + rng.normal(0, 0.2, images.shape), 0, 1).astype(np.float32)
        write_snapshot(run, Snapshot(step, status.epoch, images, noisy, noisy[::-1]))
"""


def count(args: list[str], env: dict[str, str], window: float, run: Path) -> float:
    """KB/s read from the app's pty over `window` seconds, after SETTLE_S; the run directory's growth over
    the same window goes to GROWTH, and then the help key's answer times to ANSWERS."""
    pid, fd = pty.fork()
    if pid == 0:
        os.environ.pop("NO_COLOR", None)
        os.environ.pop("COLORTERM", None)
        os.environ.update({"TERM": "xterm-256color", **env})
        os.execvp(sys.executable, [sys.executable, "-m", "vae_tui", *args])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", SIZE[1], SIZE[0], 0, 0))
    start = time.time()
    t0, t1, nbytes, size0 = start + SETTLE_S, start + SETTLE_S + window, 0, None
    while time.time() < t1:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if size0 is None and time.time() >= t0:
            size0 = size_of(run)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if time.time() >= t0:
                nbytes += len(data)
    GROWTH[run.name] = (size_of(run) - (size0 or 0)) / window / 1000
    ANSWERS[run.name] = [answer_ms(fd, HELP_SHOWN) for _ in range(KEY_PRESSES)]
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + 20
    while time.time() < deadline and os.waitpid(pid, os.WNOHANG)[0] == 0:
        try:
            select.select([fd], [], [], 0.1) and os.read(fd, 65536)
        except OSError:
            pass
    os.close(fd)
    return nbytes / window / 1000


def answer_ms(fd: int, shown: bytes, limit: float = 5.0) -> float:
    """Milliseconds from pressing ? to the help screen's title reaching the terminal; ? again closes it."""
    pressed = time.perf_counter()
    os.write(fd, b"?")
    seen, answered = b"", float("inf")
    while time.perf_counter() - pressed < limit:
        ready, _, _ = select.select([fd], [], [], 0.01)
        if ready:
            seen += os.read(fd, 65536)
            if shown in seen:
                answered = (time.perf_counter() - pressed) * 1000
                break
    os.write(fd, b"?")
    end = time.perf_counter() + 0.7  # closed, and a few frames of the run drawn again
    while time.perf_counter() < end:
        if select.select([fd], [], [], 0.05)[0]:
            os.read(fd, 65536)
    return answered


def dataset_args(name: str, tmp: Path) -> list[str]:
    if name == "mnist":
        prepare_data(DEFAULT_MNIST, tmp / "mnist")
        return ["--dataset", "mnist", "--data-dir", str(tmp / "mnist")]
    if name == "colour":
        if not (tmp / "shapes").exists():
            write_folder(tmp / "shapes", 3000, 32)
        return ["--dataset", str(tmp / "shapes"), "--arch", "conv"]
    return ["--dataset", name]


GROWTH: dict[str, float] = {}  # KB a second each run directory grew by over its window, checkpoints aside
ANSWERS: dict[str, list[float]] = {}  # each run's answer times to the help key, ms


def answers(run: Path) -> str:
    times = sorted(ANSWERS[run.name])
    return f"{statistics.median(times):.0f} / {times[-1]:.0f}"


def size_of(path: Path) -> int:
    files = [p for p in path.rglob("*") if p.is_file() and p.parent.name != "checkpoints"]
    return sum(p.stat().st_size for p in files if p.exists())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["digits"], choices=("digits", "mnist", "colour"))
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs; {SIZE[0]}x{SIZE[1]}, {args.window:g} s windows after {SETTLE_S:g} s; KB/s to the terminal")
    print(
        "| case | colours | --wire 10 (default) | --wire 1000 (nothing held back) | ? answered, ms (median / max of "
        f"{KEY_PRESSES}), --wire 10 |\n|---|---|---|---|---|"
    )
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        env = {**os.environ, "XDG_CACHE_HOME": str(tmp / "cache")}
        os.environ.update(env)
        for name in args.datasets:
            data = dataset_args(name, tmp)
            for mode in args.modes:
                rates = []
                for wire in ("10", "1000"):
                    run = tmp / f"{name}-{mode}-{wire}".replace(" ", "")
                    rates.append(
                        count(["train", *data, "--epochs", "100000", "--run-dir", str(run), "--wire", wire, "--iw-samples", "0"], MODES[mode], args.window, run)
                    )
                paced = tmp / f"{name}-{mode}-10".replace(" ", "")
                print(f"| {name} (vae-tui train) | {mode} | {rates[0]:.1f} | {rates[1]:.1f} | {answers(paced)} |", flush=True)
        seconds = SETTLE_S + args.window + 5
        for mode in args.modes:
            rates = []
            for wire in ("10", "1000"):
                run = tmp / f"fast-{mode}-{wire}".replace(" ", "")
                writer = subprocess.Popen([sys.executable, "-c", FAST_WRITER, str(run), "20000", str(seconds)], cwd=ROOT)
                while not (run / "status.json").exists() and writer.poll() is None:  # it imports torch first
                    time.sleep(0.1)
                rates.append(count(["watch", str(run), "--wire", wire], MODES[mode], args.window, run))
                writer.wait()
            paced = tmp / f"fast-{mode}-10".replace(" ", "")
            print(f"| fast fake run, 20,000 steps/s (vae-tui watch) | {mode} | {rates[0]:.1f} | {rates[1]:.1f} | {answers(paced)} |", flush=True)
        print(
            "\nrun directory growth over the window, checkpoints aside: "
            + ", ".join(f"{name} {kb:.1f} KB/s" for name, kb in GROWTH.items() if name.endswith("-10"))
        )


if __name__ == "__main__":
    main()
