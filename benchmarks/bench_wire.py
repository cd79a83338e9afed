"""What the monitor sends to the terminal, and how long its screen ever stands still, over a thin link.

    pip install -e '.[bench]'      # pyte: a terminal emulator, to read the screen as a person would
    python benchmarks/bench_wire.py                          # digits, a fast run and a script; --wire 10, 2, 1000
    python benchmarks/bench_wire.py --cases digits --wires 10 --modes 256

Each case runs the monitor in a 120x40 pseudo-terminal (TERM=xterm-256color, with COLORTERM=truecolor
for 24-bit colour) and reads the screen it draws through a terminal emulator, four times a second:

- digits: `vae-tui train` on the built-in digits (about 1,000 steps a second here);
- fast: `vae-tui watch` on a run that a writer process fills at 20,000 steps a second, as a GPU
  trainer writes its records, with a snapshot every second;
- script: `vae-tui run -- python main.py`, PyTorch's classic VAE example unchanged (it prints a
  progress line every 10 batches) on MNIST's 10k test images from ../shared/data/mnist.

After SETTLE_S, the bytes a second over --window seconds (steady state); then what a person does:
`?` (the help), escape after 3 s, the terminal made 100x30 and back 3 s later, then --after seconds
of watching. Over all of that: the bytes a second, and the longest the screen stood still while the
run moved on: the status line's step (measured against status.json), and the charts (the left half
of the screen, under the status line and above a script's output), the help screen's own 3 s aside. With the default --wire 10,
--wire 2 (a thin link) and --wire 1000 (nothing held back), side by side.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyte

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import DEFAULT_MNIST, prepare_data  # noqa: E402
from bench_unchanged import CLASSIC  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SIZE, SMALLER = (120, 40), (100, 30)
SETTLE_S = 8.0
LOOK_S = 0.25  # how often the screen is read
MODES = {"24-bit": {"COLORTERM": "truecolor"}, "256": {}}

FAST_WRITER = """
import os, socket, sys, time
import numpy as np
from pathlib import Path
from vae_tui.runfile.files import Snapshot, write_config, write_snapshot, write_status
from vae_tui.runfile.layout import open_run_dir
from vae_tui.runfile.metrics import MetricsWriter
from vae_tui.runfile.schema import RunInfo, RunState, Status
from vae_tui.training.losses import FLUSH_SECONDS, LossChunk
from vae_tui.training.reporting import RecordBudget

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


@dataclass
class Watched:
    """The screen as read, look by look: when the status line's step and the charts last changed."""

    run: Path
    screen: pyte.Screen
    covered: bool = False  # the help screen is up
    step: int = -1
    step_at: float = 0.0
    charts: str = ""
    charts_at: float = 0.0
    charted_run: int = -1  # the run's step when the charts last changed
    stills: dict[str, float] = field(default_factory=lambda: {"status line": 0.0, "charts": 0.0})

    def __post_init__(self) -> None:
        self.step_at = self.charts_at = time.monotonic()

    def look(self, now: float) -> None:
        lines = self.screen.display
        shown = re.search(r"step ([\d,]+)", lines[0])
        step = int(shown.group(1).replace(",", "")) if shown else -1
        end = next((i for i, line in enumerate(lines) if "output of" in line), len(lines) - 1)  # a script's output pane
        charts = "\n".join(line[: self.screen.columns // 2] for line in lines[2:end])
        run_step = self.run_step()
        if self.covered or step != self.step or run_step <= step:  # moved, or nothing newer to say
            self.step, self.step_at = step, now
        if self.covered or charts != self.charts:
            self.charts, self.charts_at, self.charted_run = charts, now, run_step
        elif run_step == self.charted_run:  # the run has not moved since they were drawn
            self.charts_at = now
        self.stills["status line"] = max(self.stills["status line"], now - self.step_at)
        self.stills["charts"] = max(self.stills["charts"], now - self.charts_at)

    def run_step(self) -> int:
        """The step status.json says (the trainer writes it about once a second)."""
        try:
            return int(json.loads((self.run / "status.json").read_text())["step"])
        except (OSError, ValueError, KeyError):
            return -1


class Terminal:
    """`python -m vae_tui ARGS` in a pty of SIZE, read through pyte; bytes counted as they come."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.environ.pop("NO_COLOR", None)
            os.environ.pop("COLORTERM", None)
            os.environ.update({"TERM": "xterm-256color", **env})
            os.execvp(sys.executable, [sys.executable, "-m", "vae_tui", *args])
        self.screen = pyte.Screen(*SIZE)
        self.stream = pyte.ByteStream(self.screen)
        self.bytes = 0
        self.resize(SIZE)

    def resize(self, size: tuple[int, int]) -> None:
        self.screen.resize(size[1], size[0])
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", size[1], size[0], 0, 0))

    def read(self, seconds: float, watched: Watched | None = None) -> None:
        end = time.monotonic() + seconds
        next_look = time.monotonic()
        while time.monotonic() < end:
            if select.select([self.fd], [], [], 0.02)[0]:
                try:
                    data = os.read(self.fd, 65536)
                except OSError:
                    return
                self.bytes += len(data)
                self.stream.feed(data)
            if watched is not None and time.monotonic() >= next_look:
                watched.look(time.monotonic())
                next_look += LOOK_S

    def close(self) -> None:
        os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and os.waitpid(self.pid, os.WNOHANG)[0] == 0:
            self.read(0.1)
        os.close(self.fd)


@dataclass
class Result:
    steady: float  # KB/s over the window
    overall: float  # KB/s over the whole of what a person did
    stills: dict[str, float]


def measure(args: list[str], env: dict[str, str], run: Path, window: float, after: float) -> Result:
    term = Terminal(args, env)
    try:
        term.read(SETTLE_S)
        watched = Watched(run, term.screen)
        start, at_start = time.monotonic(), term.bytes
        term.read(window, watched)
        steady = (term.bytes - at_start) / window / 1000
        os.write(term.fd, b"?")
        watched.covered = True
        term.read(3.0, watched)
        os.write(term.fd, b"\x1b")
        term.read(0.3)  # escape alone: the app waits a moment for the rest of a key sequence
        watched.covered = False
        term.read(3.0, watched)
        term.resize(SMALLER)
        term.read(3.0, watched)
        term.resize(SIZE)
        term.read(after, watched)
        overall = (term.bytes - at_start) / (time.monotonic() - start) / 1000
        return Result(steady, overall, watched.stills)
    finally:
        term.close()


def case_args(name: str, tmp: Path, run: Path, wire: str) -> tuple[list[str], subprocess.Popen[bytes] | None]:
    """The command for one case, and the process that fills the run for the fast one."""
    if name == "digits":
        return ["train", "--dataset", "digits", "--epochs", "100000", "--run-dir", str(run), "--wire", wire, "--iw-samples", "0"], None
    if name == "fast":
        writer = subprocess.Popen([sys.executable, "-c", FAST_WRITER, str(run), "20000", "120"], cwd=ROOT)
        while not (run / "status.json").exists() and writer.poll() is None:  # it imports torch first
            time.sleep(0.1)
        return ["watch", str(run), "--wire", wire], writer
    if not (tmp / "main.py").exists():
        prepare_data(DEFAULT_MNIST, tmp / "data", train_images=60_000)
        (tmp / "main.py").write_text(CLASSIC)
    script = [sys.executable, str(tmp / "main.py"), "--epochs", "50", "--data", str(tmp / "data")]
    return ["run", "--run-dir", str(run), "--wire", wire, "--", *script], None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["digits", "fast", "script"], choices=("digits", "fast", "script"))
    parser.add_argument("--wires", nargs="+", default=["10", "2", "1000"])
    parser.add_argument("--modes", nargs="+", default=["24-bit"], choices=list(MODES))
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--after", type=float, default=20.0)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs; {SIZE[0]}x{SIZE[1]}; steady KB/s over {args.window:g} s after {SETTLE_S:g} s, then ?, escape, a resize")
    print("| case | colours | --wire | KB/s steady | KB/s with the person's actions | longest still: status line | longest still: charts |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        os.environ["XDG_CACHE_HOME"] = str(tmp / "cache")
        for name in args.cases:
            for mode in args.modes:
                for wire in args.wires:
                    run = tmp / f"{name}-{mode}-{wire}"
                    command, writer = case_args(name, tmp, run, wire)
                    try:
                        result = measure(command, MODES[mode], run, args.window, args.after)
                    finally:
                        if writer is not None:
                            writer.kill()
                            writer.wait()
                    stills = result.stills
                    print(
                        f"| {name} | {mode} | {wire} | {result.steady:.1f} | {result.overall:.1f} | {stills['status line']:.1f} s | {stills['charts']:.1f} s |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
