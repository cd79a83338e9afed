"""Pilot tests of the monitor, driven by a fake run (tests/conftest.py's FakeRun): the app reads a run
directory and nothing else, so these need no torch. The real trainer behind the real app is
tested end to end in test_end_to_end.py."""

import contextlib
import os
import random
import re
import signal

import numpy as np
import pytest

from conftest import dead_pid, drain, exit_status, pilot_wait, spawn_in_pty, wait_for
from helpers import drawn, guest, lines_of, text_of, toasts, watching
from vae_tui.runfile import control
from vae_tui.runfile.schema import RunState
from vae_tui.tui import charts
from vae_tui.tui.screens import ConfirmQuit, ConfirmStop, ExplainScreen, HelpScreen
from vae_tui.tui.widgets import changed_span
from vae_tui.views import art

PANES = ("#recon-chart", "#kl-chart", "#epoch-chart", "#recon-images", "#sample-images")


def state_of(app):
    return app.telemetry.status().state


async def test_charts_pictures_and_status_show_the_run(fake_run):
    fake = fake_run()
    async with watching(fake, steps=None) as (app, pilot):
        await pilot_wait(pilot, lambda: app.telemetry.epoch_count >= 2, "two epochs", driving=fake)
        await drawn(
            pilot, app, lambda: app.query_one("#recon-chart").drawn_key[1] > 0 and "▀" in text_of(app, "#sample-images"), "the charts and pictures drawn"
        )
        assert app.query_one("#recon-chart").drawn_key[1] > 0  # drew a batch count, not the empty state
        recon = text_of(app, "#recon-chart")
        assert "reconstruction" in recon and any(ch in recon for ch in "⠁⠂⠄⡀⠈⠐⠠⢀")  # a braille curve
        assert "KL" in text_of(app, "#kl-chart") and "train" in text_of(app, "#epoch-chart")
        assert "▀" in text_of(app, "#recon-images") and "▀" in text_of(app, "#sample-images")
        status = text_of(app, "#status")
        assert "Training" in status and "digits" in status and "64-32-4" in status and "samples/s" in status
        assert "images streamed from disk" in status


async def test_space_pauses_and_resumes_the_trainer(fake_run):
    fake = fake_run()
    async with watching(fake, steps=12) as (app, pilot):
        await pilot.press("space")
        await pilot_wait(pilot, lambda: state_of(app) == RunState.PAUSED, "the trainer to say it paused", driving=fake)
        paused_at = fake.status.step
        assert fake.advance(12).status.step == paused_at  # answering, and not training
        assert not app.check_action("pause", ()) and app.check_action("resume", ())  # the footer says Resume
        await pilot.press("space")
        await pilot_wait(pilot, lambda: app.telemetry.status().step > paused_at, "training to go on after space", driving=fake)
        assert state_of(app) == RunState.TRAINING


async def test_c_asks_for_a_checkpoint_and_says_where(fake_run):
    fake = fake_run()
    async with watching(fake) as (app, pilot):
        await pilot.press("c")
        await pilot_wait(pilot, lambda: any(str(fake.run.last_checkpoint) in t for t in toasts(app)), "a notification naming the checkpoint", driving=fake)


async def test_q_asks_then_stops_the_trainer_and_exits(fake_run):
    fake = fake_run()
    async with watching(fake) as (app, pilot):
        await pilot.press("q")
        assert isinstance(app.screen, ConfirmQuit)
        await pilot.press("n")
        assert not isinstance(app.screen, ConfirmQuit) and fake.process.poll() is None
        await pilot.press("q")
        await pilot.press("y")
        await pilot_wait(pilot, lambda: not app.is_running, "the monitor to exit after the trainer stopped", driving=fake)
    assert fake.status.state == RunState.STOPPED and fake.process.poll() == 0
    assert not fake.run.control_dir.exists()


async def test_quitting_while_the_trainer_starts_stops_it_once_it_can_take_the_request(fake_run):
    """q and y before the trainer has opened its control folder (it is importing torch): it gets the stop
    as soon as it can take it, and ends cleanly. A signal then would kill it before it could say a word."""
    fake = fake_run()
    control.close_channel(fake.run)
    fake.run.status_path.unlink()  # nothing heard from it yet
    async with watching(fake, steps=None) as (app, pilot):
        await pilot.press("q")
        assert isinstance(app.screen, ConfirmQuit)
        await pilot.press("y")
        await pilot_wait(pilot, lambda: "Saving a checkpoint and stopping" in " ".join(toasts(app)), "the stop to be taken in hand")
        assert fake.process.poll() is None  # not signalled
        control.open_channel(fake.run)  # the trainer is ready
        await pilot_wait(pilot, lambda: not app.is_running, "the monitor to exit after the trainer stopped", driving=fake)
    assert fake.status.state == RunState.STOPPED and fake.process.poll() == 0


async def test_a_finished_run_stays_open_until_q(fake_run):
    fake = fake_run(epochs=2)
    async with watching(fake, size=(100, 30), steps=None) as (app, pilot):
        await pilot_wait(pilot, lambda: state_of(app) == RunState.FINISHED, "the run to finish", driving=fake)
        await pilot_wait(pilot, lambda: "Finished" in text_of(app, "#status"), "the status line to say Finished", 5)
        assert app.is_running and not app.check_action("pause", ())
        assert not app.check_action("checkpoint", ()) and not app.check_action("stop_run", ())  # no key that cannot act
        await pilot.press("q")  # no question once training is over
        await pilot_wait(pilot, lambda: not app.is_running, "the monitor to exit on q", 5)


async def test_resize_to_80x24_keeps_every_pane(fake_run):
    fake = fake_run()
    async with watching(fake, steps=None) as (app, pilot):
        await pilot_wait(pilot, lambda: app.telemetry.epoch_count >= 1, "an epoch", driving=fake)
        for width, height in ((80, 24), (100, 30), (80, 24)):  # every resize is laid out, not just the first
            await pilot.resize_terminal(width, height)
            await pilot_wait(pilot, lambda: tuple(app.screen.size) == (width, height), f"the screen laid out at {width}x{height}", 5)
            await drawn(pilot, app, lambda: all(text_of(app, s).strip() for s in PANES), f"every pane drawn at {width}x{height}")
            for selector in PANES:
                widget = app.query_one(selector)
                assert widget.size.width >= 20 and widget.size.height >= 4, selector
                assert widget.region.right <= width and widget.region.bottom <= height, (selector, widget.region)
                assert lines_of(widget)[0].cell_length == widget.size.width, selector
        assert "▀" in text_of(app, "#sample-images")


async def test_toggles_help_and_explain(fake_run):
    fake = fake_run()
    async with watching(fake, steps=None) as (app, pilot):
        await pilot_wait(pilot, lambda: app.telemetry.snapshot() is not None, "the first snapshot", driving=fake)
        for key, name in (("l", "log"), ("s", "smooth"), ("w", "window")):
            before = getattr(app.settings, name)
            await pilot.press(key)
            assert getattr(app.settings, name) is not before
        await pilot.press("a")
        assert app.art_mode == "ramp"
        await pilot_wait(
            pilot, lambda: "▀" not in text_of(app, "#recon-images") and text_of(app, "#recon-images").strip(), "the pictures redrawn as a character ramp", 5
        )
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await pilot.press("e")
        assert isinstance(app.screen, ExplainScreen)
        await pilot_wait(pilot, lambda: "This run:" in screen_text(app), "the explain screen's words about this run")
        shown = screen_text(app)
        assert "64-32-4" in shown and "--likelihood" in shown  # about this run, and the choices
        await pilot.press("escape")
        assert not isinstance(app.screen, (HelpScreen, ExplainScreen))


async def test_a_watcher_steers_the_run_and_leaving_does_not_stop_it(fake_run):
    fake = fake_run()
    async with watching(fake, owner=False) as (app, pilot):
        await pilot.press("space")
        await pilot_wait(pilot, lambda: fake.status.state == RunState.PAUSED, "the guest's pause to reach the trainer", driving=fake)
        await pilot_wait(pilot, lambda: state_of(app) == RunState.PAUSED, "the guest to see the pause")
        await pilot.press("space")
        await pilot_wait(pilot, lambda: fake.status.state == RunState.TRAINING, "the guest's resume to reach the trainer", driving=fake)
        await pilot.press("q")  # a guest closes at once, no question
        await pilot_wait(pilot, lambda: not app.is_running, "the watcher to close")
    left_at = fake.status.step
    assert fake.advance(20).status.step == left_at + 20, "the run goes on training after its watcher left"
    assert fake.process.poll() is None


async def test_a_watcher_stops_a_run_after_asking(fake_run):
    fake = fake_run()
    async with watching(fake, owner=False) as (app, pilot):
        await pilot.press("x")
        assert isinstance(app.screen, ConfirmStop)
        await pilot.press("y")
        await pilot_wait(pilot, lambda: "Stopped" in text_of(app, "#status"), "the status line to say Stopped", driving=fake)
        assert app.is_running  # the watcher stays, showing how the run ended
    assert fake.status.state == RunState.STOPPED


async def test_a_killed_trainer_is_shown_as_crashed(fake_run):
    fake = fake_run()
    async with watching(fake, owner=False) as (app, pilot):
        await pilot_wait(pilot, lambda: "Training" in text_of(app, "#status"), "the status line to say Training (a live run seen)")
        fake.kill(dead_pid())
        await pilot_wait(pilot, lambda: "Crashed" in text_of(app, "#status"), "the status line to say Crashed", 5)
        await pilot_wait(pilot, lambda: any("--resume" in t for t in toasts(app)), "a notification saying what to do about it")
        assert not app.check_action("pause", ())  # no Pause for a dead trainer
        assert "not running" in app.source.send("pause")  # and a command says so instead of hanging


async def test_a_trainer_error_is_shown_not_raised(fake_run):
    fake = fake_run()
    fake.end(RunState.ERROR, "training failed: RuntimeError: CUDA error: an illegal memory access was encountered")
    async with watching(fake, owner=False, steps=None) as (app, pilot):
        await pilot_wait(pilot, lambda: "illegal memory access" in text_of(app, "#status"), "the error in the status line", 5)
        assert "Error" in text_of(app, "#status")
        await pilot.press("q")
        await pilot_wait(pilot, lambda: not app.is_running, "the watcher to close", 5)


async def test_a_nan_pause_says_what_to_try(fake_run):
    fake = fake_run()
    fake.status.state = RunState.PAUSED
    fake.status.message = (
        "loss became NaN or infinite at step 7 (epoch 1). Try a lower learning rate (now 10000): start again with --lr 0.001. Nothing was saved after it"
    )
    fake.publish()
    async with watching(fake, owner=False, steps=None) as (app, pilot):
        await pilot_wait(pilot, lambda: "at step" in text_of(app, "#status"), "the NaN message in the status line", 5)
        assert "--lr" in text_of(app, "#status")


async def test_a_64px_gaussian_run_shows_its_traversals_scaled_and_says_which_likelihood_its_scores_are(fake_run):
    fake = fake_run(epochs=3)
    plain = type(fake).analysis
    rows = np.random.default_rng(1).random((3, 5, 1, 64, 64), dtype=np.float32)
    fake.analysis = lambda: {
        **plain(fake),
        "traversals": rows,
        "likelihood": np.array("gaussian"),
        "vae_nll": np.float64(-6892.6),
        "pca_nll": np.float64(-5120.2),
    }
    async with watching(fake, steps=None) as (app, pilot):
        await pilot_wait(pilot, lambda: app.telemetry.analysis() is not None, "the first latent report", driving=fake)
        await pilot.press("t")
        await drawn(pilot, app, lambda: " z0 " in text_of(app, "#traversals") and "NLL" in text_of(app, "#latent-summary"), "the latent view drawn")
        traversals, summary = text_of(app, "#traversals"), text_of(app, "#latent-summary")
        assert "too small" not in traversals and "▀" in traversals and " z0 " in traversals, traversals
        assert "Gaussian NLL, sigma fitted per channel" in summary and "VAE -6892.60" in summary, summary


async def test_a_vq_vaes_latent_view_names_code_entropies_positions_and_its_samples_prior(fake_run):
    fake = fake_run(epochs=3)
    plain = type(fake).analysis
    fake.analysis = lambda: {**plain(fake), "per_dim_measure": np.array("code entropy")}
    fake.status.model = "VQ-VAE 64-400-4, 64 codes"
    fake.publish()
    async with watching(fake, steps=None) as (app, pilot):
        await pilot_wait(pilot, lambda: app.telemetry.analysis() is not None, "the first latent report", driving=fake)
        await drawn(pilot, app, lambda: "codes drawn by their usage" in screen_text(app), "the samples pane's title")
        await pilot.press("t")
        await drawn(pilot, app, lambda: " p0 " in text_of(app, "#traversals"), "the code walks drawn")
        assert "code entropy, nats: 3 of 4 used" in text_of(app, "#active-units") and "code position" in text_of(app, "#active-units")
        assert "code entries at step" in text_of(app, "#latent-scatter") and "of its code" in text_of(app, "#latent-summary")
        assert app.query_one("#traversals").border_title == "traversals: a position's common codes" and " z0 " not in text_of(app, "#traversals")


async def test_t_shows_the_latent_view_and_back(fake_run):
    fake = fake_run(epochs=3)
    async with watching(fake, steps=None) as (app, pilot):
        await pilot_wait(pilot, lambda: app.telemetry.analysis() is not None, "the first latent report", driving=fake)
        await pilot.press("t")
        assert app.showing_latent
        await drawn(pilot, app, lambda: "PCA, k=4" in text_of(app, "#latent-summary") and "▀" in text_of(app, "#traversals"), "the latent view drawn")
        summary = text_of(app, "#latent-summary")
        assert "PCA, k=4: 16.20" in summary and "VAE 18.70" in summary and "colours: ■ 0 ■ 1" in summary
        assert "latent means" in text_of(app, "#latent-scatter") and "raw pixels" in text_of(app, "#pixel-scatter")
        assert "of 4 active" in text_of(app, "#active-units") and "▀" in text_of(app, "#traversals")
        assert " z0 " in text_of(app, "#traversals") and " z2 " in text_of(app, "#traversals")  # each row named
        fake.end(RunState.FINISHED, "finished", evaluation={"iw_nll": 24.06, "iw_se": 0.13, "elbo_nll": 24.3, "elbo_se": 0.14, "samples": 100, "images": 297})
        await pilot_wait(pilot, lambda: app.telemetry.status().evaluation != {}, "the final evaluation")
        await drawn(pilot, app, lambda: "-log p(x) <=" in text_of(app, "#latent-summary"), "the final evaluation in the summary")
        await pilot.press("t")
        assert not app.showing_latent
        await drawn(pilot, app, lambda: "reconstruction" in text_of(app, "#recon-chart"), "the charts again")


async def test_a_tiny_terminal_and_a_resize_storm_do_not_crash_it(fake_run):
    fake = fake_run()
    async with watching(fake, size=(40, 12), steps=None) as (app, pilot):
        await pilot_wait(pilot, lambda: app.telemetry.epoch_count >= 1, "an epoch", driving=fake)
        await pilot_wait(pilot, lambda: "Training" in text_of(app, "#status"), "the status line")
        rng = random.Random(0)
        for _ in range(40):  # someone dragging a window corner
            await pilot.resize_terminal(rng.randint(10, 200), rng.randint(4, 60))
            await pilot.pause(0.02)
        await pilot.resize_terminal(80, 24)
        await pilot_wait(pilot, lambda: tuple(app.screen.size) == (80, 24), "the screen laid out at 80x24", 5)
        await drawn(pilot, app, lambda: all(text_of(app, s).strip() for s in PANES), "every pane drawn after the storm")
        assert app.is_running


def test_two_watchers_at_once_and_one_leaving(fake_run):
    fake = fake_run()
    first, second = fake.watch(), fake.watch()

    def polled(watch, condition):
        watch.follower.poll()
        return condition()

    wait_for(lambda: polled(second, lambda: second.running), "the second watcher to see a live trainer")
    assert first.send("pause") is None
    wait_for(
        lambda: polled(second, lambda: second.telemetry.status().state == RunState.PAUSED), "the second watcher to see the first one's pause", driving=fake
    )
    first.close()  # one leaves; the trainer and the other watcher carry on
    assert second.send("resume") is None
    before = fake.status.step
    wait_for(lambda: fake.status.step > before, "training to go on after the second watcher's resume", driving=fake)
    assert second.stop() is None
    wait_for(lambda: fake.process.poll() is not None, "the trainer to stop", driving=fake)


def test_no_color_gives_a_grey_screen_even_for_colour_pictures(fake_run):
    fake = fake_run(epochs=3, channels=3)
    for _ in range(36):
        fake.step()
    colours = {}
    for name, env in (("colour", {}), ("no colour", {"NO_COLOR": "1"})):
        pid, fd = spawn_in_pty(["watch", str(fake.run.path)], env)
        out = drain(fd, 20, until=b"Finished")
        out += drain(fd, 0.5)
        os.kill(pid, signal.SIGTERM)
        exit_status(pid, fd)
        os.close(fd)
        assert b"Finished" in out, name
        codes = [int(n) for n in re.findall(rb"\x1b\[[0-9;]*?(?:38|48);5;(\d+)", out)]
        colours[name] = [c for c in codes if not (c >= 232 or c in (0, 7, 8, 15, 16, 231))]  # not a grey
        assert codes, name
    assert colours["colour"] and not colours["no colour"]


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


def test_art_draws_colour_in_colour_grey_in_grey_and_ramp_without_any():
    import io

    from rich.console import Console
    from rich.text import Text

    red = np.zeros((3, 4, 4), dtype=np.float32)
    red[0] = 1.0
    grey = np.linspace(0, 1, 16, dtype=np.float32).reshape(1, 4, 4)
    styles = lambda image, mode: {seg.style for line in art.image_lines(image, mode) for seg in line}  # noqa: E731
    colours = {(s.color.triplet, s.bgcolor.triplet) for s in styles(red, "blocks")}
    assert colours == {((255, 0, 0), (255, 0, 0))}
    greys = styles(grey, "blocks")  # the xterm greys: black, white, the ramp 232-255, shorter on the wire
    assert all(c.number in (16, 231) or c.number >= 232 for s in greys for c in (s.color, s.bgcolor))
    assert len({art._grey(level).number for level in range(art.GREY_LEVELS)}) == art.GREY_LEVELS  # each level its own
    assert styles(red, "ramp") == {None}

    def written(image, color_system):  # each colour system its own picture: Rich keeps a style's codes once made
        console = Console(color_system=color_system, force_terminal=True, width=40, file=io.StringIO())
        for line in art.grid([[image]], "blocks", 20, 4):
            console.print(Text.assemble(*[(seg.text, seg.style) for seg in line]))
        return console.file.getvalue()

    blue = red[[2, 1, 0]]
    assert "38;2;255;0;0" in written(red, "truecolor")  # 24-bit where COLORTERM says so
    in_256 = written(blue, "256")
    assert "38;5;21" in in_256 and "38;2;" not in in_256  # the 256-colour palette's blue otherwise
    assert "38;5;2" in written(grey, "truecolor") and "38;2;" not in written(grey, "truecolor")  # greys as greys


def test_a_colour_picture_keeps_its_colours_where_the_terminal_has_24_bits():
    olive = np.empty((3, 4, 4), dtype=np.float32)
    olive[:] = np.array([0.42, 0.40, 0.18], dtype=np.float32)[:, None, None]  # a dull crop: between the cube's levels
    olive[:, 1::2] += 0.02  # every other row a shade lighter: the lower half of each cell
    styles = lambda levels: {(s.color.triplet, s.bgcolor.triplet) for line in art.image_lines(olive, "blocks", levels) for s in (seg.style for seg in line)}  # noqa: E731
    assert styles(art.colour_levels("truecolor")) == {((107, 102, 46), (112, 107, 51))}  # as it is
    assert styles(art.colour_levels("256")) == {((102, 102, 51), (102, 102, 51))}  # the palette's cube: both one colour


async def test_the_epoch_chart_names_its_lines_above_them_where_a_legend_would_lie_over_them(fake_run):
    fake = fake_run().advance(120)
    async with watching(fake, owner=False, size=(80, 24), steps=None) as (app, pilot):
        await drawn(pilot, app, lambda: "train" in text_of(app, "#epoch-chart"), "the epoch chart")
        title, *plot = text_of(app, "#epoch-chart").splitlines()
        assert "train vs test" in title and not any("train" in line or "test" in line for line in plot)
        words = app.query_one("#epoch-chart").render_line(0)
        colours = {seg.text.strip(): seg.style.color.triplet for seg in words if seg.text.strip() in ("train", "test")}
        assert colours == {"train": charts.TRAIN_COLOR, "test": charts.TEST_COLOR}  # the lines' own colours


def test_without_colour_train_and_test_differ_by_their_marks():
    from rich.text import Text
    from textual_plotext.plot import Plot

    from vae_tui.tui.charts import build_epoch_chart
    from vae_tui.tui.widgets import epoch_lines_in_words

    records = [{"epoch": e, "train_loss": 30.0 - e, "test_loss": 32.0 - e} for e in range(1, 8)]
    grey, colour = (Text.from_ansi(build_epoch_chart(Plot(), records, 58, 12, log=False, monochrome=m)).plain for m in (True, False))
    plot = lambda chart: "".join(line.split("┤", 1)[-1] for line in chart.splitlines() if "┤" in line)  # noqa: E731
    assert "x" in plot(grey) and "•" in plot(grey) and "x" not in plot(colour)
    assert "train vs test (x)" in epoch_lines_in_words([], monochrome=True, width=58).plain  # and the title says which is which


def test_epoch_chart_of_a_resumed_run_with_one_epoch_shown():
    """A resumed run's first epoch record is epoch 78, not 1: plotext must get a range around it."""
    from textual_plotext.plot import Plot

    from vae_tui.tui.charts import build_epoch_chart

    records = [{"epoch": 78, "train_loss": 24.0, "test_loss": 25.0}]
    for height in (6, 8, 12):
        assert "78" in build_epoch_chart(Plot(), records, 58, height, log=False)


async def test_ctrl_c_saves_and_stops_the_owned_run_and_exits_130(fake_run):
    fake = fake_run()
    async with watching(fake) as (app, pilot):
        await pilot.press("ctrl+c")  # no question: an interrupt
        await pilot_wait(pilot, lambda: not app.is_running, "the monitor to exit once the trainer stopped", driving=fake)
    assert app.return_code == 130 and fake.status.state == RunState.STOPPED


async def test_ctrl_c_closes_a_watcher_with_130_and_training_goes_on(fake_run):
    fake = fake_run()
    async with watching(fake, owner=False) as (app, pilot):
        await pilot.press("ctrl+c")
        await pilot_wait(pilot, lambda: not app.is_running, "the watcher to close")
    fake.tick()  # nothing asked it to stop
    assert app.return_code == 130 and fake.process.poll() is None


def test_a_watcher_whose_terminal_vanishes_ends_even_when_sighup_is_ignored(fake_run):
    """A shell that ignores SIGHUP (nohup, trap '' HUP) sends nothing when an SSH session drops."""
    import sys

    fake = fake_run()
    pid, fd = spawn_in_pty(["-c", f"trap '' HUP; {sys.executable} -m vae_tui watch {fake.run.path}; echo ended"], shell=True)
    try:
        assert b"Training" in drain(fd, 20, until=b"Training", driving=fake)
        os.close(fd)  # the terminal is gone, and no SIGHUP comes
        wait_for(lambda: os.waitpid(pid, os.WNOHANG)[0] != 0, "the watcher to notice its terminal is gone and end", timeout=30)
    finally:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)  # a watcher that never ended would spin on its dead terminal for ever


def test_back_from_ctrl_z_every_cell_is_painted_again(fake_run):
    fake = fake_run()
    pid, fd = spawn_in_pty(["watch", str(fake.run.path)])
    try:
        assert b"Quit" in drain(fd, 20, until=b"Quit", driving=fake)
        os.kill(pid, signal.SIGTSTP)
        drain(fd, 1.0, driving=fake)
        os.kill(pid, signal.SIGCONT)
        after = drain(fd, 10, until=b"Quit", driving=fake)
        after += drain(fd, 10, until=b"samples/s", seen=after, driving=fake)
        assert b"Quit" in after and b"samples/s" in after  # the footer and the status line, painted again
    finally:
        os.kill(pid, signal.SIGTERM)
        exit_status(pid, fd)
        os.close(fd)


async def test_a_watcher_notifies_only_what_happens_while_it_watches(fake_run):
    fake = fake_run()
    fake.event("checkpoint", "checkpoint on request: saved an old checkpoint")
    async with watching(fake, owner=False) as (app, pilot):
        fake.event("checkpoint", "checkpoint on request: saved a new checkpoint")
        await pilot_wait(pilot, lambda: any("a new checkpoint" in t for t in toasts(app)), "the new event")
        assert not any("an old checkpoint" in t for t in toasts(app))
        fake.event("restart", "restarted by torchrun after a rank failed (restart 1 of 3); resumed from step 420")
        await pilot_wait(pilot, lambda: any("resumed from step 420" in t for t in toasts(app, "warning")), "torchrun's restart, said")


async def test_the_status_line_agrees_with_the_charts(fake_run):
    """metrics.jsonl runs ahead of status.json; the numbers on one screen come from one of them."""
    fake = fake_run()
    for _ in range(30):
        fake.step()  # 2.5 epochs in the metrics; the status still says step 0
    async with watching(fake, owner=False, steps=None) as (app, pilot):
        app.redraw_all()
        await pilot_wait(pilot, lambda: "step 30" in text_of(app, "#status"), "the status line to show the charted step")
        assert "epoch 3/500" in text_of(app, "#status") and app.query_one("#epoch-chart").drawn_key[1] == 2


async def test_on_a_gpu_the_status_line_says_which_step_runs_and_what_the_gpu_does(fake_run):
    """Where there is a choice (CUDA) the line says which step runs; a CPU has none, and the line keeps
    its room. How busy the GPU is comes first, after the speed."""
    fake = fake_run()
    fake.status.device, fake.status.step_mode, fake.status.step_why = "cpu", "eager", "CUDA graphs need a CUDA GPU, and this run trains on cpu"
    fake.status.host = "another-box"  # a CPU run on this machine would put the watcher (this test) at idle priority
    fake.publish()
    async with watching(fake, owner=False, size=(160, 40), steps=None) as (app, pilot):
        await pilot_wait(pilot, lambda: "digits on cpu" in text_of(app, "#status"), "the status line")
        assert "eager step" not in text_of(app, "#status")
        fake.status.device, fake.status.step_mode = "cuda (NVIDIA H200)", "graph"
        fake.status.gpus = [{"busy": 87.0, "memory_used": 12 * 2**30, "memory_total": 80 * 2**30, "temperature": 61.0, "power": 312.0}]
        fake.publish()
        await pilot_wait(
            pilot,
            lambda: "digits on cuda (NVIDIA H200), images streamed from disk, CUDA-graph step" in text_of(app, "#status"),
            "the CUDA-graph step on the status line",
        )
        assert "samples/s · lr 0.001, beta 1 · ETA ... (training) · GPU 87% busy, 12.0 of 80.0 GiB, 61°C, 312 W" in text_of(app, "#status")


async def test_at_80x24_the_latent_view_and_the_help_cut_nothing(fake_run):
    fake = fake_run(epochs=3)
    for _ in range(36):
        fake.step()
    fake.end(RunState.FINISHED, "finished", evaluation={"iw_nll": 24.06, "iw_se": 0.13, "elbo_nll": 24.3, "elbo_se": 0.14, "samples": 100, "images": 297})
    async with watching(fake, owner=False, size=(80, 24), steps=None, toasts=False) as (app, pilot):  # "finished" would lie over the help
        await pilot.press("t")
        await drawn(pilot, app, lambda: "24.30" in text_of(app, "#latent-summary"), "the latent summary with the evaluation")
        summary = text_of(app, "#latent-summary")
        for whole in ("16.20 (0.0100)", "18.70 (0.0200)", "24.06 ± 0.13 (K=100)", "24.30 ± 0.14"):
            assert whole in summary, whole  # no number cut at the edge
        assert "latent means at step 36" in text_of(app, "#latent-scatter") and "3 of 4 active" in text_of(app, "#active-units")
        await pilot.press("question_mark")
        help_box = app.screen.query_one("#help-box")
        assert help_box.max_scroll_y > 0  # it does not fit: it scrolls, so every key can be read
        assert "close a help or explain screen" not in screen_text(app)
        help_box.scroll_end(animate=False)
        await pilot_wait(pilot, lambda: "close a help or explain screen" in screen_text(app), "the end of the keys, scrolled to", 5)


async def test_a_narrow_footer_keeps_the_keys_that_matter_most(fake_run):
    fake = fake_run()
    async with watching(fake, size=(80, 24)) as (app, pilot):
        labels = ("Pause", "Quit", "Checkpoint", "Latent", "Help")
        await pilot_wait(pilot, lambda: all(label in screen_text(app) for label in labels), f"the footer at 80 columns to show {', '.join(labels)}")


async def test_a_chart_too_small_to_draw_says_its_number_in_words(fake_run):
    fake = fake_run()
    async with watching(fake, size=(60, 8)) as (app, pilot):
        await drawn(pilot, app, lambda: "recon" in text_of(app, "#recon-chart"), "the chart's number in words")
        recon = text_of(app, "#recon-chart")
        assert app.query_one("#recon-chart").size.height < 6
        assert re.search(r"recon \d+\.\d\d nats/image", recon) and "┤" not in recon  # no misplaced axis


def screen_text(app) -> str:
    """What the whole screen shows now, as plain text."""
    return app.export_screenshot().replace("&#160;", " ")


@pytest.mark.parametrize("content", ["null", "[]", "\x00\x01binary", '{"state": "training", "pid": "abc", "step": "many"}'])
async def test_a_watcher_of_a_run_with_a_damaged_status_shows_it_and_keeps_going(fake_run, content):
    fake = fake_run()
    for _ in range(15):
        fake.step()
    fake.run.status_path.write_text(content)
    async with watching(fake, owner=False, size=(100, 30), steps=None) as (app, pilot):
        await pilot_wait(pilot, lambda: any("status file" in t and "damaged" in t for t in toasts(app)), "a warning naming the damaged status file")
        await drawn(pilot, app, lambda: "reconstruction" in text_of(app, "#recon-chart"), "the charts, drawn on")
        assert app.is_running


async def test_nothing_is_redrawn_behind_a_dialog_and_the_views_catch_up_once_it_closes(fake_run):
    """A cell changed behind a dialog repaints the whole screen through it. The timers keep running
    (the app keeps its widgets, not queries: with a dialog open a query looks in the dialog, and a
    timer that fired then once raised NoMatches); they draw again once it closes."""
    fake = fake_run()
    async with watching(fake, size=(100, 30)) as (app, pilot):
        await pilot.press("question_mark")
        shown = text_of(app, "#status")
        target = fake.advance(30).status.step
        await pilot_wait(pilot, lambda: app.telemetry.status().step >= target, "the app to see the run go on behind the help screen")
        for _ in range(3):
            app.tick_status()
            app.tick_frame(force=True)
        assert app.is_running and isinstance(app.screen, HelpScreen) and text_of(app, "#status") == shown
        await pilot.press("escape")
        await pilot_wait(pilot, lambda: f"step {target:,}" in text_of(app, "#status"), "the status line to catch up once the help closed")


async def test_a_script_run_shows_its_output_and_says_what_each_chart_was_taken_from(fake_run):
    fake = fake_run()
    fake.status.script = "python main.py --epochs 3"
    fake.status.model = "VAE (yours)"
    fake.status.terms = {"loss": "what backward() was called on", "pictures": "input | forward()'s output 1"}
    fake.run.log_path.write_bytes(b"Train Epoch: 1 [0/60000]\tLoss: 543.2\n\repoch 1:  40%|####")
    fake.publish()
    async with watching(fake, owner=False, steps=None) as (app, pilot):
        await pilot_wait(pilot, lambda: "epoch 1:  40%|####" in text_of(app, "#output"), "the script's output pane")
        assert "Train Epoch: 1 [0/60000]    Loss: 543.2" in text_of(app, "#output")
        assert app.query_one("#output").border_title == "output of python main.py --epochs 3"
        assert app.query_one("#recon-images").border_title == "reconstructions: input | forward()'s output 1"
        await pilot_wait(pilot, lambda: "loss, as your script computes it" in text_of(app, "#recon-chart"), "the loss chart", driving=fake)
        assert "what backward() was called on · recon: vae_tui.log(recon=r)" in text_of(app, "#recon-chart")
        assert "not known (forward() gave no mu, logvar) · vae_tui.log(kl=k)" in text_of(app, "#kl-chart")
        assert "VAE (yours), 4,996 parameters" in text_of(app, "#status")
    with open(fake.run.log_path, "ab") as log:
        log.write(b"\repoch 1: 100%|##########\n")


async def test_a_run_of_vae_tuis_own_has_no_output_pane(fake_run):
    async with watching(fake_run(), owner=False, steps=None) as (app, pilot):
        await pilot_wait(pilot, lambda: "step " in text_of(app, "#status"), "the status line, drawn with the run's own status")
        assert not app.query_one("#output").display  # (the same look at the status shows a script's output pane)


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
async def test_the_status_line_keeps_lr_and_beta_and_the_footer_keeps_whole_keys(fake_run, size):
    from textual.widgets._footer import FooterKey

    fake = fake_run("a-run-directory-with-a-rather-long-name-as-dated-ones-get")
    fake.status.device = "cuda:0 (NVIDIA H200 NVL, 139 GiB), bf16-mixed, compiled"
    fake.status.data_placement, fake.status.step_mode, fake.status.model = "device", "graph", "conv 3x64x64, z 128"
    fake.status.gpus = [{"busy": 87.0, "memory_used": 12.0 * 2**30, "memory_total": 80.0 * 2**30, "temperature": 61.0, "power": 312.0}]
    fake.status.dataset = "/data/instruments/2026-11-run-14/microscope-stack-b"
    fake.publish()
    app = guest(fake)
    async with app.run_test(size=size) as pilot:
        await pilot_wait(pilot, lambda: "lr 0.001, beta 1" in text_of(app, "#status"), "lr and beta on the status line")
        lines = text_of(app, "#status").splitlines()
        assert all(len(line) <= size[0] for line in lines) and "step " in lines[0]
        keys = list(app.query(FooterKey))
        assert keys and max(k.region.right for k in keys) <= size[0]  # no key cut mid-word
        assert keys[0].description == "Pause" and keys[1].description == "Quit"


async def test_a_note_repeated_while_the_app_is_busy_is_shown_once(fake_run):
    from vae_tui.runfile.schema import Event
    from vae_tui.tui.messages import RunEvent

    fake = fake_run()
    async with watching(fake, owner=False) as (app, pilot):
        for _ in range(3):  # queued before the app looks at any of them: merged into the last
            app.post_message(RunEvent(Event("warning", "the status file is damaged")))
        app.post_message(RunEvent(Event("warning", "another word")))
        await pilot_wait(pilot, lambda: "another word" in toasts(app), "the second note")
        assert toasts(app, "warning").count("the status file is damaged") == 1


async def test_a_run_with_more_terms_charts_them_one_at_a_time_and_n_shows_the_next(fake_run):
    from vae_tui.runfile.files import write_scalars

    fake = fake_run()
    async with watching(fake, owner=False, steps=None) as (app, pilot):
        await pilot_wait(pilot, lambda: "step " in text_of(app, "#status"), "the status line")
        assert not app.query_one("#term-chart").display and app.query_one("#epoch-chart").display  # no terms: no chart, no key
        assert ">Terms" not in screen_text(app)  # the footer's label for n
        write_scalars(fake.run, [{"step": s, "lpips": 1.0 / s} | ({"discriminator": 0.7} if s > 20 else {}) for s in range(1, 61)])
        await pilot_wait(pilot, lambda: "lpips: perceptual distance (LPIPS) (1/2, n: next)" in text_of(app, "#term-chart"), "the terms chart")
        assert app.query_one("#epoch-chart").display
        await pilot_wait(pilot, lambda: ">Terms" in screen_text(app), "the footer to offer n")
        await pilot.press("n")
        await pilot_wait(pilot, lambda: "discriminator: as logged (2/2, n: next)" in text_of(app, "#term-chart"), "the next term")
        await pilot.press("n")
        await pilot_wait(pilot, lambda: "lpips" in text_of(app, "#term-chart"), "back to the first")
        await pilot.resize_terminal(100, 30)  # four charts no longer fit: the terms take the epoch chart's place
        await pilot_wait(pilot, lambda: not app.query_one("#epoch-chart").display, "the epoch chart giving way")
        await pilot_wait(pilot, lambda: "lpips" in text_of(app, "#term-chart"), "the terms chart drawn in its new place")
