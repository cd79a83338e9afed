"""Never lose a run: signals with the plain view and the monitor, SIGKILL at random moments, exact
resume across processes. Each test runs the real command in a subprocess (and a pty for the
monitor), as a person's terminal would."""

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, SMALL, batch_steps, copy_run, drain, exit_status, spawn_in_pty, wait_for
from vae_tui.runfile import control
from vae_tui.runfile.layout import RunDir
from vae_tui.runfile.metrics import read_metrics
from vae_tui.training.checkpoint import load_checkpoint
from vae_tui.watching.catalog import summarize

EPOCHS = "40"  # for the exact-resume runs: long enough to interrupt in the middle, 480 steps


def train(run: Path, *args: str, small: bool = True) -> subprocess.Popen:
    """`vae-tui train` with its output piped: the plain view, as in a script or a CI log."""
    return subprocess.Popen(
        [sys.executable, "-m", "vae_tui", "train", *(SMALL if small else []), *args, "--run-dir", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def training(run: Path) -> bool:
    return (run / "checkpoints" / "last.pt").exists() and len(batch_steps(run)) > 20


def assert_saved_at_the_end(run: Path) -> None:
    """last.pt loads and is exactly where metrics.jsonl stops: no step lost, none extra."""
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    steps = batch_steps(run)
    assert state["step"] == steps[-1] and steps == list(range(1, len(steps) + 1))


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_signals_checkpoint_and_exit_with_the_convention(tmp_path, sig, code):
    run = tmp_path / "r"
    proc = train(run, "--epochs", "100000")
    wait_for(lambda: training(run), "the run to train past its first checkpoint", proc=proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err
    assert "Traceback" not in err and "continue with: vae-tui train --resume" in out
    assert "\x1b[" not in out  # piped: plain text, no live bar
    assert_saved_at_the_end(run)
    assert summarize(run).status == "stopped"


def test_a_second_ctrl_c_quits_at_once_and_corrupts_nothing(tmp_path):
    run = tmp_path / "r"
    proc = train(run, "--epochs", "100000")
    wait_for(lambda: training(run), "the run to train past its first checkpoint", proc=proc)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=10)
    assert proc.returncode == 130
    load_checkpoint(run / "checkpoints" / "last.pt")  # the old one or the new one, whole either way
    steps = batch_steps(run)
    assert steps == list(range(1, len(steps) + 1))


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_monitor_signals_checkpoint_stop_the_trainer_and_exit(tmp_path, sig, code):
    run = tmp_path / "r"
    pid, fd = spawn_in_pty(["train", *SMALL, "--epochs", "100000", "--run-dir", str(run)])
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not training(run):
            drain(fd, 0.2)
        assert training(run), "the monitored run never trained past its first checkpoint"
        os.kill(pid, sig)
        if sig == signal.SIGHUP:
            os.close(fd)  # and the terminal is gone, as when an SSH session drops
            fd = -1
            deadline, result = time.monotonic() + 30, None
            while time.monotonic() < deadline and result is None:
                done, raw = os.waitpid(pid, os.WNOHANG)
                result = os.waitstatus_to_exitcode(raw) if done else None
                time.sleep(0.05)
            assert result == code
        else:
            assert exit_status(pid, fd) == code
    finally:
        if fd >= 0:
            os.close(fd)
    assert json.loads((run / "status.json").read_text())["state"] == "stopped"
    assert_saved_at_the_end(run)
    wait_for(lambda: not (run / "control").exists(), "the trainer process to end", timeout=10)


def resume(run: Path, epochs: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vae_tui", "train", "--resume", str(run), "--epochs", epochs], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


def comparable(run: Path) -> tuple[list, list]:
    """The steps the records account for, and the epochs' losses: a fast run's records are intervals of steps
    whose bounds depend on timing, so the per-step losses are compared through the epochs and the weights."""
    metrics = read_metrics(run / "metrics.jsonl")
    epochs = [{k: v for k, v in r.items() if k not in ("time", "samples_per_s")} for r in metrics.epochs]
    return metrics.covered_steps().tolist(), epochs


@pytest.fixture(scope="module")
def never_stopped(tmp_path_factory) -> Path:
    """The reference the interrupted runs are compared with, made once."""
    run = tmp_path_factory.mktemp("whole") / "r"
    proc = train(run, "--epochs", EPOCHS)
    assert proc.wait(300) == 0, proc.stderr.read()
    return run


@pytest.mark.parametrize("how", ["SIGTERM", "checkpoint on request, then SIGKILL", "epoch end, then SIGKILL"])
def test_a_run_interrupted_and_resumed_equals_one_never_stopped(tmp_path, never_stopped, how):
    run = tmp_path / "cut"
    proc = train(run, "--epochs", EPOCHS, *(["--checkpoint-every", "1000"] if how.startswith("checkpoint") else []))
    if how == "SIGTERM":
        wait_for(lambda: training(run), "the run to train past its first checkpoint", proc=proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 143
    elif how.startswith("checkpoint"):
        wait_for(lambda: len(batch_steps(run)) > 30 and RunDir(run).control_dir.exists(), "thirty steps", proc=proc)
        control.send(RunDir(run), "checkpoint")
        wait_for(lambda: (run / "checkpoints" / "last.pt").exists(), "the requested checkpoint", proc=proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    else:
        wait_for(lambda: training(run), "the run to train past its first checkpoint", proc=proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] < int(EPOCHS) * 12
    finished = resume(run, EPOCHS)
    assert finished.returncode == 0, finished.stderr
    a = load_checkpoint(never_stopped / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[name], b[name]) for name in a)  # bit for bit
    assert comparable(never_stopped) == comparable(run)  # the same steps and losses, none repeated or missing


def test_sigkill_at_random_moments_never_loses_the_run(tmp_path):
    """A short version of scripts/soak_kill.py (which does it 50 times and more)."""
    rng = random.Random(1)
    run = tmp_path / "r"
    for i in range(3):
        args = ["--resume", str(run), "--epochs", "100000"] if i else [*SMALL, "--epochs", "100000", "--run-dir", str(run)]
        proc = subprocess.Popen([sys.executable, "-m", "vae_tui", "train", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        before = len(batch_steps(run)) if (run / "metrics.jsonl").exists() else 0
        wait_for(lambda: (run / "checkpoints" / "last.pt").exists() and len(batch_steps(run)) > before, f"run {i + 1} to train and save", proc=proc)
        time.sleep(rng.uniform(0, 0.7))  # a random moment: mid-step, mid-write or mid-checkpoint
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = load_checkpoint(run / "checkpoints" / "last.pt")
        assert state["step"] in batch_steps(run)
        assert summarize(run).status == "crashed"  # how `vae-tui runs` shows a run killed without a word
    final = resume(run, str(state["epoch"] + 1))
    assert final.returncode == 0, final.stderr
    steps = batch_steps(run)
    assert steps == list(range(1, len(steps) + 1))
    assert not list((run / "checkpoints").glob(".*.tmp"))  # pieces of interrupted saves are cleared on resume


def test_a_second_trainer_on_a_training_run_is_refused_and_touches_nothing(tmp_path):
    run = tmp_path / "r"
    first = train(run, "--epochs", "100000")
    wait_for(lambda: training(run), "the first trainer to train past its first checkpoint", proc=first)
    second = subprocess.run([sys.executable, "-m", "vae_tui", "train", "--resume", str(run)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert second.returncode == 1 and second.stderr.count("\n") == 1, second.stderr
    assert f"already being trained by pid {first.pid} on" in second.stderr and "Traceback" not in second.stderr
    first.send_signal(signal.SIGTERM)
    assert first.wait(30) == 143
    assert_saved_at_the_end(run)  # nothing truncated under the first trainer


def test_two_resumes_at_once_one_trains_the_other_says_why(tmp_path, finished_run):
    run = copy_run(finished_run, tmp_path / "r")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "vae_tui", "train", "--resume", str(run), "--epochs", "100000"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for _ in range(2)
    ]
    wait_for(lambda: any(p.poll() is not None for p in procs), "one of the two to give way")
    loser = next(p for p in procs if p.poll() is not None)
    winner = next(p for p in procs if p is not loser)
    err = loser.stderr.read()
    assert loser.returncode == 1 and err.count("\n") == 1 and "already being trained by pid" in err, err
    wait_for(lambda: len(batch_steps(run)) > 40, "the winner to train", proc=winner)
    winner.send_signal(signal.SIGTERM)
    assert winner.wait(30) == 143
    assert_saved_at_the_end(run)


def test_a_monitor_whose_terminal_vanishes_under_a_shell_ignoring_sighup_saves_and_ends(tmp_path):
    run = tmp_path / "r"
    pid, fd = spawn_in_pty(["-c", f"trap '' HUP; {sys.executable} -m vae_tui train {' '.join(SMALL)} --epochs 100000 --run-dir {run}"], shell=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not training(run):
        drain(fd, 0.2)
    assert training(run), "the monitored run never trained past its first checkpoint"
    os.close(fd)  # the SSH session drops; the shell ignores SIGHUP, so nothing is sent to the monitor
    try:
        wait_for(lambda: os.waitpid(pid, os.WNOHANG)[0] != 0, "the monitor to notice and end", timeout=30)
    finally:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: not (run / "control").exists(), "the trainer process to end", timeout=30)
    assert json.loads((run / "status.json").read_text())["state"] == "stopped"
    assert_saved_at_the_end(run)


def test_a_run_on_a_tiny_folder_ends_cleanly_every_time(tmp_path):
    """20 runs in a row on 3 pictures, each its own process to the end: exit 0 every time, never 134
    (a checkpoint writer still letting go of its tensors while the interpreter exited aborted it)."""
    from PIL import Image

    folder = tmp_path / "three"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (12, 12), (40 * i, 90, 200)).save(folder / f"p{i}.png")
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "ended_runs.py"), "20", str(folder), str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [0] * 20, done.stderr[-2000:]


@pytest.mark.parametrize("lines", [6])
def test_piped_into_head_the_run_stops_as_a_hang_up_and_resumes(tmp_path, lines):
    """`vae-tui train ... | head -N`: the reader goes away; the run stops and saves (as a hang-up does),
    says nothing on stderr, exits as a shell's SIGPIPE would (141), and resumes."""
    run = tmp_path / "run"
    proc = train(run, "--epochs", "40")
    assert proc.stdout is not None and proc.stderr is not None
    for _ in range(lines):  # `head -N` reads its lines, then closes the pipe
        assert proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and err == "", err
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["step"] == (batch_steps(run)[-1] if batch_steps(run) else 0)
    again = train(run, "--resume", str(run), "--epochs", "1" if state["epoch"] < 1 else str(state["epoch"] + 1), small=False)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
