"""`vae-tui run -- python train.py ARGS`: your own script under the monitor, unchanged.

The script runs in its own session, its output in the run's train.log, exactly as vae-tui's own
worker does, so the monitor's keys (pause, checkpoint, quit, detach) and a hang-up treat it the
same way. vae_tui/hooked/boot is put first on its PYTHONPATH: a script that makes no vae-tui call
is watched through PyTorch's hooks from the moment it imports torch; one that calls
`vae_tui.init()` finds its run directory in VAE_TUI_RUN_DIR and the hooks step aside. No torch
is imported here.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

from rich.console import Console

from vae_tui.errors import ConfigError, VaeTuiError
from vae_tui.runfile.files import read_status, write_config, write_status
from vae_tui.runfile.layout import RUN_DIR_ENV, SCRIPT_ENV, RunDir
from vae_tui.runfile.schema import RunInfo, RunState, Status
from vae_tui.tui.wire import DEFAULT_WIRE_KB

HOOKS_ENV = "VAE_TUI_HOOKS"  # asks the bootstrap to arm the hooks (taken out of the environment there)
BOOT_DIR = Path(__file__).resolve().parent.parent / "hooked" / "boot"
START_TIMEOUT_S = 600.0  # a script may work for minutes before it imports torch
SHOWN_LINES = 20  # of the output of a script that ended before it trained


def script_environment(command: list[str], run: RunDir) -> dict[str, str]:
    """The script's environment: the run directory, and the bootstrap first on its PYTHONPATH."""
    path = os.pathsep.join([str(BOOT_DIR), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, RUN_DIR_ENV: str(run.path), SCRIPT_ENV: shlex.join(command), HOOKS_ENV: "1", "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def start_script(command: list[str], run_dir: Path | None) -> tuple[subprocess.Popen[bytes], RunDir]:
    """Start the script with its output in the run's train.log; return once its run has begun
    (status.json written), or raise when it ended before that."""
    if not command:
        raise ConfigError("give the command to run after --, e.g. vae-tui run -- python train.py")
    stem = Path(command[1]).stem if len(command) > 1 and command[1].endswith(".py") else Path(command[0]).name
    run = RunDir(Path(run_dir or Path("runs") / time.strftime(f"%Y%m%d-%H%M%S-{stem}")).expanduser().resolve())
    if run.config_path.exists():
        raise ConfigError(f"{run.path} already holds a run; pick another --run-dir")
    run.path.mkdir(parents=True, exist_ok=True)
    with open(run.log_path, "ab") as log:
        try:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=script_environment(command, run)
            )
        except OSError as exc:
            shutil.rmtree(run.path, ignore_errors=True)
            raise ConfigError(f"cannot start {command[0]}: {exc.strerror or exc}") from None
    deadline = time.monotonic() + START_TIMEOUT_S
    while not run.status_path.exists():
        if process.poll() is not None:
            raise ended_before_training(command, run, process.returncode)
        if time.monotonic() > deadline:
            process.terminate()
            raise VaeTuiError(f"{shlex.join(command)} did not import torch within {START_TIMEOUT_S:.0f} s; its output is in {run.log_path}")
        time.sleep(0.05)
    return process, run


class EndedEarly(VaeTuiError):
    """The script ended before it trained; its own output has been shown."""


def ended_before_training(command: list[str], run: RunDir, returncode: int) -> VaeTuiError:
    """The script ended without starting a run (a --help, a missing file, no torch): its last lines on
    this terminal; a failure is kept as a run folder that says so, a clean end leaves nothing."""
    code = exit_status(returncode)
    try:
        lines = run.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    print("\n".join(lines[-SHOWN_LINES:]))
    words = shlex.join(command)
    if code == 0:
        shutil.rmtree(run.path, ignore_errors=True)
        error = EndedEarly(f"{words} ended before it trained (it never imported torch)")
    else:
        message = f"{words} exited with status {code} before it trained; its output is in {run.log_path}"
        write_config(run, RunInfo(config={"dataset": "your script"}, dataset={"name": "your script"}, view="your script", script=words))
        write_status(run, Status(state=RunState.ERROR, dataset="your script", message=message, script=words, run_dir=str(run.path), updated=time.time()))
        error = EndedEarly(message)
    error.exit_code = code or 0
    return error


def exit_status(returncode: int) -> int:
    """A process's status as the shell gives it: 128 + N for one ended by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def run_script(command: list[str], run_dir: Path | None, detach: bool, monitor: bool, console: Console, wire_kb: float = DEFAULT_WIRE_KB) -> int:
    """Start it; then watch it (the monitor), leave it (detach), or wait for it and pass its output on."""
    from vae_tui.launch.monitor import monitor_process

    process, run = start_script(command, run_dir)
    if detach:
        console.print(f"running in the background (pid {process.pid}); output goes to {run.log_path}")
        console.print(f"watch it:  vae-tui watch {run.path}")
        return 0
    if monitor:
        return monitor_process(process, run.path, console, resumable=False, wire_kb=wire_kb)
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
                break
            if not chunk:
                time.sleep(0.1)
    status, _ = read_status(run)
    stopped = status is not None and status.state == RunState.STOPPED
    return 130 if stopped else exit_status(process.returncode)
