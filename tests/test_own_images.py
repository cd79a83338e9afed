"""A folder of the user's own pictures, end to end through `vae-tui train`: both architectures,
the skipped file, the images streamed, colour pictures in the run, and a resume that changes the
architecture refused."""

import json

import numpy as np
import pytest

from conftest import batch_steps, picture_folder
from vae_tui.runfile.files import read_snapshot
from vae_tui.runfile.layout import RunDir
from vae_tui.training.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def pets(tmp_path_factory):
    return picture_folder(tmp_path_factory.mktemp("own") / "pets", per_class=20, size=(28, 28))


@pytest.mark.parametrize("arch, placement, other", [("mlp", "device", "conv"), ("conv", "stream", "mlp")])
def test_a_folder_trains_end_to_end_and_a_resume_cannot_change_the_architecture(tmp_path, pets, vae_tui, arch, placement, other):
    run = tmp_path / "run"
    code, out, err = vae_tui(
        "train", "--dataset", pets, "--arch", arch, "--data-placement", placement, "--epochs", "2", "--batch-size", "8", "--iw-samples", "2", "--run-dir", run
    )
    assert code == 0, err
    assert "dataset: pets, " in out and "images of 28x28, 3 channels" in out
    assert "warning: 1 file could not be read as pictures and was skipped: " in out and "broken.png" in out
    assert (run / "skipped.txt").read_text().splitlines() == [str(pets / "cats" / "broken.png")]  # every one, kept
    assert f"images {'streamed from disk' if placement == 'stream' else 'on the device'}" in out
    assert "finished 2 epochs" in out
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["arch"] == arch and config["data_placement"] == placement
    assert config["dataset"]["shape"] == [3, 28, 28] and config["dataset"]["class_names"] == ["cats", "dogs"]
    saved = load_checkpoint(run / "checkpoints" / "last.pt")
    assert saved["config"]["arch"] == arch and saved["data"]["shape"] == [3, 28, 28]
    train = config["dataset"]["train_size"]
    assert train + config["dataset"]["test_size"] == 40  # every picture but the broken one and the text file
    assert batch_steps(run) == list(range(1, 2 * -(-train // 8) + 1))
    snapshot, problem = read_snapshot(RunDir(run))
    assert problem is None and snapshot.reconstructions.shape[1:] == (3, 28, 28)  # colour pictures for the panes
    assert snapshot.epoch == 2  # the last epoch's, not one past it
    evaluation = json.loads((run / "eval.json").read_text())
    assert np.isfinite(evaluation["iw_nll"]) and evaluation["samples"] == 2

    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code, out, err = vae_tui("train", "--resume", run, "--arch", other, "--epochs", "3")
    assert code != 0 and err.count("\n") == 1 and f"--arch {other} does not match the checkpoint" in err, err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_cache_that_cannot_be_written_is_one_warning_and_the_run_goes_on(tmp_path, pets, vae_tui, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("the cache folder would have to be under this file")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    run = tmp_path / "run"
    code, out, err = vae_tui("train", "--dataset", pets, "--epochs", "1", "--batch-size", "8", "--iw-samples", "2", "--run-dir", run)
    assert code == 0, err
    assert out.count("warning: decoded pictures cannot be kept in ") == 1 and "XDG_CACHE_HOME" in out
    assert "finished 1 epoch" in out and (run / "checkpoints" / "last.pt").exists()


def test_a_full_disk_while_caching_is_the_same_warning_and_leaves_no_half_entry(tmp_path, monkeypatch):
    import errno

    from vae_tui.data import cache, load_dataset

    def full(fd, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "_claim", full)
    folder = picture_folder(tmp_path / "pets", per_class=6)
    data = load_dataset(str(folder), tmp_path / "data")
    assert len(data.train_x) + len(data.test_x) == 12 and data.train_x.shape[1:] == (3, 10, 10)
    assert len(data.warnings) == 1, data.warnings  # said once for both splits
    assert data.warnings[0].startswith(f"decoded pictures cannot be kept in {cache.cache_folder()}: no space left on ")
    assert data.warnings[0].endswith("they are decoded again each run (set XDG_CACHE_HOME to a folder that can hold them)")
    assert not list(cache.cache_folder().glob("*.u8*")) and not list(cache.cache_folder().glob(".*tmp"))


def test_a_folder_that_grew_starts_a_new_run_from_the_old_ones_weights(tmp_path, vae_tui):
    """--resume cannot go on with a shuffling made for fewer pictures, and says what can: --init-from,
    a new run from the checkpoint's weights and Adam's state, with a schedule of its own."""
    from vae_tui.runfile.metrics import read_metrics

    folder = picture_folder(tmp_path / "pets", per_class=20, size=(12, 12))
    first, second = tmp_path / "first", tmp_path / "second"
    small = ("--hidden-dim", "32", "--latent-dim", "4", "--batch-size", "8", "--iw-samples", "0")
    code, _, err = vae_tui("train", "--dataset", folder, *small, "--epochs", "3", "--run-dir", first)
    assert code == 0, err
    picture_folder(tmp_path / "more", per_class=5, size=(12, 12))
    for c in ("cats", "dogs"):
        for picture in (tmp_path / "more" / c).glob("*.png"):
            picture.rename(folder / c / f"new-{picture.name}")
    code, _, err = vae_tui("train", "--resume", first, "--epochs", "4")
    assert code != 0 and err.count("\n") == 1 and "start a new run from its weights with --init-from" in err, err
    code, out, err = vae_tui("train", "--dataset", folder, "--init-from", first, "--epochs", "1", "--batch-size", "8", "--iw-samples", "0", "--run-dir", second)
    assert code == 0, err
    assert "starting from the weights and Adam's state of" in out and "(epoch 3, step" in out
    config = json.loads((second / "config.json").read_text())
    assert config["weights_from"] == str(first) and config["config"]["hidden_dim"] == 32 and config["dataset"]["train_size"] > 36
    trained, fresh = read_metrics(first / "metrics.jsonl").column("loss"), read_metrics(second / "metrics.jsonl").column("loss")
    assert fresh[0] < trained[0] - 0.5 * (trained[0] - trained[-1])  # it starts where the old run got to, not from scratch
    code, _, err = vae_tui("train", "--dataset", folder, "--init-from", first, "--hidden-dim", "64", "--run-dir", tmp_path / "third")
    assert code == 2 and "--hidden-dim 64 does not match the checkpoint's" in err, err
