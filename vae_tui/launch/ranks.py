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
import socket
import sys
from typing import Any, Callable, TypeVar

from rich.console import Console

from vae_tui.config import TrainConfig
from vae_tui.errors import ConfigError, VaeTuiError, say_error
from vae_tui.launch.prepare import Prepared, Request, check, describe, ready

T = TypeVar("T")


def train_as_rank(request: Request, console: Console) -> int:
    """Check (the writer) or follow (the others), then train this rank's share; returns the exit status."""
    from vae_tui.training.world import from_environment, join, leave

    world = from_environment()
    request = dataclasses.replace(request, world_size=world.size, view="here")
    device = str(request.options.get("device", "auto"))
    if not _enough_gpus(world, device):
        return 2
    join(world, _device_kind(device, world.size))
    try:
        world, request, restarted = _meeting(world, lambda: _after_restart(world, request))
        prepared = _meeting(world, lambda: _agree_on_run(world, request, console))
        if prepared is None:  # the writer refused the run and said why
            return 2
        prepared.restarted = restarted
        from vae_tui.launch.run_here import train_here

        return train_here(prepared, console if world.main else Console(quiet=True), world=world)
    finally:
        leave(world)


def _meeting(world: Any, agree: Callable[[], T]) -> T:
    """What the ranks agree on before training; a rank that ends meanwhile (its data missing, killed)
    is one line on the others, as it is once training runs, not a traceback."""
    from vae_tui.training.world import lost_peer

    try:
        return agree()
    except VaeTuiError:
        raise
    except Exception as exc:
        lost = lost_peer(world, exc)
        if lost is None:
            raise
        raise VaeTuiError(lost) from None


def _after_restart(world: Any, request: Request) -> tuple[Any, Request, str]:
    """After torchrun restarted the workers: every node says whether it holds this job's run (and its
    newest checkpoint's step); the rank of the newest becomes the writer and resumes it. Every rank takes
    part, as the nodes' agents count restarts differently; on a first start no node finds one."""
    from vae_tui.launch.elastic import newest_checkpoint_step, own_run, pick_writer, restart_words
    from vae_tui.launch.prepare import FIXED_ON_RESUME
    from vae_tui.training.torchrun_env import restarts
    from vae_tui.training.world import gather

    count, most = restarts()
    path = own_run(request.run_dir) if world.local_rank == 0 else None
    answers = gather(world, ((newest_checkpoint_step(path), str(path)) if path is not None else None, count))
    found, count = [a[0] for a in answers], max(a[1] for a in answers)
    if not any(found):
        return world, request, ""
    world = dataclasses.replace(world, writer=pick_writer(found))
    if not world.main:
        return world, request, ""
    step, path = found[world.writer]
    if step:
        options = {k: v for k, v in request.options.items() if k not in FIXED_ON_RESUME}  # the checkpoint has them
        request = dataclasses.replace(request, resume=path, options=options)
    else:
        request = dataclasses.replace(request, run_dir=path, again=True)
    return world, request, restart_words(count, most, step)


def _enough_gpus(world: Any, device: str) -> bool:
    """A GPU for each of this machine's ranks, before any rank touches one (set_device would fail with
    "invalid device ordinal"); the first rank of the machine says so in one line, the others only exit."""
    from vae_tui.training.device import check_processes

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
    """The writer checks the run and tells the others; then every rank compares its data with the writer's."""
    from vae_tui.launch.elastic import agent, data_print, data_refusal, where_words
    from vae_tui.training.world import gather, share
    from vae_tui.views.plain import DecodeProgress

    if not world.main:
        prepared = _follow(world, request, share(world, None))
    else:
        try:
            prepared = check(request, progress=DecodeProgress(console))
            prepared.info.torchrun = agent()  # so that a restart of this node's workers finds this run again
            ready(prepared, world.local_rank)
        except VaeTuiError as exc:
            share(world, {"refused": str(exc)})
            raise
        where = {"host": socket.gethostname(), "path": str(prepared.run.path.resolve()), "agent": agent()["agent"]}
        share(world, {"config": prepared.config.to_dict(), "state": prepared.state, "placement": prepared.placement, "where": where})
        for line in describe(prepared):
            console.print(line)
        if world.nodes:
            console.print(where_words(where["host"], where["path"], world.writer))
    if prepared is None:
        return None
    refusal = data_refusal(gather(world, data_print(prepared.data)), world.writer)
    if refusal is not None:
        if world.main:
            _drop_fresh(prepared)
        if world.main or world.local_rank == 0:  # one line a node
            raise ConfigError(refusal)
        return None
    return prepared


def _drop_fresh(prepared: Prepared) -> None:
    """A run refused before its first step, in a directory made for it a moment ago: removed, not left empty."""
    import shutil

    from vae_tui.runfile import lock

    if prepared.state is None and not prepared.request.made and not prepared.request.again:
        lock.release(prepared.run)
        shutil.rmtree(prepared.run.path, ignore_errors=True)


def _follow(world: Any, request: Request, found: dict[str, Any]) -> Prepared | None:
    """A rank other than the writer: the run as the writer checked it, with this rank's own copy of the data
    and device. The first rank of another node says where the run is written."""
    from vae_tui.data import load_dataset
    from vae_tui.launch.elastic import agent, note_elsewhere, where_words
    from vae_tui.training.device import pick_device

    if "refused" in found:
        return None
    where = found["where"]
    if world.local_rank == 0 and where["agent"] != agent()["agent"]:
        print(f"vae-tui: {where_words(where['host'], where['path'], world.writer)}", flush=True)
        note_elsewhere(where["host"], where["path"], world.writer)
    config = TrainConfig.from_dict(found["config"])
    try:
        data = load_dataset(config.dataset, config.data_dir, image_size=config.image_size, channels=config.channels, test_dir=config.test_dir)
        device = pick_device(config.device, world.local_rank)
    except VaeTuiError as exc:  # said once, naming the rank (the writer says its own errors plainly)
        said = VaeTuiError(f"rank {world.rank}: {exc}")
        said.exit_code = exc.exit_code
        raise said from None
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
