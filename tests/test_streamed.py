"""Training images streamed from the cache: the same run as with them on the device, and the rule
that picks between the two."""

import dataclasses
import threading

import numpy as np
import pytest
import torch

from helpers import StopAtStep  # a user pressing q mid-epoch
from vae_tui.config import TrainConfig
from vae_tui.errors import ConfigError
from vae_tui.launch import resources
from vae_tui.runfile.layout import open_run_dir
from vae_tui.runfile.metrics import read_metrics
from vae_tui.runfile.schema import RunState
from vae_tui.training.checkpoint import load_checkpoint
from vae_tui.training.controls import Controls
from vae_tui.training.device import pick_device
from vae_tui.training.loop import Trainer, default_hooks


def config(**changes):
    base = dict(dataset="digits", epochs=2, hidden_dim=64, latent_dim=4, batch_size=64, snapshot_seconds=0.05, n_images=4, iw_samples=0)
    return TrainConfig(**{**base, **changes}).validate()


def trainer_for(tmp_path, data, name, placement, resume_state=None, hooks=()):
    run = open_run_dir(tmp_path / name, resuming=True)
    trainer = Trainer(
        config(),
        data,
        pick_device("cpu"),
        controls=Controls(),
        run_dir=run,
        resume_state=resume_state,
        hooks=default_hooks(run) + list(hooks),
        placement=placement,
    )
    return trainer, run


@pytest.fixture
def byte_digits(small_digits):
    """The digits as the decoded-picture cache holds pictures: bytes, 0 to 255."""
    as_bytes = lambda x: np.round(x * 255).astype(np.uint8)  # noqa: E731
    return dataclasses.replace(small_digits, train_x=as_bytes(small_digits.train_x), test_x=as_bytes(small_digits.test_x))


def stream_threads():
    return [t for t in threading.enumerate() if t.name == "vae-stream" and t.is_alive()]


@pytest.mark.parametrize("images", ["bytes", "floats"])
def test_a_streamed_run_stopped_mid_epoch_and_resumed_is_the_on_device_run(tmp_path, small_digits, byte_digits, images):
    data = byte_digits if images == "bytes" else small_digits
    whole, whole_run = trainer_for(tmp_path, data, "whole", "device")
    assert whole.run().state == RunState.FINISHED

    first, run = trainer_for(tmp_path, data, "split", "stream", hooks=[StopAtStep(10)])
    first.losses.flush_seconds = 0.0  # every step reaches the host at once: stop exactly there
    assert first.run().state == RunState.STOPPED and first.result.step == 10  # 7 batches an epoch: mid-epoch
    assert first.telemetry.status().data_placement == "stream"
    second, _ = trainer_for(tmp_path, data, "split", "stream", resume_state=load_checkpoint(run.last_checkpoint))
    assert second.run().state == RunState.FINISHED

    for name, param in whole.state.model.state_dict().items():
        assert torch.equal(param, second.state.model.state_dict()[name]), name
    a, b = read_metrics(whole_run.metrics_path), read_metrics(run.metrics_path)
    assert np.array_equal(a.batches[:, :5], b.batches[:, :5])
    assert stream_threads() == []  # the reader ended with the run


class FailingReads(np.ndarray):
    """A cache whose disk fails when batches are read from it."""

    def __getitem__(self, key):
        if isinstance(key, np.ndarray):
            raise OSError(5, "Input/output error")
        return super().__getitem__(key)


def test_a_failing_read_ends_the_run_with_its_reason(tmp_path, byte_digits):
    data = dataclasses.replace(byte_digits, train_x=byte_digits.train_x.view(FailingReads))
    trainer, _ = trainer_for(tmp_path, data, "run", "stream")
    result = trainer.run()  # returns: the training thread does not wait forever for a batch
    assert result.state == RunState.ERROR
    assert "reading the training images from the cache failed: [Errno 5] Input/output error" in result.message
    assert stream_threads() == []


def test_auto_puts_the_images_on_the_device_when_they_take_at_most_half_its_free_memory(byte_digits):
    images = np.broadcast_to(np.zeros((1, 3, 64, 64), np.uint8), (200_000, 3, 64, 64))  # 2.5 GB, never held
    big = dataclasses.replace(byte_digits, train_x=images[:180_000], test_x=images[:20_000])
    need = resources.data_bytes(big)
    assert need == 200_000 * 3 * 64 * 64 * 4  # as float32
    auto = config()
    assert resources.placement(auto, big, free=2 * need) == "device"
    assert resources.placement(auto, big, free=2 * need - 2) == "stream"
    assert resources.placement(auto, big, free=None) == "device"  # not known: as before
    assert resources.placement(config(data_placement="stream"), big, free=10**15) == "stream"
    assert resources.placement(config(data_placement="device"), big, free=1) == "device"


def test_a_run_that_fits_only_streamed_is_streamed_and_one_forced_onto_the_device_is_refused(byte_digits):
    streamed = resources.estimate(config(), byte_digits, "stream").bytes
    on_device = resources.estimate(config(), byte_digits, "device").bytes
    assert streamed < on_device
    where, _ = resources.check(config(), byte_digits, available=streamed + 1)
    assert where == "stream"
    with pytest.raises(ConfigError, match="--data-placement stream, to read the training images from disk"):
        resources.check(config(data_placement="device"), byte_digits, available=streamed + 1)


def test_too_big_for_memory_with_large_pictures_names_their_size_and_the_conv_model_first(byte_digits):
    """512x512 pictures with the defaults: the MLP's first layer alone is 3 x 512 x 512 x 400 weights."""
    images = np.broadcast_to(np.zeros((1, 3, 512, 512), np.uint8), (100, 3, 512, 512))
    big = dataclasses.replace(byte_digits, train_x=images[:90], test_x=images[:10])
    with pytest.raises(ConfigError) as refused:
        resources.check(config(), big, available=2 * 2**30)
    said = str(refused.value)
    assert "use smaller pictures (--image-size 64: the 512x512 pictures are 786,432 values each); or --arch conv" in said, said
    assert said.index("--image-size") < said.index("--hidden-dim")
