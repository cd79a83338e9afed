"""Datasets: digits, torchvision's named datasets (on files the tests write), folders of pictures,
and the decoded-picture cache."""

import json
import os
import socket
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_idx_dataset, picture_folder, write_idx
from vae_tui.data import DataError, cache, load_dataset, load_digits, named
from vae_tui.data.folder import held_out
from vae_tui.errors import ConfigError
from vae_tui.training.device_data import to_device


def test_mnist_through_torchvision_from_files_in_its_layout(tmp_path):
    make_idx_dataset(tmp_path, n_train=40, n_test=12, size=6)
    ds = load_dataset("mnist", tmp_path)
    assert ds.train_x.shape == (40, 1, 6, 6) and ds.test_x.shape == (12, 1, 6, 6) and ds.train_x.dtype == np.uint8
    assert ds.shape == (1, 6, 6) and ds.train_y.shape == (40,) and ds.class_names[3] == "3"
    assert ds.spec()["shape"] == [1, 6, 6] and ds.spec()["train_size"] == 40


def test_damaged_files_are_one_line(tmp_path):
    raw = make_idx_dataset(tmp_path)
    (raw / "train-images-idx3-ubyte").write_bytes(b"not an IDX file at all")
    with pytest.raises(DataError, match="cannot read mnist from"):
        load_dataset("mnist", tmp_path)


@pytest.mark.parametrize("damage, message", [("empty", "cannot read mnist|hold no images"), ("labels", "go outside 0..9")])
def test_idx_files_that_are_well_formed_but_wrong_are_one_line(tmp_path, damage, message):
    raw = make_idx_dataset(tmp_path)
    if damage == "empty":
        write_idx(raw / "train-images-idx3-ubyte", np.zeros((0, 6, 6), np.uint8))
        write_idx(raw / "train-labels-idx1-ubyte", np.zeros((0,), np.uint8))
    else:
        write_idx(raw / "train-labels-idx1-ubyte", np.full(40, 12, np.uint8))
    with pytest.raises(DataError, match=message):
        load_dataset("mnist", tmp_path)


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


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "svhn"])
def test_offline_download_fails_fast_with_a_clear_message(tmp_path, monkeypatch, name):
    monkeypatch.setattr(socket, "create_connection", offline)
    with pytest.raises(DataError, match="--dataset digits"):
        load_dataset(name, tmp_path)


def test_auto_falls_back_to_digits_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(socket, "create_connection", offline)
    ds = load_dataset("auto", tmp_path)
    assert ds.name == "digits"
    assert "MNIST is not in" in ds.source and "no download server is reachable" in ds.source


def test_a_failing_download_is_one_data_error(tmp_path, monkeypatch):
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: socket.socket())

    class Broken:
        mirrors = ["https://example.invalid/"]

        def __init__(self, **kwargs):
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(named, "torchvision_class", lambda name: Broken)
    with pytest.raises(DataError, match="downloading mnist .* failed"):
        load_dataset("mnist", tmp_path)


def test_to_device_keeps_whole_splits_as_float_tensors(digits, tmp_path):
    dev = to_device(digits, torch.device("cpu"))
    assert dev.train_x.shape == (1500, 1, 8, 8) and dev.train_x.dtype == torch.float32 and len(dev.test_x) == 297
    make_idx_dataset(tmp_path)
    stored_as_bytes = load_dataset("mnist", tmp_path)
    moved = to_device(stored_as_bytes, torch.device("cpu"))
    assert moved.train_x.dtype == torch.float32 and float(moved.train_x.max()) <= 1.0
    assert torch.equal(moved.train_x, torch.from_numpy(np.array(stored_as_bytes.train_x)).float() / 255)


# -- a folder of pictures ---------------------------------------------------------------------------
def test_a_folder_of_class_folders_is_a_labelled_dataset(tmp_path):
    folder = picture_folder(tmp_path / "pets")
    ds = load_dataset(str(folder), tmp_path / "data")
    assert ds.class_names == ("cats", "dogs") and ds.shape == (3, 10, 10) and ds.train_x.dtype == np.uint8
    assert len(ds.train_x) + len(ds.test_x) == 24 and len(ds.test_x) >= 1  # the damaged file is not one of them
    assert [os.path.basename(f) for f in ds.skipped] == ["broken.png"]
    assert set(ds.train_y.tolist()) <= {0, 1} and ds.source.startswith("pictures in")
    expected = [held_out(f, folder) for f in sorted(folder.rglob("*.png")) if f.name != "broken.png"]
    assert len(ds.test_x) == sum(expected) or sum(expected) == 0  # the held-out files are named by their hash


def test_pictures_are_resized_and_cropped_and_grey_when_asked(tmp_path):
    folder = tmp_path / "flat"
    folder.mkdir()
    for i in range(8):
        Image.fromarray(np.full((20, 30, 3), i * 30, dtype=np.uint8)).save(folder / f"{i}.png")
    ds = load_dataset(str(folder), tmp_path / "data", image_size=8, channels=1)
    assert ds.shape == (1, 8, 8) and ds.class_names is None and ds.train_y is None  # flat: no labels
    own = load_dataset(str(folder), tmp_path / "data")
    assert own.shape == (3, 20, 20)  # they all agree on 30x20: the shorter side, in colour


def test_the_cache_is_used_again_and_made_again_when_a_file_changes(tmp_path, monkeypatch):
    from vae_tui.data import folder as folder_module

    folder = picture_folder(tmp_path / "pets")
    calls = []
    real = folder_module.decode_all
    monkeypatch.setattr(folder_module, "decode_all", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = load_dataset(str(folder), tmp_path / "data")
    decoded = len(calls)
    again = load_dataset(str(folder), tmp_path / "data")
    assert len(calls) == decoded and np.array_equal(np.array(first.train_x), np.array(again.train_x))  # from the cache
    changed = sorted((folder / "dogs").glob("*.png"))[0]
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(changed)
    os.utime(changed, (time.time() + 5, time.time() + 5))
    load_dataset(str(folder), tmp_path / "data")
    assert len(calls) > decoded  # decoded again: a file changed
    metas = [json.loads(m.read_text()) for m in cache.cache_folder().glob("*.json")]
    entries = [m for m in metas if "record" not in m]  # the pictures, not the small size record
    ours = sorted(e["source"].split()[-1] for e in entries if e["source"].startswith(str(folder.resolve())))
    assert ours == ["test", "train"]  # the copies decoded before the change are gone
    assert len(list(cache.cache_folder().glob("*.u8"))) == len(entries)


@pytest.mark.parametrize(
    "args, error, message",
    [
        ({"image_size": 0}, ConfigError, "--image-size must be from 1 to 1024"),
        ({"image_size": 2000}, ConfigError, "--image-size must be from 1 to 1024"),
        ({"channels": 2}, ConfigError, "--channels must be 1 (grey) or 3 (colour)"),
    ],
)
def test_bad_folder_options_are_one_line(tmp_path, args, error, message):
    folder = picture_folder(tmp_path / "pets")
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_dataset(str(folder), tmp_path / "data", **args)


def test_a_folder_without_pictures_or_a_file_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no pictures here")
    with pytest.raises(DataError, match="no pictures in"):
        load_dataset(str(tmp_path / "empty"), tmp_path / "data")
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(DataError, match="is a file, not a folder of pictures"):
        load_dataset(str(tmp_path / "a.png"), tmp_path / "data")


# -- pictures as people have them ---------------------------------------------------------------------
def test_16_bit_pictures_from_an_instrument_are_scaled_not_clipped_to_white(tmp_path):
    folder = tmp_path / "microscope"
    folder.mkdir()
    for i in range(12):
        frame = np.full((16, 16), 1000 + i, dtype=np.uint16)  # a dim top half, as 12-bit cameras write
        frame[8:] = 30000
        Image.fromarray(frame).save(folder / f"frame{i:02d}.png")
    floats = tmp_path / "floats"
    floats.mkdir()
    for i in range(4):
        Image.fromarray(np.full((16, 16), 0.5, dtype=np.float32)).save(floats / f"f{i}.tif")
    assert Image.open(folder / "frame00.png").mode.startswith("I")  # what Pillow hands over: more than 8 bits
    ds = load_dataset(str(folder), tmp_path / "data")
    pictures = np.concatenate([np.array(ds.train_x), np.array(ds.test_x)])
    assert ds.shape == (1, 16, 16) and len(pictures) == 12
    assert abs(pictures[:, 0, :8].mean() - 1000 / 257) < 1 and abs(pictures[:, 0, 8:].mean() - 30000 / 257) < 1
    grey = np.concatenate([np.array(load_dataset(str(floats), tmp_path / "data").train_x)])
    assert abs(grey.mean() - 127.5) <= 1  # floats in [0, 1]: by 255
    colour = tmp_path / "colour16"
    colour.mkdir()
    rgb = np.zeros((8, 8, 3), np.uint16)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 1000, 30000, 65535
    for i in range(4):
        write_png16(colour / f"c{i}.png", rgb)
    pictures = np.array(load_dataset(str(colour), tmp_path / "data").train_x)
    assert pictures.shape[1] == 3 and list(pictures[0, :, 0, 0]) == [3, 117, 255]  # 16-bit colour: by 256, never clipped


def write_png16(path, rgb) -> None:
    """A 16-bit-per-channel colour PNG (Pillow cannot write one), as cameras and scanners make them."""
    import struct
    import zlib

    height, width, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_pictures_beside_class_folders_train_as_a_class_of_their_own_and_are_said(tmp_path):
    folder = tmp_path / "flatsub"
    (folder / "old").mkdir(parents=True)
    (folder / "empty-class").mkdir()
    for i in range(20):
        Image.fromarray(np.full((8, 8), i * 10, dtype=np.uint8)).save(folder / f"{i}.png")
    for i in range(3):
        Image.fromarray(np.full((8, 8), 200, dtype=np.uint8)).save(folder / "old" / f"{i}.png")
    (folder / "old" / "gone.png").symlink_to(tmp_path / "nowhere.png")  # a link to nothing
    ds = load_dataset(str(folder), tmp_path / "data")
    assert len(ds.train_x) + len(ds.test_x) == 23 and ds.class_names == ("(top level)", "old")
    assert [os.path.basename(f) for f in ds.skipped] == ["gone.png"]  # counted among the unreadable
    assert any("20 pictures beside the class folders" in w and "'(top level)'" in w for w in ds.warnings), ds.warnings
    assert any("1 class folder" in w and "empty-class" in w and "left out" in w for w in ds.warnings), ds.warnings


def test_a_held_out_split_that_cannot_be_read_says_so_and_what_to_do(tmp_path):
    from vae_tui.data.folder import held_out

    folder = tmp_path / "badtest"
    folder.mkdir()
    for i in range(40):
        path = folder / f"{i}.png"
        if held_out(path, folder):
            path.write_bytes(b"not a picture")
        else:
            Image.fromarray(np.full((8, 8), i, dtype=np.uint8)).save(path)
    bad = sum(held_out(folder / f"{i}.png", folder) for i in range(40))
    with pytest.raises(DataError) as error:
        load_dataset(str(folder), tmp_path / "data")
    said = str(error.value)
    assert f"the held-out split of {folder}" in said and "is empty" in said and f"its {bad} pictures could not be read" in said
    assert f"the other {40 - bad}" in said and "--test-dir" in said
