"""The command line: the reference run's files, resume, and every way a bad option or file is refused."""

import json
import os

import pytest
import torch

from conftest import SMALL, batch_steps, copy_run
from vae_tui.runfile.metrics import read_metrics
from vae_tui.runfile.schema import FORMAT
from vae_tui.training.checkpoint import load_checkpoint, save_checkpoint


def test_a_headless_run_writes_the_run_directory(finished_run):
    config = json.loads((finished_run / "config.json").read_text())
    assert config["format"] == FORMAT and config["config"]["dataset"] == "digits" and config["config"]["epochs"] == 2
    assert config["dataset"]["train_size"] == 1500 and config["dataset"]["shape"] == [1, 8, 8]
    assert config["device"]["kind"] in ("cpu", "cuda", "mps") and config["model"]["description"] == "64-32-4"
    assert torch.__version__.startswith(config["versions"]["torch"])
    assert batch_steps(finished_run) == list(range(1, 25))
    assert [r["epoch"] for r in read_metrics(finished_run / "metrics.jsonl").epochs] == [1, 2]
    assert load_checkpoint(finished_run / "checkpoints" / "last.pt")["step"] == 24
    assert load_checkpoint(finished_run / "checkpoints" / "best.pt")["epoch"] >= 1
    assert json.loads((finished_run / "status.json").read_text())["state"] == "finished"


def test_headless_run_with_typers_runner(tmp_path):
    from typer.testing import CliRunner

    from vae_tui.cli import app

    result = CliRunner().invoke(app, ["train", *SMALL, "--epochs", "1", "--iw-samples", "0", "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "dataset: digits, 1,500 train / 297 test images of 8x8" in out and "device:  " in out
    assert "epoch 1/1" in out and "samples/s" in out and "finished 1 epoch (12 steps)" in out
    assert f"checkpoint: {tmp_path / 'r' / 'checkpoints' / 'last.pt'}" in out
    assert f"metrics:    {tmp_path / 'r' / 'metrics.jsonl'}" in out


def test_resume_continues_in_the_same_run_directory(tmp_path, finished_run, vae_tui):
    run = copy_run(finished_run, tmp_path / "copy")
    code, out, err = vae_tui("train", "--resume", run, "--epochs", "3")
    assert code == 0, err
    assert "resuming at epoch 2, step 24" in out and "epoch 3/3" in out
    assert batch_steps(run) == list(range(1, 37))
    assert [r["epoch"] for r in read_metrics(run / "metrics.jsonl").epochs] == [1, 2, 3]


def damaged_copy(run, tmp_path, how):
    path = tmp_path / "ckpt.pt"
    data = (run / "checkpoints" / "last.pt").read_bytes()
    path.write_bytes(data[: len(data) // 3] if how == "truncated" else os.urandom(2048))
    return path


def other_shape(run, tmp_path):
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    state["config"]["hidden_dim"] = 48  # config and weights disagree: a different model shape
    return save_checkpoint(state, tmp_path / "other.pt")


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
    "seed beyond 64 bits": (["--seed", str(2**64)], "--seed"),
    "unknown dataset": (["--dataset", "cifar11"], "--dataset"),
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
    assert not (tmp_path / "r").exists()


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
    [
        "missing file",
        "truncated file",
        "random bytes",
        "other model shape",
        "conflicting --hidden-dim",
        "conflicting --dataset",
        "already finished",
        "folder without checkpoints",
    ],
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


def test_what_will_be_slow_or_odd_is_said_before_it_starts(tmp_path, vae_tui):
    code, out, err = vae_tui(
        "train",
        "--dataset",
        "digits",
        "--hidden-dim",
        "16",
        "--latent-dim",
        "80",
        "--epochs",
        "1",
        "--kl-warmup",
        "1000",
        "--batch-size",
        "5000",
        "--iw-samples",
        "0",
        "--run-dir",
        tmp_path / "r",
    )
    assert code == 0, err
    before = out[: out.index("epoch 1/1")]  # said up front, before training
    assert "warning: --kl-warmup 1000 is longer than the run's 1 epoch: beta only reaches 0.001" in before
    assert "warning: --batch-size 5,000 is more than the 1,500 training images" in before
    assert "warning: --latent-dim 80 is not smaller than an image (64 values)" in before
    assert "beta 1 (rising from 0 over 1000 epochs)" in before
