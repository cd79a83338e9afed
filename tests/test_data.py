import socket

import numpy as np
import pytest
import torch

from conftest import make_idx_dataset, write_idx
from vae_tui.data import DataError, idx as idx_module, load_dataset, load_digits
from vae_tui.data.idx import load_idx_dataset, read_idx
from vae_tui.training.device_data import to_device


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_plain_and_gzipped(tmp_path, gz):
    images = np.random.default_rng(1).integers(0, 256, (5, 4, 3)).astype(np.uint8)
    path = write_idx(tmp_path / "images-idx3-ubyte", images, gz=gz)
    np.testing.assert_array_equal(read_idx(path), images)


def test_truncated_idx_file_is_a_clear_error(tmp_path):
    path = write_idx(tmp_path / "images-idx3-ubyte", np.zeros((5, 4, 3), np.uint8))
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_not_an_idx_file(tmp_path):
    path = tmp_path / "junk"
    path.write_bytes(b"hello world")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_dataset_in_torchvision_layout(tmp_path, gz):
    make_idx_dataset(tmp_path, n_train=40, n_test=12, size=6, gz=gz)
    ds = load_idx_dataset("mnist", tmp_path)
    assert ds.train_x.shape == (40, 1, 6, 6) and ds.test_x.shape == (12, 1, 6, 6)
    assert ds.train_x.dtype == np.float32 and 0 <= ds.train_x.min() and ds.train_x.max() <= 1
    assert ds.shape == (1, 6, 6) and ds.train_y.shape == (40,) and ds.class_names[3] == "3"
    assert ds.spec()["shape"] == [1, 6, 6] and ds.spec()["train_size"] == 40


def test_digits_has_a_fixed_held_out_split_and_is_scikit_learns():
    from sklearn.datasets import load_digits as sklearn_digits

    a, b = load_digits(), load_digits()
    assert a.train_x.shape == (1500, 1, 8, 8) and a.test_x.shape == (297, 1, 8, 8)
    assert a.shape == (1, 8, 8) and a.train_x.max() == 1.0 and a.train_x.min() == 0.0
    np.testing.assert_array_equal(a.test_x, b.test_x)
    reference = sklearn_digits()  # read through scikit-learn's own loader: the same images and labels
    order = np.random.RandomState(0).permutation(1797)
    np.testing.assert_array_equal(a.train_x.reshape(-1, 64), (reference.data[order[297:]] / 16).astype(np.float32))
    np.testing.assert_array_equal(a.test_y, reference.target[order[:297]])


def test_auto_uses_mnist_when_present(tmp_path):
    make_idx_dataset(tmp_path)
    ds = load_dataset("auto", tmp_path)
    assert ds.name == "mnist" and "found in" in ds.source


def offline(*args, **kwargs):
    raise OSError("Name or service not known")


def test_offline_download_fails_fast_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setattr(socket, "create_connection", offline)
    with pytest.raises(DataError, match="--dataset digits"):
        load_dataset("mnist", tmp_path)
    with pytest.raises(DataError, match="--dataset digits"):
        load_dataset("fashion-mnist", tmp_path)


def test_auto_falls_back_to_digits_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(socket, "create_connection", offline)
    ds = load_dataset("auto", tmp_path)
    assert ds.name == "digits"
    assert "MNIST is not in" in ds.source and "no download mirror is reachable" in ds.source


def test_a_failing_download_is_one_data_error(tmp_path, monkeypatch):
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: socket.socket())

    class Broken:
        mirrors = ["https://example.invalid/"]

        def __init__(self, **kwargs):
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(idx_module, "_torchvision_class", lambda name: Broken)
    with pytest.raises(DataError, match="downloading mnist .* failed"):
        load_dataset("mnist", tmp_path)


def test_to_device_keeps_whole_splits_as_tensors(digits):
    dev = to_device(digits, torch.device("cpu"))
    assert dev.train_x.shape == (1500, 1, 8, 8) and dev.train_x.dtype == torch.float32 and len(dev.test_x) == 297


@pytest.mark.parametrize("damage, message", [("empty", "hold no images"), ("labels", "go outside 0..9")])
def test_idx_files_that_are_well_formed_but_wrong_are_one_line(tmp_path, damage, message):
    raw = make_idx_dataset(tmp_path)
    if damage == "empty":
        write_idx(raw / "train-images-idx3-ubyte", np.zeros((0, 6, 6), np.uint8))
        write_idx(raw / "train-labels-idx1-ubyte", np.zeros((0,), np.uint8))
    else:
        write_idx(raw / "train-labels-idx1-ubyte", np.full(40, 12, np.uint8))
    with pytest.raises(DataError, match=message):
        load_dataset("mnist", tmp_path)
