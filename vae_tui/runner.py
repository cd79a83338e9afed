"""Starting a run: check everything, prepare the run directory, then train here or in a worker.

Three ways to train, one preparation:
- here (`--headless`, or output not a terminal): the trainer thread and the plain view in this
  process;
- monitored (`vae-tui train` in a terminal): the trainer runs in a worker process and this
  process shows the monitor on its run directory, exactly like `vae-tui watch`. The monitor's
  Python work never competes with the trainer for its interpreter lock, and a monitor that dies
  takes no training with it;
- detached (`--detach`): the same worker in its own session, and this process returns at once.
Whichever it is, the trainer publishes its state into the run directory and takes commands from
its control folder, so any run can be watched and steered from another terminal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from rich.console import Console

from vae_tui.config import TrainConfig, default_epochs
from vae_tui.errors import ConfigError, VaeTuiError
from vae_tui.rundir import RunDir

if TYPE_CHECKING:
    from vae_tui.follow import RunWatch

EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}
WATCHDOG_GRACE_S = 5.0  # after SIGTERM, how long the app may take to restore the terminal
STOP_GRACE_S = 15.0  # a trainer that has not taken a stop request by then is sent SIGTERM
# Options that fix the model's shape or the data it sees: a resumed run cannot change them.
FIXED_ON_RESUME = {"dataset": "--dataset", "hidden_dim": "--hidden-dim", "latent_dim": "--latent-dim", "batch_size": "--batch-size"}


@dataclass
class Prepared:
    """A run ready to train: everything checked, the run directory written."""

    config: TrainConfig
    data: Any  # ArrayDataset
    device: Any  # DeviceInfo
    run: RunDir
    state: dict[str, Any] | None  # the checkpoint resumed from
    checkpoint: Path | None
    view: str = "here"  # here (plain view in this process), monitor or detached


def resolve_on_nan(config: TrainConfig, view: str) -> str:
    """--on-nan auto: pause where someone is watching (the monitor), stop where nobody may be."""
    if config.on_nan != "auto":
        return config.on_nan
    return "pause" if view == "monitor" else "stop"


def prepare(given: dict[str, Any], run_dir: Path | None, resume: Path | None, view: str = "here") -> Prepared:
    """Validate options, data, device and checkpoint, then create the run directory; raise VaeTuiError."""
    from vae_tui.checkpoint import check_model_shape, load_checkpoint, remove_partial_writes, resolve_checkpoint_path
    from vae_tui.data import load_dataset
    from vae_tui.device import pick_device
    from vae_tui.metrics import truncate_metrics
    from vae_tui.rundir import default_run_path, library_versions, open_run_dir

    state, checkpoint = None, None
    if resume is not None:
        TrainConfig(**given).validate()  # bad values first, before reading any file
        checkpoint = resolve_checkpoint_path(resume)
        state = load_checkpoint(checkpoint)
        check_model_shape(state)
        config, run_path = _resume_config(state, checkpoint, given, run_dir)
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
    if state is not None and state.get("train_size", len(data.train_x)) != len(data.train_x):
        raise ConfigError(
            f"the checkpoint was trained on {state['train_size']:,} {state.get('dataset', '?')} images but this "
            f"{data.name} has {len(data.train_x):,}; its shuffling cannot continue here. Resume with the same data, "
            "or start a new run"
        )
    run = open_run_dir(run_path or default_run_path(data.name), resuming=state is not None and run_path is not None)
    if state is not None:
        remove_partial_writes(run.checkpoints)
        truncate_metrics(run.metrics_path, int(state["step"]), int(state["epoch"]))
        run.status_path.unlink(missing_ok=True)  # the previous trainer's last word, not this one's
    run.write_config({
        "config": config.to_dict(),
        "dataset": {"name": data.name, "source": data.source, "image_shape": list(data.image_shape),
                    "train_size": len(data.train_x), "test_size": len(data.test_x)},
        "device": {"kind": info.kind, "name": info.name},
        "versions": library_versions(),
        "resumed_from": str(resume) if resume else None,
        "resume_checkpoint": str(checkpoint.resolve()) if checkpoint else None,
        "view": view,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    return Prepared(config, data, info, run, state, checkpoint, view)


def prepare_worker(path: Path) -> Prepared:
    """The worker's side: the run directory the parent prepared (config.json says it all)."""
    from vae_tui.checkpoint import load_checkpoint
    from vae_tui.data import load_dataset
    from vae_tui.device import pick_device

    run = RunDir(path)
    try:
        info = json.loads(run.config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {run.config_path}: {exc}") from None
    config = TrainConfig.from_dict(info["config"]).validate()
    checkpoint = Path(info["resume_checkpoint"]) if info.get("resume_checkpoint") else None
    state = load_checkpoint(checkpoint) if checkpoint else None
    data, device = load_dataset(config.dataset, config.data_dir), pick_device(config.device)
    return Prepared(config, data, device, run, state, checkpoint, str(info.get("view", "here")))


def describe(p: Prepared, console: Console) -> None:
    h, w = p.data.image_shape
    config = p.config
    console.print(f"dataset: {p.data.name}, {len(p.data.train_x):,} train / {len(p.data.test_x):,} test images of {h}x{w}")
    console.print(f"         {p.data.source}")
    console.print(f"device:  {p.device.kind} ({p.device.name})")
    console.print(f"model:   {p.data.input_dim}-{config.hidden_dim}-{config.latent_dim} VAE, beta {config.beta:g}, lr {config.lr:g}, batch {config.batch_size}")
    resuming = f" (resuming at epoch {p.state['epoch']}, step {p.state['step']})" if p.state else ""
    console.print(f"run:     {p.run.path}{resuming}")


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


# -- training in this process ----------------------------------------------------------------
def train_here(p: Prepared, console: Console) -> int:
    """The trainer thread and the plain view, here; returns the exit status."""
    from vae_tui.headless import describe_elapsed, follow
    from vae_tui.metrics import MetricsWriter
    from vae_tui.publish import Publisher
    from vae_tui.telemetry import Telemetry
    from vae_tui.trainer import Controls, Trainer

    telemetry = Telemetry(MetricsWriter(p.run.metrics_path))
    controls = Controls()
    trainer = Trainer(p.config, p.data, p.device, telemetry, controls, p.run, resume_state=p.state,
                      on_nan=resolve_on_nan(p.config, p.view))
    publisher = Publisher(p.run, telemetry, controls)
    previous = {sig: signal.getsignal(sig) for sig in EXIT_SIGNAL}
    started = time.time()
    thread = trainer.start()
    publisher.start()
    code = install_signal_handlers(lambda: controls.stop(save=True), lambda: controls.stopping, None)
    try:
        follow(thread, telemetry, console)
    finally:
        if thread.is_alive():  # interrupted some other way: stop cleanly, keep the work
            controls.stop(save=True)
            thread.join()
        publisher.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    result = trainer.result
    assert result is not None
    if result.state == "error":
        error(result.message)
        return 1
    console.print(f"{result.message} in {describe_elapsed(time.time() - started)}; best test loss {result.best_test_loss:.3f}")
    if result.last_checkpoint:
        console.print(f"checkpoint: {result.last_checkpoint}" + (f" (best: {result.best_checkpoint.name})" if result.best_checkpoint else ""))
    console.print(f"metrics:    {p.run.metrics_path}")
    if result.state == "stopped":
        console.print(f"continue with: vae-tui train --resume {p.run.path}")
    return code[0] if result.state == "stopped" else 0


def error(message: str) -> None:
    print(f"vae-tui: error: {message}", file=sys.stderr, flush=True)


def install_signal_handlers(
    stop: Callable[[], None], stopping: Callable[[], bool], wait_trainer: Callable[[], None] | None
) -> list[int]:
    """First signal: checkpoint and stop cleanly. A second Ctrl+C: leave at once (files are atomic).

    With the monitor (`wait_trainer` given), a watchdog makes sure the process ends once the
    trainer has saved: after SIGHUP the terminal is gone and Textual's shutdown can block writing
    to it, so the process leaves as soon as the checkpoint is on disk; after SIGTERM the app gets
    a few seconds to restore the terminal first.
    """
    code = [0]

    def watchdog(signum: int) -> None:
        assert wait_trainer is not None
        wait_trainer()
        if signum != signal.SIGHUP:
            time.sleep(WATCHDOG_GRACE_S)
        os._exit(code[0])

    def handle(signum: int, frame: Any) -> None:
        if stopping() or code[0]:
            if signum == signal.SIGINT:
                print("vae-tui: quitting at once", file=sys.stderr, flush=True)
                os._exit(code[0] or 130)
            return
        code[0] = EXIT_SIGNAL.get(signal.Signals(signum), 1)
        if wait_trainer is None:
            print(f"vae-tui: {signal.Signals(signum).name}: saving a checkpoint and stopping (Ctrl+C again to quit at once)", file=sys.stderr, flush=True)
        stop()
        if wait_trainer is not None:
            threading.Thread(target=watchdog, args=(signum,), name="vae-watchdog", daemon=True).start()

    for sig in EXIT_SIGNAL:
        signal.signal(sig, handle)
    return code


# -- training in a worker process ------------------------------------------------------------
def spawn_worker(run: RunDir) -> subprocess.Popen[bytes]:
    """Start `python -m vae_tui.worker RUN_DIR` in its own session, its output in train.log.

    Its own session: the terminal's signals and hang-up reach it only through whoever started it
    (the monitor forwards them; after --detach nothing does), so closing an SSH session that
    detached a run never ends it.
    """
    log = open(run.log_path, "ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "vae_tui.worker", str(run.path.resolve())],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    finally:
        log.close()


def train_monitored(p: Prepared, console: Console) -> int:
    """The trainer in a worker process, the monitor here; returns the exit status."""
    from vae_tui.follow import RunWatch
    from vae_tui.tui.app import VaeApp  # imported first: a broken install must not leave a trainer behind

    process = spawn_worker(p.run)
    watch = RunWatch(p.run.path, process, cpu_training=p.device.kind == "cpu")
    previous = {sig: signal.getsignal(sig) for sig in EXIT_SIGNAL}

    def stop_by_signal() -> None:
        watch.stopping = True
        process.send_signal(signal.SIGTERM)  # the worker saves a checkpoint and exits

    code = install_signal_handlers(stop_by_signal, lambda: False, process.wait)
    watch.yield_cpu()
    try:
        VaeApp(watch).run()
    finally:
        watch.close()
        if process.poll() is None and not watch.detached:  # the monitor ended first (a crash): keep the work
            stop_by_signal()
            process.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if watch.detached:
        console.print(f"still training in the background (pid {process.pid}); output in {p.run.log_path}")
        console.print(f"watch it: vae-tui watch {p.run.path}")
        return 0
    return report_end(watch, console, signal_code=code[0])


def report_end(watch: RunWatch, console: Console, signal_code: int = 0) -> int:
    """After a monitored run: what became of it, in the same words as the plain view."""
    watch.follower.poll()
    status = watch.telemetry.status()
    returncode = watch.process.poll() if watch.process is not None else None
    if status.state == "error" or (returncode not in (0, None) and not signal_code and not status.final):
        message = status.message or f"the trainer exited with status {returncode}; see {watch.run.log_path}"
        error(message + (f" (last good checkpoint: {status.last_checkpoint})" if status.last_checkpoint else ""))
        return 1
    best = f"; best test loss {status.best_test_loss:.3f}" if status.best_test_loss < float("inf") else ""
    console.print(f"{status.message or status.state}{best}")
    if status.last_checkpoint:
        console.print(f"checkpoint: {status.last_checkpoint}")
    console.print(f"metrics:    {watch.run.metrics_path}")
    if status.state == "stopped":
        console.print(f"continue with: vae-tui train --resume {watch.run.path}")
    return signal_code


def train_detached(p: Prepared, console: Console) -> int:
    process = spawn_worker(p.run)
    deadline = time.time() + 60
    while time.time() < deadline and process.poll() is None and not p.run.status_path.exists():
        time.sleep(0.1)  # wait until it is really training, so a failure is reported here
    if process.poll() not in (None, 0):
        raise VaeTuiError(f"the background trainer failed to start; see {p.run.log_path}:\n{_tail(p.run.log_path)}")
    console.print(f"training in the background (pid {process.pid}); output goes to {p.run.log_path}")
    console.print(f"watch it:  vae-tui watch {p.run.path}")
    return 0


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
