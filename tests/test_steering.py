"""Changing the learning rate and beta while a run trains: the trainer, the record, resume, `vae-tui set`, the keys."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, SMALL, wait_for
from helpers import ChangeAt, StopAtStep, make_trainer
from vae_tui.runfile import control
from vae_tui.runfile.files import read_status
from vae_tui.runfile.layout import RunDir
from vae_tui.runfile.metrics import parse, read_metrics
from vae_tui.runfile.schema import RunState
from vae_tui.training.checkpoint import load_checkpoint


def test_a_change_reaches_the_next_step_and_every_record(tmp_path, small_digits):
    trainer, run = make_trainer(tmp_path, small_digits, epochs=2, extra_hooks=[ChangeAt(5, lr=5e-4, beta=0.5)])
    assert trainer.run().state == RunState.FINISHED
    metrics = read_metrics(run.metrics_path)
    lr, beta, steps = metrics.column("lr"), metrics.column("beta"), metrics.column("step")
    assert (lr[steps <= 5] == 1e-3).all() and (lr[steps > 5] == 5e-4).all()
    assert (beta[steps <= 5] == 1.0).all() and (beta[steps > 5] == 0.5).all()
    assert trainer.state.optimizer.param_groups[0]["lr"] == 5e-4
    status = trainer.telemetry.status()
    assert status.lr == 5e-4 and status.changes == [{"step": 5, "lr": 5e-4, "beta": 0.5}]
    events = [e.message for e in trainer.telemetry.events() if e.kind == "change"]
    assert events == ["lr 0.0005, beta 0.5 from step 6"]
    saved = load_checkpoint(run.last_checkpoint)
    assert (saved["lr"], saved["beta"], saved["changes"]) == (5e-4, 0.5, [{"step": 5, "lr": 5e-4, "beta": 0.5}])


@pytest.mark.parametrize("stop_step", [3, 20])  # before the change, and after it
def test_a_resumed_run_with_live_changes_equals_one_never_stopped(tmp_path, small_digits, stop_step):
    changes = [ChangeAt(8, lr=3e-3), ChangeAt(15, beta=2.0)]
    whole, whole_run = make_trainer(tmp_path, small_digits, name="whole", epochs=3, extra_hooks=changes)
    assert whole.run().state == RunState.FINISHED
    first, run = make_trainer(tmp_path, small_digits, name="split", epochs=3, extra_hooks=[*changes, StopAtStep(stop_step)])
    first.losses.flush_seconds = 0.0
    assert first.run().state == RunState.STOPPED
    later = [c for c in changes if c.step >= stop_step]  # a change not yet made is asked for again, as a person would
    second, _ = make_trainer(tmp_path, small_digits, name="split", resume_state=load_checkpoint(run.last_checkpoint), epochs=3, extra_hooks=later)
    assert second.run().state == RunState.FINISHED
    for name, param in whole.state.model.state_dict().items():
        assert torch.equal(param, second.state.model.state_dict()[name]), name
    a, b = read_metrics(whole_run.metrics_path), read_metrics(run.metrics_path)
    assert np.array_equal(a.batches[:, [0, 1, 2, 3, 4, 6, 7]], b.batches[:, [0, 1, 2, 3, 4, 6, 7]])  # all but the time
    assert second.state.changes == whole.state.changes


def test_an_explicit_lr_on_resume_wins_over_the_live_one(tmp_path, small_digits):
    first, run = make_trainer(tmp_path, small_digits, epochs=1, extra_hooks=[ChangeAt(3, lr=5e-4)])
    assert first.run().state == RunState.FINISHED
    saved = load_checkpoint(run.last_checkpoint)
    kept, _ = make_trainer(tmp_path, small_digits, resume_state=saved, epochs=2)
    assert kept.run().state == RunState.FINISHED and kept.state.lr == 5e-4
    given, _ = make_trainer(tmp_path, small_digits, resume_state=saved, epochs=2, lr=2e-3)
    assert given.run().state == RunState.FINISHED and given.state.lr == 2e-3


def test_runs_written_before_lr_and_beta_were_recorded_still_read():
    old = b'{"kind": "batch", "epoch": 1, "step": 1, "recon": 2.5, "kl": 0.5, "loss": 3, "time": 1.0}\n' * 3
    table = parse(old).batches
    assert table.shape == (3, 8) and np.isnan(table[:, 6:]).all() and (table[:, 1] == 1).all()
    mixed = old + b'{"kind": "batch", "epoch": 1, "step": 4, "recon": 2.5, "kl": 0.5, "loss": 3, "time": 1.0, "lr": 0.001, "beta": 1}\n'
    table = parse(mixed).batches
    assert table.shape == (4, 8) and table[3, 6] == 0.001 and np.isnan(table[0, 6])


def test_a_set_command_carries_only_allowed_values():
    assert control.parse_set(control.set_command({"lr": 5e-4, "beta": 0.0})) == {"lr": 5e-4, "beta": 0.0}
    for text in ("set lr=0", "set lr=-1", "set beta=-0.5", "set lr=nan", "set beta=inf", "set momentum=0.9", "set", "set lr"):
        assert control.parse_set(text) is None, text


def set_(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vae_tui", "set", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_vae_tui_set_changes_a_training_run_and_refuses_what_it_cannot(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vae_tui", "train", *SMALL, "--epochs", "5000", "--iw-samples", "0", "--run-dir", str(run_dir), "--headless"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: (s := read_status(RunDir(run_dir))[0]) is not None and s.state == RunState.TRAINING, "training", proc=proc)
        bad = set_(str(run_dir), "--lr", "-1")
        assert bad.returncode == 2 and "positive" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
        done = set_(str(run_dir), "--lr", "0.0004", "--beta", "0")
        assert done.returncode == 0 and "lr 0.0004, beta 0 from step" in done.stdout, done.stderr
        status = read_status(RunDir(run_dir))[0]
        assert status.lr == 0.0004 and status.beta == 0 and status.changes[-1]["lr"] == 0.0004
        proc.terminate()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    ended = set_(str(run_dir), "--lr", "0.001")
    assert ended.returncode == 1 and "is not training (stopped)" in ended.stderr
    changes = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if '"change"' in line]
    assert len(changes) == 1 and "lr 0.0004, beta 0" in changes[0]["message"]


# -- the keys ---------------------------------------------------------------------------------------
async def test_brackets_halve_and_double_the_learning_rate_and_k_types_a_new_one(fake_run):
    from conftest import pilot_wait
    from helpers import text_of, watching
    from vae_tui.tui.screens import SteerScreen

    fake = fake_run()
    async with watching(fake) as (app, pilot):
        await pilot.press("right_square_bracket")
        await pilot_wait(pilot, lambda: fake.status.lr == 2e-3, "the trainer to double its learning rate", driving=fake)
        await pilot_wait(pilot, lambda: app.telemetry.status().lr == 2e-3, "the monitor to hear it")
        await pilot.press("left_square_bracket")
        await pilot_wait(pilot, lambda: fake.status.lr == 1e-3, "the trainer to halve it again", driving=fake)
        await pilot.press("k")
        assert isinstance(app.screen, SteerScreen)
        beta = app.screen.query_one("#steer-beta")
        beta.value = "-2"
        await pilot.press("enter")
        assert isinstance(app.screen, SteerScreen)  # refused in the dialog, nothing sent
        assert "beta must be a number of at least 0" in str(app.screen.query_one("#steer-problem").render())
        beta.value = "0.25"
        await pilot.press("enter")
        await pilot_wait(pilot, lambda: fake.status.beta == 0.25, "the trainer to take the typed beta", driving=fake)
        assert fake.status.lr == 1e-3 and [set(c) for c in fake.status.changes] == [{"step", "lr"}, {"step", "lr"}, {"step", "beta"}]
        await pilot_wait(pilot, lambda: "beta 0.25" in text_of(app, "#status"), "the status line to show the new beta")
        assert "lr 0.001" in text_of(app, "#status")


def test_a_change_is_marked_on_the_batch_charts():
    from textual_plotext import Plot

    from vae_tui.tui.charts import ChartSettings, build_batch_chart

    x, y = np.arange(1.0, 101.0), np.linspace(40, 20, 100)
    plain = build_batch_chart(Plot(), x, y, 60, 12, "reconstruction", "recon", ChartSettings())
    marked = build_batch_chart(Plot(), x, y, 60, 12, "reconstruction", "recon", ChartSettings(), marks=(50.0,))
    assert "215;175;0" in marked and "215;175;0" not in plain


def test_your_loop_takes_a_new_learning_rate_into_its_optimizer_and_keeps_beta_for_you(tmp_path):
    import vae_tui

    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with vae_tui.init(run_dir=tmp_path / "mine", model=model, optimizer=optimizer, config={"beta": 1.0}) as run:
        run.log(recon=1.0, kl=0.5, size=8)
        run.controls.change(lr=2e-3, beta=0.25)  # as `vae-tui set` or the monitor's keys do, through the control channel
        run.log(recon=1.0, kl=0.5, size=8)
        run.log(recon=1.0, kl=0.5, size=8)
        assert optimizer.param_groups[0]["lr"] == 2e-3 and run.beta == 0.25
    metrics = read_metrics(tmp_path / "mine" / "metrics.jsonl")
    assert metrics.column("lr").tolist() == [1e-3, 1e-3, 2e-3]
    assert metrics.column("beta").tolist() == [1.0, 1.0, 0.25]  # each record carries run.beta, never NaN
    assert read_status(RunDir(tmp_path / "mine"))[0].beta == 0.25
    assert any(e["kind"] == "change" for e in map(json.loads, (tmp_path / "mine" / "events.jsonl").read_text().splitlines()))


def test_each_command_from_the_control_folder_becomes_its_request():
    """The one reader of the control folder's commands (the trainer's publisher and the tests' fake trainer)."""
    from vae_tui.runfile.control import read_command
    from vae_tui.training.controls import Controls

    controls = Controls()
    for text in ("pause", "checkpoint", "set lr=0.002 beta=0.5", "set beta=0.25"):
        controls.follow(read_command(text))
    assert controls.paused and controls.take_checkpoint_request() and controls.take_changes() == {"lr": 0.002, "beta": 0.25}
    controls.follow(read_command("resume"))
    assert not controls.paused and not controls.stopping
    controls.follow(read_command("stop"))
    assert controls.stopping and controls.save_on_stop


def test_every_loop_obeys_in_one_order_and_holds_while_paused():
    """controls.obey, which vae-tui's trainer and your loop (vae_tui.init) both go through."""
    from vae_tui.training.controls import Controls, obey

    class Loop:
        def __init__(self):
            self.calls = []

        def take_values(self, values):
            if values:
                self.calls.append(("values", values))

        def save_on_request(self):
            self.calls.append("save")

        def pause_begins(self):
            self.calls.append("pause")

        def pause_ends(self):
            self.calls.append("resume")

    controls, loop = Controls(), Loop()
    controls.change(lr=0.01)
    controls.request_checkpoint()
    assert obey(controls, loop) is False and loop.calls == [("values", {"lr": 0.01}), "save"]

    waits = []

    def wait(seconds):  # the paused loop's wait, driven by hand: a change comes, then a checkpoint, then the resume
        waits.append(seconds)
        [lambda: controls.change(beta=0.5), controls.request_checkpoint, controls.resume][len(waits) - 1]()

    loop.calls.clear()
    controls.pause()
    controls.wait = wait
    assert obey(controls, loop) is False
    assert loop.calls == ["pause", ("values", {"beta": 0.5}), "save", "resume"] and len(waits) == 3

    loop.calls.clear()
    controls.pause()
    controls.wait = lambda seconds: controls.stop()  # a stop while paused ends the hold
    assert obey(controls, loop) is True and loop.calls == ["pause", "resume"]
