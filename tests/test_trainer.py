import time

import pytest
import torch

from vae_tui import trainer as trainer_module
from vae_tui.checkpoint import load_checkpoint
from vae_tui.config import TrainConfig
from vae_tui.device import pick_device
from vae_tui.metrics import MetricsWriter, read_metrics, truncate_metrics
from vae_tui.rundir import open_run_dir
from vae_tui.telemetry import Telemetry
from vae_tui.trainer import Controls, Trainer

CPU = pick_device("cpu")


def small_config(**changes):
    base = dict(dataset="digits", epochs=3, hidden_dim=64, latent_dim=4, batch_size=64, snapshot_seconds=0.05, n_images=4)
    base.update(changes)
    return TrainConfig(**base).validate()


def make_trainer(tmp_path, data, name="run", resume_state=None, controls=None, **changes):
    run = open_run_dir(tmp_path / name, resuming=resume_state is not None)
    telemetry = Telemetry(MetricsWriter(run.metrics_path))
    return Trainer(small_config(**changes), data, CPU, telemetry, controls or Controls(), run, resume_state), run


def wait_for(condition, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_loss_falls_on_digits(tmp_path, digits):
    trainer, run = make_trainer(tmp_path, digits, epochs=6, hidden_dim=128, latent_dim=8)
    result = trainer.run()
    assert result.state == "finished" and result.epoch == 6 and result.step == 6 * 24
    epochs = trainer.telemetry.epochs()
    assert epochs[-1]["train_loss"] < 0.8 * epochs[0]["train_loss"]
    assert epochs[-1]["test_loss"] < epochs[0]["test_loss"]
    losses = trainer.telemetry.decimated("loss", 1000).mean
    assert losses[-20:].mean() < losses[:20].mean()
    snap = trainer.telemetry.snapshot()
    assert snap.reconstructions.shape == (4, 8, 8) and snap.samples.shape == (4, 8, 8)
    assert result.last_checkpoint.exists() and result.best_checkpoint.exists()


def test_metrics_file_has_every_batch_and_epoch(tmp_path, small_digits):
    trainer, run = make_trainer(tmp_path, small_digits, epochs=2)
    trainer.run()
    records = list(read_metrics(run.metrics_path))
    batches = [r for r in records if r["kind"] == "batch"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["step"] for r in batches] == list(range(1, 15))  # 400 images / 64 = 7 batches, 2 epochs
    assert set(batches[0]) == {"kind", "epoch", "step", "recon", "kl", "loss", "time"}
    assert set(epochs[0]) == {"kind", "epoch", "step", "train_loss", "test_loss", "test_recon", "test_kl", "samples_per_s", "time"}
    assert [r["epoch"] for r in epochs] == [1, 2] and epochs[1]["step"] == 14
    assert abs(batches[0]["loss"] - (batches[0]["recon"] + batches[0]["kl"])) < 1e-3


def test_pause_stops_the_step_counter_and_resume_continues(tmp_path, digits):
    controls = Controls()
    trainer, run = make_trainer(tmp_path, digits, controls=controls, epochs=200)
    thread = trainer.start()
    assert wait_for(lambda: trainer.telemetry.status().step > 5)
    controls.pause()
    assert wait_for(lambda: trainer.telemetry.status().state == "paused")
    paused_at = trainer.telemetry.status().step
    time.sleep(0.3)
    assert trainer.telemetry.status().step == paused_at
    assert trainer.telemetry.batches == paused_at  # every finished batch was published
    controls.resume()
    assert wait_for(lambda: trainer.telemetry.status().step > paused_at + 5)
    controls.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert trainer.result.state == "stopped"
    state = load_checkpoint(run.last_checkpoint)  # stopping saved where it was
    assert state["step"] == trainer.result.step


def test_checkpoint_now_writes_a_loadable_file_while_paused(tmp_path, digits):
    controls = Controls()
    trainer, run = make_trainer(tmp_path, digits, controls=controls, epochs=200)
    thread = trainer.start()
    assert wait_for(lambda: trainer.telemetry.status().step > 3)
    controls.pause()
    assert wait_for(lambda: trainer.telemetry.status().state == "paused")
    controls.request_checkpoint()
    assert wait_for(lambda: any(e.kind == "checkpoint" for e in trainer.telemetry.events()))
    assert "checkpoint on request" in trainer.telemetry.events()[-1].message
    state = load_checkpoint(run.last_checkpoint)
    assert state["step"] == trainer.telemetry.status().step
    assert state["model"]["encoder.fc1.weight"].shape == (64, 64)
    controls.stop(save=False)
    thread.join(10)
    assert not thread.is_alive()


def test_stop_before_the_first_batch_ends_the_thread(tmp_path, small_digits):
    controls = Controls()
    controls.stop(save=False)
    trainer, _ = make_trainer(tmp_path, small_digits, controls=controls)
    assert trainer.run().state == "stopped" and trainer.result.step == 0


class StopAtStep(Telemetry):
    """Asks for a stop once a given step is published, like a user pressing q mid-epoch."""

    def __init__(self, metrics, controls, step):
        super().__init__(metrics)
        self.controls, self.stop_step = controls, step

    def add_batches(self, epoch, steps, *rest):
        super().add_batches(epoch, steps, *rest)
        if steps[-1] >= self.stop_step:
            self.controls.stop(save=True)


@pytest.mark.parametrize("stop_step", [10, 14])  # mid-epoch, and exactly at an epoch's end
def test_resume_reproduces_an_uninterrupted_run_exactly(tmp_path, small_digits, monkeypatch, stop_step):
    monkeypatch.setattr(trainer_module, "FLUSH_SECONDS", 0.0)  # publish every step: stop exactly there
    whole, whole_run = make_trainer(tmp_path, small_digits, name="whole", epochs=3)
    assert whole.run().state == "finished"

    controls = Controls()
    first, run = make_trainer(tmp_path, small_digits, name="split", controls=controls, epochs=3)
    first.telemetry = StopAtStep(MetricsWriter(run.metrics_path), controls, stop_step)
    assert first.run().state == "stopped"
    assert first.result.step == stop_step
    state = load_checkpoint(run.last_checkpoint)
    truncate_metrics(run.metrics_path, state["step"], state["epoch"])
    second, _ = make_trainer(tmp_path, small_digits, name="split", resume_state=state, epochs=3)
    assert second.run().state == "finished"

    for name, param in whole.model.state_dict().items():
        assert torch.equal(param, second.model.state_dict()[name]), name
    a, b = list(read_metrics(whole_run.metrics_path)), list(read_metrics(run.metrics_path))
    strip = lambda records: [{k: v for k, v in r.items() if k not in ("time", "samples_per_s")} for r in records]
    assert strip(a) == strip(b)  # same steps, same losses, none repeated or missing


def test_non_finite_loss_stops_without_overwriting_checkpoints(tmp_path, small_digits):
    trainer, run = make_trainer(tmp_path, small_digits, epochs=1)
    assert trainer.run().state == "finished"
    before = run.last_checkpoint.read_bytes()
    state = load_checkpoint(run.last_checkpoint)
    state["model"]["decoder.fc4.bias"][:] = float("nan")
    broken, _ = make_trainer(tmp_path, small_digits, resume_state=state, epochs=2)
    result = broken.run()
    assert result.state == "error" and "NaN" in result.message and "--lr" in result.message
    assert run.last_checkpoint.read_bytes() == before


def test_a_failed_checkpoint_write_is_reported_and_training_goes_on(tmp_path, small_digits, monkeypatch):
    def full_disk(state, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trainer_module, "save_checkpoint", full_disk)
    trainer, run = make_trainer(tmp_path, small_digits, epochs=2)
    assert trainer.run().state == "finished"
    warnings = [e.message for e in trainer.telemetry.events() if e.kind == "warning"]
    assert warnings and "No space left" in warnings[0]
    assert not run.last_checkpoint.exists()


def with_a_nan_image(data, index=5):
    """The same dataset with one training image that makes any batch holding it non-finite."""
    import dataclasses

    import numpy as np

    train_x = data.train_x.copy()
    train_x[index] = np.nan
    return dataclasses.replace(data, train_x=train_x)


def make_nan_trainer(tmp_path, data, on_nan, **changes):
    run = open_run_dir(tmp_path / "run", resuming=True)
    telemetry = Telemetry(MetricsWriter(run.metrics_path))
    state = load_checkpoint(run.last_checkpoint) if run.last_checkpoint.exists() else None
    return Trainer(small_config(**changes), data, CPU, telemetry, Controls(), run, state, on_nan=on_nan), run


def test_on_nan_skip_drops_the_bad_batches_and_goes_on(tmp_path, small_digits):
    trainer, run = make_nan_trainer(tmp_path, with_a_nan_image(small_digits), "skip", epochs=2)
    result = trainer.run()
    assert result.state == "finished"
    steps = [r["step"] for r in read_metrics(run.metrics_path) if r["kind"] == "batch"]
    assert steps == list(range(1, 13))  # 7 batches an epoch, one of them skipped each epoch
    assert any("skipped" in e.message for e in trainer.telemetry.events() if e.kind == "warning")


def test_on_nan_pause_holds_rolls_back_on_resume_and_never_saves_nan(tmp_path, small_digits):
    first, run = make_nan_trainer(tmp_path, small_digits, "stop", epochs=1)
    assert first.run().state == "finished"
    good = run.last_checkpoint.read_bytes()
    trainer, _ = make_nan_trainer(tmp_path, with_a_nan_image(small_digits), "pause", epochs=3)
    thread = trainer.start()
    tele, controls = trainer.telemetry, trainer.controls
    assert wait_for(lambda: tele.status().state == "paused" and "NaN" in tele.status().message)
    message = tele.status().message
    assert "step 7) is intact" in message and "--lr 0.0001" in message and "--resume" in message  # where it is safe, and what to try
    controls.request_checkpoint()  # a checkpoint of a broken model is refused, silently
    time.sleep(0.2)
    assert run.last_checkpoint.read_bytes() == good
    controls.resume()  # go back to step 7 and try again: same data, so the same batch fails again
    assert wait_for(lambda: any("rolled back to step 7" in e.message for e in tele.events()))
    assert wait_for(lambda: tele.status().state == "paused" and controls.paused)
    controls.stop()
    thread.join(10)
    assert trainer.result.state == "stopped" and "NaN" in trainer.result.message
    assert run.last_checkpoint.read_bytes() == good
    steps = [r["step"] for r in read_metrics(run.metrics_path) if r["kind"] == "batch"]
    assert steps == list(range(1, len(steps) + 1))  # the rollback dropped the records after step 7, no repeats
