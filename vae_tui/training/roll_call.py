"""A roll call before the ranks connect, so that torchrun's restarts never meet the last round's keys.

torchrun keeps one key-value store for its workers across the restarts it makes. The process group
publishes each rank's address in it under the same keys every time, so a worker that starts a few
seconds before its peers reads the address a dead worker left there, fails to connect, and leaves
the peers waiting half an hour for it (the hang torchrun's `--max-restarts` showed). Here the new
round first agrees on a key prefix of its own: rank 0 names a fresh token; every other rank answers
with the token it read and a fresh token of its own; rank 0 says "go" only when every answer names
its token, and a rank goes only on a "go" that names its own fresh token. Nothing a dead worker
wrote can pass for either.
"""

from __future__ import annotations

import time
import uuid
from typing import Callable, Protocol

from vae_tui.errors import VaeTuiError

ROLL_CALL_SECONDS = 600.0  # how long a rank waits for the others to start (a node may be slow to come back)
POLL_SECONDS = 0.05


class Store(Protocol):
    def set(self, key: str, value: str | bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def check(self, keys: list[str]) -> bool: ...


def _read(store: Store, key: str) -> str | None:
    return store.get(key).decode() if store.check([key]) else None


def roll_call(
    store: Store,
    rank: int,
    size: int,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    limit: float = ROLL_CALL_SECONDS,
) -> str:
    """The prefix this round's process group keys go under, the same on every rank of the round."""
    deadline = clock() + limit
    if rank == 0:
        token = uuid.uuid4().hex
        store.set("vae-tui/leader", token)
        while True:
            answers = [_read(store, f"vae-tui/hello/{r}") for r in range(1, size)]
            if all(a is not None and a.split(":")[0] == token for a in answers):
                store.set("vae-tui/go", token + "|" + ",".join(a.split(":")[1] for a in answers if a))
                return f"vae-tui/{token}/"
            if clock() > deadline:
                missing = [r for r, a in zip(range(1, size), answers) if a is None or a.split(":")[0] != token]
                raise VaeTuiError(
                    f"rank 0 waited {limit:.0f} s for rank{'s' if len(missing) > 1 else ''} "
                    f"{', '.join(map(str, missing))} to start; check that every node's torchrun is running"
                )
            sleep(POLL_SECONDS)
    mine, said = uuid.uuid4().hex, None
    while True:
        leader = _read(store, "vae-tui/leader")
        if leader is not None and leader != said:  # rank 0 (again, after a restart) named a token: answer it
            store.set(f"vae-tui/hello/{rank}", f"{leader}:{mine}")
            said = leader
        go = _read(store, "vae-tui/go")
        if go is not None and said is not None and go.startswith(said + "|") and mine in go.split("|", 1)[1].split(","):
            return f"vae-tui/{said}/"
        if clock() > deadline:
            raise VaeTuiError(f"rank {rank} waited {limit:.0f} s for rank 0 to start; check that every node's torchrun is running")
        sleep(POLL_SECONDS)
