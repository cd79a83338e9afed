"""Requests from any thread (keys, signals, a watcher's command file) that the loop honours within one batch:
pause, stop, checkpoint now, and a new learning rate or beta."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any, Callable

from vae_tui.errors import EXIT_SIGNAL


def take_signals(
    first: Callable[[signal.Signals], None],
    at_once: Callable[[signal.Signals], None],
    already: Callable[[], bool] = lambda: False,
    signals: tuple[signal.Signals, ...] = tuple(EXIT_SIGNAL),
) -> dict[signal.Signals, Any]:
    """The one signal policy of every process that trains or launches: the first SIGINT, SIGTERM or
    SIGHUP asks for a stop that saves (`first`); once one was taken (or `already` says a stop is under
    way), a second Ctrl+C leaves at once (`at_once`: every file is written atomically) and other signals
    change nothing. Returns the handlers it replaced."""
    taken: list[signal.Signals] = []

    def handle(signum: int, frame: Any) -> None:
        sig = signal.Signals(signum)
        if taken or already():
            if sig == signal.SIGINT:
                print("vae-tui: quitting at once", file=sys.stderr, flush=True)
                at_once(sig)
            return
        taken.append(sig)
        first(sig)

    return {sig: signal.signal(sig, handle) for sig in signals}


class Controls:
    def __init__(self) -> None:
        self._paused = threading.Event()
        self._stop = threading.Event()
        self._checkpoint = threading.Event()
        self.save_on_stop = True
        self._settings: dict[str, float] = {}  # a new lr or beta, applied at the next step
        self._lock = threading.Lock()

    def pause(self) -> None:
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()

    def stop(self, save: bool = True) -> None:
        self.save_on_stop = save
        self._stop.set()

    def request_checkpoint(self) -> None:
        self._checkpoint.set()

    def change(self, **values: float) -> None:
        """A new learning rate and/or beta (already checked); a later change of the same one wins."""
        with self._lock:
            self._settings.update(values)

    def take_changes(self) -> dict[str, float]:
        with self._lock:
            taken, self._settings = self._settings, {}
        return taken

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def checkpoint_pending(self) -> bool:
        return self._checkpoint.is_set()

    @property
    def wanted(self) -> bool:
        """Anything asked of the loop (checked every batch, so it must be cheap and take nothing)."""
        return self._checkpoint.is_set() or self._paused.is_set() or self._stop.is_set() or bool(self._settings)

    def take_checkpoint_request(self) -> bool:
        if self._checkpoint.is_set():
            self._checkpoint.clear()
            return True
        return False

    def wait(self, seconds: float) -> None:
        """Sleep, but wake at once for a stop."""
        self._stop.wait(seconds)
