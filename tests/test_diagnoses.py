"""Live diagnoses: each measure against a hand computation on fixed numbers, when a finding is said and
unsaid, and runs on digits built to show each condition (and a healthy one that shows none)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from helpers import CPU, small_config
from vae_tui.evaluation import diagnoses
from vae_tui.evaluation.diagnoses import Diagnoser, PosteriorFigures, aggregate_kl, overfitting, spikes
from vae_tui.runfile.findings import Finding, findings_of
from vae_tui.runfile.schema import RunState, Status
from vae_tui.training.diagnosing import DiagnosisHook
from vae_tui.training.loop import Trainer


# -- the arithmetic ----------------------------------------------------------------------------------
def test_the_codes_taken_together_are_held_against_the_prior_by_hand():
    mu = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 3.0]])
    logvar = torch.log(torch.tensor([[0.5, 1.0], [0.5, 1.0], [0.5, 1.0]]))
    m = np.array([2.0, 1.0])
    centred = mu.numpy() - m
    s = centred.T @ centred / 2 + np.diag([0.5, 1.0])  # the means' covariance, plus their mean variance
    by_hand = 0.5 * (np.trace(s) + m @ m - 2 - np.log(np.linalg.det(s)))
    assert aggregate_kl(mu, logvar) == pytest.approx(by_hand, rel=1e-9)
    spread = torch.randn(4000, 3, generator=torch.Generator().manual_seed(0))
    assert aggregate_kl(spread * 0.6, torch.full((4000, 3), math.log(1 - 0.36))) < 0.01  # means and variances fill N(0, I)


def test_active_units_are_burda_et_als_covariance_rule():
    mu = torch.tensor([[0.0, 0.0, 1.0], [0.2, 0.05, -1.0], [0.4, 0.1, 0.5]])  # variances 0.04, 0.0025, 1.75
    assert diagnoses.active_units(mu) == 2


def test_a_spike_is_held_against_the_losses_just_before_it_and_a_falling_start_has_none():
    falling = np.linspace(500, 100, 300)
    assert not spikes(falling)[0].any()
    noisy = 100 + np.random.default_rng(0).normal(0, 3, 400)
    assert not spikes(noisy)[0].any()
    spiked = noisy.copy()
    spiked[[100, 250, 380]] = [260, 230, 900]
    found, median = spikes(spiked)
    assert np.flatnonzero(found).tolist() == [100, 250, 380] and median == pytest.approx(100, abs=1)
    negative = -50 + np.random.default_rng(1).normal(0, 1, 200)  # a Gaussian likelihood's loss
    negative[150] = 10.0  # 60 above a median of -50: more than its size
    assert np.flatnonzero(spikes(negative)[0]).tolist() == [150]
    assert len(spikes(np.arange(1000.0))[0]) == diagnoses.SPIKE_WINDOW  # the last window only


def test_overfitting_is_a_test_loss_above_its_best_for_some_epochs_while_train_fell():
    epochs = [(1, 30.0, 31.0), (2, 28.0, 29.0), (3, 27.0, 30.0), (4, 26.0, 30.5), (5, 25.0, 31.0)]
    best_epoch, rise, fall = overfitting(epochs)
    assert best_epoch == 2 and rise == pytest.approx(2 / 29) and fall == pytest.approx(3 / 28)
    assert overfitting(epochs[:4]) is None  # 2 epochs since the best: not yet
    flat_train = [(e, 28.0, t) for e, _, t in epochs]
    assert overfitting(flat_train) is None  # the training loss did not fall: not memorising
    assert overfitting([(1, 30.0, 31.0), (2, 28.0, 29.0), (3, 27.0, 29.2), (4, 26.0, 29.3), (5, 25.0, 29.4)]) is None  # within 2%


def test_collapse_needs_all_dimensions_empty_and_a_decoder_that_ignores_z():
    empty = PosteriorFigures(np.full(4, 0.001), 0, 0.0, 0.1)
    assert diagnoses.collapse(empty, "epoch 3", beta=20.0).fix == {"beta": 5.0}
    assert diagnoses.collapse(empty, "epoch 3", beta=0.2).fix == {}  # nothing lower to offer
    assert diagnoses.collapse(dataclasses.replace(empty, decoder_gain=3.0), "epoch 3", 20.0) is None
    one_used = dataclasses.replace(empty, kl_per_dim=np.array([0.001, 0.5, 0.001, 0.001]))
    assert diagnoses.collapse(one_used, "epoch 3", 20.0) is None  # a small latent in use is not collapse


def test_a_finding_is_said_once_when_it_starts_and_once_when_it_ends_and_collapse_waits_for_three_reports():
    d = Diagnoser()
    found = lambda since: Finding("collapse", "posterior collapse", f"posterior collapse: since {since}", since)  # noqa: E731
    assert d.update({"collapse": found(d.since("collapse", "epoch 1"))}, ("collapse",)) == ([], [])
    assert d.update({"collapse": found(d.since("collapse", "epoch 2"))}, ("collapse",)) == ([], [])
    started, _ = d.update({"collapse": found(d.since("collapse", "epoch 3"))}, ("collapse",))
    assert [f.since for f in started] == ["epoch 1"]  # since the streak began
    assert d.update({"collapse": found(d.since("collapse", "epoch 4"))}, ("collapse",)) == ([], [])  # not said again
    _, ended = d.update({"collapse": None}, ("collapse",))
    assert [f.key for f in ended] == ["collapse"] and d.active == {}
    spikes_found = Finding("spikes", "lr too high?", "lr too high? ...", "step 40", {"lr": 3e-4})
    assert d.update({"spikes": spikes_found}, ("spikes",))[0] == [spikes_found]  # said at once
    assert d.update({}, ("collapse",)) == ([], [])  # a look that did not judge spikes leaves them as they are
    assert list(d.active) == ["spikes"]


def test_findings_read_back_from_status_json_and_a_damaged_one_is_left_out():
    good = Finding("spikes", "lr too high?", "lr too high? 4 spikes", "step 90", {"lr": 3e-4})
    status, _ = Status.from_dict({**Status(diagnoses=[good.to_dict(), {"key": 3}, "junk"]).to_dict()})
    assert findings_of(status) == [good]


# -- runs built to show each condition -------------------------------------------------------------
def diagnosed(data, **changes):
    hook = DiagnosisHook(paced=False)  # a look at every epoch's end: the pace is the only thing changed
    trainer = Trainer(small_config(hidden_dim=400, latent_dim=20, **changes), data, CPU, hooks=[hook])
    assert trainer.run().state == RunState.FINISHED
    said = [e.message for e in trainer.telemetry.events() if e.kind == "diagnosis"]
    return trainer, said


def test_a_healthy_default_run_says_nothing(digits):
    trainer, said = diagnosed(digits, epochs=40, batch_size=128)
    assert said == [] and trainer.telemetry.status().diagnoses == []


def test_beta_20_says_posterior_collapse_once_and_offers_a_lower_beta(digits):
    trainer, said = diagnosed(digits, epochs=8, batch_size=128, beta=20.0)
    assert len(said) == 1 and said[0].startswith("posterior collapse: all 20 dimensions carry nothing"), said
    (finding,) = findings_of(trainer.telemetry.status())
    assert finding.key == "collapse" and finding.fix == {"beta": 5.0} and finding.since == "epoch 1"


def test_a_tiny_training_split_says_overfitting(digits):
    tiny = dataclasses.replace(digits, train_x=digits.train_x[:10], train_y=digits.train_y[:10])  # a step an epoch
    trainer, said = diagnosed(tiny, epochs=1000, batch_size=10, beta=0.1)  # said at epoch 487 to 519 in three tries
    assert any(s.startswith("overfitting since epoch") for s in said), said
    assert "overfitting" in [f.key for f in findings_of(trainer.telemetry.status())]


def test_a_learning_rate_far_too_high_says_spikes_and_offers_a_third_of_it(digits):
    _, said = diagnosed(digits, epochs=8, batch_size=64, lr=0.1, seed=1)
    spiked = [s for s in said if s.startswith("lr too high?")]
    assert len(spiked) == 1 and "a third of 0.1 (k offers 0.0333)" in spiked[0], said


# -- in the monitor ----------------------------------------------------------------------------------
async def test_the_monitor_says_a_finding_under_the_charts_explains_it_and_fills_in_its_fix(fake_run):
    from conftest import pilot_wait
    from helpers import text_of, watching
    from vae_tui.tui.screens import ExplainScreen, SteerScreen

    fake = fake_run()
    finding = diagnoses.lr_spikes(4, 120.0, 1e-3, "step 40")
    async with watching(fake) as (app, pilot):
        await pilot_wait(pilot, lambda: app.telemetry.status().step > 0, "the first steps", driving=fake)
        assert not app.query_one("#diagnosis").display  # nothing to say: no line
        fake.status.diagnoses = [finding.to_dict()]
        fake.event("diagnosis", "posterior collapse: all 4 dimensions carry nothing (0 of 4 active by Cov_x(E[z|x]) > 0.01)")
        fake.publish()
        await pilot_wait(pilot, lambda: "lr too high? since step 40" in text_of(app, "#diagnosis"), "the diagnosis line", driving=fake)
        assert "k: set lr 0.000333" in text_of(app, "#diagnosis")
        shown = lambda: app.export_screenshot().replace("&#160;", " ")  # noqa: E731
        await pilot_wait(pilot, lambda: "Cov_x(E[z|x])" in shown(), "the diagnosis toast, brackets as written", driving=fake)
        await pilot.press("e")
        assert isinstance(app.screen, ExplainScreen) and app.screen.findings == [finding]
        await pilot.press("escape")
        await pilot_wait(pilot, lambda: not isinstance(app.screen, ExplainScreen), "the explain screen to close")
        await pilot.press("k")
        await pilot_wait(pilot, lambda: isinstance(app.screen, SteerScreen), "the lr/beta dialog")
        assert app.screen.query_one("#steer-lr").value == "0.000333" and app.screen.query_one("#steer-beta").value == "1"
        await pilot.press("escape")  # nothing changes without enter
        await pilot_wait(pilot, lambda: not isinstance(app.screen, SteerScreen), "the dialog to close")
        assert fake.status.lr == 1e-3 and fake.status.changes == []
        await pilot.press("k")
        await pilot_wait(pilot, lambda: isinstance(app.screen, SteerScreen), "the lr/beta dialog again")
        await pilot.press("enter")
        await pilot_wait(pilot, lambda: fake.status.lr == 0.000333, "the trainer to take the offered lr", driving=fake)
        fake.status.diagnoses = []
        fake.publish()
        await pilot_wait(pilot, lambda: not app.query_one("#diagnosis").display, "the line to go once the finding ends", driving=fake)


def test_the_plain_view_and_runs_say_findings(tmp_path):
    from rich.console import Console

    from vae_tui.runfile.schema import Event
    from vae_tui.views.plain import event_line
    from vae_tui.views.runs import runs_table
    from vae_tui.watching.catalog import RunSummary

    assert event_line(Event("diagnosis", "posterior collapse: ...")).endswith("posterior collapse: ...")
    console = Console(width=200, record=True, file=open("/dev/null", "w"))
    console.print(event_line(Event("diagnosis", "0 of 20 active by Cov_x(E[z|x]) > 0.01")))
    assert "Cov_x(E[z|x]) > 0.01" in console.export_text()  # printed as written, not read as markup
    plain = RunSummary(tmp_path / "a", "digits", "finished", 3, 3, 24.0, 0.0)
    told = dataclasses.replace(plain, path=tmp_path / "b", diagnoses="posterior collapse")

    def shown(summaries: list[RunSummary]) -> str:
        console = Console(width=200, record=True, file=open("/dev/null", "w"))
        console.print(runs_table(summaries))
        return console.export_text()

    assert "diagnosis" not in shown([plain])  # the column only when a run has something to say
    table = shown([plain, told])
    assert "diagnosis" in table and "posterior collapse" in table


# -- your loop and your script ---------------------------------------------------------------------
def test_your_loop_is_diagnosed_from_its_losses_epochs_and_the_posterior_it_logs(tmp_path):
    import vae_tui

    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    with vae_tui.init(run_dir=tmp_path / "loop", model=model, optimizer=optimizer, config={"beta": 2.0}) as run:
        run.diagnosis.paced = False  # a look at every flush: the pace is the only thing changed
        run._losses.flush_seconds = 0.0
        rng = np.random.default_rng(0)
        for step in range(120):
            loss = 100 + rng.normal() + (400 if step in (60, 80, 100) else 0)
            run.log(recon=loss, kl=0.0, mu=torch.zeros(8, 5), logvar=torch.zeros(8, 5), size=8)  # every posterior is the prior
        run.log_epoch(test_loss=120.0)
        for train, test in [(30, 31), (28, 29), (27, 30), (26, 30.5), (25, 31)]:
            for _ in range(4):
                run.log(recon=float(train), kl=0.0, size=8)
            run.log_epoch(test_loss=test)
        said = [e.message for e in run.telemetry.events() if e.kind == "diagnosis"]
    assert any(s.startswith("posterior collapse: all 5 dimensions carry nothing") and "a lower beta (now 2; k offers 0.5)" in s for s in said), said
    assert any(s.startswith("lr too high? 3 loss spikes") and "k offers 0.00333" in s for s in said), said
    assert any(s.startswith("overfitting since epoch 4") and "test loss up 7% from its best" in s for s in said), said


def test_your_loop_without_a_posterior_says_once_that_collapse_is_not_known(tmp_path):
    import vae_tui

    with vae_tui.init(run_dir=tmp_path / "loop", config={}) as run:
        run._losses.flush_seconds = 0.0
        for _ in range(5):
            run.log(recon=10.0, kl=1.0, size=4)
        said = [e.message for e in run.telemetry.events() if e.kind == "info" and "not diagnosed" in e.message]
    unknown = "posterior collapse and holes are not diagnosed: the run does not give its posterior's mu and logvar"
    assert said == [unknown + " (run.log(mu=..., logvar=...) gives them)"]


def test_a_finding_that_ends_says_so_once_with_the_step_it_ended_at():
    from vae_tui.evaluation.live_diagnosis import LiveDiagnosis
    from vae_tui.telemetry import Telemetry

    telemetry = Telemetry()
    live = LiveDiagnosis(telemetry, paced=False)
    losses = 100 + np.random.default_rng(2).normal(0, 1, 600)
    losses[[10, 20, 30]] = 500.0
    for start in range(0, 600, 50):  # a flush every 50 steps
        live.take_losses(np.arange(start + 1, start + 51), losses[start : start + 50], lr=3e-3)
    said = [e.message for e in telemetry.events() if e.kind == "diagnosis"]
    assert said[0].startswith("lr too high? 3 loss spikes")
    assert said[1:] == ["lr too high?: over at step 550 (since step 11)"]  # step 11 left the last 500 steps at step 511; said at the next look
    assert telemetry.status().diagnoses == []
