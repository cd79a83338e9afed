import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from vae_tui.checkpoint import load_checkpoint, save_checkpoint
from vae_tui.cli import main
from vae_tui.metrics import read_metrics

SMALL = ["--dataset", "digits", "--hidden-dim", "32", "--latent-dim", "4"]



@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A real two-epoch run made through the CLI's own code path, shared by the error tests."""
    run = tmp_path_factory.mktemp("runs") / "done"
    mp = pytest.MonkeyPatch()
    mp.setattr(sys, "argv", ["vae-tui", "train", *SMALL, "--epochs", "2", "--run-dir", str(run)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    mp.undo()
    assert exit_info.value.code == 0
    return run


def test_headless_run_end_to_end(finished_run):
    config = json.loads((finished_run / "config.json").read_text())
    assert config["config"]["dataset"] == "digits" and config["config"]["epochs"] == 2
    assert config["dataset"]["train_size"] == 1500 and config["device"]["kind"] in ("cpu", "cuda", "mps")
    assert config["versions"]["torch"] == torch.__version__
    records = list(read_metrics(finished_run / "metrics.jsonl"))
    assert [r["step"] for r in records if r["kind"] == "batch"] == list(range(1, 25))
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]
    assert load_checkpoint(finished_run / "checkpoints" / "last.pt")["step"] == 24
    assert load_checkpoint(finished_run / "checkpoints" / "best.pt")["epoch"] >= 1


def test_headless_run_with_typers_runner(tmp_path):
    from typer.testing import CliRunner

    from vae_tui.cli import app

    result = CliRunner().invoke(app, ["train", *SMALL, "--epochs", "2", "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "dataset: digits, 1,500 train / 297 test images of 8x8" in out and "device:  " in out
    assert "epoch 1/2" in out and "epoch 2/2" in out and "samples/s" in out
    assert f"checkpoint: {tmp_path / 'r' / 'checkpoints' / 'last.pt'}" in out
    assert f"metrics:    {tmp_path / 'r' / 'metrics.jsonl'}" in out


def test_resume_continues_in_the_same_run_directory(tmp_path, finished_run, vae_tui):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(finished_run, run)
    code, out, err = vae_tui("train", "--resume", run, "--epochs", "3")
    assert code == 0, err
    assert "resuming at epoch 2, step 24" in out and "epoch 3/3" in out
    records = list(read_metrics(run / "metrics.jsonl"))
    assert [r["step"] for r in records if r["kind"] == "batch"] == list(range(1, 37))
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2, 3]


def damaged_copy(run, tmp_path, how):
    path = tmp_path / "ckpt.pt"
    data = (run / "checkpoints" / "last.pt").read_bytes()
    path.write_bytes(data[: len(data) // 3] if how == "truncated" else os.urandom(2048))
    return path


def other_shape(run, tmp_path):
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    state["config"]["hidden_dim"] = 48  # config and weights disagree: a different model shape
    return save_checkpoint({k: v for k, v in state.items() if k != "format_version"}, tmp_path / "other.pt")


BAD_INPUTS = {
    "zero epochs": (["--epochs", "0"], "--epochs"),
    "negative epochs": (["--epochs", "-3"], "--epochs"),
    "epochs not a number": (["--epochs", "ten"], "--epochs"),
    "zero batch size": (["--batch-size", "0"], "--batch-size"),
    "zero lr": (["--lr", "0"], "--lr"),
    "negative lr": (["--lr", "-0.1"], "--lr"),
    "nan lr": (["--lr", "nan"], "--lr"),
    "zero hidden dim": (["--hidden-dim", "0"], "--hidden-dim"),
    "negative latent dim": (["--latent-dim", "-2"], "--latent-dim"),
    "negative beta": (["--beta", "-1"], "--beta"),
    "zero checkpoint-every": (["--checkpoint-every", "0"], "--checkpoint-every"),
    "negative seed": (["--seed", "-1"], "--seed"),
    "unknown dataset": (["--dataset", "cifar10"], "--dataset"),
    "unknown device": (["--device", "tpu"], "--device"),
    "unknown option": (["--epoch", "3"], "--epoch"),
}


@pytest.mark.parametrize("args, names", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_options_give_one_line_and_a_usage_status(tmp_path, args, names, vae_tui):
    code, out, err = vae_tui("train", *args, "--run-dir", tmp_path / "r")
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("vae-tui: error:") and names in err
    assert "Traceback" not in out + err
    assert not (tmp_path / "r").exists()  # nothing was started


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_a_device_that_is_not_there(tmp_path, device, vae_tui):
    available = torch.cuda.is_available() if device == "cuda" else torch.backends.mps.is_available()
    if available:
        pytest.skip(f"{device} is available here")
    code, out, err = vae_tui("train", *SMALL, "--device", device, "--run-dir", tmp_path / "r")
    assert code == 2 and err.count("\n") == 1 and f"--device {device}" in err and "--device cpu" in err


def resume_cases(run, tmp_path):
    return {
        "missing file": (["--resume", tmp_path / "nope.pt"], "does not exist"),
        "truncated file": (["--resume", damaged_copy(run, tmp_path, "truncated")], "corrupt or truncated"),
        "random bytes": (["--resume", damaged_copy(run, tmp_path, "random")], "corrupt"),
        "other model shape": (["--resume", other_shape(run, tmp_path), "--epochs", "3", "--run-dir", tmp_path / "r"], "do not fit"),
        "conflicting --hidden-dim": (["--resume", run, "--hidden-dim", "64"], "--hidden-dim 64 does not match"),
        "conflicting --dataset": (["--resume", run, "--dataset", "mnist"], "--dataset mnist does not match"),
        "already finished": (["--resume", run], "already has 2 epochs"),
        "folder without checkpoints": (["--resume", tmp_path], "no checkpoints/last.pt"),
    }


@pytest.mark.parametrize(
    "case",
    ["missing file", "truncated file", "random bytes", "other model shape", "conflicting --hidden-dim",
     "conflicting --dataset", "already finished", "folder without checkpoints"],
)
def test_bad_resume_inputs_lose_nothing(tmp_path, finished_run, case, vae_tui):
    before = {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()}
    args, message = resume_cases(finished_run, tmp_path)[case]
    code, out, err = vae_tui("train", *args)
    assert code != 0
    assert err.count("\n") == 1 and err.startswith("vae-tui: error:") and message in err, err
    assert "Traceback" not in out + err
    assert {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()} == before


def test_unwritable_and_occupied_run_directories(tmp_path, finished_run, vae_tui):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _, err = vae_tui("train", *SMALL, "--run-dir", blocker / "run")
    assert code == 1 and "cannot write to run directory" in err and err.count("\n") == 1
    before = (finished_run / "metrics.jsonl").read_bytes()
    code, _, err = vae_tui("train", *SMALL, "--run-dir", finished_run)
    assert code == 1 and "already holds a run" in err and "--resume" in err
    assert (finished_run / "metrics.jsonl").read_bytes() == before


def test_python_dash_m_runs_headless_when_piped(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "vae_tui", "train", *SMALL, "--epochs", "1", "--run-dir", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "epoch 1/1" in proc.stdout and "\x1b[" not in proc.stdout  # plain text, no live bar


def test_sigterm_checkpoints_and_exits_143(tmp_path):
    run = tmp_path / "r"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vae_tui", "train", *SMALL, "--epochs", "1000", "--run-dir", str(run)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not (run / "checkpoints" / "last.pt").exists():
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "batch"]
    assert state["step"] == steps[-1] and "continue with: vae-tui train --resume" in out


def test_core_modules_do_not_import_textual():
    code = (
        "import sys, vae_tui.model, vae_tui.data, vae_tui.trainer, vae_tui.telemetry, vae_tui.checkpoint, "
        "vae_tui.series, vae_tui.metrics, vae_tui.headless, vae_tui.config, vae_tui.rundir, vae_tui.device, "
        "vae_tui.runner, vae_tui.worker, vae_tui.publish, vae_tui.follow, vae_tui.control, vae_tui.cli; "
        "assert 'textual' not in sys.modules, 'core pulled in textual'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
