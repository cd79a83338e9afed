"""The `vae-tui` command: parse, validate, hand over. Kept thin, and free of torch: `vae-tui train`'s
own process only watches, `watch`, `runs` and `export` only read files."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from pathlib import Path
from typing import IO, Any, Optional, cast

import typer
from rich.console import Console
from rich.text import Text

from vae_tui.config import DEVICES, TrainConfig, default_data_dir, default_epochs, parse_every
from vae_tui.data import DATASETS
from vae_tui.errors import EXIT_SIGNAL, ConfigError, VaeTuiError, say_error
from vae_tui.launch.prepare import Request
from vae_tui.launch.signals import watch_terminal
from vae_tui.launch.torchrun import MAX_NPROC
from vae_tui.training.torchrun_env import under_torchrun
from vae_tui.tui.wire import DEFAULT_WIRE_KB, parse_wire
from vae_tui.views.output import Output

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


# `vae-tui train`'s options, declared here so the command below reads as what it does
_DEFAULTS = TrainConfig()


def _default(name: str, words: str = "") -> str:
    """An option's default as its help says it, from TrainConfig: declared once."""
    return f"[default: {words or getattr(_DEFAULTS, name)}]"


def _choices(values: tuple[str, ...]) -> str:
    return ", ".join(values[:-1]) + f" or {values[-1]}"


_EPOCHS = typer.Option(None, help=f"Epochs in total [default: {default_epochs('mnist')}; {default_epochs('digits')} on digits]", show_default=False)
_BATCH_SIZE = typer.Option(None, help=f"Images per batch {_default('batch_size')}", show_default=False)
_LR = typer.Option(None, help=f"Adam learning rate {_default('lr')}", show_default=False)
_HIDDEN_DIM = typer.Option(None, help=f"Units in the MLP's hidden layer {_default('hidden_dim')}", show_default=False)
_LATENT_DIM = typer.Option(None, help=f"Dimensions of the latent z {_default('latent_dim')}", show_default=False)
_BETA = typer.Option(None, help=f"Weight of the KL term; 1 is the plain ELBO {_default('beta')}", show_default=False)
_DATASET = typer.Option(
    None, help=f"{', '.join(DATASETS)}, or the path of a folder of pictures (sub-folders name classes) {_default('dataset')}", show_default=False
)
_IMAGE_SIZE = typer.Option(
    None, help="A folder's pictures: shorter side resized to this, centre crop [default: their own size when they all agree, else 64]", show_default=False
)
_CHANNELS = typer.Option(None, help="A folder's pictures: 1 (grey) or 3 (colour) [default: 3 when any is in colour]", show_default=False)
_TEST_DIR = typer.Option(None, help="A folder of test pictures [default: 10% of --dataset's, by file name]", show_default=False)
_ARCH = typer.Option(
    None, help=f"mlp (the classic 784-400-20 kind), conv (convolutions, for pictures of 28-128 px) or vq (a VQ-VAE) {_default('arch')}", show_default=False
)
_LIKELIHOOD = typer.Option(None, help=f"p(x|z): bernoulli (the classic choice) or gaussian (a learned variance) {_default('likelihood')}", show_default=False)
_MODEL = typer.Option(
    None, help="Your own VAE: FILE.py:Class or package.module:Class (forward returns (x_reconstructed, mu, logvar), or encode/decode)", show_default=False
)
_MODEL_ARGS = typer.Option(
    None,
    help="Your model's constructor arguments, e.g. 'hidden_dim=256, z_dim=8' (input_dim, hidden_dim, z_dim are filled in when not given)",
    show_default=False,
)
_MODEL_OUTPUT = typer.Option(None, help="What your model's x_reconstructed is: probs (after a sigmoid) or logits [default: detected]", show_default=False)
_MODEL_INPUT = typer.Option(
    None, help="What your model's forward takes: flat vectors or image-shaped tensors [default: its first layer's kind]", show_default=False
)
_DATA_PLACEMENT = typer.Option(
    None,
    help=f"auto (on the device when it fits in half its free memory), device, or stream (from the decoded cache) {_default('data_placement')}",
    show_default=False,
)
_DATA_DIR = typer.Option(None, help=f"Where datasets live and are downloaded [default: {default_data_dir()}]", show_default=False)
_DEVICE = typer.Option(None, help=f"{_choices(DEVICES)} {_default('device')}", show_default=False)
_PRECISION = typer.Option(
    None, help=f"fp32, bf16 or fp16 (autocast; fp16 with a loss scaler): faster only on hardware made for it {_default('precision')}", show_default=False
)
_COMPILE = typer.Option(
    False, "--compile", help="torch.compile the model for the training step: some seconds (or a minute) to start, then faster where BENCHMARKS.md says so"
)
_STEP = typer.Option(
    None,
    help=(
        "auto (on CUDA, the whole training step captured once as a CUDA graph and replayed; eager elsewhere), graph, eager, or emulate "
        f"(on any device: the step recorded and replayed as a CUDA graph would, to learn whether your model survives one) {_default('step')}"
    ),
    show_default=False,
)
_IMAGES = typer.Option(
    "auto",
    "--images",
    help="Pictures in the monitor: auto (real pixels where the terminal shows them: kitty's "
    "protocol or sixel), graphics, blocks (half blocks) or ramp (characters)",
)
_WIRE = typer.Option(
    DEFAULT_WIRE_KB, "--wire", help="KB/s the monitor may send to the terminal: fast training is shown less often, never with more bytes (more for a fast link)"
)
_NPROC = typer.Option(
    None,
    help="Train on N processes of this machine with torchrun and DistributedDataParallel, one GPU each (or CPU); --batch-size is per process [default: 1]",
    show_default=False,
)
_SEED = typer.Option(None, help=f"Random seed {_default('seed')}", show_default=False)
_RUN_DIR = typer.Option(None, help="Where this run's files go [default: runs/<time>-<dataset>]", show_default=False)
_CHECKPOINT_EVERY = typer.Option(
    None,
    help="Save checkpoints/last.pt every N epochs (3), or every N seconds (30s) "
    f"[default: every epoch, at most every {_DEFAULTS.checkpoint_seconds:g} s; also on stop, pause and at the end]",
    show_default=False,
)
_ON_NAN = typer.Option(
    None,
    help="When the loss turns NaN or infinite: pause (roll back on resume), stop, or skip the batch [default: auto: pause in the monitor, stop otherwise]",
    show_default=False,
)
_TC_BETA = typer.Option(
    None,
    help="beta-TCVAE: weight of the total correlation between latent dimensions (estimated on each batch, charted as tc); "
    "1 is the plain ELBO, above it pushes dimensions apart",
    show_default=False,
)
_KL_WARMUP = typer.Option(None, help=f"Epochs over which beta rises linearly from 0 to --beta {_default('kl_warmup', '0, no warm-up')}", show_default=False)
_IW_SAMPLES = typer.Option(
    None, help=f"Importance samples per test image for the final -log p(x) estimate; 0 skips it {_default('iw_samples')}", show_default=False
)
_RESUME = typer.Option(None, help="Continue from a checkpoint file or a run directory, up to --epochs in total", show_default=False)
_INIT_FROM = typer.Option(
    None,
    "--init-from",
    help="Start a new run from a checkpoint's weights and Adam's state (a file or a run directory), with a schedule of its own: for data that grew",
    show_default=False,
)
_HEADLESS = typer.Option(False, "--headless", help="Plain progress output instead of the live monitor (forced when stdout is not a terminal)")
_DETACH = typer.Option(False, "--detach", help="Train in the background, immune to the terminal closing; watch it with vae-tui watch")


@app.command()
def train(
    epochs: Optional[int] = _EPOCHS,
    batch_size: Optional[int] = _BATCH_SIZE,
    lr: Optional[float] = _LR,
    hidden_dim: Optional[int] = _HIDDEN_DIM,
    latent_dim: Optional[int] = _LATENT_DIM,
    beta: Optional[float] = _BETA,
    dataset: Optional[str] = _DATASET,
    image_size: Optional[int] = _IMAGE_SIZE,
    channels: Optional[int] = _CHANNELS,
    test_dir: Optional[Path] = _TEST_DIR,
    arch: Optional[str] = _ARCH,
    likelihood: Optional[str] = _LIKELIHOOD,
    model: Optional[str] = _MODEL,
    model_args: Optional[str] = _MODEL_ARGS,
    model_output: Optional[str] = _MODEL_OUTPUT,
    model_input: Optional[str] = _MODEL_INPUT,
    data_placement: Optional[str] = _DATA_PLACEMENT,
    data_dir: Optional[Path] = _DATA_DIR,
    device: Optional[str] = _DEVICE,
    precision: Optional[str] = _PRECISION,
    compile: bool = _COMPILE,
    step: Optional[str] = _STEP,
    images: str = _IMAGES,
    wire: float = _WIRE,
    nproc: Optional[int] = _NPROC,
    seed: Optional[int] = _SEED,
    run_dir: Optional[Path] = _RUN_DIR,
    checkpoint_every: Optional[str] = _CHECKPOINT_EVERY,
    on_nan: Optional[str] = _ON_NAN,
    kl_warmup: Optional[int] = _KL_WARMUP,
    tc_beta: Optional[float] = _TC_BETA,
    iw_samples: Optional[int] = _IW_SAMPLES,
    resume: Optional[Path] = _RESUME,
    init_from: Optional[Path] = _INIT_FROM,
    headless: bool = _HEADLESS,
    detach: bool = _DETACH,
) -> None:
    """Train a VAE, writing config, metrics and checkpoints to a run directory."""
    given = _config_options(locals())
    console = Console(file=cast(IO[str], Output(sys.stdout)), highlight=False, soft_wrap=True)  # a closed pipe stops the run as a hang-up does
    if detach and headless:
        raise ConfigError("--detach and --headless do not go together: a detached run writes its plain view to train.log")
    monitor = _monitor_wanted(headless, detach)
    if "checkpoint_every" in given:
        given.update(parse_every(given.pop("checkpoint_every")))
    TrainConfig(**given).validate()  # bad values in one line, before anything starts
    from vae_tui.views.art import IMAGE_MODES

    if images not in IMAGE_MODES:
        raise ConfigError(f"unknown --images {images!r}: choose one of {', '.join(IMAGE_MODES)}")
    parse_wire(wire)
    ranks = _ranks(nproc, detach)
    request = Request(
        given,
        str(run_dir) if run_dir else None,
        str(resume) if resume else None,
        "detached" if detach else "monitor" if monitor else "here",
        nproc=ranks,
        world_size=ranks,
        init_from=str(init_from) if init_from else None,
    )
    if under_torchrun():
        from vae_tui.launch.ranks import train_as_rank

        code = train_as_rank(request, console)
    elif request.view == "here":
        code = _train_here(request, console)
    else:
        code = _train_in_worker(request, console, images, wire)
    raise typer.Exit(code)


def _config_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options given that set TrainConfig's fields (None: not given; paths as text; --compile only when on)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return {
        name: str(value) if isinstance(value, Path) else value for name, value in options.items() if name in fields and value is not None and value is not False
    }


def _monitor_wanted(headless: bool, detach: bool) -> bool:
    """The live monitor, unless asked not to, or where nothing can show it (no terminal, TERM=dumb, a torchrun rank)."""
    monitor = not headless and sys.stdout.isatty() and sys.stdin.isatty() and not under_torchrun()
    if monitor and not detach and not terminal_can_draw():
        print("vae-tui: TERM=dumb cannot show the monitor; showing the plain view", file=sys.stderr, flush=True)
        return False
    return monitor


def _ranks(nproc: int | None, detach: bool) -> int:
    """--nproc, checked; under torchrun, which already started the processes, it is refused."""
    if under_torchrun():
        if nproc is not None or detach:
            raise ConfigError("under torchrun, leave out --nproc and --detach: torchrun already started the processes")
        return 1
    if nproc is not None and (nproc < 1 or nproc > MAX_NPROC):
        raise ConfigError(f"--nproc must be a whole number from 1 to {MAX_NPROC}, got {nproc}")
    return nproc or 1


def _train_here(request: Request, console: Console) -> int:
    if request.nproc > 1:
        from vae_tui.launch.torchrun import launch_here

        return launch_here(request, console)
    from vae_tui.launch.prepare import check, describe, ready
    from vae_tui.launch.run_here import train_here
    from vae_tui.views.plain import DecodeProgress

    prepared = check(request, progress=DecodeProgress(console))
    ready(prepared)
    for line in describe(prepared):
        console.print(line)
    return train_here(prepared, console)


def _train_in_worker(request: Request, console: Console, images: str = "auto", wire: float = DEFAULT_WIRE_KB) -> int:
    from vae_tui.launch.monitor import start_on_screen, train_detached, train_monitored
    from vae_tui.launch.spawn import show_progress, spawn_worker
    from vae_tui.tui.graphics import choose

    worker = spawn_worker(request)  # it checks the options, reads the data and makes the run directory
    if request.view == "detached":
        worker.wait_checked(show_progress)  # a refusal is said before the terminal is asked anything
        return train_detached(worker, console)
    pictures = choose(images)  # asks the terminal, before a screen reads its input
    if not start_on_screen(worker):  # a screen at once, saying what the worker does until the run is checked
        return EXIT_SIGNAL[signal.SIGINT]
    for line in worker.lines:
        console.print(line)
    return train_monitored(worker, console, pictures, wire)


def terminal_can_draw() -> bool:
    """A dumb terminal (Emacs shell, some CI logs) cannot move the cursor: no full-screen app there."""
    return os.environ.get("TERM", "") not in ("dumb", "unknown")


def _newest_run(root: Path) -> Path:
    from vae_tui.runfile.layout import find_runs

    runs = find_runs(root)
    if not runs:
        from vae_tui.launch.elastic import refuse_elsewhere

        refuse_elsewhere(root)  # a node of a torchrun job whose run another node writes: where it is
        raise ConfigError(f"no runs under {root}/; pass a run directory: vae-tui watch RUN_DIR")
    return runs[-1]


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(
    ctx: typer.Context,
    run_dir: Optional[Path] = typer.Option(None, help="Where the run's files go [default: runs/<YYYYmmdd-HHMMSS>-<script>]", show_default=False),
    detach: bool = typer.Option(False, help="Run it in the background, immune to the terminal closing; watch with vae-tui watch"),
    headless: bool = typer.Option(False, help="Its own output instead of the monitor (forced when stdout is not a terminal)"),
    wire: float = _WIRE,
) -> None:
    """Run your own training script under the monitor, unchanged: vae-tui run -- python train.py ARGS.
    Its steps, loss and KL are seen through PyTorch's hooks; a script that calls vae_tui.init() logs its own."""
    from vae_tui.launch.script import EndedEarly, run_script

    console = Console(highlight=False, soft_wrap=True)
    monitor = not headless and sys.stdout.isatty() and sys.stdin.isatty() and terminal_can_draw()
    try:
        code = run_script(list(ctx.args), run_dir, detach, monitor, console, parse_wire(wire))
    except EndedEarly as exc:  # its own output is on the terminal already; a clean end is no error
        say_error(str(exc)) if exc.exit_code else print(f"vae-tui: {exc}", file=sys.stderr)
        code = exc.exit_code
    raise typer.Exit(code)


@app.command("set")
def set_(
    run_dir: Path = typer.Argument(..., help="The run to change (it must be training, or paused)"),
    lr: Optional[float] = typer.Option(None, "--lr", help="A new learning rate, from the trainer's next step", show_default=False),
    beta: Optional[float] = typer.Option(None, "--beta", help="A new beta (KL weight; 0 allowed), from the trainer's next step", show_default=False),
    optimizer: Optional[str] = typer.Option(
        None, "--optimizer", help="--lr for a script's other optimizer, by the name of the module it trains (e.g. discriminator)", show_default=False
    ),
) -> None:
    """Change a running trainer's learning rate and/or beta, from its next step on."""
    from vae_tui.watching.steer import check_values, set_values

    if optimizer is not None and lr is None:
        raise ConfigError("--optimizer names whose learning rate --lr changes: give --lr X too")
    print(set_values(run_dir, check_values({f"lr.{optimizer}" if optimizer else "lr": lr, "beta": beta})))
    raise typer.Exit(0)


@app.command(context_settings={"allow_extra_args": True})
def watch(
    ctx: typer.Context,
    run_dir: Optional[Path] = typer.Argument(None, help="The run to watch [default: the newest under ./runs]", show_default=False),
    compare: Optional[Path] = typer.Option(
        None, "--compare", help="Other runs to draw over this one's charts: --compare OTHER [OTHER ...]", show_default=False
    ),
    images: str = typer.Option("auto", "--images", help="auto (real pixels where the terminal shows them), graphics, blocks or ramp"),
    wire: float = _WIRE,
) -> None:
    """Open the monitor on a run directory: history first, then live. Quitting never stops training."""
    from vae_tui.runfile.layout import RunDir
    from vae_tui.watching.compare import Comparison

    if ctx.args and compare is None:
        raise ConfigError(f"unexpected {ctx.args[0]!r}: watch takes one run; add others with --compare OTHER [OTHER ...]")
    comparison = Comparison([compare, *map(Path, ctx.args)] if compare is not None else [])
    path = run_dir if run_dir is not None else _newest_run(Path("runs"))
    try:
        if not RunDir(path).is_run():
            raise ConfigError(f"{path} is not a vae-tui run directory (no config.json in it)")
        RunDir(path).config_path.read_bytes()
    except PermissionError:
        raise ConfigError(f"permission denied reading {path}: it belongs to another user") from None
    if not (sys.stdout.isatty() and sys.stdin.isatty()):
        raise ConfigError("watch needs a terminal; for a plain record of a run, read its metrics.jsonl")
    if not terminal_can_draw():
        raise ConfigError(
            f"TERM={os.environ.get('TERM')} cannot show the monitor; watch from a terminal that can (e.g. TERM=xterm-256color), or read {path}/metrics.jsonl"
        )
    from vae_tui.tui.graphics import choose

    parse_wire(wire)
    pictures = choose(images)  # asks the terminal, before the app reads its input
    from vae_tui.tui.app import VaeApp
    from vae_tui.watching.follow import RunWatch

    for sig in EXIT_SIGNAL:  # the terminal going away ends this watcher, never the training
        signal.signal(sig, lambda signum, frame: os._exit(EXIT_SIGNAL[signal.Signals(signum)]))
    watch_terminal()
    source = RunWatch(path)
    source.comparison = comparison
    app = VaeApp(source, pictures, wire)
    app.run()
    source.close()
    raise typer.Exit(app.return_code or 0)


@app.command()
def runs(
    folder: Path = typer.Argument(Path("runs"), help="Where to look for run directories"),
) -> None:
    """List the runs under a folder: dataset, status, epochs done, best test loss, last update."""
    from vae_tui.runfile.layout import find_runs
    from vae_tui.views.runs import runs_table
    from vae_tui.watching.catalog import summarize

    try:
        if not folder.is_dir():
            raise ConfigError(f"{folder} is not a folder; pass the folder that holds your runs (default: ./runs)")
        paths = find_runs(folder)
    except PermissionError:
        say_error(f"permission denied reading {folder}")
        raise typer.Exit(1)
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)  # piped: one line per run
    if not paths:
        console.print(f"no runs under {folder}/ yet; start one with vae-tui train")
        raise typer.Exit(0)
    console.print(runs_table([summarize(path) for path in paths]))
    raise typer.Exit(0)


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="The run to export"),
    format: str = typer.Option("csv", "--format", help="csv (batches.csv and epochs.csv) or tensorboard (event files)"),
    output: Optional[Path] = typer.Option(None, help="Where to write [default: RUN_DIR/export/<format>]", show_default=False),
) -> None:
    """Write a run's metrics as CSV, or as TensorBoard event files (pip install 'vae-tui[tensorboard]')."""
    from vae_tui.runfile.layout import RunDir
    from vae_tui.watching.export import FORMATS, export_csv, export_tensorboard

    try:
        if format not in FORMATS:
            raise ConfigError(f"unknown --format {format!r}: choose csv or tensorboard")
        run = RunDir(run_dir)
        if not run.is_run():
            raise ConfigError(f"{run_dir} is not a vae-tui run directory (no config.json in it)")
        out = output or run.path / "export" / format
        written = export_csv(run, out) if format == "csv" else export_tensorboard(run, out)
    except PermissionError as exc:
        say_error(f"permission denied: {exc.filename}")
        raise typer.Exit(1)
    except OSError as exc:
        say_error(f"cannot write the export to {output or run_dir}: {exc.strerror or exc}")
        raise typer.Exit(1)
    for path in written:
        print(path)
    raise typer.Exit(0)


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
        from vae_tui.evaluation.offline import evaluate, load_saved

        lines = evaluate(load_saved(checkpoint, data_dir), iw_samples)
    except OSError as exc:
        say_error(f"could not write eval.json: {exc.strerror or exc}")
        raise typer.Exit(1)
    print("\n".join(lines))
    raise typer.Exit(0)


@app.command("compare-pca")
def compare_pca(
    run_dir: Path = typer.Argument(..., help="A run directory (its best checkpoint is used) or a checkpoint file"),
    data_dir: Optional[Path] = typer.Option(None, help="Where the dataset lives [default: the one the run used]", show_default=False),
    images: int = typer.Option(4, help="Test images to show reconstructed by each"),
) -> None:
    """PCA with k = latent dimensions against the VAE on the test split: the same two scores, and pictures."""
    from vae_tui.evaluation.offline import compare_pca as compare
    from vae_tui.evaluation.offline import load_saved

    console = Console(highlight=False)
    colour = console.is_terminal and console.color_system is not None and not os.environ.get("NO_COLOR")
    best = run_dir / "checkpoints" / "best.pt"
    lines, pictures = compare(load_saved(best if best.is_file() else run_dir, data_dir), images, "blocks" if colour else "ramp")
    print("\n".join(lines))
    for line in pictures:  # half blocks in the terminal's colours, or a plain character ramp
        if colour:
            console.print(Text.assemble(*[(segment.text, segment.style or "") for segment in line]), no_wrap=True, crop=False)
        else:
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
        say_error(f"{exc.format_message()}{hint}")
        sys.exit(getattr(exc, "exit_code", 2))
    except VaeTuiError as exc:  # what a person can fix, from any command: one line
        say_error(str(exc))
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
