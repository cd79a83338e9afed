"""The wire with real pixels: bytes a second `vae-tui watch` sends to a 120x40 terminal drawing
pictures with kitty's graphics protocol, with sixel, and with half blocks, side by side.

    python benchmarks/bench_pictures.py                   # 3,000 generated 32x32 colour pictures, --arch conv
    python benchmarks/bench_pictures.py --dataset digits  # 8x8 grey digits, the MLP

A real trainer runs in the background (its snapshots change about once a second); the watcher
runs in a pseudo-terminal with `--images graphics` (TERM naming kitty, then an xterm, which gets
sixel) and `--images blocks`, in turns, each counted over a window after it has settled. The
pseudo-terminal answers no query, so the protocol is the one the terminal's name suggests.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from make_pictures import write_folder  # noqa: E402

COLOUR_PICTURES = 3000  # 32x32 RGB, as bench_app.py --dataset colour
MODES = {"kitty": ("graphics", "xterm-kitty"), "sixel": ("graphics", "xterm-256color"), "half blocks": ("blocks", "xterm-256color")}


def pty_bytes_per_second(argv: list[str], env: dict[str, str], settle_s: float, window_s: float) -> float:
    """Bytes per second a command sends to a 120x40 pseudo-terminal, counted after settle_s."""
    pid, fd = pty.fork()
    if pid == 0:
        os.environ.update(env)
        os.execvp(argv[0], argv)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    start, nbytes = time.time(), 0
    while time.time() < start + settle_s + window_s:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                data = os.read(fd, 1 << 16)
            except OSError:
                break
            if time.time() >= start + settle_s:
                nbytes += len(data)
    os.kill(pid, signal.SIGTERM)
    os.waitpid(pid, 0)
    os.close(fd)
    return nbytes / window_s


def bytes_per_second(run: Path, images: str, term: str, settle_s: float, window_s: float) -> float:
    argv = [sys.executable, "-m", "vae_tui", "watch", str(run), "--images", images]
    return pty_bytes_per_second(argv, {"TERM": term, "COLORTERM": "truecolor"}, settle_s, window_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("colour", "digits"), default="colour")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--settle", type=float, default=6.0)
    parser.add_argument("--window", type=float, default=15.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        data = ["--dataset", "digits"]
        if args.dataset == "colour":
            write_folder(Path(tmp) / "colour", COLOUR_PICTURES, 32)
            data = ["--dataset", str(Path(tmp) / "colour"), "--arch", "conv"]
        trainer = subprocess.Popen(
            [sys.executable, "-m", "vae_tui", "train", *data, "--epochs", "100000", "--iw-samples", "0", "--run-dir", str(run), "--headless"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while not (run / "snapshot.npz").exists():
                time.sleep(0.2)
            rates: dict[str, list[float]] = {name: [] for name in MODES}
            for _ in range(args.repeats):
                for name, (images, term) in MODES.items():
                    rates[name].append(bytes_per_second(run, images, term, args.settle, args.window))
        finally:
            trainer.terminate()
            trainer.wait()
    print(f"wire at 120x40, {args.dataset}, a live trainer (snapshots about once a second), {args.window:g} s windows, {args.repeats} turns (median):")
    blocks = statistics.median(rates["half blocks"])
    for name, values in rates.items():
        print(
            f"  {name:12s} {statistics.median(values) / 1024:6.1f} KB/s ({statistics.median(values) / blocks:.2f}x half blocks)"
            f"   turns: {', '.join(f'{v / 1024:.1f}' for v in values)}"
        )


if __name__ == "__main__":
    main()
