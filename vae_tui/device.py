"""Choosing the training device: CUDA, then Apple MPS, then CPU, and saying which in words."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vae_tui.errors import ConfigError


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "cpu", "cuda" or "mps"
    name: str  # what a person reads: the GPU's name, or the CPU thread count
    index: int | None = None  # which GPU, under torchrun (one per local rank)

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.kind, self.index) if self.index is not None else torch.device(self.kind)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(requested: str = "auto", local_rank: int | None = None) -> DeviceInfo:
    """Resolve --device; asking for one that is not there is a ConfigError with the way out.
    `local_rank`: under torchrun, the GPU of this rank."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    elif requested == "cuda" and not torch.cuda.is_available():
        why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ConfigError(f"--device cuda asked for, but {why}; use --device auto or --device cpu")
    elif requested == "mps" and not _mps_available():
        raise ConfigError("--device mps asked for, but Apple's Metal backend is not available here; use --device auto or --device cpu")
    if requested == "cuda":
        if local_rank is not None:
            if local_rank >= torch.cuda.device_count():
                raise ConfigError(f"local rank {local_rank} has no GPU of its own: {torch.cuda.device_count()} are visible; "
                                  "start at most that many processes per node (--nproc-per-node)")
            return DeviceInfo("cuda", torch.cuda.get_device_name(local_rank), local_rank)
        return DeviceInfo("cuda", torch.cuda.get_device_name(0))
    if requested == "mps":
        return DeviceInfo("mps", "Apple GPU (MPS)")
    if requested != "cpu":
        raise ConfigError(f"unknown --device {requested!r}: choose one of auto, cpu, cuda, mps")
    return DeviceInfo("cpu", f"{torch.get_num_threads()} threads")
