"""Getting a run ready, in two stages, wherever it will train (a worker process, or here).

`check` does everything that can refuse a run: options, the checkpoint to resume, the data, the
run directory. Nothing is created before all of it passed, and it imports torch only when it
must read a checkpoint or test an explicitly requested GPU, so a monitor can open within a
couple of seconds while the trainer imports torch behind it. `ready` then picks the device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vae_tui.config import TrainConfig, default_epochs
from vae_tui.data import DATASETS, ImageData, Progress, load_dataset
from vae_tui.errors import ConfigError
from vae_tui.launch import resources
from vae_tui.runfile import lock
from vae_tui.runfile.files import library_versions, read_config, write_config
from vae_tui.runfile.io import atomic_write, remove_partial_writes
from vae_tui.runfile.layout import RunDir, default_run_path, open_run_dir
from vae_tui.runfile.schema import PLACEMENT_WORDS, RunInfo, StepPlan, going_on_words

# Options that fix the model's shape or the data it sees: a resumed run cannot change them.
FIXED_ON_RESUME = {
    "dataset": "--dataset",
    "arch": "--arch",
    "likelihood": "--likelihood",
    "hidden_dim": "--hidden-dim",
    "model": "--model",
    "model_args": "--model-args",
    "model_output": "--model-output",
    "model_input": "--model-input",
    "latent_dim": "--latent-dim",
    "batch_size": "--batch-size",
    "image_size": "--image-size",
    "channels": "--channels",
    "test_dir": "--test-dir",
}


@dataclass
class Request:
    """What the command line asked for: plain data, so it can be handed to a worker process."""

    options: dict[str, Any]
    run_dir: str | None = None
    resume: str | None = None
    view: str = "here"  # here (plain view in this process), monitor or detached
    nproc: int = 1  # --nproc: ranks vae-tui starts with torchrun on this node
    world_size: int = 1  # the ranks that train the run (torchrun's, or --nproc's)
    init_from: str | None = None  # --init-from: a new run that starts from this checkpoint's weights
    made: bool = False  # the run directory was made by vae-tui's torchrun launcher, which holds its lock
    again: bool = False  # torchrun restarted the run before its first checkpoint: its directory is reused

    @property
    def on_nan(self) -> str:
        """--on-nan auto: pause where someone is watching (the monitor), stop where nobody may be."""
        chosen = self.options.get("on_nan", "auto")
        return chosen if chosen != "auto" else ("pause" if self.view == "monitor" else "stop")


@dataclass
class Prepared:
    """A run that passed every check, its run directory written."""

    request: Request
    config: TrainConfig
    data: ImageData
    run: RunDir
    state: dict[str, Any] | None = None  # the checkpoint resumed from
    checkpoint: Path | None = None
    weights: dict[str, Any] | None = None  # --init-from's checkpoint: a new run starts from its weights
    device: Any = None  # DeviceInfo, once `ready`
    step: StepPlan | None = None  # which training step, and why: once `ready`
    info: RunInfo = field(default_factory=RunInfo)  # config.json
    warnings: list[str] = field(default_factory=list)  # what will be slow or odd, said before it starts
    placement: str = "device"  # the training images: on the device, or streamed to it ("stream")
    model_detected: str = ""  # what your own model was found to be, in words
    parameters: int | None = None  # your own model's, as its probe counted them (ours are counted by arithmetic)
    restarted: str = ""  # torchrun restarted the run, and what it went on from, in words


def check(request: Request, progress: Progress | None = None) -> Prepared:
    """Validate options, checkpoint, data and run directory, then create it; raise VaeTuiError.
    `progress` hears how decoding pictures goes (done, total, what), the first time a dataset is read."""
    state, checkpoint, run_path = None, None, Path(request.run_dir) if request.run_dir else None
    say = progress or (lambda done, total, what: None)
    config = TrainConfig(**request.options).validate()  # bad values first, before reading any file
    if request.world_size > 1 and request.on_nan == "skip":
        raise ConfigError(
            "--on-nan skip looks at every step's loss alone, which ranks cannot agree on without "
            "waiting for each other every step; use --on-nan pause or stop with several ranks"
        )
    if request.resume is not None and request.init_from is not None:
        raise ConfigError("--init-from starts a new run from a checkpoint's weights; --resume continues its own run: give one of them")
    if request.resume is not None:
        say(0, 0, "reading the checkpoint (importing torch)")
        from vae_tui.training.checkpoint import check_model_shape, load_checkpoint, resolve_checkpoint_path

        resumed = _run_of(Path(request.resume))
        resumed.refuse_links()  # before reading anything in it
        _refuse_a_scripts_run(resumed)
        checkpoint = resolve_checkpoint_path(Path(request.resume))
        state = load_checkpoint(checkpoint)
        check_model_shape(state)
        config, run_path = _resume_config(state, checkpoint, request.options, run_path)
        config = _same_global_batch(state, config, request.world_size)
    weights, weights_path = _weights_from(request, config) if request.init_from is not None else (None, None)
    if weights is not None:
        config = _model_of(weights, request.options)
    if request.nproc > 1 and config.device not in ("cpu", "mps"):
        say(0, 0, "counting the GPUs (importing torch)")
        from vae_tui.training.device import check_processes

        check_processes(request.nproc, config.device)  # --nproc N: a GPU for each, or CPU processes
    if config.device not in ("auto", "cpu") or config.step in ("graph", "emulate"):
        say(0, 0, f"looking for --device {config.device} (importing torch)")
        from vae_tui.training.device import pick_device
        from vae_tui.training.steps import plan_step

        device = pick_device(config.device)  # asked for by name: say now, in one line, when it is not there
        plan_step(config, device.kind, request.world_size, request.on_nan)  # so is a CUDA graph that cannot be
    say(0, 0, f"reading {config.dataset}")
    data = load_dataset(config.dataset, config.data_dir, image_size=config.image_size, channels=config.channels, test_dir=config.test_dir, progress=progress)
    config = config.replace(epochs=config.epochs or default_epochs(data.name), **_resolved(config, data))
    if state is not None:
        _check_same_data(state, data)
    if weights is not None:
        _check_same_shape(weights, data, weights_path)
    model_words: list[str] = []
    detected, parameters = "", None
    if config.model is not None:
        say(0, 0, f"trying your model {config.model} on a few images")
        config, detected, model_words, parameters = _your_model(config, data, state)
    placement, warnings = resources.check(config, data, parameters=parameters)  # before the run directory: what cannot fit is refused untouched
    warnings[:0] = data.warnings + model_words
    if request.made:  # by the launcher, a moment ago: reopened as it is, under the launcher's lock
        run = open_run_dir(Path(request.run_dir or ""), resuming=True)
    else:
        reopened = (state is not None and run_path is not None) or request.again
        run = open_run_dir(run_path or default_run_path(data.name), resuming=reopened, claim=lock.hold)
    if data.skipped:
        warnings.insert(0, _skipped_words(data.skipped, run))
    if state is not None or request.again:
        remove_partial_writes(run.checkpoints)
        run.status_path.unlink(missing_ok=True)  # the previous trainer's last word, not this one's
    if weights is not None:
        warnings.insert(0, _weights_words(weights, weights_path))
    prepared = Prepared(request, config, data, run, state, checkpoint, warnings=warnings, placement=placement, model_detected=detected, parameters=parameters)
    prepared.weights = weights
    prepared.info = _run_info(prepared, device={"kind": config.device, "name": "not chosen yet"})
    write_config(run, prepared.info)
    return prepared


def _your_model(config: TrainConfig, data: ImageData, state: dict[str, Any] | None) -> tuple[TrainConfig, str, list[str], int]:
    """Build the user's model and try it on a few training images: what it is (classic or protocol,
    flat or image input, probabilities or logits) goes into the configuration, so a resume and
    `vae-tui eval` rebuild it the same way; everything wrong with it is one line before the run exists."""
    import torch

    from vae_tui.data.images import as_unit
    from vae_tui.models import user_probe, user_source

    assert config.model is not None  # only called for your own model
    x = torch.from_numpy(as_unit(data.train_x[: min(8, len(data.train_x))]))
    torch.manual_seed(config.seed)
    found = user_probe.probe(config.model, config.model_args, data.shape, config.hidden_dim, config.latent_dim, x, config.model_output, config.model_input)
    config = config.replace(
        model=found.spec, model_kind=found.kind, model_output=found.output, model_input=found.input, model_outputs=found.outputs, latent_dim=found.latent_dim
    )
    changed = user_source.changed_since(state) if state is not None else None
    return config, found.detected, [changed] if changed else [], found.parameters


def _resolved(config: TrainConfig, data: ImageData) -> dict[str, Any]:
    """What the run records of its data, so that a resume reads the very same: the dataset `auto`
    chose, or a folder's absolute path and the size and channels its pictures were decoded to."""
    if config.dataset in DATASETS:
        return {"dataset": data.name}
    channels, size, _ = data.shape
    return {
        "dataset": str(Path(config.dataset).expanduser().resolve()),
        "image_size": size,
        "channels": channels,
        "test_dir": str(Path(config.test_dir).expanduser().resolve()) if config.test_dir else None,
    }


def _refuse_a_scripts_run(run: RunDir) -> None:
    """A run of your own script (`vae-tui run`) goes on by running the script: its loop is not vae-tui's."""
    info, _ = read_config(run)
    if info is not None and info.get("view") == "your script":
        raise ConfigError(f"{run.path} is a run of your own script, which vae-tui cannot resume: {going_on_words(info.get('script') or 'python ...')}")


def _run_of(resume: Path) -> RunDir:
    """The run directory a --resume path belongs to: the folder itself, or the one holding checkpoints/."""
    resume = resume.expanduser()
    if resume.parent.name == "checkpoints" and not resume.is_dir():
        return RunDir(resume.parent.parent)
    return RunDir(resume)


def _skipped_words(skipped: list[str], run: RunDir) -> str:
    """The files that could not be read: the first few said, all of them kept in the run's skipped.txt."""
    many = len(skipped)
    shown = ", ".join(skipped[:3]) + (", ..." if many > 3 else "")
    try:
        atomic_write(run.skipped_path, "".join(f"{name}\n" for name in skipped).encode())
        listed = f" (all {many:,} listed in {run.skipped_path})" if many > 3 else ""
    except OSError:
        listed = ""
    return f"{many:,} file{'s' if many != 1 else ''} could not be read as pictures and {'were' if many != 1 else 'was'} skipped: {shown}{listed}"


def ready(p: Prepared, local_rank: int | None = None) -> None:
    """Import torch, pick the device (under torchrun, the local rank's GPU), and record it in config.json."""
    from vae_tui.training.device import pick_device
    from vae_tui.training.steps import plan_step

    p.device = pick_device(p.config.device, local_rank)
    # --step graph where it cannot be: refused
    p.step = plan_step(p.config, p.device.kind, p.request.world_size, p.request.on_nan, train_images=len(p.data.train_x))
    if p.device.kind == "cuda":  # the host's memory was checked before; the GPU's can only be now
        import torch

        free, _ = torch.cuda.mem_get_info(p.device.torch_device)
        p.placement, _ = resources.check(p.config, p.data, available=free, parameters=p.parameters)
    if p.config.precision == "fp16" and p.device.kind == "cpu":
        p.warnings.append(
            "--precision fp16 on a CPU: float16 arithmetic has no fast path on most CPUs (0.06x to 0.12x of "
            "fp32's speed on the one in BENCHMARKS.md); bf16 or fp32 will be faster"
        )
    p.info.device = {"kind": p.device.kind, "name": p.device.name, "index": p.device.index}
    p.info.step = {"mode": p.step.mode, "why": p.step.why}  # the trainer rewrites it if the graph is not used
    p.info.data_placement = p.placement
    write_config(p.run, p.info)


def describe(p: Prepared) -> list[str]:
    """What is about to train, in the lines the plain view and `vae-tui train` print first."""
    from vae_tui.models import describe_model
    from vae_tui.runfile.schema import model_words

    c = p.config
    lines = [f"dataset: {p.data.describe()}", f"         {p.data.source}"]
    if p.device is not None:
        step = "" if p.step is None else f", {p.step.words}" + (f" ({p.step.why})" if p.step.mode == "eager" and p.device.kind == "cuda" else "")
        visible = os.environ.get("CUDA_VISIBLE_DEVICES") if p.device.kind == "cuda" else None  # what "cuda:0" is
        where = p.device.words + (f", CUDA_VISIBLE_DEVICES={visible}" if visible is not None else "")
        if p.request.world_size > 1:  # this is rank 0's device; each rank has its own
            where = (
                f"{p.request.world_size} ranks on cpu, {p.device.name} each"
                if p.device.kind == "cpu"
                else f"{p.request.world_size} ranks, each on a {p.device.kind} device of its own (rank 0: {where})"
            )
        lines.append(f"device:  {where}, {PLACEMENT_WORDS[p.placement]}{step}")
    warmup = f" (rising from 0 over {c.kl_warmup} epochs)" if c.kl_warmup else ""
    ranks = p.request.world_size
    batch = f"batch {c.batch_size}" if ranks == 1 else f"batch {c.batch_size} per rank x {ranks} ranks = {c.batch_size * ranks}"
    precision = f", {c.precision}" if c.precision != "fp32" else ""
    tc = f", total correlation x {c.tc_beta:g} (beta-TCVAE)" if c.tc_beta is not None else ""
    lines.append(f"model:   {model_words(describe_model(c, p.data.shape))}, beta {c.beta:g}{warmup}{tc}, lr {c.lr:g}, {batch}{precision}")
    if p.model_detected:
        lines.append(f"         {p.model_detected}")
    resuming = f" (resuming at epoch {p.state['epoch']}, step {p.state['step']})" if p.state else ""
    lines.append(f"run:     {p.run.path}{resuming}")
    return lines + [f"warning: {w}" for w in p.warnings]


def _run_info(p: Prepared, device: dict[str, str]) -> RunInfo:
    from vae_tui.models import describe_model

    return RunInfo(
        config=p.config.to_dict(),
        dataset=p.data.spec(),
        model={"arch": p.config.arch, "description": describe_model(p.config, p.data.shape)},
        device=device,
        world_size=p.request.world_size,
        global_batch=p.config.batch_size * p.request.world_size,
        versions=library_versions(),
        resumed_from=p.request.resume,
        resume_checkpoint=str(p.checkpoint.resolve()) if p.checkpoint else None,
        weights_from=p.request.init_from,
        view=p.request.view,
    )


MODEL_KEYS = ("arch", "likelihood", "hidden_dim", "latent_dim", "model", "model_args", "model_output", "model_input", "model_kind", "model_outputs")


def _weights_from(request: Request, config: TrainConfig) -> tuple[dict[str, Any], Path]:
    """--init-from's checkpoint, read and checked."""
    from vae_tui.training.checkpoint import check_model_shape, load_checkpoint, resolve_checkpoint_path

    owner = _run_of(Path(request.init_from or ""))
    owner.refuse_links()
    path = resolve_checkpoint_path(Path(request.init_from or ""))
    weights = load_checkpoint(path)
    check_model_shape(weights)
    return weights, path


def _model_of(weights: dict[str, Any], given: dict[str, Any]) -> TrainConfig:
    """This run's configuration with the checkpoint's model (options that would change it are refused)."""
    from vae_tui.training.checkpoint import describe_shape, saved_config

    saved = saved_config(weights)
    for key in MODEL_KEYS:
        if key in given and given[key] != getattr(saved, key):
            option = "--" + key.replace("_", "-")
            raise ConfigError(f"{option} {given[key]} does not match the checkpoint's {describe_shape(weights)} model; drop {option} to start from its weights")
    model = {key: getattr(saved, key) for key in MODEL_KEYS}
    if "image_size" not in given and "channels" not in given:
        model.update(image_size=saved.image_size, channels=saved.channels)
    return TrainConfig(**{**given, **model}).validate()


def _check_same_shape(weights: dict[str, Any], data: ImageData, path: Path | None) -> None:
    from vae_tui.training.checkpoint import image_shape

    if tuple(image_shape(weights)) != tuple(data.shape):
        raise ConfigError(
            f"the checkpoint {path} takes images of shape {list(image_shape(weights))} but {data.name}'s are {list(data.shape)}; "
            "give --image-size and --channels to match it"
        )


def _weights_words(weights: dict[str, Any], path: Path | None) -> str:
    return (
        f"starting from the weights and Adam's state of {path} (epoch {int(weights.get('epoch', 0))}, step {int(weights.get('step', 0)):,}): "
        "a new run, with a schedule of its own on this data"
    )


def _check_same_data(state: dict[str, Any], data: ImageData) -> None:
    from vae_tui.training.checkpoint import data_mismatch

    why = data_mismatch(state, data.shape, data.name, len(data.train_x))
    if why is not None:
        raise ConfigError(why)


def _same_global_batch(state: dict[str, Any], config: TrainConfig, world_size: int) -> TrainConfig:
    """Resumed on another number of ranks: the same images per step (so the same run goes on), each
    rank taking its share; refused in one line when they cannot share them evenly."""
    from vae_tui.training.checkpoint import saved_global_batch

    saved_world, global_batch = int(state.get("world_size", 1)), saved_global_batch(state)
    if saved_world == world_size or global_batch == config.batch_size * world_size:
        return config
    if global_batch % world_size:
        raise ConfigError(
            f"the checkpoint was trained with {global_batch} images per step ({saved_world} rank"
            f"{'s' if saved_world != 1 else ''}), which {world_size} ranks cannot share evenly; resume on a "
            f"number of ranks that divides {global_batch}"
        )
    return config.replace(batch_size=global_batch // world_size)


def _resume_config(state: dict[str, Any], path: Path, given: dict[str, Any], run_dir: Path | None) -> tuple[TrainConfig, Path | None]:
    """The checkpoint's configuration, updated by options that may change mid-run."""
    from vae_tui.training.checkpoint import describe_shape, saved_config

    saved = saved_config(state)
    for key, option in FIXED_ON_RESUME.items():
        if key in given and given[key] != getattr(saved, key):
            raise ConfigError(
                f"{option} {given[key]} does not match the checkpoint ({describe_shape(state)} model on "
                f"{saved.dataset}, batch size {saved.batch_size}); drop {option} to resume, or start a new run"
            )
    config = saved.replace(**given).validate()
    done, mid_epoch = int(state["epoch"]), int(state.get("batch_in_epoch") or 0) > 0
    if config.epochs is not None and (config.epochs < done or (config.epochs == done and not mid_epoch)):
        raise ConfigError(f"the checkpoint already has {done} epochs; pass --epochs with a larger total to train further")
    owner = path.parent.parent if path.parent.name == "checkpoints" else None
    if owner is not None and run_dir is not None and Path(run_dir).resolve() != owner.resolve():
        raise ConfigError(f"--resume continues in the checkpoint's own run directory {owner}; drop --run-dir")
    return config, owner or run_dir
