"""The processes that train one run together: torchrun's ranks, or this process alone.

torchrun (PyTorch's own launcher) starts one process per device and tells each, in its
environment, its rank and the world's size. Each rank trains its share of every global batch:
the epoch's one permutation is cut into global batches of `batch_size * world` images, and rank r
takes its part of each. A 1-rank run with the same global batch sees the very same batches, so
the two end at the same parameters (within the float error of summing gradients in another order).
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.distributed as dist

from vae_tui.errors import VaeTuiError
from vae_tui.training.roll_call import roll_call
from vae_tui.training.torchrun_env import restarts, under_torchrun

TIMEOUT = datetime.timedelta(minutes=30)  # a collective waits this long for a rank that is alive but busy


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    writer: int = 0  # the rank that writes the run: 0, or after torchrun's restart the one whose node holds the run
    local_size: int = 1  # the ranks on this node (torchrun's LOCAL_WORLD_SIZE)

    @property
    def main(self) -> bool:
        """The writer (rank 0 unless a restart found the run elsewhere): writes the run directory and evaluates."""
        return self.rank == self.writer

    @property
    def nodes(self) -> bool:
        """The ranks span several machines (or torchrun agents standing in for them)."""
        return self.local_size < self.size

    @property
    def distributed(self) -> bool:
        return self.size > 1


ALONE = World()


def from_environment() -> World:
    """This process's place in torchrun's world (the world of one without torchrun)."""
    if not under_torchrun():
        return ALONE
    size = int(os.environ["WORLD_SIZE"])
    return World(int(os.environ["RANK"]), size, int(os.environ["LOCAL_RANK"]), local_size=int(os.environ.get("LOCAL_WORLD_SIZE", size)))


def join(world: World, device_kind: str) -> None:
    """Meet the other ranks: NCCL between GPUs, gloo between CPUs (each rank on its own GPU)."""
    if not world.distributed or dist.is_initialized():
        return
    if device_kind == "cuda":
        torch.cuda.set_device(world.local_rank)
    try:
        store, rank, size = next(dist.rendezvous("env://"))  # torchrun's store, as init_process_group would take it
        prefix = roll_call(store, rank, size)  # this round's own keys: none a dead worker left behind
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo", store=dist.PrefixStore(prefix, store), rank=rank, world_size=size, timeout=TIMEOUT)
    except (RuntimeError, dist.DistError) as exc:  # a peer that is gone
        raise VaeTuiError(f"rank {world.rank} could not reach the other ranks ({why_lost(str(exc))}){after_loss()}") from None


def leave(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def share(world: World, value: Any) -> Any:
    """The writer's value, on every rank (a checkpoint to go back to, what the run was checked to be):
    sent over the process group, so ranks on nodes that cannot see the run's files have it too."""
    if not world.distributed:
        return value
    box = [value if world.main else None]
    dist.broadcast_object_list(box, src=world.writer)
    return box[0]


def gather(world: World, value: Any) -> list[Any]:
    """Every rank's value, in rank order, on every rank (once at the start: each rank's device)."""
    if not world.distributed:
        return [value]
    values: list[Any] = [None] * world.size
    dist.all_gather_object(values, value)
    return values


class Part(NamedTuple):
    """This rank's part of one global batch: the images it trains on, and where they sit in it. A
    tuple of numbers (no tensor): an epoch's parts are made at its start, and the loop hands each to
    the step, which takes its images' indices from the epoch's permutation as it needs them."""

    lo: int  # this rank's images are the permutation's [lo, hi)
    hi: int
    offset: int  # where this part starts in the global batch
    global_size: int  # images in the global batch, all ranks together
    end: int  # where the global batch ends in the epoch's permutation
    # What this rank's mean loss is scaled by, so that DDP's mean over the ranks is the global batch's
    # mean: 1 when every rank has as many images (all but an uneven last batch).
    weight: float = 1.0

    @property
    def size(self) -> int:
        return self.hi - self.lo


def epoch_parts(world: World, n: int, start: int, global_batch: int) -> list[Part]:
    """This rank's parts of the epoch's global batches of `n` images from sample `start` on. A last
    batch too small to give every rank an image is left out of the epoch (fewer images than ranks)."""
    if not world.distributed:  # the common case, made quickly (it is part of each step's cost): whole batches, then the rest
        whole = start + (n - start) // global_batch * global_batch
        parts = [Part(lo, lo + global_batch, 0, global_batch, lo + global_batch, 1.0) for lo in range(start, whole, global_batch)]
        return parts + ([Part(whole, n, 0, n - whole, n, 1.0)] if whole < n else [])
    parts = []
    for begin in range(start, n, global_batch):
        end = min(begin + global_batch, n)
        size = end - begin
        if size < world.size:
            break
        base, extra = divmod(size, world.size)
        lo = begin + world.rank * base + min(world.rank, extra)
        hi = lo + base + (1 if world.rank < extra else 0)
        parts.append(Part(lo, hi, lo - begin, size, end, (hi - lo) * world.size / size))
    return parts


def batches_per_epoch(world: World, n: int, global_batch: int) -> int:
    full, rest = divmod(n, global_batch)
    return full + (1 if rest >= world.size else 0)


def lost_peer(world: World, exc: BaseException) -> str | None:
    """A collective failed because another rank is gone (its process ended or was killed): said in
    one whole line, with what torchrun will do next, or None for any other error."""
    if not world.distributed:
        return None
    text = str(exc)
    markers = ("Connection closed by peer", "Connection reset", "Broken pipe", "NCCL", "Gloo", "gloo", "timed out")
    if not isinstance(exc, getattr(dist, "DistError", ())) and not any(m in text for m in markers):
        return None
    return (
        f"another rank of this run ended or was killed ({why_lost(text)}), so rank {world.rank} stops too; "
        f"nothing after the last checkpoint was saved{after_loss()}"
    )


def why_lost(text: str) -> str:
    """A collective's error in plain words: the gist, never cut mid-sentence."""
    if any(m in text for m in ("Connection closed by peer", "Connection reset", "Broken pipe", "Connection refused")):
        return "its connection closed" if "refused" not in text else "its connection was refused"
    if "timed out" in text or "Timeout" in text:
        return "it stopped answering, and the wait for it timed out"
    lines = [line for line in text.strip().splitlines() if line.strip()]
    first = re.sub(r"^\[[^\]]*\]\s*", "", lines[0]) if lines else "no reason given"
    return first.split(". ")[0].rstrip(".")


def after_loss() -> str:
    """What comes next under torchrun: a restart that resumes the run by itself, or the end of them."""
    count, most = restarts()
    if most <= 0:
        return ""
    if count < most:
        return f"; torchrun restarts the ranks (restart {count + 1} of {most}) and the run resumes from its last checkpoint"
    return (
        f"; torchrun's {most} restart{'s' if most != 1 else ''} {'are' if most != 1 else 'is'} used up: the last "
        "checkpoint is kept, and vae-tui train --resume RUN_DIR continues from it"
    )
