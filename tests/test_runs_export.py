"""`vae-tui runs` and `vae-tui export` on run directories: fakes for each way a run ends, and the real reference run."""

import csv

import pytest

from conftest import dead_pid
from vae_tui.runfile.metrics import read_metrics
from vae_tui.runfile.schema import RunState


@pytest.fixture
def runs_folder(fake_run, tmp_path):
    """Runs that ended each way a run can: finished, stopped, errored, killed without a word, still training."""
    finished = fake_run("runs/a-finished", epochs=3)
    for _ in range(36):
        finished.step()
    stopped = fake_run("runs/b-stopped")
    for _ in range(30):
        stopped.step()
    stopped.end(RunState.STOPPED, "stopped at step 30")
    fake_run("runs/c-error").end(RunState.ERROR, "training failed: RuntimeError: out of memory")
    killed = fake_run("runs/d-killed")
    killed.kill(dead_pid())
    fake_run("runs/e-live").advance(6)
    return tmp_path / "runs"


def test_runs_lists_each_with_how_it_ended(runs_folder, vae_tui):
    code, out, err = vae_tui("runs", runs_folder)
    assert code == 0, err
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    assert set(rows) == {"a-finished", "b-stopped", "c-error", "d-killed", "e-live"}
    assert "finished" in rows["a-finished"] and "3/3" in rows["a-finished"] and "digits" in rows["a-finished"]
    best = min(r["test_loss"] for r in read_metrics(runs_folder / "a-finished" / "metrics.jsonl").epochs)
    assert f"{best:.3f}" in rows["a-finished"] and "ago" in rows["a-finished"]
    assert "stopped" in rows["b-stopped"] and "2/500" in rows["b-stopped"]
    assert "error" in rows["c-error"] and "crashed" in rows["d-killed"] and "training" in rows["e-live"]


def test_runs_on_an_empty_or_missing_folder(tmp_path, vae_tui):
    code, out, _ = vae_tui("runs", tmp_path)
    assert code == 0 and "no runs under" in out
    code, _, err = vae_tui("runs", tmp_path / "nope")
    assert code == 2 and err.startswith("vae-tui: error:") and "is not a folder" in err


def test_export_csv_has_every_record(finished_run, tmp_path, vae_tui):
    code, out, err = vae_tui("export", finished_run, "--format", "csv", "--output", tmp_path / "csv")
    assert code == 0, err
    with open(tmp_path / "csv" / "batches.csv") as f:
        batches = list(csv.DictReader(f))
    with open(tmp_path / "csv" / "epochs.csv") as f:
        epochs = list(csv.DictReader(f))
    metrics = read_metrics(finished_run / "metrics.jsonl")
    assert [int(b["step"]) for b in batches] == [int(s) for s in metrics.column("step")]
    assert [float(b["recon"]) for b in batches] == pytest.approx(metrics.column("recon").tolist())
    assert [float(e["test_loss"]) for e in epochs] == [r["test_loss"] for r in metrics.epochs]
    assert str(tmp_path / "csv" / "batches.csv") in out


def test_export_tensorboard_can_be_read_back(finished_run, tmp_path, vae_tui):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    code, out, err = vae_tui("export", finished_run, "--format", "tensorboard", "--output", tmp_path / "tb")
    assert code == 0, err
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    steps = [int(s) for s in read_metrics(finished_run / "metrics.jsonl").column("step")]
    assert [e.step for e in events.Scalars("batch/recon")] == steps
    assert len(events.Scalars("epoch/test_loss")) == 2


def test_export_refuses_nonsense(tmp_path, finished_run, vae_tui):
    code, _, err = vae_tui("export", finished_run, "--format", "xlsx")
    assert code == 2 and "unknown --format" in err and err.count("\n") == 1
    code, _, err = vae_tui("export", tmp_path, "--format", "csv")
    assert code == 2 and "not a vae-tui run directory" in err


def test_export_skips_damaged_records(finished_run, tmp_path, vae_tui):
    from conftest import copy_run

    run = copy_run(finished_run, tmp_path / "run")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "epoch", "epoch": 3}\n{"kind": "batch", "step": "x"}\nnot json\n')
    code, _, err = vae_tui("export", run, "--format", "csv", "--output", tmp_path / "csv")
    assert code == 0, err
    assert len((tmp_path / "csv" / "epochs.csv").read_text().splitlines()) == 1 + 2  # the header and the two good epochs
    assert len((tmp_path / "csv" / "batches.csv").read_text().splitlines()) == 1 + 24
