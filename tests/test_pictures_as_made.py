"""Folders of pictures as cameras, phones and instruments make them: each case decoded as a viewer
shows it, checked on the pixels, not only that a run started."""

import warnings

import numpy as np
import pytest
from PIL import Image

from vae_tui.data import load_dataset
from vae_tui.data.folder import held_out


def pictures(ds):
    return np.concatenate([np.asarray(ds.train_x), np.asarray(ds.test_x)])


def many(folder, picture, count=10, name="p", ext="png", **save):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        picture.save(folder / f"{name}{i:02d}.{ext}", **save)
    return folder


def test_a_phone_photo_is_trained_upright(tmp_path):
    """Stored 16 wide by 8 tall, left half black; EXIF Orientation 6 says: turn a quarter clockwise
    to show it. Shown, it is 8 wide by 16 tall with its top half black."""
    stored = np.full((8, 16, 3), 255, np.uint8)
    stored[:, :8] = 0
    exif = Image.Exif()
    exif[0x0112] = 6
    folder = many(tmp_path / "phone", Image.fromarray(stored), ext="jpg", exif=exif, quality=95)
    ds = load_dataset(str(folder), tmp_path / "data")
    grid = pictures(ds)[:, 0].astype(float)
    assert ds.shape == (3, 8, 8)
    top, bottom, left, right = grid[:, :3].mean(), grid[:, 5:].mean(), grid[:, :, :3].mean(), grid[:, :, 5:].mean()
    assert top < 40 and bottom > 215 and abs(left - right) < 20, (top, bottom, left, right)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_pixels_are_white_whatever_hides_under_them(tmp_path, mode):
    """A dark square on a transparent ground whose hidden colour is black (as matplotlib's logo2.png)."""
    if mode == "P":
        picture = Image.new("P", (8, 8), 0)
        picture.putpalette([0, 0, 0, 40, 40, 40] + [0, 0, 0] * 254)
        picture.paste(1, (2, 2, 6, 6))
        folder = many(tmp_path / "logos", picture, transparency=0)
    else:
        rgba = np.zeros((8, 8, 4), np.uint8)
        rgba[2:6, 2:6] = (40, 40, 40, 255)
        picture = Image.fromarray(rgba, "RGBA").convert(mode)
        folder = many(tmp_path / "logos", picture)
    grid = pictures(load_dataset(str(folder), tmp_path / "data"))
    assert grid.shape[1] == (3 if mode == "RGBA" else 1)  # a grey palette, and grey with alpha, stay grey
    assert (grid[:, :, 0, 0] == 255).all() and (grid[:, :, 3, 3] == 40).all()


def test_twelve_bit_data_fills_the_range_and_says_how(tmp_path):
    ramp = (np.arange(16 * 16).reshape(16, 16) * 4095 // 255).astype(np.uint16)  # 0..4095, as a 12-bit camera writes
    folder = many(tmp_path / "mri", Image.fromarray(ramp))
    ds = load_dataset(str(folder), tmp_path / "data")
    grid = pictures(ds)
    assert grid.max() == 255 and grid.min() == 0 and 120 < grid.mean() < 135  # not 1/16th of it
    assert "16-bit pictures holding 12-bit values (largest 4,095) scaled from 0-4,095 to 0-255" in ds.source


def test_floats_outside_zero_to_one_are_scaled_by_the_folders_range(tmp_path):
    folder = tmp_path / "elevation"
    folder.mkdir()
    for i in range(6):
        heights = np.linspace(236.0, 1076.0, 64, dtype=np.float32).reshape(8, 8)
        Image.fromarray(heights, "F").save(folder / f"tile{i}.tif")
    ds = load_dataset(str(folder), tmp_path / "data")
    grid = pictures(ds)
    assert grid.min() == 0 and grid.max() == 255
    assert "float pictures scaled from their range in this folder (236 to 1076) to 0-255" in ds.source


def test_hidden_folders_are_skipped_inside_class_folders_too(tmp_path):
    for c in ("coffee", "tea"):
        many(tmp_path / "classes" / c, Image.new("L", (8, 8), 100), count=5)
    many(tmp_path / "classes" / "coffee" / ".thumbnails", Image.new("L", (8, 8), 0), count=3, name="thumb")
    ds = load_dataset(str(tmp_path / "classes"), tmp_path / "data")
    assert len(pictures(ds)) == 10 and (pictures(ds) == 100).all()


def test_a_single_picture_trains_and_says_what_that_means(tmp_path):
    folder = many(tmp_path / "single", Image.new("L", (8, 8), 77), count=1)
    ds = load_dataset(str(folder), tmp_path / "data")
    assert len(ds.train_x) == len(ds.test_x) == 1 and (np.asarray(ds.train_x) == 77).all()
    assert any("has one picture: it is trained on and tested on alike" in w for w in ds.warnings), ds.warnings


def test_multi_frame_files_give_their_first_frame_and_say_so(tmp_path):
    folder = tmp_path / "stacks"
    folder.mkdir()
    frames = [Image.new("L", (8, 8), 10 * (k + 1)) for k in range(5)]
    frames[0].save(folder / "stack.tif", save_all=True, append_images=frames[1:])
    frames[0].save(folder / "movie.gif", save_all=True, append_images=frames[1:])
    many(folder, Image.new("L", (8, 8), 10), count=4)
    ds = load_dataset(str(folder), tmp_path / "data")
    assert (pictures(ds) == 10).all()
    said = [w for w in ds.warnings if "several frames" in w]
    assert said and "2 files" in said[0] and "only the first frame of each is trained on" in said[0] and "(5 frames)" in said[0]


def test_a_grey_palette_gif_is_grey(tmp_path):
    picture = Image.new("L", (8, 8), 90).convert("P")
    folder = many(tmp_path / "gifs", picture, ext="gif")
    assert Image.open(folder / "p00.gif").mode == "P"
    assert load_dataset(str(folder), tmp_path / "data").shape == (1, 8, 8)


def test_a_picture_over_pillows_limit_is_left_out_in_words(tmp_path, monkeypatch):
    """Pillow refuses a file over twice Image.MAX_IMAGE_PIXELS as a possible decompression bomb and warns
    over once; scaled down here (400 pixels) so the test writes small files."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    folder = tmp_path / "scans"
    folder.mkdir()
    kept = [name for name in (f"p{i:02d}.png" for i in range(100)) if not held_out(folder / name, folder)][:6]
    for name in kept:
        Image.new("L", (8, 8), 50).save(folder / name)
    huge = next(folder / f"huge{i}.png" for i in range(100) if held_out(folder / f"huge{i}.png", folder))  # the only one held out by name
    Image.new("L", (30, 30), 200).save(huge)  # 900 pixels: refused by Pillow
    Image.new("L", (12, 12), 50).save(folder / "large.png")  # 144: warned about by Pillow
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw warning reaches the output
        ds = load_dataset(str(folder), tmp_path / "data")
    assert len(pictures(ds)) == 7 and (pictures(ds) == 50).all()
    said = [w for w in ds.warnings if huge.name in w]
    assert said and "which Pillow refuses to open as a possible decompression bomb" in said[0]
