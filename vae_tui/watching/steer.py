"""`vae-tui set RUN_DIR --lr X --beta Y`: change a running trainer's learning rate or beta from a
script or another terminal, through the run's control channel (no torch here)."""

from __future__ import annotations

import time
from pathlib import Path

from vae_tui.errors import ConfigError, VaeTuiError
from vae_tui.runfile import control
from vae_tui.runfile.files import read_status
from vae_tui.runfile.layout import RunDir
from vae_tui.runfile.schema import Liveness, change_words
from vae_tui.watching.follow import liveness_of

APPLIED_SECONDS = 5.0  # how long to wait for the trainer to say it applied the change


def check_values(values: dict[str, float | None]) -> dict[str, float]:
    """The values asked for, each checked: one line (exit 2) for the first that cannot be taken."""
    given = {name: value for name, value in values.items() if value is not None}
    if not given:
        raise ConfigError("nothing to change: give --lr X and/or --beta Y")
    for name, value in given.items():
        problem = control.setting_problem(name, value)
        if problem:
            raise ConfigError(f"--{name.split('.')[0]}: {problem}; nothing was changed")
    return given


def set_values(path: Path, values: dict[str, float]) -> str:
    """Send the change and wait for the trainer to apply it; what happened, in one line."""
    run = RunDir(path)
    if not run.is_run():
        raise ConfigError(f"{path} is not a vae-tui run directory (no config.json)")
    status, _ = read_status(run)
    if "beta" in values and status is not None and status.script:
        raise ConfigError("--beta: beta is your script's own, in its loss, which vae-tui cannot change (--lr reaches its optimizer); nothing was changed")
    for name in values:
        other = name.partition("lr.")[2]
        if other and status is not None and other not in status.optimizers:
            known = ", ".join(status.optimizers) or "none: it has one optimizer"
            raise ConfigError(f"--optimizer: this run has no other optimizer named {other!r} (it has {known}); nothing was changed")
    liveness = liveness_of(status)
    if status is None or liveness != Liveness.RUNNING:
        why = status.state.value if status is not None and status.final else liveness.value
        raise VaeTuiError(f"the run in {path} is not training ({why}); nothing was changed")
    before = len(status.changes)
    sent = control.send(run, control.set_command(values))
    deadline = time.monotonic() + control.ANSWER_SECONDS
    while not control.taken(sent):
        if time.monotonic() > deadline:
            raise VaeTuiError(
                f"the trainer in {path} has not taken the change within {control.ANSWER_SECONDS:g} s: "
                "it is not answering; it will apply the change if it takes it later"
            )
        time.sleep(0.05)
    words = change_words(values)
    applied = _wait_applied(run, before)
    if applied is None:
        return f"{words}: taken by the trainer, which applies it at its next step"
    return f"{words} from step {int(applied['step']) + 1:,}"


def _wait_applied(run: RunDir, before: int) -> dict | None:
    deadline = time.monotonic() + APPLIED_SECONDS
    while time.monotonic() < deadline:
        status, _ = read_status(run)
        if status is not None and len(status.changes) > before:
            return status.changes[-1]
        if status is not None and status.final:
            return None
        time.sleep(0.1)
    return None
