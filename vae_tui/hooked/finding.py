"""Which module a script trains, and what the script calls it: found once per optimizer, from the modules
that ran, the script's own globals, and the dicts that hold a module (never a frame's locals)."""

from __future__ import annotations

import functools
import gc
import os
import sys
import sysconfig
from pathlib import Path
from types import FrameType

import torch

from vae_tui.hooked.probes import Probes
from vae_tui.models.outputs import read_layout


def model_trained_by(probes: Probes, optimizer: torch.optim.Optimizer, stepped_before: bool) -> tuple[bool, torch.nn.Module | None]:
    """(True, the model) when `optimizer` trains the VAE, else (False, None): a module whose forward returns a
    reconstruction (something shaped like its input), or one trained through its own encode and decode
    (diffusers' AutoencoderKL). A discriminator's optimizer that steps first is not the run's; one that
    steps a second time while no other has shown a VAE is (a model that returns only codes, say).
    From then on the probes watch that model alone."""
    owner, _ = owner_in_frames(optimizer)
    module, forward = probes.model_of(optimizer)
    if owner is not None and _encodes_and_decodes(owner) and (module is None or module is not owner):
        probes.watch_encode_decode(owner)
        return True, owner
    if module is not None and forward is not None and read_layout(forward.inputs, forward.output).recon is not None or stepped_before:
        probes.watch(module, forward)
        return True, module
    return False, None


def _encodes_and_decodes(module: torch.nn.Module) -> bool:
    return callable(getattr(module, "encode", None)) and callable(getattr(module, "decode", None))


def owner_in_frames(optimizer: torch.optim.Optimizer) -> tuple[torch.nn.Module | None, str]:
    """The module an optimizer trains as the script names it: of the modules the globals of the script's
    own frames hold (the tutorial's module-level `vae = ...`), the one holding most of the parameters it
    steps, the smallest such; and its name ("vae", "discriminator": the script's, where a dict of globals
    or of an object's attributes holds it; else its class's in lower case). Frames' locals are not read:
    reading them keeps what they held alive (a DataLoader's workers) until the function returns."""
    stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    best: tuple[int, int] = (0, 0)
    module: torch.nn.Module | None = None
    frame: FrameType | None = sys._getframe(1)
    seen: set[int] = set()
    while frame is not None:
        if users_file(frame.f_code.co_filename) and id(frame.f_globals) not in seen:
            seen.add(id(frame.f_globals))
            for value in list(frame.f_globals.values()):
                if isinstance(value, torch.nn.Module):
                    params = list(value.parameters())
                    held = sum(id(p) in stepped for p in params)
                    if held and (held, -len(params)) > best:
                        best, module = (held, -len(params)), value
        frame = frame.f_back
    while isinstance(inner := getattr(module, "module", None), torch.nn.Module) and len(list(inner.parameters())) == -best[1]:
        module = inner  # DistributedDataParallel's (accelerate's) wrapper: the model inside it
    return module, name_of(module) if module is not None else ""


def name_of(module: torch.nn.Module) -> str:
    """The name a script gives a module: the key of a dict holding it (module globals, an object's
    attributes, a parent module's submodules), else its class's name in lower case."""
    for holder in gc.get_referrers(module):
        if isinstance(holder, dict):
            name = next((k for k, v in holder.items() if v is module and isinstance(k, str) and not k.startswith("_")), None)
            if name:
                return name
    return type(module).__name__.lower()


def users_file(file: str) -> bool:
    if file.startswith("<"):  # <frozen ...>, <string>
        return False
    path = os.path.abspath(file)
    if any(part in ("site-packages", "dist-packages") for part in Path(path).parts):
        return False
    return not any(path.startswith(root + os.sep) for root in not_users())


@functools.lru_cache(1)
def not_users() -> tuple[str, ...]:
    """Python's own library, the installed packages and vae-tui itself."""
    paths = sysconfig.get_paths()
    roots = {os.path.abspath(paths[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib") if paths.get(k)}
    return (*roots, str(Path(__file__).resolve().parent.parent))
