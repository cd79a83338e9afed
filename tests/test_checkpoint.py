import os
import pickle
import threading

import pytest
import torch

from vae_tui.training import checkpoint as checkpoint_module
from vae_tui.training.checkpoint import FORMAT_VERSION, CheckpointError, check_model_shape, describe_shape, load_checkpoint, save_checkpoint


def minimal_state(value=1.0):
    return {
        "config": {"hidden_dim": 4, "latent_dim": 2},
        "data": {"name": "digits", "shape": [1, 8, 8], "train_size": 1500},
        "model": {"w": torch.full((2, 2), value)},
        "optimizer": {},
        "epoch": 1,
        "step": 10,
    }


def test_round_trip_and_run_directory_resolution(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    path = save_checkpoint(minimal_state(), tmp_path / "run" / "checkpoints" / "last.pt")
    state = load_checkpoint(path)
    assert state["format_version"] == FORMAT_VERSION and torch.equal(state["model"]["w"], torch.ones(2, 2))
    assert load_checkpoint(tmp_path / "run")["step"] == 10  # a run directory means its last.pt


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = save_checkpoint(minimal_state(1.0), tmp_path / "last.pt")
    before = path.read_bytes()

    def dies_half_way(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", dies_half_way)
    with pytest.raises(OSError):
        save_checkpoint(minimal_state(2.0), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.pt"]  # no temporary file left behind


def test_a_checkpoint_from_before_the_data_description_still_loads(tmp_path):
    """Format 1 (grey images only) named its data with input_dim, image_shape, dataset and train_size."""
    from vae_tui.config import TrainConfig
    from vae_tui.models import build_model

    config = TrainConfig(hidden_dim=16, latent_dim=3)
    old = {
        "format_version": 1,
        "config": config.to_dict(),
        "model": build_model(config, (1, 8, 8)).state_dict(),
        "optimizer": {},
        "epoch": 2,
        "step": 24,
        "input_dim": 64,
        "image_shape": [8, 8],
        "dataset": "digits",
        "train_size": 1500,
    }
    torch.save(old, tmp_path / "old.pt")
    state = load_checkpoint(tmp_path / "old.pt")
    assert state["data"] == {"name": "digits", "shape": [1, 8, 8], "train_size": 1500}
    check_model_shape(state)
    assert describe_shape(state) == "64-16-3"


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[: len(b) // 2], "corrupt or truncated"),
        (lambda b: b"", "corrupt"),
        (lambda b: b"not a checkpoint at all" * 10, "corrupt"),
    ],
    ids=["truncated", "empty", "garbage"],
)
def test_damaged_files_give_one_clear_error(tmp_path, damage, message):
    path = save_checkpoint(minimal_state(), tmp_path / "last.pt")
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


class WritesAFile:
    """Unpickling this would create a file: the classic malicious-pickle payload."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_a_crafted_pickle_is_refused_and_runs_nothing(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "payload": WritesAFile(str(target))}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(path)
    assert not target.exists()

    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(WritesAFile(str(target))))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    assert not target.exists()


def test_newer_format_and_foreign_files_are_named(tmp_path):
    newer = tmp_path / "newer.pt"
    torch.save({**minimal_state(), "format_version": FORMAT_VERSION + 1}, newer)
    with pytest.raises(CheckpointError, match="newer than this vae-tui"):
        load_checkpoint(newer)
    foreign = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="not a vae-tui checkpoint"):
        load_checkpoint(foreign)


def test_missing_paths(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="no checkpoints/last.pt"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("fraction", [0.05, 0.2, 1 / 3, 0.5, 0.8, 0.99])
def test_truncated_anywhere_is_the_same_clear_error(tmp_path, fraction):
    state = minimal_state()
    state["model"] = {f"w{i}": torch.randn(64, 64) for i in range(4)}  # random bytes, as in real weights
    path = save_checkpoint(state, tmp_path / "last.pt")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


# -- routine saves, written in the background --------------------------------------------------------
class HeldState:
    """What the checkpointer asks of a training state: its dict, here a weight training goes on changing."""

    def __init__(self):
        self.weight, self.step = torch.zeros(64, 64), 0

    def state_dict(self):
        return {"config": {}, "data": {}, "model": {"w": self.weight}, "optimizer": {}, "epoch": 0, "step": self.step}


def test_a_routine_save_keeps_the_state_of_its_step_while_training_goes_on(tmp_path):
    from vae_tui.runfile.layout import open_run_dir
    from vae_tui.telemetry import Telemetry
    from vae_tui.training.checkpointer import Checkpointer

    run = open_run_dir(tmp_path / "run")
    checkpointer, state = Checkpointer(run, {}, Telemetry()), HeldState()
    for step in range(1, 21):  # faster than a disk takes them: older ones may be dropped, the newest never
        state.step = step
        state.weight.fill_(step)
        assert checkpointer.save("last", state, f"epoch {step}", background=True) is None
        state.weight.fill_(-1.0)  # training changes the weights in place right after
    checkpointer.drain()
    saved = load_checkpoint(run.last_checkpoint)
    assert saved["step"] == 20 and torch.equal(saved["model"]["w"], torch.full((64, 64), 20.0))
    told = checkpointer.saved()
    assert told and told[-1] == (run.last_checkpoint, "epoch 20") and len(told) <= 20
    assert checkpointer.saved() == []  # each told once


def test_a_routine_save_that_fails_is_said_and_the_previous_file_stays(tmp_path, monkeypatch):
    from vae_tui.runfile import io as runfile_io
    from vae_tui.runfile.layout import open_run_dir
    from vae_tui.telemetry import Telemetry
    from vae_tui.training.checkpointer import Checkpointer

    run, telemetry = open_run_dir(tmp_path / "run"), Telemetry()
    checkpointer, state = Checkpointer(run, {}, telemetry), HeldState()
    state.step = 1
    assert checkpointer.save("last", state, "asked for") == run.last_checkpoint  # written before save returns
    monkeypatch.setattr(runfile_io.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    state.step = 2
    checkpointer.save("last", state, "epoch 2", background=True)
    checkpointer.drain()
    assert load_checkpoint(run.last_checkpoint)["step"] == 1 and checkpointer.saved() == []
    assert "no space left" in telemetry.status().problems["saving last.pt"]


class _State:
    """Stands in for the training state: a step and a tensor that changes with it."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self):
        return {"step": self.step, "weights": torch.full((3,), float(self.step))}


def test_routine_saves_are_written_at_most_every_interval_newest_first_and_all_at_the_end(tmp_path):
    from conftest import wait_for
    from vae_tui.runfile.layout import open_run_dir
    from vae_tui.telemetry import Telemetry
    from vae_tui.training.checkpointer import Checkpointer

    run = open_run_dir(tmp_path / "run")
    steps = lambda path: torch.load(path, weights_only=True)["step"]  # noqa: E731
    checkpointer = Checkpointer(run, {"config": {}}, Telemetry(), min_seconds=0.5)
    written = []
    write = checkpointer._write

    def noted(path, payload):  # noted once on disk, so that a wait for it sees the file written
        done = write(path, payload)
        written.append((path.name, payload["step"]))
        return done

    checkpointer._write = noted
    state = _State()
    for step in range(1, 6):  # five epochs in a blink: one write now, the newest when its time comes
        state.step = step
        checkpointer.save("last", state, f"epoch {step}", background=True)
    wait_for(lambda: ("last.pt", 5) in written, "the newest last.pt, once its interval has passed")
    assert len(written) <= 2 and written[-1] == ("last.pt", 5)  # one at once (the first the writer saw), then the newest
    assert [step for _, step in written] == sorted(step for _, step in written)
    assert steps(run.last_checkpoint) == 5

    checkpointer.min_seconds = 3600.0  # a best state between writes is kept, and written by the end's drain
    state.step = 6
    checkpointer.save("best", state, "best", background=True)
    state.step = 7
    checkpointer.save("best", state, "best", background=True)
    checkpointer.save("last", state, "epoch 7", background=True)
    checkpointer.drain()
    assert steps(run.best_checkpoint) == 7 and steps(run.last_checkpoint) == 7
    state.step = 8
    assert checkpointer.save("last", state, "asked for") == run.last_checkpoint  # one asked for: at once
    assert steps(run.last_checkpoint) == 8


def test_checkpoint_every_takes_epochs_or_seconds():
    from vae_tui.config import parse_every
    from vae_tui.errors import ConfigError

    assert parse_every("3") == {"checkpoint_every": 3}
    assert parse_every("30s") == {"checkpoint_every": 1, "checkpoint_seconds": 30.0}
    assert parse_every(" 0.5 S") == {"checkpoint_every": 1, "checkpoint_seconds": 0.5}
    with pytest.raises(ConfigError, match="takes epochs \\(3\\) or seconds \\(30s\\), got '3x'"):
        parse_every("3x")


def test_a_checkpoint_against_other_data_is_one_line_from_one_place():
    from vae_tui.training.checkpoint import data_mismatch

    state = {"data": {"name": "digits", "shape": [1, 8, 8], "train_size": 1500}}
    assert data_mismatch(state, (1, 8, 8), "digits", 1500) is None
    assert "takes images of shape [1, 8, 8] but mnist images are [1, 28, 28]" in data_mismatch(state, (1, 28, 28), "mnist", 60000)
    assert "trained on 1,500 digits images but this digits has 1,400" in data_mismatch(state, (1, 8, 8), "digits", 1400)


class SlowToFree:
    """A checkpoint's payload that takes a while to let go of, as a large one's tensors do."""

    freed = False

    def __del__(self):
        import time

        time.sleep(0.3)
        SlowToFree.freed = True


def test_drain_returns_once_the_writer_has_let_go_of_the_checkpoint(tmp_path):
    """The process may exit right after: a writer thread still freeing a checkpoint while the
    interpreter shuts down aborted it ("terminate called without an active exception", status 134)."""
    from vae_tui.runfile.layout import open_run_dir
    from vae_tui.telemetry import Telemetry
    from vae_tui.training.checkpointer import Checkpointer

    class Holding:
        def state_dict(self):
            return {"held": SlowToFree()}

    checkpointer = Checkpointer(open_run_dir(tmp_path / "run"), {}, Telemetry())
    checkpointer._write = lambda path, payload: True  # written: only letting go of it is looked at
    SlowToFree.freed = False
    checkpointer.save("last", Holding(), "epoch 1", background=True)
    checkpointer.drain()
    assert SlowToFree.freed
    assert not [t for t in threading.enumerate() if t.name == "vae-checkpoints"]
