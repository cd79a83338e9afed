"""`vae-tui train` in a terminal: the worker trains, this process is a watcher of its run directory.

Exactly like `vae-tui watch`, but owning the run: quitting stops it, `d` detaches. This process
never imports torch, loads the data or builds the model, so it stays small and opens fast; the
monitor's Python work never competes with the trainer for its interpreter lock, and a monitor
that dies takes no training with it.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from rich.console import Console

from vae_tui.errors import say_error
from vae_tui.launch import signals
from vae_tui.launch.spawn import Worker
from vae_tui.runfile.schema import RunState
from vae_tui.training.controls import give_back
from vae_tui.tui.wire import DEFAULT_WIRE_KB
from vae_tui.watching.follow import RunWatch

if TYPE_CHECKING:
    from vae_tui.tui.graphics import PictureMode


def start_on_screen(worker: Worker) -> bool:
    """The starting screen, at once, until the worker has checked the run: True then (its run directory
    and lines are set), False when a person cancelled (the worker is ended); a refusal raises
    WorkerError, its one line."""
    from vae_tui.tui.starting import CANCELLED, StartingApp

    app = StartingApp(worker.next_report)
    app.run()
    result = app.return_value
    if result is None or result is CANCELLED:
        worker.end()
        return False
    worker.checked(result if result else None)  # {}: it ended without a word
    return True


def train_monitored(worker: Worker, console: Console, pictures: "PictureMode | None" = None, wire_kb: float = DEFAULT_WIRE_KB) -> int:
    """The monitor on the worker's run until it ends or is detached; returns the exit status."""
    worker.stop_listening()
    assert worker.run_dir is not None  # it has checked the run
    return monitor_process(worker.process, worker.run_dir, console, pictures=pictures, wire_kb=wire_kb)


def monitor_process(
    process: subprocess.Popen[bytes],
    run_dir: Path,
    console: Console,
    resumable: bool = True,
    pictures: "PictureMode | None" = None,
    wire_kb: float = DEFAULT_WIRE_KB,
    on_exit: Callable[[int], object] | None = None,
) -> int:
    """The monitor owning a process that trains into `run_dir` (vae-tui's worker, or your script
    under `vae-tui run`): quitting stops it, d detaches it; returns the exit status. `on_exit`: told
    the process's return code once it ends, before the monitor reads the run's last state."""
    from vae_tui.tui.app import VaeApp
    from vae_tui.tui.graphics import choose

    watch = RunWatch(run_dir, process, on_exit=on_exit)

    def stop_by_signal() -> None:
        watch.stop_coming()
        process.send_signal(signal.SIGTERM)  # the worker saves a checkpoint and exits

    previous = signals.current_handlers()
    code = signals.install_signal_handlers(stop_by_signal, lambda: False, process.wait)
    signals.watch_terminal()
    app = VaeApp(watch, pictures or choose("auto"), wire_kb)
    try:
        app.run()
    finally:
        watch.close()
        if process.poll() is None and not watch.detached:  # the monitor ended first (a crash): keep the work
            stop_by_signal()
            process.wait()
        give_back(previous)
    if watch.detached:
        console.print(f"still training in the background (pid {process.pid}); output in {watch.run.log_path}")
        console.print(f"watch it: vae-tui watch {watch.run.path}")
        return 0
    return report_end(watch, console, signal_code=code[0] or app.return_code or 0, resumable=resumable)


def report_end(watch: RunWatch, console: Console, signal_code: int = 0, resumable: bool = True) -> int:
    """After a monitored run: what became of it, in the same words as the plain view."""
    watch.follower.poll()
    if watch.deleted:
        say_error(f"the run directory {watch.run.path} was deleted while it trained; the trainer stopped, and its files went with the folder")
        return 1
    status = watch.telemetry.status()
    returncode = watch.process.poll() if watch.process is not None else None
    if status.state == RunState.ERROR or (returncode not in (0, None) and not signal_code and not status.final):
        message = status.message or f"the trainer exited with status {returncode}; see {watch.run.log_path}"
        say_error(message + (f" (last good checkpoint: {status.last_checkpoint})" if status.last_checkpoint else ""))
        return 1
    best = f"; best test loss {status.best_test_loss:.3f}" if status.best_test_loss < float("inf") else ""
    console.print(f"{status.message or status.state.value}{best}")
    if status.last_checkpoint:
        console.print(f"checkpoint: {status.last_checkpoint}")
    console.print(f"metrics:    {watch.run.metrics_path}")
    if status.state == RunState.STOPPED and resumable:
        console.print(f"continue with: vae-tui train --resume {watch.run.path}")
    return signal_code


def train_detached(worker: Worker, console: Console) -> int:
    """Return once the worker is training on its own; it outlives this process and the terminal."""
    for line in worker.wait_started():
        console.print(line)
    worker.stop_listening()
    assert worker.run_dir is not None
    console.print(f"training in the background (pid {worker.process.pid}); output goes to {worker.run_dir / 'train.log'}")
    console.print(f"watch it:  vae-tui watch {worker.run_dir}")
    return 0
