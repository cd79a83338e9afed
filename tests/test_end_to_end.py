"""The real thing: `vae-tui train` in a terminal (monitor, worker process, trainer), --detach and
TERM=dumb, each a real digits run. Everything else about the monitor is tested on fake runs."""

import json
import os
import pty
import re
import subprocess
import sys
import time

from conftest import ROOT, SMALL, batch_steps, drain, exit_status, picture_folder, spawn_in_pty, wait_for
from vae_tui.runfile.files import read_status
from vae_tui.runfile.layout import RunDir
from vae_tui.runfile.schema import RunState
from vae_tui.training.checkpoint import load_checkpoint


def test_train_opens_the_monitor_and_q_then_y_saves_and_stops(tmp_path):
    run = tmp_path / "r"
    pid, fd = spawn_in_pty(["train", *SMALL, "--epochs", "100000", "--run-dir", str(run)], size=(120, 40))
    try:
        screen = drain(fd, 60, until=b"Training")
        assert b"Training" in screen, "the monitor never showed a training run"
        wait_for(lambda: len(batch_steps(run)) > 20 and drain(fd, 0.05) is not None, "twenty steps")
        os.write(fd, b"q")
        screen = drain(fd, 10, until=b"Save a checkpoint and quit?")
        assert b"Save a checkpoint and quit?" in screen
        os.write(fd, b"y")
        assert exit_status(pid, fd) == 0
    finally:
        os.close(fd)
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "stopped"
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == status["step"] == batch_steps(run)[-1]
    assert not (run / "control").exists()  # nobody listens any more, and watchers are told so


def test_a_refusal_found_while_getting_ready_is_one_line_once_the_first_screen_closes(tmp_path, finished_run):
    """The first screen is up at once, before the worker has checked anything; what it then refuses
    is one line on the terminal, as before, and the exit status says it."""
    pid, fd = spawn_in_pty(["train", *SMALL, "--run-dir", str(finished_run)])
    out, deadline = b"", time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            out += drain(fd, 0.2)
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                out += drain(fd, 0.5)
                break
        else:
            raise AssertionError("vae-tui train did not end after refusing the run")
    finally:
        os.close(fd)
    text = out.decode(errors="replace")
    screen, _, after = text.rpartition("\x1b[?1049l")  # what stays on the terminal once the screen closed
    after = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", after).strip()  # the terminal's modes put back
    assert os.waitstatus_to_exitcode(status) == 1 and "getting the run ready" in screen
    assert after.startswith("vae-tui: error:") and "\n" not in after and "already holds a run" in after, after
    assert "Traceback" not in text


def test_the_first_screen_says_how_reading_the_data_goes_before_the_monitor_opens(tmp_path):
    """A first run on a folder of pictures: the screen is up while they are decoded, counting them,
    and the monitor follows once the run is checked. (How soon the screen comes: bench_launch.py.)"""
    folder = picture_folder(tmp_path / "pictures", per_class=1000, size=(64, 64))  # a second or two to decode here
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}  # nothing decoded yet: a first run
    pid, fd = spawn_in_pty(
        ["train", "--dataset", str(folder), "--device", "cpu", "--epochs", "100000", "--run-dir", str(tmp_path / "run")], env=env, size=(120, 40)
    )
    try:
        out = drain(fd, 120, until=b"Quit")
        text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.decode(errors="replace"))
        assert "getting the run ready" in text and re.search(r"decoding (training|test) pictures: [\d,]+ of [\d,]+", text)
        assert b"Quit" in out  # then the monitor, on the run
        os.write(fd, b"q")
        drain(fd, 2)
        os.write(fd, b"y")
        assert exit_status(pid, fd, timeout=60) == 0
    finally:
        os.close(fd)


def test_detach_returns_and_the_run_finishes_on_its_own(tmp_path):
    run = tmp_path / "bg"
    proc = subprocess.run(
        [sys.executable, "-m", "vae_tui", "train", *SMALL, "--epochs", "5", "--run-dir", str(run), "--detach"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"vae-tui watch {run}" in proc.stdout and "train.log" in proc.stdout and "device:  cpu" in proc.stdout
    wait_for(lambda: read_status(RunDir(run))[0].state == RunState.FINISHED, "the detached run to finish")
    wait_for(lambda: "finished 5 epochs" in (run / "train.log").read_text(), "train.log to say it finished")


def test_a_dumb_terminal_gets_the_plain_view_or_a_clear_refusal(tmp_path):
    def in_pty(*args):
        """Run to the end in a pseudo-terminal (so the tool sees a terminal) with TERM=dumb."""
        main_fd, child_fd = pty.openpty()
        proc = subprocess.Popen(
            [sys.executable, "-m", "vae_tui", *args], stdin=child_fd, stdout=child_fd, stderr=child_fd, env={**os.environ, "TERM": "dumb"}, cwd=ROOT
        )
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

    code, out = in_pty("train", *SMALL, "--epochs", "2", "--iw-samples", "0", "--run-dir", str(tmp_path / "r"))
    assert code == 0 and "TERM=dumb cannot show the monitor; showing the plain view" in out and "epoch 2/2" in out
    code, out = in_pty("watch", str(tmp_path / "r"))
    assert code == 2 and "vae-tui: error: TERM=dumb cannot show the monitor" in out and "Traceback" not in out
