"""The `vae-tui` command: parse, validate, hand over to the trainer and a view. Kept thin."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from vae_tui.config import TrainConfig, default_data_dir, default_epochs
from vae_tui.errors import ConfigError, VaeTuiError

app = typer.Typer(
    name="vae-tui",
    help="Train a variational autoencoder and watch it learn, live, in your terminal.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}
WATCHDOG_GRACE_S = 5.0  # after SIGTERM, how long the app may take to restore the terminal
# Options that fix the model's shape or the data it sees: a resumed run cannot change them.
FIXED_ON_RESUME = {"dataset": "--dataset", "hidden_dim": "--hidden-dim", "latent_dim": "--latent-dim", "batch_size": "--batch-size"}


@app.callback()
def _root() -> None:
    """Train a variational autoencoder and watch it learn, live, in your terminal."""


@app.command()
def train(
    epochs: Optional[int] = typer.Option(None, help=f"Epochs in total [default: {default_epochs('mnist')}; {default_epochs('digits')} on digits]", show_default=False),
    batch_size: Optional[int] = typer.Option(None, help="Images per batch [default: 128]", show_default=False),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate [default: 1e-3]", show_default=False),
    hidden_dim: Optional[int] = typer.Option(None, help="Units in the hidden layer [default: 400]", show_default=False),
    latent_dim: Optional[int] = typer.Option(None, help="Dimensions of the latent z [default: 20]", show_default=False),
    beta: Optional[float] = typer.Option(None, help="Weight of the KL term; 1 is the plain ELBO [default: 1.0]", show_default=False),
    dataset: Optional[str] = typer.Option(None, help="auto, mnist, fashion-mnist or digits [default: auto]", show_default=False),
    data_dir: Optional[Path] = typer.Option(None, help=f"Where datasets live and are downloaded [default: {default_data_dir()}]", show_default=False),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or mps [default: auto]", show_default=False),
    seed: Optional[int] = typer.Option(None, help="Random seed [default: 0]", show_default=False),
    run_dir: Optional[Path] = typer.Option(None, help="Where this run's files go [default: runs/<time>-<dataset>]", show_default=False),
    checkpoint_every: Optional[int] = typer.Option(None, help="Save checkpoints/last.pt every N epochs [default: 1]", show_default=False),
    resume: Optional[Path] = typer.Option(None, help="Continue from a checkpoint file or a run directory, up to --epochs in total", show_default=False),
    headless: bool = typer.Option(False, "--headless", help="Plain progress output instead of the live monitor (forced when stdout is not a terminal)"),
) -> None:
    """Train a VAE, writing config, metrics and checkpoints to a run directory."""
    given = {
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "hidden_dim": hidden_dim, "latent_dim": latent_dim,
        "beta": beta, "dataset": dataset, "data_dir": str(data_dir) if data_dir else None, "device": device,
        "seed": seed, "checkpoint_every": checkpoint_every,
    }
    given = {key: value for key, value in given.items() if value is not None}
    console = Console(highlight=False, soft_wrap=True)
    try:
        monitor = not headless and sys.stdout.isatty() and sys.stdin.isatty()
        code = run_training(given, run_dir, resume, console, monitor)
    except VaeTuiError as exc:
        error(str(exc))
        code = exc.exit_code
    raise typer.Exit(code)


def error(message: str) -> None:
    print(f"vae-tui: error: {message}", file=sys.stderr, flush=True)


def run_training(given: dict[str, Any], run_dir: Path | None, resume: Path | None, console: Console, monitor: bool = False) -> int:
    """Everything `train` does after parsing; returns the exit status."""
    from vae_tui.checkpoint import check_model_shape, load_checkpoint, resolve_checkpoint_path
    from vae_tui.data import load_dataset
    from vae_tui.device import pick_device
    from vae_tui.headless import describe_elapsed, follow
    from vae_tui.metrics import MetricsWriter, truncate_metrics
    from vae_tui.rundir import default_run_path, library_versions, open_run_dir
    from vae_tui.telemetry import Telemetry
    from vae_tui.trainer import Controls, Trainer

    state = None
    if resume is not None:
        TrainConfig(**given).validate()  # bad values first, before reading any file
        path = resolve_checkpoint_path(resume)
        state = load_checkpoint(path)
        check_model_shape(state)
        config, run_path = _resume_config(state, path, given, run_dir)
    else:
        config = TrainConfig(**given).validate()
        run_path = run_dir
    info = pick_device(config.device)
    data = load_dataset(config.dataset, config.data_dir)
    config = config.replace(dataset=data.name, epochs=config.epochs or default_epochs(data.name))
    if state is not None and data.input_dim != state["input_dim"]:
        raise ConfigError(
            f"the checkpoint's model takes {state['input_dim']} pixels but {data.name} images have "
            f"{data.input_dim}; resume with the dataset it was trained on ({state.get('dataset', '?')})"
        )
    run = open_run_dir(run_path or default_run_path(data.name), resuming=state is not None and run_path is not None)
    if state is not None:
        truncate_metrics(run.metrics_path, int(state["step"]), int(state["epoch"]))
    run.write_config({
        "config": config.to_dict(),
        "dataset": {"name": data.name, "source": data.source, "image_shape": list(data.image_shape),
                    "train_size": len(data.train_x), "test_size": len(data.test_x)},
        "device": {"kind": info.kind, "name": info.name},
        "versions": library_versions(),
        "resumed_from": str(resume) if resume else None,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })

    h, w = data.image_shape
    console.print(f"dataset: {data.name}, {len(data.train_x):,} train / {len(data.test_x):,} test images of {h}x{w}")
    console.print(f"         {data.source}")
    console.print(f"device:  {info.kind} ({info.name})")
    console.print(f"model:   {data.input_dim}-{config.hidden_dim}-{config.latent_dim} VAE, beta {config.beta:g}, lr {config.lr:g}, batch {config.batch_size}")
    console.print(f"run:     {run.path}" + (f" (resuming at epoch {state['epoch']}, step {state['step']})" if state else ""))

    telemetry = Telemetry(MetricsWriter(run.metrics_path))
    controls = Controls()
    trainer = Trainer(config, data, info, telemetry, controls, run, resume_state=state)
    previous = {sig: signal.getsignal(sig) for sig in EXIT_SIGNAL}
    started = time.time()
    thread = trainer.start()
    stop_code = _install_signal_handlers(controls, thread, monitor)
    try:
        if monitor:
            from vae_tui.tui.app import VaeApp

            VaeApp(trainer, thread).run()
        else:
            follow(thread, telemetry, console)
    finally:
        if thread.is_alive():  # the view ended first (quit, a crash): stop cleanly, keep the work
            controls.stop(save=True)
            thread.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    result = trainer.result
    assert result is not None
    if result.state == "error":
        error(result.message + (f" (last good checkpoint: {result.last_checkpoint})" if result.last_checkpoint else ""))
        return 1
    took = describe_elapsed(time.time() - started)
    console.print(f"{result.message} in {took}; best test loss {result.best_test_loss:.3f}")
    if result.last_checkpoint:
        console.print(f"checkpoint: {result.last_checkpoint}" + (f" (best: {result.best_checkpoint.name})" if result.best_checkpoint else ""))
    console.print(f"metrics:    {run.metrics_path}")
    if result.state == "stopped":
        console.print(f"continue with: vae-tui train --resume {run.path}")
    return stop_code[0] if result.state == "stopped" else 0


def _resume_config(state: dict[str, Any], path: Path, given: dict[str, Any], run_dir: Path | None) -> tuple[TrainConfig, Path | None]:
    """The checkpoint's configuration, updated by options that may change mid-run."""
    from vae_tui.checkpoint import describe_shape

    saved = TrainConfig.from_dict(state["config"])
    for key, option in FIXED_ON_RESUME.items():
        if key in given and given[key] != getattr(saved, key):
            raise ConfigError(
                f"{option} {given[key]} does not match the checkpoint ({describe_shape(state)} model on "
                f"{saved.dataset}, batch size {saved.batch_size}); drop {option} to resume, or start a new run"
            )
    config = saved.replace(**given).validate()
    done, mid_epoch = int(state["epoch"]), int(state.get("batch_in_epoch") or 0) > 0
    if config.epochs is not None and (config.epochs < done or (config.epochs == done and not mid_epoch)):
        raise ConfigError(
            f"the checkpoint already has {done} epochs; pass --epochs with a larger total to train further"
        )
    owner = path.parent.parent if path.parent.name == "checkpoints" else None
    if owner is not None and run_dir is not None and Path(run_dir).resolve() != owner.resolve():
        raise ConfigError(f"--resume continues in the checkpoint's own run directory {owner}; drop --run-dir")
    return config, owner or run_dir


def _install_signal_handlers(controls: Any, thread: threading.Thread, monitor: bool) -> list[int]:
    """First signal: checkpoint and stop cleanly. A second Ctrl+C: leave at once (files are atomic).

    With the monitor, a watchdog makes sure the process ends once the trainer has saved: after
    SIGHUP the terminal is gone and Textual's shutdown can block writing to it, so the process
    leaves as soon as the checkpoint is on disk; after SIGTERM the app gets a few seconds to
    restore the terminal first.
    """
    code = [0]

    def watchdog(signum: int) -> None:
        thread.join()
        if signum != signal.SIGHUP:
            time.sleep(WATCHDOG_GRACE_S)
        os._exit(code[0])

    def handle(signum: int, frame: Any) -> None:
        if controls.stopping:
            if signum == signal.SIGINT:
                print("vae-tui: quitting at once", file=sys.stderr, flush=True)
                os._exit(code[0] or 130)
            return
        code[0] = EXIT_SIGNAL.get(signal.Signals(signum), 1)
        if not monitor:
            print(f"vae-tui: {signal.Signals(signum).name}: saving a checkpoint and stopping (Ctrl+C again to quit at once)", file=sys.stderr, flush=True)
        controls.stop(save=True)
        if monitor:
            threading.Thread(target=watchdog, args=(signum,), name="vae-watchdog", daemon=True).start()

    for sig in EXIT_SIGNAL:
        signal.signal(sig, handle)
    return code


def main() -> None:
    """Console entry point: usage and user errors are one line on stderr, never a traceback."""
    try:
        code = app(standalone_mode=False)  # returns the status of a typer.Exit
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except typer.TyperException as exc:  # typer's usage errors (bad option, unknown command)
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:  # plain `vae-tui`
            print(ctx.get_help())
            sys.exit(0)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        error(f"{exc.format_message()}{hint}")
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)
