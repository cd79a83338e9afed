"""`vae-tui runs`, `vae-tui export` and `train --detach` on real run directories."""

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vae_tui.metrics import read_metrics

SMALL = ["--dataset", "digits", "--hidden-dim", "32", "--latent-dim", "4"]
ROOT = Path(__file__).resolve().parent.parent



@pytest.fixture(scope="module")
def runs_folder(tmp_path_factory):
    """Three real runs: one finished, one stopped by SIGTERM, one killed (SIGKILL) mid-run."""
    folder = tmp_path_factory.mktemp("many") / "runs"
    done = subprocess.run([sys.executable, "-m", "vae_tui", "train", *SMALL, "--epochs", "3", "--run-dir", str(folder / "a-finished")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    for name, sig in (("b-stopped", signal.SIGTERM), ("c-killed", signal.SIGKILL)):
        run = folder / name
        proc = subprocess.Popen([sys.executable, "-m", "vae_tui", "train", *SMALL, "--epochs", "100000", "--run-dir", str(run)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        deadline = time.time() + 90
        while time.time() < deadline and not (run / "checkpoints" / "last.pt").exists():
            time.sleep(0.05)
        time.sleep(0.5)
        proc.send_signal(sig)
        proc.wait(30)
    return folder


def test_runs_lists_each_with_how_it_ended(runs_folder, vae_tui):
    code, out, err = vae_tui("runs", runs_folder)
    assert code == 0, err
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    assert set(rows) == {"a-finished", "b-stopped", "c-killed"}
    assert "finished" in rows["a-finished"] and "3/3" in rows["a-finished"] and "digits" in rows["a-finished"]
    assert "stopped" in rows["b-stopped"]
    assert "crashed" in rows["c-killed"]
    best = min(r["test_loss"] for r in read_metrics(runs_folder / "a-finished" / "metrics.jsonl") if r["kind"] == "epoch")
    assert f"{best:.3f}" in rows["a-finished"]
    assert "ago" in rows["a-finished"]


def test_runs_on_an_empty_or_missing_folder(tmp_path, vae_tui):
    code, out, _ = vae_tui("runs", tmp_path)
    assert code == 0 and "no runs under" in out
    code, _, err = vae_tui("runs", tmp_path / "nope")
    assert code == 2 and err.startswith("vae-tui: error:") and "is not a folder" in err


def test_export_csv_has_every_record(runs_folder, tmp_path, vae_tui):
    run = runs_folder / "a-finished"
    code, out, err = vae_tui("export", run, "--format", "csv", "--output", tmp_path / "csv")
    assert code == 0, err
    with open(tmp_path / "csv" / "batches.csv") as f:
        batches = list(csv.DictReader(f))
    with open(tmp_path / "csv" / "epochs.csv") as f:
        epochs = list(csv.DictReader(f))
    records = list(read_metrics(run / "metrics.jsonl"))
    assert [int(b["step"]) for b in batches] == [r["step"] for r in records if r["kind"] == "batch"]
    assert [float(e["test_loss"]) for e in epochs] == [r["test_loss"] for r in records if r["kind"] == "epoch"]
    assert str(tmp_path / "csv" / "batches.csv") in out


def test_export_tensorboard_can_be_read_back(runs_folder, tmp_path, vae_tui):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = runs_folder / "a-finished"
    code, out, err = vae_tui("export", run, "--format", "tensorboard", "--output", tmp_path / "tb")
    assert code == 0, err
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "batch"]
    assert [e.step for e in events.Scalars("batch/recon")] == steps
    assert len(events.Scalars("epoch/test_loss")) == 3


def test_export_refuses_nonsense(tmp_path, runs_folder, vae_tui):
    code, _, err = vae_tui("export", runs_folder / "a-finished", "--format", "xlsx")
    assert code == 2 and "unknown --format" in err and err.count("\n") == 1
    code, _, err = vae_tui("export", tmp_path, "--format", "csv")
    assert code == 2 and "not a vae-tui run directory" in err


def test_detach_returns_at_once_and_the_run_finishes_on_its_own(tmp_path):
    run = tmp_path / "bg"
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "vae_tui", "train", *SMALL, "--epochs", "40", "--run-dir", str(run), "--detach"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"vae-tui watch {run}" in proc.stdout and "train.log" in proc.stdout
    assert time.time() - started < 60
    deadline = time.time() + 120
    while time.time() < deadline and json.loads((run / "status.json").read_text())["state"] != "finished":
        time.sleep(0.2)
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    assert "finished 40 epochs" in (run / "train.log").read_text()
