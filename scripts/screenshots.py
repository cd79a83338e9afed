"""Regenerate the SVG screenshots in screenshots/ from the real app training on digits.

    python scripts/screenshots.py            # writes screenshots/*.svg
    python scripts/screenshots.py --png      # also PNGs next to them (needs rsvg-convert)

For each size (80x24 and 120x40): the app trains a fresh digits run (seed 0) until a few dozen
epochs have passed, takes a "training" screenshot, presses space, waits for the trainer to
pause, and takes a "paused" one.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from vae_tui.config import TrainConfig
from vae_tui.data import load_digits
from vae_tui.device import pick_device
from vae_tui.metrics import MetricsWriter
from vae_tui.rundir import open_run_dir
from vae_tui.telemetry import Telemetry
from vae_tui.trainer import Controls, Trainer
from vae_tui.tui.app import VaeApp

OUT = Path(__file__).resolve().parent.parent / "screenshots"
SIZES = [(80, 24), (120, 40)]


async def shoot(size: tuple[int, int], run_root: Path, epochs_before: int) -> list[Path]:
    run = open_run_dir(run_root / f"run-{size[0]}x{size[1]}")
    config = TrainConfig(dataset="digits", epochs=300, seed=0, run_dir=str(run.path)).validate()
    trainer = Trainer(config, load_digits(), pick_device("cpu"), Telemetry(MetricsWriter(run.metrics_path)), Controls(), run)
    app = VaeApp(trainer)
    written = []
    async with app.run_test(size=size) as pilot:
        deadline = time.time() + 120
        while len(app.telemetry.epochs()) < epochs_before and time.time() < deadline:
            await pilot.pause(0.2)
        app.redraw_all()  # every panel up to date in the same frame, whatever its CPU budget
        await pilot.pause(0.3)
        name = f"training-{size[0]}x{size[1]}.svg"
        app.save_screenshot(name, path=str(OUT))
        written.append(OUT / name)
        await pilot.press("space")
        while app.telemetry.status().state != "paused":
            await pilot.pause(0.1)
        app.redraw_all()
        await pilot.pause(0.3)
        name = f"paused-{size[0]}x{size[1]}.svg"
        app.save_screenshot(name, path=str(OUT))
        written.append(OUT / name)
        app.controls.stop(save=False)
        await pilot.pause(0.5)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--png", action="store_true", help="also convert each SVG to PNG with rsvg-convert")
    parser.add_argument("--epochs-before", type=int, default=40, help="epochs to train before the first screenshot")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for size in SIZES:
            for path in asyncio.run(shoot(size, Path(tmp), args.epochs_before)):
                print(path)
                if args.png:
                    if shutil.which("rsvg-convert") is None:
                        raise SystemExit("rsvg-convert not found: apt-get install librsvg2-bin")
                    subprocess.run(["rsvg-convert", str(path), "-o", str(path.with_suffix(".png"))], check=True)


if __name__ == "__main__":
    main()
