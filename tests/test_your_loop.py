"""Your own training loop: `vae_tui.init` and `run.log` take the monitor's pause, checkpoint and stop;
a signal saves; `vae-tui run -- python train.py` starts a script under the monitor."""

import json
import signal
import subprocess
import sys
import threading

import pytest
import torch

import vae_tui
from conftest import drain, exit_status, spawn_in_pty, wait_for
from helpers import SCRIPT
from vae_tui.runfile import control
from vae_tui.runfile.files import read_scalars, read_status
from vae_tui.runfile.layout import RunDir
from vae_tui.runfile.metrics import read_metrics
from vae_tui.runfile.schema import RunState


def tiny_model():
    return torch.nn.Sequential(torch.nn.Linear(4, 4))


def test_pause_checkpoint_and_stop_reach_a_loop_through_run_log(tmp_path):
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run_dir, steps, ended = RunDir(tmp_path / "mine"), [], []

    def loop():
        with vae_tui.init(run_dir=run_dir.path, model=model, optimizer=optimizer, config={"lr": 0.1}) as run:
            while True:
                loss = model(torch.ones(2, 4)).pow(2).mean()
                steps.append(1)
                run.log(recon=loss, kl=0.0, size=2)
        ended.append(run.step)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    wait_for(lambda: len(steps) > 20 and run_dir.status_path.exists(), "the loop to be logging")
    control.send(run_dir, "pause")
    wait_for(lambda: read_status(run_dir)[0].state == RunState.PAUSED, "the run to say it is paused")
    paused_at = len(steps)
    heartbeat = read_status(run_dir)[0].updated
    wait_for(lambda: read_status(run_dir)[0].updated > heartbeat + 1, "two heartbeats while paused")
    assert len(steps) == paused_at  # run.log blocked: no step while paused

    control.send(run_dir, "checkpoint")
    wait_for(lambda: (run_dir.checkpoints / "last.pt").exists(), "the checkpoint asked for")
    saved = torch.load(run_dir.checkpoints / "last.pt", weights_only=True)
    assert set(saved) >= {"model", "optimizer", "step"} and torch.equal(saved["model"]["0.weight"], model[0].weight)
    control.send(run_dir, "resume")
    wait_for(lambda: len(steps) > paused_at + 10, "steps again after resume")
    control.send(run_dir, "stop")
    thread.join(30)
    assert not thread.is_alive() and ended, "StopTraining ended the loop through the with block"
    status = read_status(run_dir)[0]
    assert status.state == RunState.STOPPED and torch.load(run_dir.checkpoints / "last.pt", weights_only=True)["step"] == ended[0]
    assert [int(s) for s in read_metrics(run_dir.metrics_path).covered_steps()] == list(range(1, ended[0] + 1))


def write_script(tmp_path):
    path = tmp_path / "train.py"
    path.write_text(SCRIPT)
    return path


def test_a_signal_saves_and_marks_the_run_stopped(tmp_path):
    script, run_dir = write_script(tmp_path), RunDir(tmp_path / "sig")
    process = subprocess.Popen(
        [sys.executable, str(script), "100000"],
        env={**__import__("os").environ, "VAE_TUI_RUN_DIR": str(run_dir.path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_for(lambda: len(read_metrics(run_dir.metrics_path).batches) > 20, "the script to be logging", proc=process)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 143, err
    assert b"the loop ended" not in out  # the with block saved and left with the signal's status
    assert read_status(run_dir)[0].state == RunState.STOPPED
    assert "model" in torch.load(run_dir.checkpoints / "last.pt", weights_only=True)


def test_vae_tui_run_a_script_to_its_end_then_runs_and_export_read_it(tmp_path, vae_tui):
    script, run_dir = write_script(tmp_path), tmp_path / "scripted"
    done = subprocess.run(
        [sys.executable, "-m", "vae_tui", "run", "--run-dir", str(run_dir), "--", sys.executable, str(script), "3"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "the loop ended" in done.stdout  # its own output, passed on without a terminal
    run = RunDir(run_dir)
    assert read_status(run)[0].state == RunState.FINISHED
    metrics = read_metrics(run.metrics_path)
    assert len(metrics.batches) == 3 * 8 and [e["epoch"] for e in metrics.epochs] == [1, 2, 3]
    assert [r["lr"] for r in read_scalars(run)] == [0.001] * 24 and read_scalars(run)[0]["step"] == 1
    snapshot = json.loads((run_dir / "config.json").read_text())
    assert snapshot["model"]["description"] == "VAE (yours)"
    assert (run_dir / "snapshot.npz").exists()  # pictures made from the model, without extra code
    status = read_status(run)[0]
    assert (status.epoch, status.epochs, status.batches_per_epoch) == (3, 3, 8)  # learned from its first epoch: an ETA
    code, out, err = vae_tui("runs", tmp_path)
    assert code == 0 and "scripted" in out and "finished" in out and " 3/3 " in out
    code, out, err = vae_tui("export", run_dir, "--output", tmp_path / "csv")
    assert code == 0, err
    assert (tmp_path / "csv" / "scalars.csv").read_text().splitlines()[:2] == ["step,lr", "1,0.001"]


def test_vae_tui_run_under_the_monitor_stops_the_script_on_q(tmp_path):
    script, run_dir = write_script(tmp_path), tmp_path / "watched"
    pid, fd = spawn_in_pty(["run", "--run-dir", str(run_dir), "--", sys.executable, str(script), "100000"], size=(100, 30))
    seen = drain(fd, 60, until=b"Training")
    assert b"Training" in seen, seen[-500:]
    wait_for(lambda: len(read_metrics(RunDir(run_dir).metrics_path).batches) > 10, "batches under the monitor")
    import os

    os.write(fd, b"q")
    seen = drain(fd, 10, until=b"quit?")
    os.write(fd, b"y")
    assert exit_status(pid, fd) == 130  # `vae-tui run` ends as the stopped script would under Ctrl+C
    assert read_status(RunDir(run_dir))[0].state == RunState.STOPPED
    assert (run_dir / "checkpoints" / "last.pt").exists()


def test_a_script_that_fails_before_it_trains_shows_its_output_and_one_line(tmp_path, vae_tui):
    script = tmp_path / "broken.py"
    script.write_text("print('loading the data')\nraise SystemExit('no data here')\n")
    done = subprocess.run(
        [sys.executable, "-m", "vae_tui", "run", "--run-dir", str(tmp_path / "r"), "--", sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stdout.split() == ["loading", "the", "data", "no", "data", "here"]  # its own words, on this terminal
    assert "exited with status 1 before it trained; its output is in" in done.stderr and "r/train.log" in done.stderr
    code, out, err = vae_tui("runs", tmp_path)  # a run folder that says what became of it
    assert code == 0 and "error" in out
    assert read_status(RunDir(tmp_path / "r"))[0].message.startswith(f"{sys.executable} {script} exited with status 1")
    code, out, err = vae_tui("run")
    assert code == 2 and "give the command to run after --" in err


def test_a_script_that_ends_cleanly_before_training_leaves_no_run(tmp_path):
    script = tmp_path / "helpful.py"
    script.write_text("import argparse\nargparse.ArgumentParser(description='my VAE').parse_args()\n")
    done = subprocess.run(
        [sys.executable, "-m", "vae_tui", "run", "--run-dir", str(tmp_path / "r"), "--", sys.executable, str(script), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "my VAE" in done.stdout
    assert "ended before it trained" in done.stderr and "error" not in done.stderr
    assert not (tmp_path / "r").exists()


@pytest.fixture(autouse=True)
def restore_signals():
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield
    for s, h in handlers.items():
        signal.signal(s, h)


def test_a_loop_of_very_short_epochs_records_a_few_and_always_the_last(tmp_path):
    from vae_tui.pacing import Credit

    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with vae_tui.init(run_dir=tmp_path / "mine", model=model, optimizer=optimizer, config={"epochs": 6}) as run:
        run._epochs.credit = Credit(0.0, 2.0)  # room for two epochs' records, then none by time
        for epoch in range(6):
            run.log(recon=model(torch.ones(2, 4)).pow(2).mean(), kl=0.0, size=2)
            run.log_epoch(test_loss=10.0 - epoch)
    records = read_metrics(RunDir(tmp_path / "mine").metrics_path).epochs
    assert [(r["epoch"], r["test_loss"]) for r in records] == [(1, 10.0), (2, 9.0), (6, 5.0)]
    assert read_status(RunDir(tmp_path / "mine"))[0].best_test_loss == 5.0
