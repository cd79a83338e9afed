"""The run directory as a channel: publisher (trainer side), follower (watcher side), control folder."""

import json
import os
import stat
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import dead_pid
from vae_tui.runfile import control
from vae_tui.runfile.files import Snapshot
from vae_tui.runfile.layout import RunDir
from vae_tui.runfile.metrics import batch_lines, epoch_line
from vae_tui.runfile.schema import Liveness, RunState
from vae_tui.telemetry import Telemetry
from vae_tui.training.controls import Controls
from vae_tui.training.publish import Publisher
from vae_tui.watching.follow import STALE_SECONDS, RunFollower, RunWatch


def make_run(tmp_path) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    run.config_path.write_text("{}")
    return run


def lines(first: int, last: int, epoch: int = 1) -> str:
    steps = np.arange(first, last + 1)
    values = steps.astype(np.float32)
    return batch_lines(epoch, steps, values, values / 10, values * 1.1, steps * 1.0)


EPOCH = {"epoch": 1, "step": 100, "train_loss": 3.0, "test_loss": 4.0, "test_recon": 3.5, "test_kl": 0.5, "samples_per_s": 10.0, "time": 1.0}


def test_follower_replays_then_follows_and_waits_for_torn_lines(tmp_path):
    run = make_run(tmp_path)
    run.metrics_path.write_text(lines(1, 100) + epoch_line(EPOCH) + lines(101, 101)[:30])  # the writer is mid-line
    follower = RunFollower(run.path)
    follower.poll()
    tele = follower.telemetry
    assert tele.batches == 100 and tele.epoch_count == 1 and tele.epochs()[0]["test_loss"] == 4.0
    assert tele.tail("recon", 2).tolist() == [99.0, 100.0] and tele.first_step == 1
    with open(run.metrics_path, "a") as f:
        f.write(lines(101, 101)[30:] + lines(102, 150))
    follower.poll()
    assert tele.batches == 150 and tele.tail("kl", 1)[0] == pytest.approx(15.0)


def test_follower_starts_over_when_a_resume_rewrites_the_file(tmp_path):
    run = make_run(tmp_path)
    run.metrics_path.write_text(lines(1, 80))
    follower = RunFollower(run.path)
    follower.poll()
    tmp = run.path / "m.tmp"
    tmp.write_text(lines(1, 50))  # truncate_metrics: a new file with fewer steps, renamed over
    os.replace(tmp, run.metrics_path)
    follower.poll()
    assert follower.telemetry.batches == 50 and follower.telemetry.resets == 2


def test_publisher_mirrors_state_and_takes_commands(tmp_path):
    run = make_run(tmp_path)
    tele, controls = Telemetry(), Controls()
    publisher = Publisher(run, tele, controls)
    assert stat.S_IMODE(os.stat(run.control_dir).st_mode) == 0o700
    tele.update_status(state=RunState.TRAINING, dataset="digits", step=42, epochs=3, best_test_loss=float("inf"))
    picture = np.linspace(0, 1, 64, dtype=np.float32).reshape(1, 1, 8, 8)
    tele.set_snapshot(Snapshot(42, 1, picture, picture, picture))
    tele.event("checkpoint", "checkpoint on request: saved last.pt")
    control.send(run, "pause")
    control.send(run, "checkpoint")
    publisher.publish(force=True)
    assert controls.paused and controls.take_checkpoint_request()

    follower = RunFollower(run.path)
    follower.poll()
    status = follower.telemetry.status()
    assert (status.state, status.dataset, status.step, status.pid) == (RunState.TRAINING, "digits", 42, os.getpid())
    assert np.abs(follower.telemetry.snapshot().samples - picture).max() <= 0.5 / 255 + 1e-6  # stored as bytes
    assert [e.kind for e in follower.telemetry.events()] == ["checkpoint"]
    assert RunWatch(run.path).liveness() == Liveness.RUNNING

    tele.update_status(state=RunState.FINISHED)
    publisher.close()
    assert not run.control_dir.exists()
    watch = RunWatch(run.path)
    assert watch.liveness() == Liveness.ENDED and "not running" in watch.send("pause")


def test_a_trainer_that_died_without_a_word_is_gone(tmp_path):
    run = make_run(tmp_path)
    run.status_path.write_text(json.dumps({"state": "training", "pid": dead_pid(), "host": os.uname().nodename, "updated": time.time()}))
    assert RunWatch(run.path).liveness() == Liveness.GONE
    run.status_path.write_text(json.dumps({"state": "training", "pid": os.getpid(), "host": os.uname().nodename, "updated": 1000.0}))
    assert RunWatch(run.path, clock=lambda: 1000.0 + STALE_SECONDS - 1).liveness() == Liveness.RUNNING
    assert RunWatch(run.path, clock=lambda: 1000.0 + STALE_SECONDS + 1).liveness() == Liveness.NOT_ANSWERING


def test_commands_are_checked(tmp_path):
    run = make_run(tmp_path)
    with pytest.raises(control.ControlError, match="no trainer is running"):
        control.send(run, "pause")
    control.open_channel(run)
    with pytest.raises(control.ControlError, match="unknown command"):
        control.send(run, "rm -rf")
    (run.control_dir / "1-1-junk.cmd").write_text("format disk\n")
    commands, refused = control.take(run)
    assert commands == [] and "unknown command" in refused[0]
    assert list(run.control_dir.iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to act as a second user")
def test_another_user_cannot_command_the_run(tmp_path):
    tmp_path.chmod(0o755)
    run = make_run(tmp_path)
    run.path.chmod(0o755)
    control.open_channel(run)
    other = 65534  # nobody
    code = (
        "import os, sys\nfrom pathlib import Path\nfrom vae_tui.runfile import control\nfrom vae_tui.runfile.layout import RunDir\n"
        "os.setgid(%d); os.setuid(%d)\n"
        "try:\n    control.send(RunDir(Path(sys.argv[1])), 'stop')\nexcept control.ControlError as e:\n    print(e); sys.exit(3)\n"
    ) % (other, other)
    proc = subprocess.run([sys.executable, "-c", code, str(run.path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3 and "permission denied" in proc.stdout, proc.stdout + proc.stderr
    # and a command file that another user managed to place (say, before a chmod) is ignored
    planted = run.control_dir / "1-1-stop.cmd"
    planted.write_text("stop\n")
    os.chown(planted, other, other)
    commands, refused = control.take(run)
    assert commands == [] and "only the run's owner" in refused[0]


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux's idle scheduling")
@pytest.mark.parametrize("device, idle", [("cpu", True), ("cuda:0 (NVIDIA H200)", False)])
def test_a_watcher_of_a_cpu_run_on_this_machine_runs_only_in_the_trainers_gaps(fake_run, device, idle):
    """Its trainer keeps every core busy: the watcher's threads run at idle priority while it watches,
    and give it back when it stops (a process started afterwards would inherit it). A GPU run leaves room."""
    fake = fake_run()
    fake.status.device = device
    fake.publish()
    found = os.sched_getscheduler(0)
    watch = RunWatch(fake.run.path)
    watch.start()
    try:
        assert (os.sched_getscheduler(0) == os.SCHED_IDLE) is idle
        follower = next(t for t in threading.enumerate() if t.name == "vae-follower")
        assert (os.sched_getscheduler(follower.native_id) == os.SCHED_IDLE) is idle
    finally:
        watch.close()
    assert os.sched_getscheduler(0) == found
