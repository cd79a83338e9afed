"""Requests from any thread (keys, signals, a watcher's command file) that the loop honours within one batch:
pause, stop, checkpoint now, and a new learning rate or beta."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any, Callable, Protocol

from vae_tui.errors import EXIT_SIGNAL
from vae_tui.runfile.control import Command

PAUSED_WAIT_S = 0.05  # how often a paused loop looks at its controls again


class Obeying(Protocol):
    """What a training loop does for each request (vae-tui's trainer, and your loop through vae_tui.init)."""

    def take_values(self, values: dict[str, float]) -> None:
        """A new learning rate and/or beta (possibly none), from the next step on."""

    def save_on_request(self) -> None:
        """Checkpoint now: a key, a watcher, or `vae-tui checkpoint`."""

    def pause_begins(self) -> None:
        """The losses so far recorded, the pause said (and saved, where the loop saves at a pause)."""

    def pause_ends(self) -> None:
        """Training again: said, and the rate's clock started afresh."""


class Controlled(Protocol):
    """Controls as a loop reads them: this process's own, or what the ranks agreed under torchrun."""

    @property
    def paused(self) -> bool: ...

    @property
    def stopping(self) -> bool: ...

    def take_changes(self) -> dict[str, float]: ...

    def take_checkpoint_request(self) -> bool: ...

    def wait(self, seconds: float) -> None: ...


def take_requests(controls: Controlled, loop: Obeying) -> None:
    """A change, then a checkpoint: what a loop answers at once, training or paused."""
    loop.take_values(controls.take_changes())
    if controls.take_checkpoint_request():
        loop.save_on_request()


def held(controls: Controlled) -> bool:
    """Paused, and not asked to stop: a stop ends a pause."""
    return controls.paused and not controls.stopping


def obey(controls: Controlled, loop: Obeying) -> bool:
    """Every request in the one order each loop takes them: a change, a checkpoint, then hold while
    paused (changes and checkpoints still taken) until resumed or stopped. True when asked to stop."""
    take_requests(controls, loop)
    if held(controls):
        loop.pause_begins()
        while held(controls):
            take_requests(controls, loop)
            controls.wait(PAUSED_WAIT_S)
        loop.pause_ends()
    return controls.stopping


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


def give_back(previous: dict[signal.Signals, Any]) -> None:
    """The handlers take_signals replaced, put back as they were."""
    for sig, handler in previous.items():
        signal.signal(sig, handler)


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

    def follow(self, command: Command) -> None:
        """A command from the control folder (a key, a watcher, or `vae-tui pause` in another shell)."""
        if command.kind == "set":  # a new lr and/or beta, checked as it was read
            self.change(**command.values)
        else:
            {"pause": self.pause, "resume": self.resume, "checkpoint": self.request_checkpoint, "stop": self.stop}[command.kind]()

    def change(self, **values: float) -> None:
        """A new learning rate and/or beta (already checked); a later change of the same one wins."""
        with self._lock:
            self._settings.update(values)

    def pending_changes(self) -> dict[str, float]:
        """The changes asked for and not yet taken, left in place."""
        with self._lock:
            return dict(self._settings)

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
