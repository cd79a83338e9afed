"""Every row of the README's bad-input table, run as written: one line, the exit status it says,
no traceback, nothing saved touched. The table is the specification; this test keeps it honest."""

import re
import shlex
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from vae_tui.cli import main
from vae_tui.data.folder import held_out
from vae_tui.training.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint

README = Path(__file__).resolve().parent.parent / "README.md"
ROW = re.compile(r"^\| (?P<input>.+?) \| `(?P<command>vae-tui[^`]*)` \| `(?P<says>[^`]+)` \((?P<code>\d)\) \|$")


def table_rows() -> list[tuple[str, str, str, int]]:
    text = README.read_text(encoding="utf-8")
    body = text[text.index("<!-- bad-input-table -->") : text.index("<!-- /bad-input-table -->")]
    rows = [ROW.match(line) for line in body.splitlines() if line.startswith("| `") or line.startswith("| a")]
    rows = [m for m in rows if m]
    assert len(rows) >= 30, "the README's bad-input table lost rows, or this parser stopped matching them"
    return [(m["input"], m["command"], m["says"], int(m["code"])) for m in rows]


class WritesAFile:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG's signature, its header chunk and its end: enough for Pillow to read the size."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def files(tmp_path_factory, finished_run):
    """The files the table's capitals stand for, made once: the reference run and broken things."""
    root = tmp_path_factory.mktemp("bad-input")
    run = finished_run
    good = (run / "checkpoints" / "last.pt").read_bytes()
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    paths = {
        "RUN": run,
        "NEW": root / "new-run",
        "FILE": root / "a-file",
        "EMPTY": root / "empty",
        "MISSING.pt": root / "missing.pt",
        "BADIDX": root / "badidx",
    }
    paths["FILE"].write_text("not a folder")
    paths["PICS"] = root / "pics"
    paths["PICS"].mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 60, 0, 0)).save(paths["PICS"] / f"{i}.png")
    paths["EMPTY"].mkdir()
    paths["BADTEST"] = root / "badtest"  # every picture fine but the one in ten held out by name
    paths["BADTEST"].mkdir()
    for i in range(30):
        picture = paths["BADTEST"] / f"{i}.png"
        if held_out(picture, paths["BADTEST"]):
            picture.write_bytes(b"damaged")
        else:
            Image.new("L", (8, 8), i).save(picture)
    paths["HUGE"] = root / "huge"  # a picture whose header says 14000x14000: Pillow refuses it on opening
    paths["HUGE"].mkdir()
    (paths["HUGE"] / "scan.png").write_bytes(png_header_only(14000, 14000))
    raw = paths["BADIDX"] / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"this is not an IDX file at all")
    paths["TRUNCATED.pt"] = root / "truncated.pt"
    paths["TRUNCATED.pt"].write_bytes(good[: len(good) // 2])
    paths["RANDOM.pt"] = root / "random.pt"
    paths["RANDOM.pt"].write_bytes(bytes(range(256)) * 64)
    paths["PICKLE.pt"] = root / "pickle.pt"
    torch.save({"format_version": 1, "payload": WritesAFile(str(root / "pwned"))}, paths["PICKLE.pt"])
    paths["NEWER.pt"] = root / "newer.pt"
    torch.save({**state, "format_version": FORMAT_VERSION + 1}, paths["NEWER.pt"])
    shape = {**state, "model": {**state["model"], "encoder.fc1.weight": torch.zeros(7, 64)}}
    paths["SHAPE.pt"] = save_checkpoint(shape, root / "shape.pt")
    paths["SIZE.pt"] = save_checkpoint({**state, "data": {**state["data"], "train_size": 1000}}, root / "size.pt")
    paths["SCRIPT.py"] = root / "script.py"  # a training script with its model in it, and argparse at module level
    paths["SCRIPT.py"].write_text(
        "import argparse\nimport torch.nn as nn\n\nparser = argparse.ArgumentParser()\n"
        "parser.add_argument('--data', required=True)\nargs = parser.parse_args()\n\n\n"
        "class VAE(nn.Module):\n    pass\n"
    )
    return root, paths


ROWS = table_rows()


@pytest.mark.parametrize("what, command, says, code", ROWS, ids=[r[1] for r in ROWS])
def test_every_row_of_the_readme_table(files, tmp_path, monkeypatch, capsys, what, command, says, code):
    root, paths = files
    if command == "vae-tui train --device cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.chdir(tmp_path)  # a row that wrongly got through would start its run here, not in the repo
    args = []
    for word in shlex.split(command)[1:]:
        for name, path in sorted(paths.items(), key=lambda item: -len(item[0])):
            if word == name or word.startswith(name + "/") or word.startswith(name + ":"):
                word = str(path) + word[len(name) :]
                break
        args.append(word)
    before = {p: p.read_bytes() for p in paths["RUN"].rglob("*") if p.is_file()}
    monkeypatch.setattr(sys, "argv", ["vae-tui", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    assert exit_info.value.code == code, err
    assert err.startswith("vae-tui: error:") and err.count("\n") == 1, err
    assert says in err and "Traceback" not in out + err
    assert {p: p.read_bytes() for p in paths["RUN"].rglob("*") if p.is_file()} == before
    assert not (root / "pwned").exists()  # the crafted pickle ran nothing
    assert not paths["NEW"].exists() and not (tmp_path / "runs").exists()  # nothing was started
