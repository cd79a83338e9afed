"""Named terms beyond recon and kl: paced as the loss records are, read back as series, charted."""

import numpy as np

from vae_tui.integrations.your_loop import over_records
from vae_tui.runfile.files import scalar_records, term_columns
from vae_tui.telemetry import Telemetry


def test_terms_are_one_record_a_step_while_the_losses_are_and_interval_means_when_they_are_not():
    steps = [{"step": s, "lpips": float(s)} | ({"discriminator": 10.0 * s} if s % 2 else {}) for s in range(1, 9)]
    assert over_records(steps, np.arange(1, 9)) == steps
    paced = over_records(steps, np.array([4, 8]))
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
