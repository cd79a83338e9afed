"""`vae-tui run -- python train.py ARGS`: your own script under the monitor, unchanged.

The script runs in its own session, its output in the run's train.log, exactly as vae-tui's own
worker does, so the monitor's keys (pause, checkpoint, quit, detach) and a hang-up treat it the
same way. vae_tui/hooked/boot is put first on its PYTHONPATH: a script that makes no vae-tui call
is watched through PyTorch's hooks from the moment it imports torch; one that calls
`vae_tui.init()` finds its run directory in VAE_TUI_RUN_DIR and the hooks step aside. No torch
is imported here.

Until its run begins (status.json), the script's output is passed through to this terminal. A
script vae-tui cannot watch (`python -I`, a Python that cannot import vae_tui) is said to run
unwatched, once, and runs on as it would alone: never killed, its output passed through and kept.
The command ends with the script's own exit status (130 after a stop, as Ctrl+C gives).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Callable

from rich.console import Console

from vae_tui.errors import ConfigError, VaeTuiError
from vae_tui.runfile.files import read_status, write_config, write_status
from vae_tui.runfile.layout import RUN_DIR_ENV, SCRIPT_ENV, RunDir
from vae_tui.runfile.schema import RunInfo, RunState, Status
from vae_tui.tui.wire import DEFAULT_WIRE_KB

HOOKS_ENV = "VAE_TUI_HOOKS"  # the run's hooks.txt: asks the bootstrap to arm the hooks, and to say how that went
BOOT_DIR = Path(__file__).resolve().parent.parent / "hooked" / "boot"
ARM_WAIT_S = 10.0  # a Python that takes the hooks says so at its start-up: after this, none has
POLL_S = 0.1
SKIPPING_FLAGS = "IES"  # python -I, -E and -S start without PYTHONPATH or sitecustomize, where the hooks come in


def script_environment(command: list[str], run: RunDir) -> dict[str, str]:
    """The script's environment: the run directory, and the bootstrap first on its PYTHONPATH."""
    path = os.pathsep.join([str(BOOT_DIR), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {
        **os.environ,
        RUN_DIR_ENV: str(run.path),
        SCRIPT_ENV: shlex.join(command),
        HOOKS_ENV: str(run.hooks_path),
        "PYTHONPATH": path,
        "PYTHONUNBUFFERED": "1",
    }


def start_script(command: list[str], run_dir: Path | None) -> tuple[subprocess.Popen[bytes], RunDir]:
    """Start the script, its output going to the run's train.log."""
    if not command:
        raise ConfigError("give the command to run after --, e.g. vae-tui run -- python train.py")
    stem = Path(command[1]).stem if len(command) > 1 and command[1].endswith(".py") else Path(command[0]).name
    run = RunDir(Path(run_dir or Path("runs") / time.strftime(f"%Y%m%d-%H%M%S-{stem}")).expanduser().resolve())
    if run.config_path.exists():
        raise ConfigError(f"{run.path} already holds a run; pick another --run-dir")
    run.path.mkdir(parents=True, exist_ok=True)
    run.hooks_path.unlink(missing_ok=True)
    with open(run.log_path, "ab") as log:
        try:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=script_environment(command, run)
            )
        except OSError as exc:
            shutil.rmtree(run.path, ignore_errors=True)
            raise ConfigError(f"cannot start {command[0]}: {exc.strerror or exc}") from None
    return process, run


class EndedEarly(VaeTuiError):
    """The script ended before it trained; its own output has been shown."""


class Passing:
    """The script's train.log passed on to this terminal as it grows. Where its reader goes away (the
    `head` of `| head` ended), `gone` is called once: the script is stopped as a hang-up stops it,
    as it would have ended writing into that pipe itself."""

    def __init__(self, run: RunDir, out: IO[str] | None, gone: Callable[[], None] = lambda: None) -> None:
        self.log = open(run.log_path, "rb")
        self.out: IO[str] | None = out
        self.gone = gone

    def poll(self) -> bool:
        """Pass on what is new; whether there was any."""
        chunk = self.log.read()
        if chunk and self.out is not None:
            try:
                self.out.write(chunk.decode(errors="replace"))
                self.out.flush()
            except OSError:
                self.out = None
                self.gone()
        return bool(chunk)

    def close(self) -> None:
        self.log.close()


def hooks_report(run: RunDir) -> str | None:
    """hooks.txt's line: "armed", "unwatched: WHY", or None when no Python of the script has taken the hooks."""
    try:
        return run.hooks_path.read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def skipping_flag(command: list[str]) -> str | None:
    """`-I` in `python -I train.py`: an interpreter option that keeps vae-tui's hooks out."""
    if not command or not Path(command[0]).name.startswith("python"):
        return None
    for arg in command[1:]:
        if not arg.startswith("-") or arg.startswith("--") or arg in ("-m", "-c"):
            return None
        if any(flag in SKIPPING_FLAGS for flag in arg[1:]):
            return arg
    return None


class Unwatched:
    """Whether the script runs without vae-tui's hooks, and saying so once (and once again if a
    Python it starts later takes them after all)."""

    def __init__(self, command: list[str], run: RunDir, say: Callable[[str], None], passed_on: bool = True) -> None:
        self.command, self.run, self.say, self.passed_on = command, run, say, passed_on
        self.started = time.monotonic()
        self.why: str | None = None
        flag = skipping_flag(command)
        if flag is not None:
            self._said(f"python {flag} starts without the PYTHONPATH and site start-up that vae-tui's hooks come in by")

    def check(self) -> None:
        report = hooks_report(self.run)
        if report is not None and report.startswith("unwatched:") and self.why is None:
            self._said(report.removeprefix("unwatched:").strip())
        elif report == "armed" and self.why is not None and skipping_flag(self.command) is None:
            self.why = None
            self.say(f"{shlex.join(self.command)} took vae-tui's hooks after all: it is watched once it imports torch")
        elif report is None and self.why is None and time.monotonic() - self.started > ARM_WAIT_S:
            waited = f"{ARM_WAIT_S:.0f} s"
            self._said(f"no Python it started took vae-tui's hooks in {waited} (python -I, -E or -S keep them out, as does a launcher that clears PYTHONPATH)")

    def _said(self, why: str) -> None:
        self.why = why
        follows = "Its output follows, and stays in" if self.passed_on else "Its output goes to"
        self.say(f"{shlex.join(self.command)} runs unwatched: {why}. {follows} {self.run.log_path}")


def stop_for_closed_output(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        print("vae-tui: the reader of the script's output went away; the script is stopped as a hang-up would stop it", file=sys.stderr, flush=True)
        process.send_signal(signal.SIGTERM)  # watched: it saves and stops; alone: SIGTERM ends it


def forward_signals(process: subprocess.Popen[bytes]) -> None:
    """Ctrl+C, `kill` and a hang-up reach the script as they would if it ran alone (it runs in a
    session of its own, so the terminal's signals come here)."""

    def forward(signum: int, frame: object) -> None:
        if process.poll() is None:
            process.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)


def until_watched(process: subprocess.Popen[bytes], run: RunDir, passing: Passing, unwatched: Unwatched, stop_at_unwatched: bool = False) -> bool:
    """Pass the output on until the script's run begins (True) or the script ends (False)."""
    while not run.status_path.exists():
        ended = process.poll() is not None
        unwatched.check()
        if not passing.poll() and ended:
            return False
        if stop_at_unwatched and unwatched.why is not None:
            return False
        time.sleep(POLL_S)
    return True


def ended_unwatched(command: list[str], run: RunDir, code: int, why: str | None) -> int:
    """The script ended without a run of its own: its folder kept as one that says what it was (its
    output, in train.log, included); only a clean end of a watchable script that never imported
    torch (a --help) leaves nothing behind."""
    words = shlex.join(command)
    if why is None and code == 0:
        shutil.rmtree(run.path, ignore_errors=True)
        clean = EndedEarly(f"{words} ended before it trained (it never imported torch)")
        clean.exit_code = 0
        raise clean
    if why is None:
        message = f"{words} exited with status {code} before it trained; its output is in {run.log_path}"
        state = RunState.ERROR
    else:
        message = f"{words} ran unwatched ({why}); it exited with status {code}; its output is in {run.log_path}"
        state = RunState.FINISHED if code == 0 else RunState.STOPPED if code in (129, 130, 143) else RunState.ERROR
    write_config(run, RunInfo(config={"dataset": "your script"}, dataset={"name": "your script"}, view="your script", script=words))
    write_status(run, Status(state=state, dataset="your script", message=message, script=words, run_dir=str(run.path), updated=time.time()))
    if why is None:
        error = EndedEarly(message)
        error.exit_code = code
        raise error
    return code


def settle_end(run: RunDir, returncode: int) -> int:
    """After the script ended: the exit status the shell sees (130 after a stop), and a run never recorded as finished
    when the script failed (its own excepthook, `sys.exit(3)`, `os._exit`, a kill by the system)."""
    code = exit_status(returncode)
    status, _ = read_status(run)
    if status is not None and status.state == RunState.STOPPED:
        return 130  # stopped by vae-tui as Ctrl+C would, even where the script caught the interrupt and ended quietly
    if status is None or code == 0 or status.state == RunState.ERROR:
        return code
    how = f"was ended by {signal.Signals(-returncode).name}" if returncode < 0 and -returncode in signal.valid_signals() else f"exited with status {code}"
    message = f"your script {how} after step {status.step:,}; its output is in {run.log_path}"
    write_status(run, dataclasses.replace(status, state=RunState.ERROR, message=message, updated=time.time()))
    return code


def exit_status(returncode: int) -> int:
    """A process's status as the shell gives it: 128 + N for one ended by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def run_script(command: list[str], run_dir: Path | None, detach: bool, monitor: bool, console: Console, wire_kb: float = DEFAULT_WIRE_KB) -> int:
    """Start it; then watch it (the monitor), leave it (detach), or wait for it and pass its output on."""
    process, run = start_script(command, run_dir)
    unwatched = Unwatched(command, run, lambda line: print(f"vae-tui: {line}", file=sys.stderr, flush=True), passed_on=not detach)
    passing = Passing(run, None if detach else sys.stdout, lambda: stop_for_closed_output(process))
    try:
        if not detach:
            forward_signals(process)
        began = until_watched(process, run, passing, unwatched, stop_at_unwatched=detach)
        if detach:
            console.print(f"running in the background (pid {process.pid}); output goes to {run.log_path}")
            if began:
                console.print(f"watch it:  vae-tui watch {run.path}")
            return 0
        if not began:
            while passing.poll() or process.poll() is None:  # unwatched: as it would run alone, to its end
                unwatched.check()
                time.sleep(POLL_S)
            return ended_unwatched(command, run, exit_status(process.wait()), unwatched.why)
        if monitor:
            from vae_tui.launch.monitor import monitor_process

            code = monitor_process(process, run.path, console, resumable=False, wire_kb=wire_kb, on_exit=lambda rc: settle_end(run, rc))
            return code if process.poll() is None else settle_end(run, process.returncode)
        return headless(process, run, passing)
    finally:
        passing.close()


def headless(process: subprocess.Popen[bytes], run: RunDir, passing: Passing) -> int:
    """No terminal to draw on: the script's own output, as it comes; a signal here saves and stops it."""
    from vae_tui.launch import signals

    signals.install_signal_handlers(lambda: process.send_signal(signal.SIGTERM), lambda: False, None)
    while passing.poll() or process.poll() is None:
        time.sleep(POLL_S)
    return settle_end(run, process.returncode)
