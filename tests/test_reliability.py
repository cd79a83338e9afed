"""Never lose a run: signals headless and in the monitor, SIGKILL at random moments, exact resume
across processes, failing disks. Each test runs the real command in a subprocess (and a pty for
the monitor), as a person's terminal would."""

import fcntl
import json
import os
import pty
import random
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import torch

from vae_tui import control
from vae_tui.checkpoint import load_checkpoint
from vae_tui.metrics import read_metrics
from vae_tui.rundir import RunDir

SMALL = ["--dataset", "digits", "--hidden-dim", "32", "--latent-dim", "4"]
ROOT = Path(__file__).resolve().parent.parent


def batch_steps(run: Path) -> list[int]:
    if not (run / "metrics.jsonl").exists():
        return []
    return [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "batch"]


def wait_for(condition, timeout=90.0, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def headless(run: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "vae_tui", "train", *SMALL, *args, "--run-dir", str(run), "--headless"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )


def training(run: Path) -> bool:
    return (run / "checkpoints" / "last.pt").exists() and len(batch_steps(run)) > 20


def assert_saved_at_the_end(run: Path) -> None:
    """last.pt loads and is exactly where metrics.jsonl stops: no step lost, none extra."""
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    steps = batch_steps(run)
    assert state["step"] == steps[-1] and steps == list(range(1, len(steps) + 1))


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_headless_signals_checkpoint_and_exit_with_the_convention(tmp_path, sig, code):
    run = tmp_path / "r"
    proc = headless(run, "--epochs", "100000")
    assert wait_for(lambda: training(run), proc=proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err
    assert "Traceback" not in err and "continue with: vae-tui train --resume" in out
    assert_saved_at_the_end(run)


def test_a_second_ctrl_c_quits_at_once_and_corrupts_nothing(tmp_path):
    run = tmp_path / "r"
    proc = headless(run, "--epochs", "100000")
    assert wait_for(lambda: training(run), proc=proc)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=10)
    assert proc.returncode == 130
    load_checkpoint(run / "checkpoints" / "last.pt")  # the old one or the new one, whole either way
    steps = batch_steps(run)
    assert steps == list(range(1, len(steps) + 1))


def monitored(run: Path, *args: str, size=(100, 30)) -> tuple[int, int]:
    """`vae-tui train` in a pseudo-terminal, so it opens the monitor; returns (pid, pty fd)."""
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(ROOT)
        os.environ["TERM"] = "xterm-256color"
        os.execvp(sys.executable, [sys.executable, "-m", "vae_tui", "train", *SMALL, *args, "--run-dir", str(run)])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size[1], size[0], 0, 0))
    return pid, fd


def drain(fd: int, seconds: float) -> bytes:
    """Read what the app writes (a terminal that nobody reads would block it)."""
    out, end = b"", time.time() + seconds
    while time.time() < end:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if not data:
                break
            out += data
    return out


def exit_status(pid: int, fd: int, timeout: float = 30.0) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        drain(fd, 0.1)
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError("the monitor did not exit")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_monitor_signals_checkpoint_stop_the_trainer_and_exit(tmp_path, sig, code):
    run = tmp_path / "r"
    pid, fd = monitored(run, "--epochs", "100000")
    try:
        deadline = time.time() + 90
        while time.time() < deadline and not training(run):
            drain(fd, 0.2)
        assert training(run)
        os.kill(pid, sig)
        if sig == signal.SIGHUP:
            os.close(fd)  # and the terminal is gone, as when an SSH session drops
            fd = -1
            deadline, result = time.time() + 30, None
            while time.time() < deadline and result is None:
                done, raw = os.waitpid(pid, os.WNOHANG)
                result = os.waitstatus_to_exitcode(raw) if done else None
                time.sleep(0.1)
            assert result == code
        else:
            assert exit_status(pid, fd) == code
        status = json.loads((run / "status.json").read_text())
    finally:
        if fd >= 0:
            os.close(fd)
    assert status["state"] == "stopped"
    assert_saved_at_the_end(run)
    assert wait_for(lambda: not (run / "control").exists(), timeout=10)  # the trainer process has ended


def resume(run: Path, epochs: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vae_tui", "train", "--resume", str(run), "--epochs", epochs],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )


def comparable(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("time", "samples_per_s")} for r in read_metrics(run / "metrics.jsonl")]


@pytest.mark.parametrize("how", ["SIGTERM", "checkpoint on request, then SIGKILL", "epoch end, then SIGKILL"])
def test_a_run_interrupted_and_resumed_equals_one_never_stopped(tmp_path, how):
    epochs = "60"
    whole = tmp_path / "whole"
    assert headless(whole, "--epochs", epochs).wait(300) == 0
    run = tmp_path / "cut"
    args = ["--epochs", epochs] + (["--checkpoint-every", "1000"] if how.startswith("checkpoint") else [])
    proc = headless(run, *args)
    if how == "SIGTERM":
        assert wait_for(lambda: training(run), proc=proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 143
    elif how.startswith("checkpoint"):
        assert wait_for(lambda: len(batch_steps(run)) > 30 and RunDir(run).control_dir.exists(), proc=proc)
        control.send(RunDir(run), "checkpoint")
        assert wait_for(lambda: (run / "checkpoints" / "last.pt").exists(), proc=proc)
        time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    else:
        assert wait_for(lambda: training(run), proc=proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] < int(epochs) * 12
    finished = resume(run, epochs)
    assert finished.returncode == 0, finished.stderr
    a = load_checkpoint(whole / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[name], b[name]) for name in a)  # bit for bit
    assert comparable(whole) == comparable(run)  # the same steps and losses, none repeated or missing


def test_sigkill_at_random_moments_never_loses_the_run(tmp_path):
    """A short version of scripts/soak_kill.py (which does it 50 times and more)."""
    rng = random.Random(1)
    run = tmp_path / "r"
    for i in range(3):
        args = ["--resume", str(run), "--epochs", "100000"] if i else ["--epochs", "100000", "--run-dir", str(run)]
        proc = subprocess.Popen([sys.executable, "-m", "vae_tui", "train", *(SMALL if not i else []), *args, "--headless"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        before = len(batch_steps(run)) if (run / "metrics.jsonl").exists() else 0
        assert wait_for(lambda: (run / "checkpoints" / "last.pt").exists() and len(batch_steps(run)) > before, proc=proc), proc.stderr
        time.sleep(rng.uniform(0, 0.7))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = load_checkpoint(run / "checkpoints" / "last.pt")
        assert state["step"] in batch_steps(run)
    final = resume(run, str(state["epoch"] + 1))
    assert final.returncode == 0, final.stderr
    steps = batch_steps(run)
    assert steps == list(range(1, len(steps) + 1))
    assert not list((run / "checkpoints").glob(".*.tmp"))  # pieces of interrupted saves are cleared on resume


def test_a_metrics_file_that_cannot_be_written_is_reported_and_training_goes_on(tmp_path, small_digits, monkeypatch):
    from vae_tui.config import TrainConfig
    from vae_tui.device import pick_device
    from vae_tui.metrics import MetricsWriter
    from vae_tui.rundir import open_run_dir
    from vae_tui.telemetry import Telemetry
    from vae_tui.trainer import Trainer

    run = open_run_dir(tmp_path / "run")
    writer = MetricsWriter(run.metrics_path)

    def full_disk(text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer, "write", full_disk)
    config = TrainConfig(dataset="digits", epochs=2, hidden_dim=32, latent_dim=4).validate()
    trainer = Trainer(config, small_digits, pick_device("cpu"), Telemetry(writer), run_dir=run)
    assert trainer.run().state == "finished"
    warnings = [e.message for e in trainer.telemetry.events() if e.kind == "warning"]
    assert warnings and "No space left" in warnings[0] and "training goes on" in warnings[0]
    assert load_checkpoint(run.last_checkpoint)["epoch"] == 2
