"""Several nodes and torchrun's restarts: which run a restarted rank goes on with, which rank writes
it, and where it lives, said on every node.

torchrun restarts every worker when one fails (`--max-restarts`), and when a node leaves or joins
(`--nnodes MIN:MAX`); a restarted worker is a new process that runs the same command. Each node's
torchrun agent outlives its workers, so a run made under one agent is found again by the agent's
identity, written into the run's config.json. After a restart the rank whose node holds the newest
checkpoint writes the run (rank 0 unless the rendezvous moved it), and the checkpoint reaches every
other rank over the process group, not through a shared file system.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

from vae_tui.config import default_data_dir
from vae_tui.data import ImageData
from vae_tui.errors import ConfigError
from vae_tui.runfile.files import read_run_info
from vae_tui.runfile.layout import RunDir, find_runs

RUNS_LOOKED_AT = 50  # the newest runs under runs/ looked at for this agent's, after a restart


def agent() -> dict[str, str]:
    """This node's torchrun agent (the workers' parent), the same across the restarts it makes."""
    parent = os.getppid()
    try:
        started = Path(f"/proc/{parent}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        started = "?"
    return {"agent": f"{socket.gethostname()}:{parent}:{started}", "run_id": os.environ.get("TORCHELASTIC_RUN_ID", "")}


def own_run(run_dir: str | None) -> Path | None:
    """The run this node's agent made before restarting its workers (a rank failed, or a node left or
    joined: torchrun counts only the first as a restart): --run-dir, or the newest run under runs/,
    whose config.json names this agent. None on a first start: the agent is new."""
    me = agent()["agent"]
    candidates = [Path(run_dir)] if run_dir is not None else list(reversed(find_runs(Path("runs"))[-RUNS_LOOKED_AT:]))
    for path in candidates:
        info = read_run_info(RunDir(path))[0]
        if info is not None and info.torchrun is not None and info.torchrun.get("agent") == me:
            return path
    return None


def newest_checkpoint_step(path: Path) -> int:
    """The step of the run's last.pt (0 without one: the run restarts from the beginning)."""
    from vae_tui.training.checkpoint import load_checkpoint

    last = RunDir(path).checkpoints / "last.pt"
    try:
        return int(load_checkpoint(last)["step"]) if last.exists() else 0
    except Exception:  # a damaged checkpoint is as good as none here; the resume says what is wrong with it
        return 0


def pick_writer(found: list[tuple[int, str] | None]) -> int:
    """The rank that goes on writing the run: the one whose node holds the newest checkpoint (the lowest
    such rank), or rank 0 when no node holds the run."""
    held = [(item[0], -rank) for rank, item in enumerate(found) if item is not None]
    return -max(held)[1] if held else 0


def restart_words(count: int, most: int, step: int) -> str:
    why = f"after a rank failed (restart {count} of {most})" if count else "after a node left or joined"
    return f"restarted by torchrun {why}; " + (f"resumed from step {step:,}" if step else "no checkpoint had been saved yet, so the run starts again")


def data_print(data: ImageData) -> dict[str, Any]:
    """What every node must have alike: the counts, the picture shape, a hash of the images in order."""
    digest = hashlib.sha256()
    for images in (data.train_x, data.test_x):
        stride = max(1, len(images) // 256)
        digest.update(np.ascontiguousarray(images[::stride]).tobytes())
    return {
        "train": len(data.train_x),
        "test": len(data.test_x),
        "shape": list(data.train_x.shape[1:]),
        "hash": digest.hexdigest()[:16],
        "host": socket.gethostname(),
    }


def data_refusal(prints: list[dict[str, Any]], writer: int) -> str | None:
    """One line naming the ranks whose data differ from the writer's, or None when all agree."""
    theirs = prints[writer]
    odd = [(rank, p) for rank, p in enumerate(prints) if {k: v for k, v in p.items() if k != "host"} != {k: v for k, v in theirs.items() if k != "host"}]
    if not odd:
        return None
    rank, mine = odd[0]
    what = (
        f"{mine['train']:,} training and {mine['test']:,} held-out images against {theirs['train']:,} and {theirs['test']:,}"
        if (mine["train"], mine["test"]) != (theirs["train"], theirs["test"])
        else f"pictures of {'x'.join(map(str, mine['shape']))} against {'x'.join(map(str, theirs['shape']))}"
        if mine["shape"] != theirs["shape"]
        else "the same number of pictures, but other ones (or in another order)"
    )
    more = f" (and {len(odd) - 1} more rank{'s' if len(odd) > 2 else ''})" if len(odd) > 1 else ""
    return f"rank {rank} on {mine['host']}{more} has other data than rank {writer} on {theirs['host']}: {what}; give every node the same dataset files"


def where_words(host: str, path: str, writer: int) -> str:
    return f"the run is written by rank {writer} on {host} in {path}"


def pointer_path() -> Path:
    """Where a node that trains a run without holding it notes where the run is, for `vae-tui watch`."""
    return Path(default_data_dir()).parent / "elsewhere.json"


def note_elsewhere(host: str, path: str, writer: int) -> None:
    try:
        pointer_path().parent.mkdir(parents=True, exist_ok=True)
        pointer_path().write_text(json.dumps({"host": host, "path": path, "rank": writer, "since": time.time(), "from": os.getcwd()}))
    except OSError:  # only a convenience for `vae-tui watch`; training goes on without it
        pass


def elsewhere() -> str | None:
    """Where the newest run this machine trained without holding lives, in words (for `vae-tui watch`)."""
    try:
        note = json.loads(pointer_path().read_text())
        if note.get("from") != os.getcwd():  # a job started from another folder: not what runs/ here would hold
            return None
        return (
            f"{where_words(note['host'], note['path'], int(note['rank']))} (this node trained it too); "
            f"watch it there: ssh {note['host']} vae-tui watch {note['path']}"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def refuse_elsewhere(root: Path) -> None:
    """`vae-tui watch` where there is no run: say where the run this node helped train lives, if any."""
    words = elsewhere()
    if words is not None:
        raise ConfigError(f"no runs under {root}/ on this node: {words}")
