"""Named terms beyond recon and kl: paced as the loss records are, read back as series, charted."""

import numpy as np
import pytest

from vae_tui.integrations.your_loop import over_records
from vae_tui.runfile.files import scalar_records, term_columns
from vae_tui.telemetry import Telemetry


def test_terms_are_one_record_a_step_while_the_losses_are_and_interval_means_when_they_are_not():
    steps = [{"step": s, "lpips": float(s)} | ({"discriminator": 10.0 * s} if s % 2 else {}) for s in range(1, 9)]
    assert over_records(steps, np.arange(1, 9), 1) == steps
    paced = over_records(steps, np.array([4, 8]), 1)
    assert paced == [
        {"step": 4, "first": 1, "lpips": 2.5, "discriminator": 20.0},  # each mean over the steps that gave it
        {"step": 8, "first": 5, "lpips": 6.5, "discriminator": 60.0},
    ]


def test_scalars_read_back_as_columns_with_not_known_where_a_record_has_none():
    data = b'{"step": 1, "lpips": 0.5}\n{"step": 2, "lpips": null, "d_loss": 1.5, "note": "warm"}\ngarbage\n{"step": 3, "d_loss": 1.0}\n'
    steps, columns = term_columns(scalar_records(data))
    assert steps.tolist() == [1, 2, 3] and list(columns) == ["lpips", "d_loss"]  # text is not charted
    assert np.array_equal(columns["lpips"], [0.5, np.nan, np.nan], equal_nan=True)
    assert np.array_equal(columns["d_loss"], [np.nan, 1.5, 1.0], equal_nan=True)


def test_a_term_that_starts_late_keeps_its_points_when_the_chart_buckets_them():
    telemetry = Telemetry()
    telemetry.add_terms(np.arange(1, 101), {"lpips": np.linspace(1, 0, 100)})
    telemetry.add_terms(np.arange(101, 201), {"lpips": np.linspace(0, 1, 100), "discriminator": np.full(100, 2.0)})
    assert telemetry.term_names() == ["lpips", "discriminator"]
    d = telemetry.decimated("discriminator", 10)
    assert d.bucket == 32 and np.isnan(d.mean[:3]).all()  # buckets wholly before its first step
    assert (d.mean[3:] == 2.0).all()  # steps 97-128, partly before its start: its own mean, not NaN
    assert telemetry.steps_at(d.x, "discriminator")[-1] > 190
    assert len(telemetry.decimated("no such term", 10)) == 0


def test_the_total_correlation_is_the_stratified_estimate_by_hand_and_zero_for_posteriors_all_alike():
    import math

    import torch

    from vae_tui.models.vae import total_correlation

    torch.manual_seed(0)
    b, d, n = 6, 3, 50
    mu, logvar = torch.randn(b, d), torch.randn(b, d) * 0.3
    z = mu + torch.randn(b, d) * (0.5 * logvar).exp()

    def log_normal(i, j, dim):
        return -0.5 * ((z[i, dim] - mu[j, dim]).item() ** 2 / math.exp(logvar[j, dim].item()) + logvar[j, dim].item() + math.log(2 * math.pi))

    def weight(i, j):  # its own image 1/n; the next (n - m) / (n m); the others 1/m
        m = b - 1
        return 1 / n if i == j else (n - m) / (n * m) if j == (i + 1) % b else 1 / m

    by_hand = 0.0
    for i in range(b):
        joint = math.log(sum(weight(i, j) * math.exp(sum(log_normal(i, j, k) for k in range(d))) for j in range(b)))
        product = sum(math.log(sum(weight(i, j) * math.exp(log_normal(i, j, k)) for j in range(b))) for k in range(d))
        by_hand += (joint - product) / b
    assert total_correlation(z, mu, logvar, n).item() == pytest.approx(by_hand, rel=1e-5)
    alike = torch.zeros(b, d)
    assert abs(total_correlation(torch.randn(b, d), alike, alike, n).item()) < 1e-6


@pytest.mark.parametrize("step", ["eager", "emulate"])
def test_tc_beta_records_the_total_correlation_as_a_term_and_weighs_it_in_the_loss(tmp_path, small_digits, step):
    from helpers import make_trainer
    from vae_tui.runfile.files import read_scalars
    from vae_tui.runfile.metrics import read_metrics
    from vae_tui.runfile.schema import RunState

    trainer, run = make_trainer(tmp_path, small_digits, epochs=2, tc_beta=6.0, beta=2.0, step=step)
    assert trainer.run().state == RunState.FINISHED
    metrics, scalars = read_metrics(run.metrics_path), read_scalars(run)
    assert [r["step"] for r in scalars] == metrics.column("step").astype(int).tolist()  # one record each, the same steps
    tc = np.array([r["tc"] for r in scalars])
    expected = metrics.column("recon") + 2.0 * metrics.column("kl") + (6.0 - 2.0) * tc  # the TC weighs 6 in all
    assert np.allclose(metrics.column("loss"), expected, rtol=1e-5, atol=1e-4)


def test_a_resumed_tc_run_records_each_step_of_its_terms_once(tmp_path, small_digits):
    from helpers import StopAtStep, make_trainer
    from vae_tui.runfile.files import read_scalars, write_scalars
    from vae_tui.training.checkpoint import load_checkpoint

    first, run = make_trainer(tmp_path, small_digits, epochs=3, tc_beta=4.0, extra_hooks=[StopAtStep(10)])
    first.losses.flush_seconds = 0.0
    first.run()
    state = load_checkpoint(run.last_checkpoint)
    write_scalars(run, [{"step": state["step"] + k, "tc": 0.5} for k in (1, 2)])  # written before a kill, after the last save
    second, _ = make_trainer(tmp_path, small_digits, epochs=3, tc_beta=4.0, resume_state=state)
    second.run()
    steps = [r["step"] for r in read_scalars(run)]
    assert steps == sorted(set(steps)) and steps[-1] == second.state.step  # none repeated after the resume


def test_a_discriminator_stepping_after_the_model_lands_in_the_models_step_even_when_it_was_flushed(tmp_path):
    import torch

    from vae_tui.integrations.your_loop import Run
    from vae_tui.runfile.files import read_scalars

    run = Run(tmp_path / "run", None, None, {}, None, view="your script")
    run._losses.flush_seconds = 0.0  # every step reaches the files at once, as on a slow or loaded machine
    one = torch.tensor(1.0)
    for step in range(1, 6):
        run.add_step(8, one, one, one, {"lpips": torch.tensor(0.1 * step)})  # the model's step: flushed at once
        if step >= 3:  # a discriminator that starts late: its first loss too lands in the model's step
            run.add_to_step(run.step, {"discriminator": torch.tensor(float(step))})
    run.end(None)
    records = read_scalars(run.run)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert [r.get("discriminator") for r in records] == [None, None, 3.0, 4.0, 5.0] and records[2]["lpips"] == pytest.approx(0.3)
