"""`vae-tui train` as one rank of torchrun's world (`torchrun --nproc-per-node N -m vae_tui train ...`).

Rank 0 does what a run alone does: it checks everything, makes the run directory, picks its
device and trains with the plain view and the publisher. It then tells the other ranks what it
found (the resolved configuration, the checkpoint resumed from, where the images go) or, when it
refused the run, that they should exit too; they load the same data, take their own GPU, and train
writing nothing. Only rank 0 says a refusal; every rank says a failure of its own.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any

from rich.console import Console

from vae_tui.config import TrainConfig
from vae_tui.errors import ConfigError, VaeTuiError, say_error
from vae_tui.launch.prepare import Prepared, Request, check, describe, ready


def train_as_rank(request: Request, console: Console) -> int:
    """Check (rank 0) or follow (the others), then train this rank's share; returns the exit status."""
    from vae_tui.training.world import from_environment, join, leave

    world = from_environment()
    request = dataclasses.replace(request, world_size=world.size, view="here")
    device = str(request.options.get("device", "auto"))
    if not _enough_gpus(world, device):
        return 2
    join(world, _device_kind(device, world.size))
    try:
        prepared = _agree_on_run(world, request, console)
        if prepared is None:  # rank 0 refused the run and said why
            return 2
        from vae_tui.launch.run_here import train_here

        return train_here(prepared, console if world.main else Console(quiet=True), world=world)
    finally:
        leave(world)


def _enough_gpus(world: Any, device: str) -> bool:
    """A GPU for each of this machine's ranks, before any rank touches one (set_device would fail with
    "invalid device ordinal"); the first rank of the machine says so in one line, the others only exit."""
    from vae_tui.device import check_processes

    try:
        check_processes(int(os.environ.get("LOCAL_WORLD_SIZE", world.size)), device)
    except ConfigError:
        if world.local_rank == 0:
            raise
        return False
    return True


def _device_kind(requested: str, ranks: int) -> str:
    """The process group's kind of device, before anything is checked: NCCL needs to know it is CUDA."""
    import torch

    if requested == "mps" and ranks > 1:
        raise ConfigError("several ranks on Apple's MPS are not supported (it is one GPU); use --device cpu or one process")
    return "cuda" if requested in ("auto", "cuda") and torch.cuda.is_available() else "cpu"


def _agree_on_run(world: Any, request: Request, console: Console) -> Prepared | None:
    from vae_tui.launch.plain import DecodeProgress
    from vae_tui.training.world import share

    if not world.main:
        return _follow(world, request, share(world, None))
    try:
        prepared = check(request, progress=DecodeProgress(console))
        ready(prepared, world.local_rank)
    except VaeTuiError as exc:
        share(world, {"refused": str(exc)})
        raise
    share(world, {"config": prepared.config.to_dict(), "state": prepared.state, "placement": prepared.placement})
    for line in describe(prepared):
        console.print(line)
    return prepared


def _follow(world: Any, request: Request, found: dict[str, Any]) -> Prepared | None:
    """A rank other than 0: the run as rank 0 checked it, with this rank's own copy of the data and device."""
    from vae_tui.data import load_dataset
    from vae_tui.device import pick_device

    if "refused" in found:
        return None
    config = TrainConfig.from_dict(found["config"])
    try:
        data = load_dataset(config.dataset, config.data_dir, image_size=config.image_size, channels=config.channels,
                            test_dir=config.test_dir)
        device = pick_device(config.device, world.local_rank)
    except VaeTuiError as exc:
        say_error(f"rank {world.rank}: {exc}")
        raise
    prepared = Prepared(request, config, data, run=None, state=found["state"], placement=found["placement"])  # type: ignore[arg-type]
    prepared.device = device
    return prepared


def main(argv: list[str]) -> int:
    """The ranks' entry under `vae-tui train --nproc`: the request as the launcher checked it."""
    if len(argv) != 1:
        say_error("usage: python -m vae_tui.launch.ranks REQUEST_JSON (started by vae-tui train --nproc, through torchrun)")
        return 2
    console = Console(highlight=False, soft_wrap=True)
    try:
        return train_as_rank(Request(**json.loads(argv[0])), console)
    except VaeTuiError as exc:
        say_error(str(exc))
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
