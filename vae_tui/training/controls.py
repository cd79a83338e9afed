"""Requests from any thread (keys, signals, a watcher's command file) that the loop honours within one batch."""

from __future__ import annotations

import threading


class Controls:
    def __init__(self) -> None:
        self._paused = threading.Event()
        self._stop = threading.Event()
        self._checkpoint = threading.Event()
        self.save_on_stop = True

    def pause(self) -> None:
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()

    def stop(self, save: bool = True) -> None:
        self.save_on_stop = save
        self._stop.set()

    def request_checkpoint(self) -> None:
        self._checkpoint.set()

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
        return self._checkpoint.is_set() or self._paused.is_set() or self._stop.is_set()

    def take_checkpoint_request(self) -> bool:
        if self._checkpoint.is_set():
            self._checkpoint.clear()
            return True
        return False

    def wait(self, seconds: float) -> None:
        """Sleep, but wake at once for a stop."""
        self._stop.wait(seconds)
