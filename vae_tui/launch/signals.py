"""Signals: the first one checkpoints and stops cleanly, a second Ctrl+C leaves at once.

Exit statuses follow the shell's convention (128 + the signal's number), so scripts can tell a
run stopped by Ctrl+C (130), `kill` (143) or a dropped SSH session (129) from one that finished.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
from typing import Any, Callable

from vae_tui.errors import EXIT_SIGNAL
from vae_tui.training.controls import take_signals

WATCHDOG_GRACE_S = 5.0  # after SIGTERM, how long the app may take to restore the terminal


def install_signal_handlers(
    stop: Callable[[], None], stopping: Callable[[], bool], wait_trainer: Callable[[], object] | None, quiet: bool = False
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

    def first(sig: signal.Signals) -> None:
        code[0] = EXIT_SIGNAL.get(sig, 1)
        if wait_trainer is None and not quiet:  # quiet: torchrun's other ranks, whose rank 0 says it
            print(f"vae-tui: {sig.name}: saving a checkpoint and stopping (Ctrl+C again to quit at once)", file=sys.stderr, flush=True)
        stop()
        if wait_trainer is not None:
            threading.Thread(target=watchdog, args=(sig,), name="vae-watchdog", daemon=True).start()

    take_signals(first, lambda sig: os._exit(code[0] or 130), already=stopping)
    return code


def watch_terminal(fd: int = 0, period: float = 0.5) -> None:
    """Treat a terminal that has gone away as a hang-up, even when no SIGHUP arrives.

    Under a shell that ignores SIGHUP (nohup, `trap '' HUP`) a closed SSH session sends nothing: the
    app's input thread then reads end-of-file in a loop, using most of a core, for ever. The terminal
    reports the hang-up on poll() (POLLHUP) without any input being read, so a light thread checks
    that and raises SIGHUP here, whose handler saves the run and exits.
    """

    def watch() -> None:
        poller = select.poll()
        poller.register(fd, 0)  # no events asked for: hang-ups and errors are reported regardless
        while True:
            if any(mask & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, mask in poller.poll(period * 1000)):
                os.kill(os.getpid(), signal.SIGHUP)
                return

    threading.Thread(target=watch, name="vae-terminal", daemon=True).start()


def current_handlers() -> dict[signal.Signals, Any]:
    return {sig: signal.getsignal(sig) for sig in EXIT_SIGNAL}
