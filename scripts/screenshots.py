"""Regenerate the SVG screenshots in screenshots/ from the real app training.

    python scripts/screenshots.py            # writes screenshots/*.svg
    python scripts/screenshots.py --png      # also PNGs next to them, drawn by headless Chromium

For each size (80x24 and 120x40): the app trains a fresh digits run (seed 0) until a few dozen
epochs have passed, takes a "training" screenshot, presses space, waits for the trainer to
pause, and takes a "paused" one, then one of the latent view (key t). Then the first screen of a
first run on a folder of coloured shapes (decoding them into the cache), and a colour run: a
convolutional VAE on a folder of coloured shapes (scripts/make_pictures.py), at 120x40,
training and its latent view, drawn in 24-bit colour. Then steering and comparing, at 120x40: a
digits run whose learning rate is doubled with `]` and whose beta is typed with `k` (the charts
mark both), then two finished runs of the same folder picked with `p` and drawn over it. Last,
the classic example's script, unchanged, under `vae-tui run` (MNIST's test split from
../shared/data/mnist), with its own output under the charts, and a latent-diffusion style KL
autoencoder with a discriminator (tests/scripts/kl_autoencoder_gan.py), its terms chart on the
discriminator's series.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from make_pictures import write_folder
from textual.pilot import Pilot

from vae_tui.launch.prepare import Request
from vae_tui.launch.spawn import spawn_worker, start_worker
from vae_tui.runfile.schema import RunState
from vae_tui.tui.app import VaeApp
from vae_tui.tui.starting import StartingApp
from vae_tui.watching.follow import RunWatch

OUT = Path(__file__).resolve().parent.parent / "screenshots"
SIZES = [(80, 24), (120, 40)]
COLOUR_PICTURES, COLOUR_EPOCHS = 3000, 12


async def take(app: VaeApp, pilot: Pilot[None], name: str, written: list[Path]) -> None:
    app.redraw_all()  # every panel up to date in the same frame, whatever its CPU budget
    await pilot.pause(0.3)
    app.save_screenshot(name, path=str(OUT))
    written.append(OUT / name)


async def stop_run(app: VaeApp, pilot: Pilot[None], process: Any) -> None:
    """Stop the run the app watches, and wait for its process to end."""
    app.source.stop()
    while process.poll() is None:
        await pilot.pause(0.1)


async def shoot(size: tuple[int, int], run_root: Path, epochs_before: int, dataset: str = "digits", prefix: str = "", arch: str = "mlp") -> list[Path]:
    options = {"dataset": dataset, "arch": arch, "epochs": 300, "seed": 0, "device": "cpu"}
    run_dir = run_root / f"run-{prefix}{size[0]}x{size[1]}"
    worker = start_worker(Request(options, str(run_dir), view="monitor"))  # as `vae-tui train` does
    worker.stop_listening()
    process = worker.process
    assert worker.run_dir is not None
    app = VaeApp(RunWatch(worker.run_dir, process))
    written = []
    async with app.run_test(size=size) as pilot:
        deadline = time.time() + 120
        while app.telemetry.epoch_count < epochs_before and time.time() < deadline:
            await pilot.pause(0.2)
        await take(app, pilot, f"{prefix or 'training-'}{size[0]}x{size[1]}.svg", written)
        await pilot.press("space")
        while app.telemetry.status().state != RunState.PAUSED:
            await pilot.pause(0.1)
        if not prefix:
            await take(app, pilot, f"paused-{size[0]}x{size[1]}.svg", written)
        while app.telemetry.analysis() is None:
            await pilot.pause(0.1)
        await pilot.press("t")  # the latent view, on the same paused model
        await pilot.pause(0.3)
        await take(app, pilot, f"{prefix}latent-{size[0]}x{size[1]}.svg", written)
        await stop_run(app, pilot, process)
    return written


async def shoot_steering(run_root: Path) -> list[Path]:
    """A live change of lr and beta, then two other runs overlaid: as a person does it, with the keys."""
    import subprocess
    import sys

    for lr in ("3e-3", "3e-4"):  # the runs to compare with, beside the one steered
        subprocess.run(
            [
                sys.executable,
                "-m",
                "vae_tui",
                "train",
                "--dataset",
                "digits",
                "--epochs",
                "150",
                "--lr",
                lr,
                "--iw-samples",
                "0",
                "--run-dir",
                str(run_root / f"lr-{lr}"),
                "--headless",
            ],
            check=True,
            capture_output=True,
        )
    worker = start_worker(Request({"dataset": "digits", "epochs": 300, "seed": 0, "device": "cpu"}, str(run_root / "lr-1e-3"), view="monitor"))
    worker.stop_listening()
    app = VaeApp(RunWatch(worker.run_dir, worker.process))
    written: list[Path] = []
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_epochs(app, pilot, 50)
        await pilot.press("right_square_bracket")  # the learning rate doubled
        await wait_epochs(app, pilot, 90)
        await pilot.press("k")
        app.screen.query_one("#steer-beta").value = "2"
        await pilot.press("enter")
        await wait_epochs(app, pilot, 130)
        await take(app, pilot, "steer-120x40.svg", written)
        await pilot.press("p")
        await pilot.pause(0.3)
        await pilot.press("enter", "down", "enter", "escape")
        await wait_epochs(app, pilot, 150)
        while len(app.comparison.overlays) < 2 or not all(o.follower.telemetry.epoch_count for o in app.comparison.overlays):
            await pilot.pause(0.1)
        await take(app, pilot, "compare-120x40.svg", written)
        await stop_run(app, pilot, worker.process)
    return written


async def shoot_starting(folder: Path, run_root: Path) -> list[Path]:
    """The first screen of a first run on a folder of pictures (nothing in the cache): decoding them."""
    worker = spawn_worker(Request({"dataset": str(folder), "arch": "conv", "device": "cpu"}, str(run_root / "starting"), view="monitor"))
    app = StartingApp(worker.next_report)
    written: list[Path] = []
    async with app.run_test(size=(120, 40)) as pilot:
        deadline = time.time() + 60
        while "decoding" not in str(app.query_one("#starting-what").render()) and time.time() < deadline:
            await pilot.pause(0.05)
        await pilot.pause(0.6)  # the time line drawn too
        app.save_screenshot("starting-120x40.svg", path=str(OUT))
        written.append(OUT / "starting-120x40.svg")
        worker.end()
    return written


async def shoot_script(run_root: Path) -> list[Path]:
    """`vae-tui run -- python main.py` on the classic example as people have it: no vae-tui call in it."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from bench_train import DEFAULT_MNIST, prepare_data
    from bench_unchanged import CLASSIC

    from vae_tui.launch.script import start_script

    prepare_data(DEFAULT_MNIST, run_root / "data")
    (run_root / "main.py").write_text(CLASSIC)
    process, run = start_script([sys.executable, str(run_root / "main.py"), "--epochs", "40", "--data", str(run_root / "data")], run_root / "script")
    app = VaeApp(RunWatch(run.path, process))
    written: list[Path] = []
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_epochs(app, pilot, 6)
        await take(app, pilot, "script-120x40.svg", written)
        await stop_run(app, pilot, process)
    return written


async def shoot_gan_script(run_root: Path) -> list[Path]:
    """A latent-diffusion style KL autoencoder with a perceptual term and a patch discriminator on its own
    optimizer (tests/scripts/kl_autoencoder_gan.py), under `vae-tui run`: its terms chart, on the discriminator."""
    import sys

    from vae_tui.launch.script import start_script

    script = Path(__file__).resolve().parent.parent / "tests" / "scripts" / "kl_autoencoder_gan.py"
    process, run = start_script([sys.executable, str(script), "--steps", "100000", "--disc-start", "200"], run_root / "gan")
    app = VaeApp(RunWatch(run.path, process))
    written: list[Path] = []
    async with app.run_test(size=(120, 40)) as pilot:
        deadline = time.time() + 120
        while app.telemetry.status().step < 600 and time.time() < deadline:
            await pilot.pause(0.1)
        while "discriminator" not in app.telemetry.term_names() and time.time() < deadline:
            await pilot.pause(0.1)
        await pilot.press("n", "n")  # lpips, g_loss, then the discriminator's own series
        await pilot.pause(1.0)
        await take(app, pilot, "terms-120x40.svg", written)
        await stop_run(app, pilot, process)
    return written


async def shoot_diagnosis(run_root: Path) -> list[Path]:
    """A run built to collapse (beta 20): the diagnosis under the charts, then `k` with its fix filled in."""
    worker = start_worker(Request({"dataset": "digits", "epochs": 300, "seed": 0, "device": "cpu", "beta": 20.0}, str(run_root / "collapse"), view="monitor"))
    worker.stop_listening()
    assert worker.run_dir is not None
    app = VaeApp(RunWatch(worker.run_dir, worker.process))
    written: list[Path] = []
    async with app.run_test(size=(120, 40)) as pilot:
        deadline = time.time() + 120
        while not app.telemetry.status().diagnoses and time.time() < deadline:
            await pilot.pause(0.2)
        await wait_epochs(app, pilot, app.telemetry.epoch_count + 20)
        await take(app, pilot, "diagnosis-120x40.svg", written)
        await pilot.press("k")
        await pilot.pause(0.3)
        await take(app, pilot, "diagnosis-fix-120x40.svg", written)
        await pilot.press("escape")
        await stop_run(app, pilot, worker.process)
    return written


async def wait_epochs(app: VaeApp, pilot: Pilot[None], epochs: int) -> None:
    deadline = time.time() + 120
    while app.telemetry.epoch_count < epochs and time.time() < deadline:
        await pilot.pause(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--png", action="store_true", help="also draw each SVG as a PNG with headless Chromium")
    parser.add_argument("--epochs-before", type=int, default=40, help="epochs to train before the first screenshot")
    parser.add_argument("--only", choices=("digits", "colour", "steering", "script", "terms", "diagnosis"), help="one of the runs")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    os.environ["COLORTERM"] = "truecolor"  # the colour run's pictures in 24-bit colour, as a modern terminal shows them
    with tempfile.TemporaryDirectory() as tmp:
        shots: list[tuple[tuple[int, int], dict]] = []
        if args.only in (None, "digits"):
            shots += [(size, {"epochs_before": args.epochs_before}) for size in SIZES]
        if args.only in (None, "colour"):
            os.environ["XDG_CACHE_HOME"] = tmp  # its decoded pictures go with it
            write_folder(Path(tmp) / "shapes", COLOUR_PICTURES, 32)
            for path in asyncio.run(shoot_starting(Path(tmp) / "shapes", Path(tmp))):  # before anything is in the cache
                print(path)
                if args.png:
                    to_png(path, (120, 40))
            shots.append(((120, 40), {"epochs_before": COLOUR_EPOCHS, "dataset": str(Path(tmp) / "shapes"), "prefix": "colour-", "arch": "conv"}))
        for size, how in shots:
            for path in asyncio.run(shoot(size, Path(tmp), **how)):
                print(path)
                if args.png:
                    to_png(path, size)
        if args.only in (None, "steering"):
            (Path(tmp) / "steering").mkdir()
            for path in asyncio.run(shoot_steering(Path(tmp) / "steering")):
                print(path)
                if args.png:
                    to_png(path, (120, 40))
        shooters = {"script": [shoot_script], "terms": [shoot_gan_script], "diagnosis": [shoot_diagnosis]}
        scripts = shooters.get(args.only, []) if args.only else [shoot_script, shoot_gan_script, shoot_diagnosis]
        for shoot_one in scripts:
            for path in asyncio.run(shoot_one(Path(tmp))):
                print(path)
                if args.png:
                    to_png(path, (120, 40))


def to_png(svg: Path, size: tuple[int, int]) -> None:
    """Chromium draws braille and half blocks where the terminal would (rsvg-convert misplaces them)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("chromium not found: apt-get install chromium")
    window = "1500,1050" if size[0] > 100 else "1000,640"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                f"--user-data-dir={profile}",
                f"--screenshot={svg.with_suffix('.png')}",
                f"--window-size={window}",
                svg.resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )


if __name__ == "__main__":
    main()
