"""Disk trouble as the README promises: a failed write is said once (then counted), training goes on,
the previous checkpoint stays whole, the watcher sees the real state and the cause, a stop still
reaches the trainer, and a deleted run directory stops the run without being made again."""

import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

from conftest import ROOT, SMALL, batch_steps, wait_for
from vae_tui.config import TrainConfig
from vae_tui.runfile import control
from vae_tui.runfile import io as runfile_io
from vae_tui.runfile.files import read_status
from vae_tui.runfile.layout import RunDir, open_run_dir
from vae_tui.runfile.metrics import parse_events
from vae_tui.runfile.schema import RunState
from vae_tui.telemetry import Telemetry
from vae_tui.training.checkpoint import load_checkpoint
from vae_tui.training.controls import Controls
from vae_tui.training.device import pick_device
from vae_tui.training.loop import Trainer
from vae_tui.training.publish import Publisher
from vae_tui.watching.follow import RunFollower, RunWatch


def test_a_full_disk_during_checkpoints_is_said_once_per_file_and_training_finishes(tmp_path):
    """A file size limit fails writes beyond it the way a full disk does (torch's own writer used to abort the run)."""

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))  # checkpoints of this model are about 900 KB

    run = tmp_path / "r"
    proc = subprocess.run(
        [sys.executable, "-m", "vae_tui", "train", "--dataset", "digits", "--device", "cpu", "--epochs", "4", "--iw-samples", "0", "--run-dir", str(run)],
        preexec_fn=limited,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and all("file is too large" in w and "training goes on" in w for w in warnings), warnings
    assert "finished 4 epochs" in proc.stdout and batch_steps(run) == list(range(1, 49))
    assert not (run / "checkpoints" / "last.pt").exists() and not list((run / "checkpoints").iterdir())  # no half file


@pytest.fixture
def read_only_folder(monkeypatch):
    """Make new files fail in a folder, as when it turns read-only (0555): existing files stay writable."""
    folders: list[str] = []
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and any(os.path.realpath(dir).startswith(f) for f in folders):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(runfile_io.tempfile, "mkstemp", mkstemp)
    return lambda path: folders.append(os.path.realpath(path))


def test_a_run_directory_turned_read_only_keeps_its_heartbeat_and_says_why(tmp_path, small_digits, read_only_folder):
    run = open_run_dir(tmp_path / "run")
    config = TrainConfig(dataset="digits", epochs=40, hidden_dim=32, latent_dim=4, iw_samples=0).validate()
    tele, controls = Telemetry(), Controls()
    trainer = Trainer(config, small_digits, pick_device("cpu"), tele, controls, run)
    publisher = Publisher(run, tele, controls)
    publisher.start()
    thread = trainer.start()
    wait_for(lambda: tele.status().step > 10 and run.status_path.exists(), "the run to train")
    read_only_folder(run.path)  # from here on no new file can be made in the run directory
    follower = RunFollower(run.path)
    wait_for(lambda: follower.poll() or "saving last.pt" in follower.telemetry.status().problems, "the watcher to see the cause in the trainer's status")
    thread.join(60)
    publisher.close()
    assert trainer.result.state == RunState.FINISHED
    status, _ = read_status(run)
    assert status.state == RunState.FINISHED and "permission denied" in status.problems["saving last.pt"]  # real state, real cause
    events, _ = parse_events(run.events_path.read_bytes())
    warnings = [e.message for e in events if e.kind == "warning"]
    assert len(warnings) <= 4 and any("times" in p for p in status.problems.values())  # once each, then counted


def test_a_command_that_cannot_be_written_is_one_line_and_a_stop_becomes_a_signal(tmp_path, monkeypatch):
    run = tmp_path / "r"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vae_tui", "train", *SMALL, "--epochs", "100000", "--run-dir", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    wait_for(lambda: (run / "checkpoints" / "last.pt").exists() and (run / "control").is_dir(), "the run to train", proc=proc)

    def read_only(path, data, durable=False):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(control, "atomic_write", read_only)
    with pytest.raises(control.ControlError, match="cannot write a command"):  # not an OSError that takes a monitor down
        control.send(RunDir(run), "pause")
    watch = RunWatch(run)
    problem = watch.stop()
    assert "SIGTERM instead" in problem and watch.stopping
    assert proc.wait(30) == 143
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == batch_steps(run)[-1]


def test_a_deleted_run_directory_stops_the_run_and_is_not_made_again(tmp_path, small_digits):
    run = open_run_dir(tmp_path / "run")
    config = TrainConfig(dataset="digits", epochs=100000, hidden_dim=32, latent_dim=4).validate()
    tele, controls = Telemetry(), Controls()
    trainer = Trainer(config, small_digits, pick_device("cpu"), tele, controls, run)
    publisher = Publisher(run, tele, controls)
    publisher.start()
    thread = trainer.start()
    follower = RunFollower(run.path)
    wait_for(lambda: tele.status().step > 10, "the run to train")

    def deleted() -> bool:  # as rm -rf does, racing a trainer that is writing there
        shutil.rmtree(run.path, ignore_errors=True)
        return not run.path.exists()

    wait_for(deleted, "the run directory to be deleted")
    thread.join(30)
    assert not thread.is_alive(), "the trainer did not stop when its run directory went"
    publisher.close()
    assert trainer.result.state == RunState.STOPPED and not run.path.exists()  # nothing was made again
    assert any("was deleted" in e.message for e in tele.events())
    follower.poll()
    assert follower.deleted and any("was deleted" in e.message for e in follower.notes)
