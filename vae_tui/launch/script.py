"""`vae-tui run -- python train.py ARGS`: your own script under the monitor.

The script's `vae_tui.init()` finds the run directory in VAE_TUI_RUN_DIR. The script runs in its
own session, its output in the run's train.log, exactly as vae-tui's own worker does, so the
monitor's keys (pause, checkpoint, quit, detach) and a hang-up treat it the same way. No torch
is imported here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from rich.console import Console

from vae_tui.errors import ConfigError, VaeTuiError
from vae_tui.runfile.layout import RunDir

RUN_DIR_ENV = "VAE_TUI_RUN_DIR"  # the name vae_tui.your_loop reads
START_TIMEOUT_S = 600.0  # a script may load data for minutes before its init()


def start_script(command: list[str], run_dir: Path | None) -> tuple[subprocess.Popen[bytes], RunDir]:
    """Start the script with its output in the run's train.log; return once its run has begun
    (status.json written) or raise with the last line it printed."""
    if not command:
        raise ConfigError("give the command to run after --, e.g. vae-tui run -- python train.py")
    stem = Path(command[1]).stem if len(command) > 1 and command[1].endswith(".py") else Path(command[0]).name
    run = RunDir(Path(run_dir or Path("runs") / time.strftime(f"%Y%m%d-%H%M%S-{stem}")).expanduser().resolve())
    if run.config_path.exists():
        raise ConfigError(f"{run.path} already holds a run; pick another --run-dir")
    run.path.mkdir(parents=True, exist_ok=True)
    with open(run.log_path, "ab") as log:
        try:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True,
                                       env={**os.environ, RUN_DIR_ENV: str(run.path), "PYTHONUNBUFFERED": "1"})
        except OSError as exc:
            raise ConfigError(f"cannot start {command[0]}: {exc.strerror or exc}") from None
    deadline = time.monotonic() + START_TIMEOUT_S
    while not run.status_path.exists():
        if process.poll() is not None:
            raise VaeTuiError(f"{' '.join(command)} exited with status {process.returncode} before it called "
                              f"vae_tui.init(): {_last_line(run)}")
        if time.monotonic() > deadline:
            process.terminate()
            raise VaeTuiError(f"{' '.join(command)} did not call vae_tui.init() within {START_TIMEOUT_S:.0f} s; "
                              f"its output is in {run.log_path}")
        time.sleep(0.05)
    return process, run


def _last_line(run: RunDir) -> str:
    try:
        lines = run.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        lines = []
    return lines[-1] if lines else "it printed nothing"


def run_script(command: list[str], run_dir: Path | None, detach: bool, monitor: bool, console: Console) -> int:
    """Start it; then watch it (the monitor), leave it (detach), or wait for it and pass its output on."""
    from vae_tui.launch.monitor import monitor_process

    process, run = start_script(command, run_dir)
    if detach:
        console.print(f"running in the background (pid {process.pid}); output goes to {run.log_path}")
        console.print(f"watch it:  vae-tui watch {run.path}")
        return 0
    if monitor:
        return monitor_process(process, run.path, console, resumable=False)
    from vae_tui.launch import signals

    # no terminal to draw on: the script's own output, as it comes; a signal here saves and stops it
    signals.install_signal_handlers(lambda: process.send_signal(signal.SIGTERM), lambda: False, None)
    with open(run.log_path, "rb") as log:
        while True:
            done = process.poll() is not None
            chunk = log.read()
            if chunk:
                console.file.write(chunk.decode(errors="replace"))
                console.file.flush()
            if done and not chunk:
                return process.returncode
            if not chunk:
                time.sleep(0.1)
