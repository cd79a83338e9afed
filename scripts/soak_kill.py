"""Crash at any moment: SIGKILL a training process at random times, again and again, and check
that nothing was lost.

    python scripts/soak_kill.py                # 50 kills (about 5 minutes on 2 cores)
    python scripts/soak_kill.py --kills 200

One digits run is started, then repeatedly killed with SIGKILL at a random moment (checkpoints
are written every epoch, so some kills land inside a checkpoint write) and resumed with
`--resume`. After every kill it checks:
- checkpoints/last.pt loads (weights only) and is at a step that metrics.jsonl recorded;
- metrics.jsonl reads, skipping at most a torn last line;
- after the resume that follows, metrics.jsonl holds every step from 1 on exactly once.
It prints how many kills the run survived, and how many landed mid-write (a temporary file left
beside last.pt, which the next resume removes).
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vae_tui.runfile.metrics import read_metrics  # noqa: E402
from vae_tui.training.checkpoint import CheckpointError, load_checkpoint  # noqa: E402

SMALL = ["--dataset", "digits", "--hidden-dim", "64", "--latent-dim", "4", "--headless"]


def start(run: Path, resume: bool) -> subprocess.Popen[bytes]:
    where = ["--resume", str(run)] if resume else ["--run-dir", str(run)]
    return subprocess.Popen(
        [sys.executable, "-m", "vae_tui", "train", *SMALL, "--epochs", "1000000", *where],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )


def steps_in(run: Path) -> list[int]:
    return [int(s) for s in read_metrics(run / "metrics.jsonl").column("step")]


def check(run: Path) -> tuple[bool, str]:
    try:
        state = load_checkpoint(run / "checkpoints" / "last.pt")
    except CheckpointError as exc:
        return False, f"last.pt does not load: {exc}"
    steps = steps_in(run)
    if state["step"] not in steps and state["step"] != 0:
        return False, f"last.pt is at step {state['step']}, which metrics.jsonl never recorded"
    return True, f"last.pt at step {state['step']}, metrics up to {steps[-1] if steps else 0}"


def contiguous(run: Path) -> bool:
    steps = steps_in(run)
    return steps == list(range(1, len(steps) + 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    survived = mid_write = 0
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        for i in range(args.kills):
            proc = start(run, resume=i > 0)
            deadline = time.time() + 120
            last = run / "checkpoints" / "last.pt"
            # resumed: wait until it trains again (metrics grow) so the kill is mid-training
            before = len(steps_in(run)) if (run / "metrics.jsonl").exists() else 0
            while time.time() < deadline and proc.poll() is None:
                if last.exists() and (run / "metrics.jsonl").exists() and len(steps_in(run)) > before:
                    break
                time.sleep(0.05)
            if proc.poll() is not None:
                print(f"kill {i + 1}: the trainer exited by itself ({proc.returncode}): {proc.stderr.read().decode()[-300:]}")
                return 1
            time.sleep(rng.uniform(0.0, 1.0))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            if list((run / "checkpoints").glob(".*.tmp")):
                mid_write += 1
            ok, detail = check(run)
            survived += ok
            print(f"kill {i + 1:3d}: {'ok  ' if ok else 'LOST'} {detail}", flush=True)
        final = start(run, resume=True)  # the last resume, then a clean stop
        time.sleep(3)
        final.send_signal(signal.SIGTERM)
        final.wait()
        whole = contiguous(run)
    print(
        f"\nsurvived {survived} of {args.kills} SIGKILLs ({mid_write} landed mid-checkpoint-write); "
        f"metrics.jsonl after the last resume: {'every step exactly once' if whole else 'STEPS MISSING OR REPEATED'}"
    )
    return 0 if survived == args.kills and whole else 1


if __name__ == "__main__":
    sys.exit(main())
