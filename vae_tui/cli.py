"""The `vae-tui` command: parse, validate, hand over to the trainer and a view. Kept thin."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer
from rich.console import Console

from vae_tui.config import default_data_dir, default_epochs
from vae_tui.errors import ConfigError, VaeTuiError
from vae_tui.runner import EXIT_SIGNAL, error

app = typer.Typer(
    name="vae-tui",
    help="Train a variational autoencoder and watch it learn, live, in your terminal.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)



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
    on_nan: Optional[str] = typer.Option(None, help="When the loss turns NaN or infinite: pause (roll back on resume), stop, or skip the batch [default: auto: pause in the monitor, stop otherwise]", show_default=False),
    kl_warmup: Optional[int] = typer.Option(None, help="Epochs over which beta rises linearly from 0 to --beta [default: 0, no warm-up]", show_default=False),
    iw_samples: Optional[int] = typer.Option(None, help="Importance samples per test image for the final -log p(x) estimate; 0 skips it [default: 100]", show_default=False),
    resume: Optional[Path] = typer.Option(None, help="Continue from a checkpoint file or a run directory, up to --epochs in total", show_default=False),
    headless: bool = typer.Option(False, "--headless", help="Plain progress output instead of the live monitor (forced when stdout is not a terminal)"),
    detach: bool = typer.Option(False, "--detach", help="Train in the background, immune to the terminal closing; watch it with vae-tui watch"),
) -> None:
    """Train a VAE, writing config, metrics and checkpoints to a run directory."""
    given = {
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "hidden_dim": hidden_dim, "latent_dim": latent_dim,
        "beta": beta, "dataset": dataset, "data_dir": str(data_dir) if data_dir else None, "device": device,
        "seed": seed, "checkpoint_every": checkpoint_every, "on_nan": on_nan,
        "kl_warmup": kl_warmup, "iw_samples": iw_samples,
    }
    given = {key: value for key, value in given.items() if value is not None}
    console = Console(highlight=False, soft_wrap=True)
    try:
        from vae_tui import runner

        if detach and headless:
            raise ConfigError("--detach and --headless do not go together: a detached run writes its plain view to train.log")
        monitor = not headless and sys.stdout.isatty() and sys.stdin.isatty()
        if monitor and not detach and not terminal_can_draw():
            print("vae-tui: TERM=dumb cannot show the monitor; showing the plain view", file=sys.stderr, flush=True)
            monitor = False
        view = "detached" if detach else "monitor" if monitor else "here"
        prepared = runner.prepare(given, run_dir, resume, view)
        runner.describe(prepared, console)
        if detach:
            code = runner.train_detached(prepared, console)
        elif monitor:
            code = runner.train_monitored(prepared, console)
        else:
            code = runner.train_here(prepared, console)
    except VaeTuiError as exc:
        error(str(exc))
        code = exc.exit_code
    raise typer.Exit(code)


def terminal_can_draw() -> bool:
    """A dumb terminal (Emacs shell, some CI logs) cannot move the cursor: no full-screen app there."""
    return os.environ.get("TERM", "") not in ("dumb", "unknown")


def _newest_run(root: Path) -> Path:
    from vae_tui.catalog import find_runs

    runs = find_runs(root)
    if not runs:
        raise ConfigError(f"no runs under {root}/; pass a run directory: vae-tui watch RUN_DIR")
    return runs[-1]


@app.command()
def watch(
    run_dir: Optional[Path] = typer.Argument(None, help="The run to watch [default: the newest under ./runs]", show_default=False),
) -> None:
    """Open the monitor on a run directory: history first, then live. Quitting never stops training."""
    try:
        path = run_dir if run_dir is not None else _newest_run(Path("runs"))
        try:
            if not (path / "config.json").is_file():
                raise ConfigError(f"{path} is not a vae-tui run directory (no config.json in it)")
            (path / "config.json").read_bytes()
        except PermissionError:
            raise ConfigError(f"permission denied reading {path}: it belongs to another user") from None
        if not (sys.stdout.isatty() and sys.stdin.isatty()):
            raise ConfigError("watch needs a terminal; for a plain record of a run, read its metrics.jsonl")
        if not terminal_can_draw():
            raise ConfigError(f"TERM={os.environ.get('TERM')} cannot show the monitor; watch from a terminal that can "
                              f"(e.g. TERM=xterm-256color), or read {path}/metrics.jsonl")
    except VaeTuiError as exc:
        error(str(exc))
        raise typer.Exit(exc.exit_code)
    from vae_tui.follow import RunWatch
    from vae_tui.tui.app import VaeApp

    for sig in EXIT_SIGNAL:  # the terminal going away ends this watcher, never the training
        signal.signal(sig, lambda signum, frame: os._exit(EXIT_SIGNAL[signal.Signals(signum)]))
    source = RunWatch(path)
    source.yield_cpu()
    VaeApp(source).run()
    source.close()
    raise typer.Exit(0)


@app.command()
def runs(
    folder: Path = typer.Argument(Path("runs"), help="Where to look for run directories"),
) -> None:
    """List the runs under a folder: dataset, status, epochs done, best test loss, last update."""
    from rich.table import Table

    from vae_tui.catalog import describe_updated, find_runs, summarize

    try:
        if not folder.is_dir():
            raise ConfigError(f"{folder} is not a folder; pass the folder that holds your runs (default: ./runs)")
        paths = find_runs(folder)
    except PermissionError:
        error(f"permission denied reading {folder}")
        raise typer.Exit(1)
    except VaeTuiError as exc:
        error(str(exc))
        raise typer.Exit(exc.exit_code)
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)  # piped: one line per run
    if not paths:
        console.print(f"no runs under {folder}/ yet; start one with vae-tui train")
        raise typer.Exit(0)
    table = Table(box=None, pad_edge=False)
    for column in ("run", "dataset", "status", "epochs", "best test loss", "last update"):
        table.add_column(column, justify="right" if column in ("epochs", "best test loss") else "left", no_wrap=True)
    styles = {"running": "green", "paused": "yellow", "finished": "cyan", "stopped": "yellow", "crashed": "red", "not answering": "red"}
    for path in paths:
        s = summarize(path)
        best = f"{s.best_test_loss:.3f}" if s.best_test_loss < float("inf") else "-"
        table.add_row(path.name, s.dataset, f"[{styles.get(s.status, '')}]{s.status}[/]", f"{s.epochs_done}/{s.epochs}",
                      best, describe_updated(s.updated))
    console.print(table)
    raise typer.Exit(0)


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="The run to export"),
    format: str = typer.Option("csv", "--format", help="csv (batches.csv and epochs.csv) or tensorboard (event files)"),
    output: Optional[Path] = typer.Option(None, help="Where to write [default: RUN_DIR/export/<format>]", show_default=False),
) -> None:
    """Write a run's metrics as CSV, or as TensorBoard event files (pip install 'vae-tui[tensorboard]')."""
    from vae_tui.export import FORMATS, export_csv, export_tensorboard
    from vae_tui.rundir import RunDir

    try:
        if format not in FORMATS:
            raise ConfigError(f"unknown --format {format!r}: choose csv or tensorboard")
        run = RunDir(run_dir)
        if not run.config_path.is_file():
            raise ConfigError(f"{run_dir} is not a vae-tui run directory (no config.json in it)")
        out = output or run.path / "export" / format
        written = export_csv(run, out) if format == "csv" else export_tensorboard(run, out)
    except PermissionError as exc:
        error(f"permission denied: {exc.filename}")
        raise typer.Exit(1)
    except OSError as exc:
        error(f"cannot write the export to {output or run_dir}: {exc.strerror or exc}")
        raise typer.Exit(1)
    except VaeTuiError as exc:
        error(str(exc))
        raise typer.Exit(exc.exit_code)
    for path in written:
        print(path)
    raise typer.Exit(0)


def _load_for_analysis(checkpoint: Path, data_dir: Optional[Path]) -> tuple[Path, dict[str, Any], Any, Any, Any]:
    """A checkpoint's model and the dataset it was trained on, on the CPU (or the best device)."""
    from vae_tui.checkpoint import check_model_shape, load_checkpoint, resolve_checkpoint_path
    from vae_tui.config import TrainConfig
    from vae_tui.data import load_dataset
    from vae_tui.device import pick_device
    from vae_tui.model import VAE

    path = resolve_checkpoint_path(checkpoint)
    state = load_checkpoint(path)
    check_model_shape(state)
    config = TrainConfig.from_dict(state["config"])
    data = load_dataset(state.get("dataset", config.dataset), str(data_dir) if data_dir else config.data_dir)
    if data.input_dim != state["input_dim"]:
        raise ConfigError(f"{path} was trained on {state['input_dim']}-pixel images but {data.name} has {data.input_dim}")
    device = pick_device("auto")
    model = VAE(state["input_dim"], config.hidden_dim, config.latent_dim).to(device.torch_device)
    model.load_state_dict(state["model"])
    model.eval()
    return path, state, data, device, model


@app.command("eval")
def evaluate_checkpoint(
    checkpoint: Path = typer.Argument(..., help="A checkpoint file, or a run directory (its checkpoints/last.pt)"),
    iw_samples: int = typer.Option(100, help="Importance samples per test image (K)"),
    data_dir: Optional[Path] = typer.Option(None, help="Where the dataset lives [default: the one the run used]", show_default=False),
) -> None:
    """Test negative ELBO and importance-weighted -log p(x), in nats per image, written to eval.json."""
    try:
        if iw_samples < 1:
            raise ConfigError(f"--iw-samples must be a whole number of at least 1, got {iw_samples}")
        import torch

        from vae_tui.analysis import describe_evaluation, importance_weighted, write_evaluation

        path, state, data, device, model = _load_for_analysis(checkpoint, data_dir)
        test_x = torch.as_tensor(data.test_x, device=device.torch_device)
        result = importance_weighted(model, test_x, iw_samples, seed=int(state["config"].get("seed", 0)) + 3).to_dict()
    except VaeTuiError as exc:
        error(str(exc))
        raise typer.Exit(exc.exit_code)
    print(f"{path}: step {state['step']}, {data.name} test split, {result['images']:,} images")
    print(describe_evaluation(result))
    if path.parent.name == "checkpoints":
        target = path.parent.parent / "eval.json"
        try:
            write_evaluation(target, result, str(path))
            print(f"written to {target}")
        except OSError as exc:
            error(f"could not write {target}: {exc.strerror or exc}")
            raise typer.Exit(1)
    raise typer.Exit(0)


@app.command("compare-pca")
def compare_pca(
    run_dir: Path = typer.Argument(..., help="A run directory (its best checkpoint is used) or a checkpoint file"),
    data_dir: Optional[Path] = typer.Option(None, help="Where the dataset lives [default: the one the run used]", show_default=False),
    images: int = typer.Option(4, help="Test images to show reconstructed by each"),
) -> None:
    """PCA with k = latent dimensions against the VAE on the test split: the same two scores, and pictures."""
    from vae_tui import art

    try:
        best = run_dir / "checkpoints" / "best.pt"
        path, state, data, device, model = _load_for_analysis(best if best.is_file() else run_dir, data_dir)
        import torch

        from vae_tui.analysis import pca_fit, reconstruction_scores

        k = model.z_dim
        pca = pca_fit(data.train_x[:10_000], k)
        pca_recon = pca.reconstruct(data.test_x)
        vae_recon = model.reconstruct(torch.as_tensor(data.test_x, device=device.torch_device)).cpu().numpy()
    except VaeTuiError as exc:
        error(str(exc))
        raise typer.Exit(exc.exit_code)
    scores = {"PCA": reconstruction_scores(pca_recon, data.test_x), "VAE": reconstruction_scores(vae_recon, data.test_x)}
    print(f"{data.name} test split, {len(data.test_x):,} images; PCA with k = {k} components (the latent's size); VAE from {path}")
    print(f"{'':6}{'Bernoulli NLL (nats/image)':>28}{'MSE per pixel':>16}")
    for name, s in scores.items():
        print(f"{name:6}{s['nll']:>28.2f}{s['mse']:>16.5f}")
    print("lower is better; the VAE's decoder is non-linear, PCA's reconstruction is a linear projection")
    h, w = data.image_shape
    clip = lambda a: np.clip(a, 0, 1).reshape(h, w)  # noqa: E731
    groups = [[clip(data.test_x[i]), clip(pca_recon[i]), clip(vae_recon[i])] for i in range(min(images, len(data.test_x)))]
    print("\ninput | PCA | VAE")
    for line in art.grid(groups, "ramp", 100, len(groups) * (h + 1)):
        print("".join(segment.text for segment in line).rstrip())
    raise typer.Exit(0)


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
