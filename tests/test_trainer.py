import dataclasses

import numpy as np
import pytest
import torch

from conftest import batch_steps, wait_for
from helpers import StopAtStep, make_trainer
from vae_tui.runfile.metrics import read_metrics
from vae_tui.runfile.schema import RunState
from vae_tui.training import checkpointer as checkpointer_module
from vae_tui.training.checkpoint import load_checkpoint
from vae_tui.training.controls import Controls
from vae_tui.training.hooks import Hook


def test_loss_falls_on_digits(tmp_path, digits):
    trainer, run = make_trainer(tmp_path, digits, epochs=6, hidden_dim=128, latent_dim=8)
    result = trainer.run()
    assert result.state == RunState.FINISHED and result.epoch == 6 and result.step == 6 * 24
    epochs = trainer.telemetry.epochs()
    assert epochs[-1]["train_loss"] < 0.8 * epochs[0]["train_loss"]
    assert epochs[-1]["test_loss"] < epochs[0]["test_loss"]
    losses = trainer.telemetry.decimated("loss", 1000).mean
    assert losses[-20:].mean() < losses[:20].mean()
    snap = trainer.telemetry.snapshot()
    assert snap.reconstructions.shape == (4, 1, 8, 8) and snap.samples.shape == (4, 1, 8, 8)
    assert result.last_checkpoint.exists() and result.best_checkpoint.exists()


class Recorder(Hook):
    """Every hook call, in order: what a later issue's hook would see."""

    def __init__(self):
        self.calls = []

    def on_start(self, trainer):
        self.calls.append(("start", trainer.state.step))

    def on_batch_end(self, trainer):
        self.calls.append(("batch", trainer.state.step))

    def on_losses(self, trainer, chunk):
        self.calls.append(("losses", int(chunk.steps[-1])))

    def on_epoch_end(self, trainer, record):
        self.calls.append(("epoch", record["epoch"]))

    def on_checkpoint(self, trainer, path, why, routine):
        self.calls.append(("checkpoint", path.name))

    def on_finish(self, trainer, result):
        self.calls.append(("finish", result.state))


def test_metrics_file_and_hooks_see_every_batch_and_epoch(tmp_path, small_digits):
    recorder = Recorder()
    trainer, run = make_trainer(tmp_path, small_digits, epochs=2, extra_hooks=[recorder])
    trainer.run()
    metrics = read_metrics(run.metrics_path)
    assert batch_steps(run) == list(range(1, 15))  # 400 images / 64 = 7 batches, 2 epochs
    assert [r["epoch"] for r in metrics.epochs] == [1, 2] and metrics.epochs[1]["step"] == 14 and metrics.skipped == 0
    first = metrics.batches[0]
    assert abs(first[4] - (first[2] + first[3])) < 1e-3  # loss = recon + KL (beta 1)
    calls = recorder.calls
    assert calls[0] == ("start", 0) and calls[-1] == ("finish", RunState.FINISHED)
    assert [c[1] for c in calls if c[0] == "batch"] == list(range(1, 15))
    assert [c[1] for c in calls if c[0] == "epoch"] == [1, 2]
    assert ("checkpoint", "best.pt") in calls and ("checkpoint", "last.pt") in calls
    assert max(c[1] for c in calls if c[0] == "losses") == 14  # every loss reached the host


def test_pause_stops_the_step_counter_and_resume_continues(tmp_path, digits):
    controls = Controls()
    trainer, run = make_trainer(tmp_path, digits, controls=controls, epochs=200)
    thread = trainer.start()
    tele = trainer.telemetry
    wait_for(lambda: tele.status().step > 5, "five steps")
    controls.pause()
    wait_for(lambda: tele.status().state == RunState.PAUSED, "the trainer to say it paused")
    paused_at = tele.status().step
    wait_for(lambda: tele.analysis() is not None and int(tele.analysis()["step"]) == paused_at, "the latent report of the paused model")
    assert tele.snapshot().step == paused_at  # the pictures, too, show the model as it stands
    controls.request_checkpoint()  # positive control: the paused trainer is alive and answering
    wait_for(lambda: any(e.kind == "checkpoint" for e in tele.events()), "a checkpoint taken while paused")
    assert tele.status().step == paused_at and load_checkpoint(run.last_checkpoint)["step"] == paused_at
    assert tele.batches == paused_at  # every finished batch was published
    controls.resume()
    wait_for(lambda: tele.status().step > paused_at + 5, "training to go on after resume")
    controls.stop()
    thread.join(10)
    assert not thread.is_alive() and trainer.result.state == RunState.STOPPED
    assert load_checkpoint(run.last_checkpoint)["step"] == trainer.result.step  # stopping saved where it was


def test_stop_before_the_first_batch_ends_the_thread(tmp_path, small_digits):
    controls = Controls()
    controls.stop(save=False)
    trainer, _ = make_trainer(tmp_path, small_digits, controls=controls)
    assert trainer.run().state == RunState.STOPPED and trainer.result.step == 0


@pytest.mark.parametrize("stop_step", [10, 14])  # mid-epoch, and exactly at an epoch's end
def test_resume_reproduces_an_uninterrupted_run_exactly(tmp_path, small_digits, stop_step):
    whole, whole_run = make_trainer(tmp_path, small_digits, name="whole", epochs=3)
    assert whole.run().state == RunState.FINISHED

    first, run = make_trainer(tmp_path, small_digits, name="split", epochs=3, extra_hooks=[StopAtStep(stop_step)])
    first.losses.flush_seconds = 0.0  # every step reaches the host at once: stop exactly there
    assert first.run().state == RunState.STOPPED and first.result.step == stop_step
    state = load_checkpoint(run.last_checkpoint)
    second, _ = make_trainer(tmp_path, small_digits, name="split", resume_state=state, epochs=3)
    assert second.run().state == RunState.FINISHED

    for name, param in whole.state.model.state_dict().items():
        assert torch.equal(param, second.state.model.state_dict()[name]), name
    a, b = read_metrics(whole_run.metrics_path), read_metrics(run.metrics_path)
    assert np.array_equal(a.batches[:, :5], b.batches[:, :5])  # same steps, same losses, none repeated or missing
    strip = lambda records: [{k: v for k, v in r.items() if k not in ("time", "samples_per_s")} for r in records]  # noqa: E731
    assert strip(a.epochs) == strip(b.epochs)


def test_non_finite_loss_stops_without_overwriting_checkpoints(tmp_path, small_digits):
    trainer, run = make_trainer(tmp_path, small_digits, epochs=1)
    assert trainer.run().state == RunState.FINISHED
    before = run.last_checkpoint.read_bytes()
    state = load_checkpoint(run.last_checkpoint)
    state["model"]["decoder.fc4.bias"][:] = float("nan")
    broken, _ = make_trainer(tmp_path, small_digits, resume_state=state, epochs=2)
    result = broken.run()
    assert result.state == RunState.ERROR and "NaN" in result.message and "--lr" in result.message
    assert run.last_checkpoint.read_bytes() == before


def test_a_nan_from_an_enormous_beta_blames_beta_not_the_learning_rate(tmp_path, small_digits):
    trainer, _ = make_trainer(tmp_path, small_digits, epochs=1, beta=1e300)
    result = trainer.run()
    assert result.state == RunState.ERROR and "--beta 1e+300 is very large; try --beta 1" in result.message
    assert "learning rate" not in result.message


def test_a_failed_checkpoint_write_is_reported_and_training_goes_on(tmp_path, small_digits, monkeypatch):
    def full_disk(state, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpointer_module, "save_checkpoint", full_disk)
    trainer, run = make_trainer(tmp_path, small_digits, epochs=3, checkpoint_seconds=0.0)  # every epoch tries
    assert trainer.run().state == RunState.FINISHED
    warnings = [e.message for e in trainer.telemetry.events() if e.kind == "warning"]
    assert len(warnings) == 2 and all("no space left on the file system of" in w and "MB free" in w for w in warnings)
    assert "(3 times)" in trainer.telemetry.status().problems["saving last.pt"]  # once each file, then a count
    assert not run.last_checkpoint.exists()


def test_a_metrics_file_that_cannot_be_written_is_reported_and_training_goes_on(tmp_path, small_digits, monkeypatch):
    from vae_tui.runfile.metrics import MetricsWriter

    def full_disk(self, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(MetricsWriter, "write", full_disk)
    trainer, run = make_trainer(tmp_path, small_digits, epochs=2)
    assert trainer.run().state == RunState.FINISHED
    warnings = [e.message for e in trainer.telemetry.events() if e.kind == "warning"]
    assert len(warnings) == 1 and "no space left" in warnings[0] and "training goes on" in warnings[0]  # once
    assert load_checkpoint(run.last_checkpoint)["epoch"] == 2


def with_a_nan_image(data, index=5):
    """The same dataset with one training image that makes any batch holding it non-finite."""
    train_x = data.train_x.copy()
    train_x[index] = np.nan
    return dataclasses.replace(data, train_x=train_x)


def test_on_nan_skip_drops_the_bad_batches_and_goes_on(tmp_path, small_digits):
    trainer, run = make_trainer(tmp_path, with_a_nan_image(small_digits), on_nan="skip", epochs=2)
    assert trainer.run().state == RunState.FINISHED
    assert batch_steps(run) == list(range(1, 13))  # 7 batches an epoch, one of them skipped each epoch
    assert any("skipped" in e.message for e in trainer.telemetry.events() if e.kind == "warning")


def test_on_nan_pause_holds_rolls_back_on_resume_and_never_saves_nan(tmp_path, small_digits):
    first, run = make_trainer(tmp_path, small_digits, epochs=1)
    assert first.run().state == RunState.FINISHED
    good = run.last_checkpoint.read_bytes()
    trainer, _ = make_trainer(tmp_path, with_a_nan_image(small_digits), resume_state=load_checkpoint(run.last_checkpoint), on_nan="pause", epochs=3)
    thread = trainer.start()
    tele, controls = trainer.telemetry, trainer.controls
    wait_for(lambda: tele.status().state == RunState.PAUSED and "NaN" in tele.status().message, "the NaN pause")
    message = tele.status().message
    assert "step 7) is intact" in message and "--lr 0.0001" in message and "--resume" in message  # where it is safe, and what to try
    controls.request_checkpoint()  # a checkpoint of a broken model is refused, silently
    wait_for(lambda: not controls.checkpoint_pending, "the paused trainer to take the request")
    assert run.last_checkpoint.read_bytes() == good
    controls.resume()  # go back to step 7 and try again: same data, so the same batch fails again
    wait_for(lambda: any("rolled back to step 7" in e.message for e in tele.events()), "the rollback")
    wait_for(lambda: tele.status().state == RunState.PAUSED and controls.paused, "the second NaN pause")
    controls.stop()
    thread.join(10)
    assert trainer.result.state == RunState.STOPPED and "NaN" in trainer.result.message
    assert run.last_checkpoint.read_bytes() == good
    steps = batch_steps(run)
    assert steps == list(range(1, len(steps) + 1))  # the rollback dropped the records after step 7, no repeats


def test_a_stop_during_the_final_evaluation_ends_it_and_writes_no_figure(tmp_path, small_digits):
    controls = Controls()
    trainer, run = make_trainer(tmp_path, small_digits, controls=controls, epochs=1, iw_samples=100_000)
    thread = trainer.start()
    tele = trainer.telemetry
    wait_for(lambda: tele.status().state == RunState.EVALUATING, "the final evaluation to start")
    wait_for(lambda: "final evaluation:" in tele.status().message, "its progress in the status")
    controls.stop()
    thread.join(30)
    assert not thread.is_alive(), "the evaluation did not take the stop"
    assert trainer.result.state == RunState.FINISHED and "cut short" in trainer.result.message
    assert tele.status().evaluation == {} and not run.eval_path.exists()  # a cut-short evaluation is no figure
    assert load_checkpoint(run.last_checkpoint)["epoch"] == 1


def test_samples_per_second_is_steady_over_the_last_seconds():
    from vae_tui.training.reporting import RATE_SECONDS, Throughput

    rate = Throughput()
    for _ in range(200):  # chunks of very different sizes and lengths, at 1,000 samples/s on the whole
        rate.add(10, 0.01)
        measured = rate.add(300, 0.3)
    assert measured == pytest.approx(1000.0)
    assert rate.add(0, RATE_SECONDS + 1) == 0.0  # a stall longer than the window shows in full
