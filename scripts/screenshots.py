"""Regenerate the SVG screenshots in screenshots/ from the real app training on digits.

    python scripts/screenshots.py            # writes screenshots/*.svg
    python scripts/screenshots.py --png      # also PNGs next to them (needs rsvg-convert)

For each size (80x24 and 120x40): the app trains a fresh digits run (seed 0) until a few dozen
epochs have passed, takes a "training" screenshot, presses space, waits for the trainer to
pause, and takes a "paused" one, then one of the latent view (key t).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from textual.pilot import Pilot

from vae_tui import runner
from vae_tui.follow import RunWatch
from vae_tui.tui.app import VaeApp

OUT = Path(__file__).resolve().parent.parent / "screenshots"
SIZES = [(80, 24), (120, 40)]


async def take(app: VaeApp, pilot: Pilot[None], name: str, written: list[Path]) -> None:
    app.redraw_all()  # every panel up to date in the same frame, whatever its CPU budget
    await pilot.pause(0.3)
    app.save_screenshot(name, path=str(OUT))
    written.append(OUT / name)


async def shoot(size: tuple[int, int], run_root: Path, epochs_before: int) -> list[Path]:
    prepared = runner.prepare({"dataset": "digits", "epochs": 300, "seed": 0, "device": "cpu"}, run_root / f"run-{size[0]}x{size[1]}", None)
    process = runner.spawn_worker(prepared.run)  # as `vae-tui train` does
    app = VaeApp(RunWatch(prepared.run.path, process, cpu_training=False))
    written = []
    async with app.run_test(size=size) as pilot:
        deadline = time.time() + 120
        while app.telemetry.epoch_count < epochs_before and time.time() < deadline:
            await pilot.pause(0.2)
        await take(app, pilot, f"training-{size[0]}x{size[1]}.svg", written)
        await pilot.press("space")
        while app.telemetry.status().state != "paused":
            await pilot.pause(0.1)
        await take(app, pilot, f"paused-{size[0]}x{size[1]}.svg", written)
        while app.telemetry.analysis() is None:
            await pilot.pause(0.1)
        await pilot.press("t")  # the latent view, on the same paused model
        await pilot.pause(0.3)
        await take(app, pilot, f"latent-{size[0]}x{size[1]}.svg", written)
        app.source.stop()
        while process.poll() is None:
            await pilot.pause(0.1)
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
