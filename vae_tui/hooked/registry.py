"""The hooks' session in this process, if there is one: what `vae_tui.init`, `vae_tui.log` and
`vae_tui.log_epoch` reach. No torch here: `vae_tui.log` in a script run alone costs nothing."""

from __future__ import annotations

from typing import Any, Protocol


class Session(Protocol):
    def step_aside(self) -> None: ...
    def log(self, **values: Any) -> None: ...
    def log_epoch(self, **values: Any) -> None: ...


_session: Session | None = None


def set_session(session: Session | None) -> None:
    global _session
    _session = session


def session() -> Session | None:
    return _session


def step_aside() -> None:
    """The script calls vae_tui.init itself: it says what it logs, so the hooks leave it alone."""
    if _session is not None:
        _session.step_aside()
