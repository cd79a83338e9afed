"""CIFAR-10, CIFAR-100, SVHN and CelebA read from files in their exact on-disk formats, through
torchvision's own classes, as a user's downloaded copy would be. torchvision checks each file's
md5 against the real dataset's; the test hands it the sums of the files it wrote (the one thing
that differs from a real copy), so every line of the reading path runs."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vae_tui.data import load_dataset


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def pattern(n: int, seed: int) -> np.ndarray:
    """n colour pictures of 32x32, (n, 3, 32, 32) uint8, each different."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


def write_cifar(root: Path, monkeypatch, hundred: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """cifar-10-batches-py (five training batches, a test batch, batches.meta) or cifar-100-python (train,
    test, meta): pickled dicts of (n, 3072) uint8 rows, as the real archives unpack."""
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR100 if hundred else CIFAR10
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    label_key = "fine_labels" if hundred else "labels"
    names = [f"class{i}" for i in range(100 if hundred else 10)]
    train_files = [name for name, _ in cls.train_list]
    train, test = pattern(4 * len(train_files), 1), pattern(6, 2)
    batches = {name: train[i * 4 : (i + 1) * 4] for i, name in enumerate(train_files)}
    batches[cls.test_list[0][0]] = test
    for name, images in batches.items():
        with open(folder / name, "wb") as f:
            pickle.dump({"data": images.reshape(len(images), -1), label_key: list(range(len(images))), "batch_label": name}, f)
    with open(folder / cls.meta["filename"], "wb") as f:
        pickle.dump({cls.meta["key"]: names}, f)
    monkeypatch.setattr(cls, "train_list", [[name, md5(folder / name)] for name in train_files])
    monkeypatch.setattr(cls, "test_list", [[cls.test_list[0][0], md5(folder / cls.test_list[0][0])]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(folder / cls.meta["filename"])})
    return train, test


@pytest.mark.parametrize("hundred", [False, True], ids=["cifar10", "cifar100"])
def test_cifar_is_read_from_its_own_files(tmp_path, monkeypatch, hundred):
    train, test = write_cifar(tmp_path, monkeypatch, hundred)
    data = load_dataset("cifar100" if hundred else "cifar10", tmp_path, download=False)
    assert data.shape == (3, 32, 32) and len(data.train_x) == len(train) and len(data.test_x) == 6
    assert np.array_equal(np.array(data.train_x), train) and np.array_equal(np.array(data.test_x), test)  # channels first
    assert list(data.test_y) == list(range(6))
    if hundred:
        assert data.class_names[:2] == ("class0", "class1") and len(data.class_names) == 100
    else:
        assert data.class_names[0] == "airplane"


def test_svhn_is_read_from_its_matlab_files(tmp_path, monkeypatch):
    from scipy.io import savemat
    from torchvision.datasets import SVHN

    folder = tmp_path / "svhn"
    folder.mkdir()
    split_list = {}
    pictures = {}
    for split, n in (("train", 12), ("test", 5)):
        images = pattern(n, 3 if split == "train" else 4)
        labels = np.arange(1, n + 1).reshape(-1, 1) % 10 + 1  # 1..10, where 10 is the digit 0
        filename = SVHN.split_list[split][1]
        savemat(folder / filename, {"X": images.transpose(2, 3, 1, 0), "y": labels})  # (32, 32, 3, n), as the real ones
        split_list[split] = [SVHN.split_list[split][0], filename, md5(folder / filename)]
        pictures[split] = (images, labels.ravel() % 10)
    monkeypatch.setattr(SVHN, "split_list", {**SVHN.split_list, **split_list})
    data = load_dataset("svhn", tmp_path, download=False)
    assert data.shape == (3, 32, 32) and len(data.train_x) == 12 and len(data.test_x) == 5
    assert np.array_equal(np.array(data.train_x), pictures["train"][0])
    assert list(data.train_y) == list(pictures["train"][1]) and data.class_names[0] == "0"


def test_celeba_is_read_from_its_pictures_and_lists(tmp_path, monkeypatch):
    from torchvision.datasets import CelebA

    folder = tmp_path / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    names = [f"{i:06d}.jpg" for i in range(1, 11)]
    partition = [0] * 6 + [1] * 2 + [2] * 2  # train, valid, test
    for i, name in enumerate(names):  # 178x218 as the aligned pictures are; a grey level each
        Image.new("RGB", (178, 218), (i * 20, i * 20, i * 20)).save(folder / "img_align_celeba" / name, quality=95)
    attrs = ["Smiling", "Young"]
    files = {
        "list_eval_partition.txt": "".join(f"{n} {p}\n" for n, p in zip(names, partition)),
        "identity_CelebA.txt": "".join(f"{n} {i + 1}\n" for i, n in enumerate(names)),
        "list_attr_celeba.txt": f"{len(names)}\n{' '.join(attrs)}\n" + "".join(f"{n} 1 -1\n" for n in names),
        "list_bbox_celeba.txt": f"{len(names)}\nimage_id x_1 y_1 width height\n" + "".join(f"{n} 1 2 3 4\n" for n in names),
        "list_landmarks_align_celeba.txt": f"{len(names)}\nlefteye_x lefteye_y righteye_x righteye_y nose_x nose_y "
        "leftmouth_x leftmouth_y rightmouth_x rightmouth_y\n" + "".join(f"{n} 69 109 106 113 77 142 73 152 108 154\n" for n in names),
    }
    for name, text in files.items():
        (folder / name).write_text(text)
    monkeypatch.setattr(
        CelebA, "file_list", [(file_id, md5(folder / name) if (folder / name).exists() else digest, name) for file_id, digest, name in CelebA.file_list]
    )
    data = load_dataset("celeba", tmp_path, download=False)
    assert data.shape == (3, 64, 64) and len(data.train_x) == 6 and len(data.test_x) == 2  # the partition's 0s and 2s
    grey = np.array(data.test_x).mean(axis=(1, 2, 3))
    assert np.allclose(grey, [8 * 20, 9 * 20], atol=3)  # the last two pictures, shorter side 64, centre crop
