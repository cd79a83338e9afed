"""Pilot tests of the monitor with a real small trainer on digits."""

import time

import numpy as np
import pytest

from vae_tui import art
from vae_tui.checkpoint import load_checkpoint
from vae_tui.config import TrainConfig
from vae_tui.device import pick_device
from vae_tui.metrics import MetricsWriter
from vae_tui.rundir import open_run_dir
from vae_tui.telemetry import Telemetry
from vae_tui.trainer import Controls, Trainer
from vae_tui.tui.app import VaeApp
from vae_tui.tui.screens import ConfirmQuit, ExplainScreen, HelpScreen
from vae_tui.tui.widgets import changed_span


def make_app(tmp_path, data, epochs=400, **changes):
    run = open_run_dir(tmp_path / "run")
    config = TrainConfig(dataset="digits", epochs=epochs, hidden_dim=64, latent_dim=4, snapshot_seconds=0.2,
                         run_dir=str(run.path), **changes).validate()
    trainer = Trainer(config, data, pick_device("cpu"), Telemetry(MetricsWriter(run.metrics_path)), Controls(), run)
    return VaeApp(trainer), run


async def wait_until(pilot, condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await pilot.pause(0.05)
    return False



async def test_charts_and_pictures_receive_data(tmp_path, digits):
    app, _ = make_app(tmp_path, digits)
    async with app.run_test(size=(120, 40)) as pilot:
        assert await wait_until(pilot, lambda: len(app.telemetry.epochs()) >= 2)
        await pilot.pause(1.2)
        recon = app.query_one("#recon-chart")
        assert recon.drawn_key and recon.drawn_key > 0  # drew a batch count, not the empty state
        text = "\n".join(strip.text for strip in recon._strips)
        assert "reconstruction" in text and any(ch in text for ch in "⠁⠂⠄⡀⠈⠐⠠⢀")  # braille curve
        assert "KL" in "\n".join(s.text for s in app.query_one("#kl-chart")._strips)
        assert "train" in "\n".join(s.text for s in app.query_one("#epoch-chart")._strips)
        pictures = "\n".join(s.text for s in app.query_one("#recon-images")._strips)
        assert "▀" in pictures
        status = "\n".join(s.text for s in app.query_one("#status")._strips)
        assert "Training" in status and "digits" in status and "64-64-4" in status and "samples/s" in status
        app.controls.stop(save=False)


async def test_space_pauses_and_resumes(tmp_path, digits):
    app, _ = make_app(tmp_path, digits)
    async with app.run_test(size=(120, 40)) as pilot:
        assert await wait_until(pilot, lambda: app.telemetry.status().step > 10)
        await pilot.press("space")
        assert await wait_until(pilot, lambda: app.telemetry.status().state == "paused")
        paused_at = app.telemetry.status().step
        await pilot.pause(0.6)
        assert app.telemetry.status().step == paused_at
        assert not app.check_action("pause", ()) and app.check_action("resume", ())  # the footer says Resume
        await pilot.press("space")
        assert await wait_until(pilot, lambda: app.telemetry.status().step > paused_at + 10)
        app.controls.stop(save=False)


async def test_c_writes_a_loadable_checkpoint_and_says_where(tmp_path, digits):
    app, run = make_app(tmp_path, digits)
    async with app.run_test(size=(120, 40)) as pilot:
        assert await wait_until(pilot, lambda: app.telemetry.status().step > 5)
        await pilot.press("c")
        assert await wait_until(pilot, lambda: any(e.kind == "checkpoint" for e in app.telemetry.events()))
        await pilot.pause(0.6)
        assert any(str(run.last_checkpoint) in n.message for n in app._notifications)
        assert load_checkpoint(run.last_checkpoint)["step"] > 5
        app.controls.stop(save=False)


async def test_q_asks_then_saves_stops_and_exits(tmp_path, digits):
    app, run = make_app(tmp_path, digits)
    async with app.run_test(size=(120, 40)) as pilot:
        assert await wait_until(pilot, lambda: app.telemetry.status().step > 5)
        await pilot.press("q")
        await pilot.pause(0.2)
        assert isinstance(app.screen, ConfirmQuit)
        await pilot.press("n")
        await pilot.pause(0.2)
        assert not isinstance(app.screen, ConfirmQuit) and app.thread.is_alive()
        await pilot.press("q")
        await pilot.pause(0.2)
        started = time.monotonic()
        await pilot.press("y")
        assert await wait_until(pilot, lambda: not app.is_running, timeout=10)
        assert time.monotonic() - started < 5
    assert not app.thread.is_alive()
    state = load_checkpoint(run.last_checkpoint)
    assert state["step"] == app.trainer.result.step and app.trainer.result.state == "stopped"


async def test_finished_run_stays_open_until_q(tmp_path, small_digits):
    app, _ = make_app(tmp_path, small_digits, epochs=2)
    async with app.run_test(size=(100, 30)) as pilot:
        assert await wait_until(pilot, lambda: app.telemetry.status().state == "finished")
        await pilot.pause(1.0)
        assert app.is_running and not app.check_action("pause", ())
        await pilot.press("q")  # no question once training is over
        assert await wait_until(pilot, lambda: not app.is_running, timeout=5)


async def test_resize_to_80x24_keeps_every_pane(tmp_path, digits):
    app, _ = make_app(tmp_path, digits)
    async with app.run_test(size=(120, 40)) as pilot:
        assert await wait_until(pilot, lambda: len(app.telemetry.epochs()) >= 1)
        await pilot.resize_terminal(80, 24)
        await pilot.pause(1.5)
        for selector in ("#recon-chart", "#kl-chart", "#epoch-chart", "#recon-images", "#sample-images"):
            widget = app.query_one(selector)
            assert widget.size.width >= 20 and widget.size.height >= 4, selector
            assert widget._strips and widget._strips[0].cell_length == widget.size.width, selector
        assert "▀" in "\n".join(s.text for s in app.query_one("#sample-images")._strips)
        app.controls.stop(save=False)


async def test_toggles_help_and_explain(tmp_path, digits):
    app, _ = make_app(tmp_path, digits)
    async with app.run_test(size=(120, 40)) as pilot:
        assert await wait_until(pilot, lambda: app.telemetry.status().step > 5)
        for key, name in (("l", "log"), ("s", "smooth"), ("w", "window")):
            before = getattr(app.settings, name)
            await pilot.press(key)
            assert getattr(app.settings, name) is not before
        await pilot.press("a")
        assert app.art_mode == "ramp"
        await pilot.pause(0.3)
        assert "▀" not in "\n".join(s.text for s in app.query_one("#recon-images")._strips)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await pilot.press("e")
        assert isinstance(app.screen, ExplainScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, (HelpScreen, ExplainScreen))
        app.controls.stop(save=False)


async def test_a_trainer_error_is_shown_not_raised(tmp_path, small_digits):
    app, run = make_app(tmp_path, small_digits, epochs=3)

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    app.trainer._end_epoch = broken  # fails at the first epoch's end
    async with app.run_test(size=(120, 40)) as pilot:
        assert await wait_until(pilot, lambda: app.telemetry.status().state == "error")
        await pilot.pause(0.8)
        status = "\n".join(s.text for s in app.query_one("#status")._strips)
        assert "Error" in status and "illegal memory access" in status
        assert app.is_running
        await pilot.press("q")
        assert await wait_until(pilot, lambda: not app.is_running, timeout=5)


def test_changed_span_finds_only_the_cells_that_differ():
    from rich.segment import Segment
    from textual.strip import Strip

    old = Strip([Segment("abcdef")])
    assert changed_span(old, Strip([Segment("abcdef")])) is None
    assert changed_span(old, Strip([Segment("abXdef")])) == (2, 3)
    assert changed_span(old, Strip([Segment("abc"), Segment("deg")])) == (5, 6)


def test_art_scales_small_images_up_and_large_ones_down():
    digits_layout = art.fit((8, 8), "blocks", 56, 20, groups=16, per_group=2)
    assert digits_layout.factor > 1 and digits_layout.cell_h >= art.LEGIBLE_ROWS
    mnist_layout = art.fit((28, 28), "blocks", 56, 20, groups=16, per_group=2)
    assert mnist_layout.factor < 1 and mnist_layout.capacity >= 1
    image = np.linspace(0, 1, 64).reshape(8, 8)
    assert art.rescale(image, 2).shape == (16, 16) and art.rescale(np.ones((28, 28)), 0.5).shape == (14, 14)
    ramp = art.image_lines(image, "ramp")
    assert len(ramp) == 8 and len(ramp[0][0].text) == 16 and ramp[0][0].text.startswith("  ")
    blocks = art.image_lines(image, "blocks")
    assert len(blocks) == 4 and sum(len(s.text) for s in blocks[0]) == 8


def test_epoch_chart_of_a_resumed_run_with_one_epoch_shown():
    """A resumed run's first epoch record is epoch 78, not 1: plotext must get a range around it."""
    from textual_plotext.plot import Plot

    from vae_tui.tui.charts import build_epoch_chart

    records = [{"epoch": 78, "train_loss": 24.0, "test_loss": 25.0}]
    for height in (6, 8, 12):
        assert "78" in build_epoch_chart(Plot(), records, 58, height, log=False)
