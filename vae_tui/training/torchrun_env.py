"""What torchrun tells each process it starts, in its environment: the one reader of it (no torch
here, so that the launcher and the CLI can ask too)."""

from __future__ import annotations

import os

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def under_torchrun() -> bool:
    """This process is one of torchrun's ranks (it set these for each of them)."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def restarts() -> tuple[int, int]:
    """(restarts so far, the most torchrun makes) of this node's workers."""

    def number(name: str) -> int:
        try:
            return int(os.environ.get(name, "0"))
        except ValueError:
            return 0

    return number("TORCHELASTIC_RESTART_COUNT"), number("TORCHELASTIC_MAX_RESTARTS")
