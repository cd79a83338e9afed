"""The run's discrete news as Textual messages: what it said or what its watcher noticed, and a change
of its state. The charts and pictures keep their timers; these come once each, and a repeat still
waiting in the queue is merged into the newer one (a note said twice in a row is shown once)."""

from __future__ import annotations

from textual.message import Message

from vae_tui.runfile.schema import Event, Liveness, RunState


class RunEvent(Message):
    """An event of the run (events.jsonl), or a note of its watcher (a damaged file): one notification."""

    def __init__(self, event: Event) -> None:
        super().__init__()
        self.event = event

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, RunEvent) and (message.event.kind, message.event.message) == (self.event.kind, self.event.message)


class RunStateChanged(Message):
    """The trainer's state or liveness is not what it was: the keys the footer offers, and a word about it."""

    def __init__(self, state: RunState, liveness: Liveness, was: Liveness | None) -> None:
        super().__init__()
        self.state, self.liveness, self.was = state, liveness, was

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, RunStateChanged)  # only the newest state matters
