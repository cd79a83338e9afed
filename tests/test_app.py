"""Pilot tests of the monitor on a real trainer process training digits, as `vae-tui train` runs it."""

import json
import signal
import time

import numpy as np
import pytest

from vae_tui import art, runner
from vae_tui.checkpoint import load_checkpoint
from vae_tui.follow import RunWatch
from vae_tui.metrics import read_metrics
from vae_tui.rundir import RunDir
from vae_tui.tui.app import VaeApp
from vae_tui.tui.screens import ConfirmQuit, ConfirmStop, ExplainScreen, HelpScreen
from vae_tui.tui.widgets import changed_span

SMALL = {"dataset": "digits", "hidden_dim": 64, "latent_dim": 4, "snapshot_seconds": 0.2}


@pytest.fixture
def start_run(tmp_path):
    """Prepare a digits run and start its trainer process, as `vae-tui train` does; kill leftovers."""
    processes = []

    def start(epochs=400, name="run", **changes):
        prepared = runner.prepare({**SMALL, "epochs": epochs, **changes}, tmp_path / name, None, view="monitor")
        process = runner.spawn_worker(prepared.run)
        processes.append(process)
        return prepared.run, process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def owned_app(start_run, **kwargs):
    run, process = start_run(**kwargs)
    return VaeApp(RunWatch(run.path, process, cpu_training=False)), run, process


async def wait_until(pilot, condition, timeout=40.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await pilot.pause(0.05)
    return False


def text_of(app, selector):
    return "\n".join(strip.text for strip in app.query_one(selector)._strips)


def last_step(run):
    steps = [r["step"] for r in read_metrics(run.metrics_path) if r["kind"] == "batch"]
    return steps[-1] if steps else 0


async def stop_and_wait(app, pilot):
    app.source.stop()
    assert await wait_until(pilot, app.source.process_ended, timeout=20)


async def test_charts_and_pictures_receive_data(start_run):
    app, _, _ = owned_app(start_run)
    async with app.run_test(size=(120, 40)) as pilot:
        assert await wait_until(pilot, lambda: app.telemetry.epoch_count >= 2)
        await pilot.pause(1.2)
        recon = app.query_one("#recon-chart")
        assert recon.drawn_key and recon.drawn_key[1] > 0  # drew a batch count, not the empty state
        text = text_of(app, "#recon-chart")
        assert "reconstruction" in text and any(ch in text for ch in "⠁⠂⠄⡀⠈⠐⠠⢀")  # braille curve
        assert "KL" in text_of(app, "#kl-chart")
        assert "train" in text_of(app, "#epoch-chart")
        assert "▀" in text_of(app, "#recon-images")
        status = text_of(app, "#status")
        assert "Training" in status and "digits" in status and "64-64-4" in status and "samples/s" in status
        await stop_and_wait(app, pilot)


async def test_space_pauses_and_resumes_the_trainer_process(start_run):
    app, run, _ = owned_app(start_run)
    async with app.run_test(size=(120, 40)) as pilot:
        assert await wait_until(pilot, lambda: app.telemetry.status().step > 10)
        await pilot.press("space")
        assert await wait_until(pilot, lambda: app.telemetry.status().state == "paused", timeout=5)
        paused_at = last_step(run)
        await pilot.pause(0.8)
        assert last_step(run) == paused_at  # the trainer itself stopped, not just the view
        assert not app.check_action("pause", ()) and app.check_action("resume", ())  # the footer says Resume
        await pilot.press("space")
        assert await wait_until(pilot, lambda: last_step(run) > paused_at + 10, timeout=10)
        await stop_and_wait(app, pilot)


async def test_c_writes_a_loadable_checkpoint_and_says_where(start_run):
    app, run, _ = owned_app(start_run)
    async with app.run_test(size=(120, 40)) as pilot:
        assert await wait_until(pilot, lambda: app.telemetry.status().step > 5)
        await pilot.press("c")
        assert await wait_until(pilot, lambda: any(e.kind == "checkpoint" for e in app.telemetry.events()), timeout=10)
        await pilot.pause(0.6)
        assert any(str(run.last_checkpoint) in n.message for n in app._notifications)
        assert load_checkpoint(run.last_checkpoint)["step"] > 5
        await stop_and_wait(app, pilot)


async def test_q_asks_then_saves_stops_and_exits(start_run):
    app, run, process = owned_app(start_run)
    async with app.run_test(size=(120, 40)) as pilot:
        assert await wait_until(pilot, lambda: app.telemetry.status().step > 5)
        await pilot.press("q")
        await pilot.pause(0.2)
        assert isinstance(app.screen, ConfirmQuit)
        await pilot.press("n")
        await pilot.pause(0.2)
        assert not isinstance(app.screen, ConfirmQuit) and process.poll() is None
        await pilot.press("q")
        await pilot.pause(0.2)
        started = time.monotonic()
        await pilot.press("y")
        assert await wait_until(pilot, lambda: not app.is_running, timeout=10)
        assert time.monotonic() - started < 5
    assert process.wait(5) == 0
    status = json.loads(run.status_path.read_text())
    assert status["state"] == "stopped"
    assert load_checkpoint(run.last_checkpoint)["step"] == status["step"] == last_step(run)
    assert not run.control_dir.exists()  # nobody listens any more, and watchers are told so


async def test_finished_run_stays_open_until_q(start_run):
    app, _, process = owned_app(start_run, epochs=2)
    async with app.run_test(size=(100, 30)) as pilot:
        assert await wait_until(pilot, lambda: app.telemetry.status().state == "finished")
        await pilot.pause(1.0)
        assert app.is_running and not app.check_action("pause", ())
        assert "Finished" in text_of(app, "#status")
        await pilot.press("q")  # no question once training is over
        assert await wait_until(pilot, lambda: not app.is_running, timeout=5)
    assert process.wait(5) == 0


async def test_resize_to_80x24_keeps_every_pane(start_run):
    app, _, _ = owned_app(start_run)
    async with app.run_test(size=(120, 40)) as pilot:
        assert await wait_until(pilot, lambda: app.telemetry.epoch_count >= 1)
        await pilot.resize_terminal(80, 24)
        await pilot.pause(1.5)
        for selector in ("#recon-chart", "#kl-chart", "#epoch-chart", "#recon-images", "#sample-images"):
            widget = app.query_one(selector)
            assert widget.size.width >= 20 and widget.size.height >= 4, selector
            assert widget._strips and widget._strips[0].cell_length == widget.size.width, selector
        assert "▀" in text_of(app, "#sample-images")
        await stop_and_wait(app, pilot)


async def test_toggles_help_and_explain(start_run):
    app, _, _ = owned_app(start_run)
    async with app.run_test(size=(120, 40)) as pilot:
        assert await wait_until(pilot, lambda: app.telemetry.status().step > 5)
        for key, name in (("l", "log"), ("s", "smooth"), ("w", "window")):
            before = getattr(app.settings, name)
            await pilot.press(key)
            assert getattr(app.settings, name) is not before
        await pilot.press("a")
        assert app.art_mode == "ramp"
        await pilot.pause(0.3)
        assert "▀" not in text_of(app, "#recon-images")
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await pilot.press("e")
        assert isinstance(app.screen, ExplainScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, (HelpScreen, ExplainScreen))
        await stop_and_wait(app, pilot)


async def test_a_watcher_steers_the_run_and_leaving_does_not_stop_it(start_run):
    run, process = start_run(epochs=200, name="guest")
    guest = VaeApp(RunWatch(run.path))  # `vae-tui watch`: no process of its own
    async with guest.run_test(size=(120, 40)) as pilot:
        assert await wait_until(pilot, lambda: guest.telemetry.status().state == "training")
        await pilot.press("space")
        assert await wait_until(pilot, lambda: guest.telemetry.status().state == "paused", timeout=5)
        paused_at = last_step(run)
        await pilot.pause(0.8)
        assert last_step(run) == paused_at
        await pilot.press("space")
        assert await wait_until(pilot, lambda: last_step(run) > paused_at, timeout=10)
        await pilot.press("q")  # a guest closes at once, no question
        assert await wait_until(pilot, lambda: not guest.is_running, timeout=5)
    assert process.wait(60) == 0  # and the run finishes on its own
    assert json.loads(run.status_path.read_text())["state"] == "finished"


async def test_a_watcher_stops_a_run_after_asking(start_run):
    run, process = start_run(name="guest")
    guest = VaeApp(RunWatch(run.path))
    async with guest.run_test(size=(120, 40)) as pilot:
        assert await wait_until(pilot, lambda: guest.telemetry.status().state == "training")
        await pilot.press("x")
        assert isinstance(guest.screen, ConfirmStop)
        await pilot.press("y")
        assert await wait_until(pilot, lambda: guest.telemetry.status().state == "stopped", timeout=10)
        assert await wait_until(pilot, lambda: "Stopped" in text_of(guest, "#status"), timeout=3)
        assert guest.is_running  # the watcher stays, showing how the run ended
    assert process.wait(10) == 0 and load_checkpoint(run.last_checkpoint)["step"] == last_step(run)


async def test_a_killed_trainer_is_shown_as_crashed(start_run):
    run, process = start_run(name="guest")
    guest = VaeApp(RunWatch(run.path))
    async with guest.run_test(size=(120, 40)) as pilot:
        assert await wait_until(pilot, lambda: guest.telemetry.status().step > 5)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert await wait_until(pilot, lambda: "Crashed" in text_of(guest, "#status"), timeout=5)
        assert any("--resume" in n.message for n in guest._notifications)  # what to do about it
        assert not guest.check_action("pause", ())  # no Pause for a dead trainer
        assert "not running" in guest.source.send("pause")  # and a command says so instead of hanging


async def test_a_trainer_error_is_shown_not_raised(tmp_path):
    run = RunDir(tmp_path / "failed")
    run.checkpoints.mkdir(parents=True)
    run.config_path.write_text("{}")
    message = "training failed: RuntimeError: CUDA error: an illegal memory access was encountered"
    run.status_path.write_text(json.dumps({"state": "error", "message": message, "dataset": "digits", "epochs": 3}))
    app = VaeApp(RunWatch(run.path))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.8)
        status = text_of(app, "#status")
        assert "Error" in status and "illegal memory access" in status
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


async def test_a_tiny_terminal_and_a_resize_storm_do_not_crash_it(start_run):
    import random

    app, _, _ = owned_app(start_run)
    async with app.run_test(size=(40, 12)) as pilot:
        assert await wait_until(pilot, lambda: app.telemetry.epoch_count >= 1)
        await pilot.pause(1.0)
        assert "Training" in text_of(app, "#status")
        rng = random.Random(0)
        for _ in range(40):  # someone dragging a window corner
            await pilot.resize_terminal(rng.randint(10, 200), rng.randint(4, 60))
            await pilot.pause(0.02)
        await pilot.resize_terminal(80, 24)
        await pilot.pause(1.5)
        assert app.is_running
        for selector in ("#recon-chart", "#kl-chart", "#epoch-chart", "#recon-images", "#sample-images"):
            assert app.query_one(selector)._strips, selector
        await stop_and_wait(app, pilot)


def run_in_pty(args, env, seconds=6.0, size=(100, 30)):
    import fcntl
    import os
    import pty
    import select
    import struct
    import sys
    import termios

    pid, fd = pty.fork()
    if pid == 0:
        os.environ.update(env)
        os.execvp(sys.executable, [sys.executable, "-m", "vae_tui", *args])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size[1], size[0], 0, 0))
    out, end = b"", time.time() + seconds
    while time.time() < end:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                out += os.read(fd, 65536)
            except OSError:
                break
    os.kill(pid, signal.SIGTERM)
    os.waitpid(pid, 0)
    os.close(fd)
    return out


def test_no_color_gives_a_grey_screen(start_run):
    import re

    run, process = start_run(epochs=3)
    assert process.wait(60) == 0
    colours = {}
    for name, env in (("colour", {"TERM": "xterm-256color"}), ("no colour", {"TERM": "xterm-256color", "NO_COLOR": "1"})):
        out = run_in_pty(["watch", str(run.path)], env)
        assert "Finished".encode() in out
        codes = [int(n) for n in re.findall(rb"\x1b\[[0-9;]*?(?:38|48);5;(\d+)", out)]
        colours[name] = [c for c in codes if not (c >= 232 or c in (0, 7, 8, 15, 16, 231))]  # not a grey
        assert codes, name
    assert colours["colour"] and not colours["no colour"]


def test_a_dumb_terminal_gets_the_plain_view_or_a_clear_refusal(tmp_path):
    import os
    import pty
    import subprocess
    import sys

    def in_pty(*args):
        """Run to the end in a pseudo-terminal (so the tool sees a terminal) with TERM=dumb."""
        main_fd, child_fd = pty.openpty()
        proc = subprocess.Popen([sys.executable, "-m", "vae_tui", *args], stdin=child_fd, stdout=child_fd,
                                stderr=child_fd, env={**os.environ, "TERM": "dumb"})
        os.close(child_fd)
        out = b""
        while True:
            try:
                data = os.read(main_fd, 65536)
            except OSError:
                break
            if not data:
                break
            out += data
        os.close(main_fd)
        return proc.wait(120), out.decode(errors="replace")

    code, out = in_pty("train", "--dataset", "digits", "--hidden-dim", "32", "--latent-dim", "4", "--epochs", "2",
                       "--run-dir", str(tmp_path / "r"))
    assert code == 0 and "TERM=dumb cannot show the monitor; showing the plain view" in out and "epoch 2/2" in out
    code, out = in_pty("watch", str(tmp_path / "r"))
    assert code == 2 and "vae-tui: error: TERM=dumb cannot show the monitor" in out and "Traceback" not in out


async def test_t_shows_the_latent_view_and_back(start_run):
    app, _, _ = owned_app(start_run, epochs=6, kl_warmup=3)
    async with app.run_test(size=(120, 40)) as pilot:
        assert await wait_until(pilot, lambda: app.telemetry.analysis() is not None)
        await pilot.press("t")
        assert app.showing_latent
        await pilot.pause(1.5)
        assert "PCA, k=4" in text_of(app, "#latent-summary") and "VAE:" in text_of(app, "#latent-summary")
        assert "latent means" in text_of(app, "#latent-scatter") and "raw pixels" in text_of(app, "#pixel-scatter")
        assert "of 4 active" in text_of(app, "#active-units")
        assert "▀" in text_of(app, "#traversals")
        assert await wait_until(pilot, lambda: app.telemetry.status().evaluation != {}, timeout=60)
        await pilot.pause(1.2)
        assert "-log p(x) <=" in text_of(app, "#latent-summary")
        await pilot.press("t")
        assert not app.showing_latent
        await pilot.pause(0.5)
        assert "reconstruction" in text_of(app, "#recon-chart")


async def test_a_nan_loss_pauses_the_monitor_and_says_what_to_try(start_run):
    app, run, _ = owned_app(start_run, lr=1e4, on_nan="auto")  # auto under the monitor: pause
    assert json.loads(run.config_path.read_text())["view"] == "monitor"  # as vae-tui train prepares it
    async with app.run_test(size=(120, 40)) as pilot:
        assert await wait_until(pilot, lambda: "NaN" in app.telemetry.status().message)
        await pilot.pause(0.8)
        status = text_of(app, "#status")
        assert "at step" in status and "--lr" in status
        await stop_and_wait(app, pilot)


def test_two_watchers_at_once_and_one_leaving(start_run):
    run, process = start_run(name="shared")
    first, second = RunWatch(run.path), RunWatch(run.path)
    deadline = time.time() + 60
    while time.time() < deadline and second.liveness() != "running":
        first.follower.poll()
        second.follower.poll()
        time.sleep(0.1)
    assert first.send("pause") is None
    deadline = time.time() + 10
    while time.time() < deadline and second.telemetry.status().state != "paused":
        second.follower.poll()
        time.sleep(0.1)
    assert second.telemetry.status().state == "paused"  # what one watcher does, the other sees
    first.close()  # one leaves; the trainer and the other watcher carry on
    assert second.send("resume") is None
    before = last_step(run)
    deadline = time.time() + 10
    while time.time() < deadline and last_step(run) <= before:
        time.sleep(0.1)
    assert last_step(run) > before and process.poll() is None
    second.stop()
    assert process.wait(20) == 0
