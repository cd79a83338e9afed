"""Training under torchrun: two ranks on this CPU with gloo, as a GPU box runs eight with NCCL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, SMALL, wait_for
from vae_tui.runfile import control
from vae_tui.runfile.files import read_status
from vae_tui.runfile.layout import RunDir
from vae_tui.runfile.metrics import read_metrics
from vae_tui.runfile.schema import RunState
from vae_tui.training.checkpoint import load_checkpoint
from vae_tui.training.world import World, batches_per_epoch, epoch_parts

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun(run_dir: Path, *options: str, ranks: int = 2) -> subprocess.Popen[str]:
    """`torchrun --standalone --nproc-per-node N -m vae_tui train ...` as a user types it."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={ranks}",
        "-m",
        "vae_tui",
        "train",
        *SMALL,
        "--iw-samples",
        "0",
        "--run-dir",
        str(run_dir),
        *options,
    ]
    return subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(proc: subprocess.Popen[str], timeout: float = 180) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return out


def ranks_of(proc: subprocess.Popen[str]) -> list[int]:
    """The pids of torchrun's ranks (its children)."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []


def batch_steps(run_dir: Path) -> list[int]:
    return [int(step) for step in read_metrics(run_dir / "metrics.jsonl").covered_steps()]


def one_rank(run_dir: Path, *options: str) -> None:
    command = [sys.executable, "-m", "vae_tui", "train", *SMALL, "--iw-samples", "0", "--run-dir", str(run_dir), "--headless", *options]
    done = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = weights(a), weights(b)
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


# -- each rank's share ---------------------------------------------------------------------------
def test_the_ranks_share_every_global_batch_and_an_uneven_last_one_evenly() -> None:
    def images(parts):  # each part's positions in the epoch's permutation
        return [list(range(p.lo, p.hi)) for p in parts]

    parts = [epoch_parts(World(rank, 2), 10, 0, 4) for rank in (0, 1)]
    assert images(parts[0]) == [[0, 1], [4, 5], [8]]
    assert images(parts[1]) == [[2, 3], [6, 7], [9]]
    assert [p.weight for p in parts[0]] == [1.0, 1.0, 1.0] and parts[0][-1].global_size == 2
    three = [epoch_parts(World(rank, 3), 10, 0, 6) for rank in range(3)]  # a last batch of 4 over 3 ranks: 2, 1, 1
    assert [p[-1].size for p in three] == [2, 1, 1]
    assert [p[-1].weight for p in three] == [1.5, 0.75, 0.75]  # DDP's mean of these is the mean over the 4 images
    assert epoch_parts(World(0, 4), 9, 0, 8)[-1].end == 8  # 1 image left for 4 ranks: left out
    assert batches_per_epoch(World(0, 4), 9, 8) == 1
    assert images(epoch_parts(World(1, 2), 10, 6, 4)) == [[8, 9]]  # resumed at sample 6
    alone = epoch_parts(World(), 10, 2, 4)  # one process: whole batches, then what is left
    assert images(alone) == [[2, 3, 4, 5], [6, 7, 8, 9]] and [(p.offset, p.global_size, p.end) for p in alone] == [(0, 4, 6), (0, 4, 10)]
    assert [p.size for p in epoch_parts(World(), 10, 0, 4)] == [4, 4, 2]


# -- two ranks against one --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("ddp") / "run"
    out = finish(torchrun(run_dir, "--epochs", "2", "--batch-size", "64"))
    assert (run_dir / "checkpoints" / "last.pt").exists(), out
    return run_dir


def test_two_ranks_record_every_step_once_and_end_where_one_rank_with_their_global_batch_does(two_rank_run: Path, tmp_path: Path) -> None:
    steps = batch_steps(two_rank_run)
    assert steps == list(range(1, len(steps) + 1)) and len(steps) == 2 * 12  # 1,500 images in batches of 128
    one_rank(tmp_path / "one", "--epochs", "2", "--batch-size", "128")
    assert_same_weights(two_rank_run / "checkpoints" / "last.pt", tmp_path / "one" / "checkpoints" / "last.pt")
    one = read_metrics(tmp_path / "one" / "metrics.jsonl").column("loss")
    two = read_metrics(two_rank_run / "metrics.jsonl").column("loss")
    assert two.round(3).tolist() == one.round(3).tolist()  # the global batch's loss, not rank 0's
    config = json.loads((two_rank_run / "config.json").read_text())
    status, _ = read_status(RunDir(two_rank_run))
    assert (config["world_size"], config["global_batch"]) == (2, 128)
    assert status is not None and (status.world_size, status.global_batch, len(status.ranks)) == (2, 128, 2)
    assert not any(p.name.startswith("rank") for p in two_rank_run.iterdir())  # rank 1 wrote nothing there


def test_a_two_rank_checkpoint_resumes_on_one_rank_with_the_same_global_batch(two_rank_run: Path, tmp_path: Path) -> None:
    import shutil

    resumed = tmp_path / "resumed"
    shutil.copytree(two_rank_run, resumed)
    done = subprocess.run(
        [sys.executable, "-m", "vae_tui", "train", "--resume", str(resumed), "--epochs", "3", "--headless"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "batch 128" in done.stdout  # one rank takes the whole global batch
    one_rank(tmp_path / "straight", "--epochs", "3", "--batch-size", "128")
    assert_same_weights(resumed / "checkpoints" / "last.pt", tmp_path / "straight" / "checkpoints" / "last.pt")
    assert batch_steps(resumed) == list(range(1, 3 * 12 + 1))


# -- controls and faults ----------------------------------------------------------------------------
def status_of(run_dir: Path):
    status, _ = read_status(RunDir(run_dir))
    return status


def test_a_pause_from_the_control_channel_holds_both_ranks_and_a_stop_ends_both(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = torchrun(run_dir, "--epochs", "2000")
    try:
        wait_for(lambda: (s := status_of(run_dir)) is not None and s.state == RunState.TRAINING and s.step > 20, "training", proc=proc)
        control.send(RunDir(run_dir), "pause")
        wait_for(lambda: status_of(run_dir).state == RunState.PAUSED, "the paused state", proc=proc)
        held = status_of(run_dir).step
        control.send(RunDir(run_dir), "checkpoint")  # taken while paused: both ranks still meet
        wait_for(lambda: "on request" in (run_dir / "events.jsonl").read_text(), "the checkpoint asked for", proc=proc)
        assert status_of(run_dir).step == held and load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == held
        control.send(RunDir(run_dir), "resume")
        wait_for(lambda: status_of(run_dir).step > held, "steps after the resume", proc=proc)
        control.send(RunDir(run_dir), "stop")
        out = finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out
    status = status_of(run_dir)
    assert status.state == RunState.STOPPED
    steps = batch_steps(run_dir)
    assert steps == list(range(1, status.step + 1))
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == status.step
    listed = subprocess.run([sys.executable, "-m", "vae_tui", "runs", str(tmp_path)], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert "2 ranks" in listed.stdout and "2 x cpu" in listed.stdout, listed.stdout  # its ranks and their device,
    assert "2 ranks:" not in listed.stdout, listed.stdout  # and no samples/s for a run that no longer trains


def test_one_rank_killed_takes_the_other_down_and_the_checkpoint_resumes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = torchrun(run_dir, "--epochs", "2000")
    try:
        wait_for(lambda: (run_dir / "checkpoints" / "last.pt").exists() and len(ranks_of(proc)) == 2, "a checkpoint", proc=proc)
        victim = ranks_of(proc)[1]
        os.kill(victim, signal.SIGKILL)
        out = finish(proc, timeout=60)  # torchrun ends when every rank has
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert "another rank of this run ended or was killed" in out, out[-2000:]  # rank 0 says it, in one line
    saved = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    done = subprocess.run(
        [sys.executable, "-m", "vae_tui", "train", "--resume", str(run_dir), "--epochs", str(saved["epoch"] + 1), "--headless"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_sigterm_to_vae_tuis_own_launcher_saves_once_and_ends_every_rank(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "vae_tui",
        "train",
        "--nproc",
        "2",
        "--headless",
        *SMALL,
        "--iw-samples",
        "0",
        "--epochs",
        "2000",
        "--run-dir",
        str(run_dir),
    ]
    proc = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: (s := status_of(run_dir)) is not None and s.state == RunState.TRAINING and s.step > 10, "training", proc=proc)
        proc.send_signal(signal.SIGTERM)
        out = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, out
    assert "2 ranks = 256" in out and "stopped at step" in out
    assert "device:  2 ranks on cpu, 1 thread each" in out, out  # the ranks' devices, not rank 0's "1 threads"
    status = status_of(run_dir)
    assert status.state == RunState.STOPPED
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == status.step
    assert batch_steps(run_dir) == list(range(1, status.step + 1))


NAN_ON_RANK_1 = '''
import os

import torch
import torch.nn as nn


class VAE(nn.Module):
    """Goes NaN on rank 1 alone, at its 30th training step."""

    def __init__(self, input_dim=64, hidden_dim=32, z_dim=4):
        super().__init__()
        self.fc1, self.fc_mu, self.fc_logvar = nn.Linear(input_dim, hidden_dim), nn.Linear(hidden_dim, z_dim), nn.Linear(hidden_dim, z_dim)
        self.fc_out = nn.Linear(z_dim, input_dim)
        self.steps = 0

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        mu, logvar = self.fc_mu(h), self.fc_logvar(h)
        self.steps += self.training
        if os.environ.get("RANK") == "1" and self.steps == 30:
            mu = mu * float("nan")
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.fc_out(z), mu, logvar
'''


def test_a_nan_on_one_rank_stops_every_rank_at_the_same_step(tmp_path: Path) -> None:
    model = tmp_path / "nan_vae.py"
    model.write_text(NAN_ON_RANK_1)
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "vae_tui",
        "train",
        "--dataset",
        "digits",
        "--device",
        "cpu",
        "--model",
        f"{model}:VAE",
        "--epochs",
        "20",
        "--on-nan",
        "stop",
        "--iw-samples",
        "0",
        "--run-dir",
        str(run_dir),
    ]
    done = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=180)
    assert done.returncode != 0
    assert done.stdout.count("loss became NaN or infinite at step 30") + done.stderr.count("loss became NaN or infinite at step 30") >= 1
    status = status_of(run_dir)
    assert status.state == RunState.ERROR and "step 30" in status.message
    assert batch_steps(run_dir)[-1] < 30  # nothing of the NaN step or after it was recorded
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] < 30


def test_a_live_change_reaches_every_rank_at_the_same_step(tmp_path: Path, digits) -> None:
    from helpers import ChangeAt, StopAtStep, make_trainer

    run_dir = tmp_path / "run"
    proc = torchrun(run_dir, "--epochs", "2000", "--batch-size", "64")
    try:
        wait_for(lambda: (s := status_of(run_dir)) is not None and s.state == RunState.TRAINING and s.step > 30, "training", proc=proc)
        done = subprocess.run(
            [sys.executable, "-m", "vae_tui", "set", str(run_dir), "--lr", "0.003"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        wait_for(
            lambda: status_of(run_dir).changes and status_of(run_dir).step > status_of(run_dir).changes[-1]["step"] + 60, "steps after the change", proc=proc
        )
        control.send(RunDir(run_dir), "stop")
        finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    status = status_of(run_dir)
    change = status.changes[-1]
    saved = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert (saved["step"], saved["changes"]) == (status.step, status.changes), "last.pt is the stopped run's"
    # One process with the global batch, the same change at the same step: the same parameters only
    # if rank 1 also trained on with the new rate from that step (DDP would not notice otherwise).
    # On one thread, as each rank trains, so that the sums are added up alike.
    one, _ = make_trainer(
        tmp_path,
        digits,
        name="one",
        extra_hooks=[ChangeAt(int(change["step"]), lr=0.003), StopAtStep(status.step)],
        hidden_dim=32,
        latent_dim=4,
        batch_size=128,
        epochs=2000,
        snapshot_seconds=1.0,
    )
    one.losses.flush_seconds = 0.0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert one.run().state == RunState.STOPPED and one.state.step == status.step
    finally:
        torch.set_num_threads(threads)
    assert one.state.changes == status.changes
    two = saved["model"]
    for name, param in one.state.model.state_dict().items():
        torch.testing.assert_close(two[name], param, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
