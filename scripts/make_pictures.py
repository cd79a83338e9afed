"""Write a folder of colourful pictures to try vae-tui on: gradients with ellipses or rectangles,
in ten class sub-folders (the class: how many shapes, and which kind).

    python scripts/make_pictures.py ~/shapes                  # 3,000 pictures of 32x32
    python scripts/make_pictures.py ~/shapes --count 20000 --size 64
    vae-tui train --dataset ~/shapes --arch conv

The benchmarks and the screenshots use it too, so their figures and pictures can be made again.
"""

from __future__ import annotations

import argparse
import os
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

CLASSES = 10


def _write_some(args: tuple[Path, int, int, int]) -> None:
    from PIL import Image, ImageDraw

    folder, start, stop, size = args
    rng = np.random.default_rng(start)
    for i in range(start, stop):
        label = i % CLASSES
        top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        ramp = np.linspace(0, 1, size)[:, None, None]
        background = (top * (1 - ramp) + bottom * ramp).astype(np.uint8).repeat(size, axis=1)
        picture = Image.fromarray(background)
        draw = ImageDraw.Draw(picture)
        for _ in range(1 + label % 4):
            x0, y0 = rng.integers(0, size * 3 // 4, 2)
            w, h = rng.integers(size // 8, size // 2, 2)
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if label < 5 else draw.rectangle)([x0, y0, x0 + w, y0 + h], fill=colour)
        picture.save(folder / f"class{label}" / f"{i:06d}.png")


def write_folder(folder: Path, count: int, size: int) -> float:
    """Write `count` PNGs of size x size into folder/class0..class9; the seconds it took."""
    for label in range(CLASSES):
        (folder / f"class{label}").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    step = 500
    with Pool(os.cpu_count() or 1) as pool:
        pool.map(_write_some, [(folder, s, min(s + step, count), size) for s in range(0, count, step)])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    seconds = write_folder(args.folder.expanduser(), args.count, args.size)
    print(f"{args.count:,} pictures of {args.size}x{args.size} in {args.folder} ({seconds:.1f} s)")


if __name__ == "__main__":
    main()
