"""How fast `vae-tui train` opens its monitor, and how much memory the monitor's process holds.

    python benchmarks/bench_launch.py                       # this checkout, digits and MNIST
    python benchmarks/bench_launch.py --against OLD_CHECKOUT --repeats 5

Each measurement starts `python -m vae_tui train ... --run-dir R` in a 120x40 pseudo-terminal,
reads what it draws, and records:
1. first screen: seconds from starting the process to the first screen drawn: the one that says
   how getting the run ready goes (checking, importing torch, reading and decoding the data), or the
   monitor itself;
2. monitor: seconds until the monitor's first frame (its footer of keys is on screen);
3. training shown: seconds until a frame shows the run training (the status line's "Training"
   and a step count);
4. monitor memory: the resident set (VmRSS) and its peak (VmHWM) of the `vae-tui train` process
   itself, 8 s in; the trainer, when it runs in a worker process, is not counted.
Then it presses q and y, as a person would. With --against, an older checkout (a git worktree)
is measured the same way, alternating with this one, so both see the same machine load.

The MNIST case uses the 10k test split in ../shared/data/mnist (cut into 8,000 train and 2,000
test images, as bench_train.py does); digits is the offline default. "first run" is MNIST with an
empty picture cache (a fresh XDG_CACHE_HOME): torchvision is imported and the files decoded, as
on a machine's first run; the other cases find the cache filled.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import re
import select
import signal
import statistics
import struct
import sys
import tempfile
import termios
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import DEFAULT_MNIST, prepare_data  # noqa: E402

MEMORY_AT_S = 8.0
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def memory_kb(pid: int) -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def measure(code_root: Path, args: list[str], run: Path, cache: Path | None = None) -> dict:
    start = time.perf_counter()
    pid, fd = pty.fork()
    if pid == 0:
        os.environ.update({"TERM": "xterm-256color", "PYTHONPATH": str(code_root), **({"XDG_CACHE_HOME": str(cache)} if cache else {})})
        os.chdir(code_root)
        os.execvp(sys.executable, [sys.executable, "-m", "vae_tui", "train", *args, "--run-dir", str(run)])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    screen, first, monitor, shown, memory = b"", None, None, None, None
    while time.perf_counter() - start < 60 and memory is None:
        ready, _, _ = select.select([fd], [], [], 0.02)
        if ready:
            try:
                screen += os.read(fd, 1 << 16)
            except OSError:
                break
        plain = ANSI.sub(b"", screen[-20000:])
        now = time.perf_counter() - start
        if first is None and (b"getting the run ready" in plain or b"Quit" in plain):
            first = now
        if monitor is None and b"Quit" in plain:
            monitor = now
        if shown is None and re.search(rb"Training .{0,40}step [0-9,]+", plain):
            shown = now
        if now >= MEMORY_AT_S and shown is not None:
            memory = memory_kb(pid)
    os.write(fd, b"q")
    time.sleep(0.5)
    os.write(fd, b"y")
    deadline = time.perf_counter() + 30
    while time.perf_counter() < deadline:
        select.select([fd], [], [], 0.1)
        try:
            os.read(fd, 1 << 16)
        except OSError:
            pass
        if os.waitpid(pid, os.WNOHANG)[0]:
            break
    else:
        os.kill(pid, signal.SIGKILL)
    os.close(fd)
    if memory is None:
        raise SystemExit(f"{code_root}: the monitor never showed a training run")
    return {"first": first, "monitor": monitor, "shown": shown, "rss": memory[0] / 1024, "peak": memory[1] / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", type=Path, help="an older checkout to measure the same way")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mnist", type=Path, default=DEFAULT_MNIST)
    args = parser.parse_args()
    roots = {"this checkout": ROOT} | ({"against": args.against.resolve()} if args.against else {})
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare_data(args.mnist, Path(tmp))
        cases = {
            "digits": ["--dataset", "digits", "--epochs", "100000"],
            "MNIST 10k, first run": ["--dataset", "mnist", "--data-dir", str(data), "--epochs", "100000"],
            "MNIST 10k": ["--dataset", "mnist", "--data-dir", str(data), "--epochs", "100000"],
        }
        results: dict[tuple[str, str], list[dict]] = {}
        n = 0
        for repeat in range(args.repeats):
            for case, case_args in cases.items():
                for name, root in roots.items():
                    n += 1
                    cache = Path(tmp) / f"cache{n}" if "first run" in case else None  # nothing decoded yet
                    r = measure(root, case_args, Path(tmp) / f"run{n}", cache)
                    results.setdefault((case, name), []).append(r)
                    print(
                        f"  {case:20s} {name:14s} first screen {r['first']:.2f} s, monitor {r['monitor']:.2f} s, training shown "
                        f"{r['shown']:.2f} s, monitor {r['rss']:.0f} MB (peak {r['peak']:.0f} MB)",
                        flush=True,
                    )
    print(f"\nmachine: {os.cpu_count()} CPUs; median of {args.repeats}")
    print("| data | code | first screen (s) | monitor (s) | training shown (s) | monitor resident (MB) | monitor peak (MB) |")
    print("|---|---|---|---|---|---|---|")
    for (case, name), rs in results.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("first", "monitor", "shown", "rss", "peak")}
        print(f"| {case} | {name} | {med['first']:.2f} | {med['monitor']:.2f} | {med['shown']:.2f} | {med['rss']:.0f} | {med['peak']:.0f} |")


if __name__ == "__main__":
    main()
