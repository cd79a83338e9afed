"""Choosing the training device: CUDA, then Apple MPS, then CPU, and saying which in words.

`--device cuda:N` picks one GPU of a shared box (N counts the GPUs this process sees, as
CUDA_VISIBLE_DEVICES leaves them); under torchrun each rank takes its local rank's GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from vae_tui.config import GPU_NUMBER
from vae_tui.errors import ConfigError


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "cpu", "cuda" or "mps"
    name: str  # what a person reads: the GPU's name, or the CPU thread count
    index: int | None = None  # which GPU: --device cuda:N, or under torchrun the local rank's

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.kind, self.index) if self.index is not None else torch.device(self.kind)

    @property
    def words(self) -> str:
        """ "cuda:1 (NVIDIA H200)", "cpu (2 threads)": the device line's and the status line's."""
        return f"{self.kind}{f':{self.index}' if self.index is not None else ''} ({self.name})"


def gpu_count() -> int:
    """The CUDA GPUs this process sees: the one place vae-tui asks."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _visible() -> str | None:
    """CUDA_VISIBLE_DEVICES, when it narrows which GPUs this process sees (and so what cuda:0 is)."""
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(requested: str = "auto", local_rank: int | None = None) -> DeviceInfo:
    """Resolve --device; asking for one that is not there is a ConfigError with the way out.
    `local_rank`: under torchrun, the GPU of this rank."""
    number = GPU_NUMBER.fullmatch(requested)
    if requested == "auto":
        requested = "cuda" if gpu_count() else "mps" if _mps_available() else "cpu"
    elif requested.startswith("cuda") and not gpu_count():
        why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ConfigError(f"--device {requested} asked for, but {why}; use --device auto or --device cpu")
    elif requested == "mps" and not _mps_available():
        raise ConfigError("--device mps asked for, but Apple's Metal backend is not available here; use --device auto or --device cpu")
    if requested.startswith("cuda"):
        return _gpu(int(number.group(1)) if number else None, local_rank)
    if requested == "mps":
        return DeviceInfo("mps", "Apple GPU (MPS)")
    if requested != "cpu":
        raise ConfigError(f"unknown --device {requested!r}: choose one of auto, cpu, cuda, cuda:N, mps")
    threads = torch.get_num_threads()
    return DeviceInfo("cpu", f"{threads} thread{'s' if threads != 1 else ''}")


def _gpu(number: int | None, local_rank: int | None) -> DeviceInfo:
    count = gpu_count()
    if number is not None and local_rank is not None:
        raise ConfigError(
            f"--device cuda:{number} picks one GPU for one process; under torchrun each rank takes the GPU "
            "of its local rank: choose which GPUs with CUDA_VISIBLE_DEVICES, and pass --device cuda"
        )
    if number is not None and number >= count:
        seen = f", CUDA_VISIBLE_DEVICES={_visible()}" if _visible() is not None else ""
        raise ConfigError(
            f"--device cuda:{number} asked for, but this process sees {count} GPU{'s' if count != 1 else ''} "
            f"(cuda:0 to cuda:{count - 1}{seen}); pick one of those"
        )
    if local_rank is not None:
        check_processes(local_rank + 1, "cuda")
    index = number if number is not None else local_rank
    return DeviceInfo("cuda", torch.cuda.get_device_name(index or 0), index)


def check_processes(processes: int, requested: str) -> None:
    """Each process trains on a GPU of its own: more processes on this machine than GPUs is one line,
    before any of them trains. CPU processes (--device cpu, or auto without a GPU) need none."""
    if processes <= 1 or requested in ("cpu", "mps"):
        return
    count = gpu_count()
    if requested == "auto" and count == 0:
        return
    if GPU_NUMBER.fullmatch(requested):
        raise ConfigError(
            f"--device {requested} picks one GPU for one process; with {processes} processes each takes "
            "its own: choose which with CUDA_VISIBLE_DEVICES, and pass --device cuda"
        )
    if processes > count:
        seen = f" visible (CUDA_VISIBLE_DEVICES={_visible()})" if _visible() is not None else ""
        raise ConfigError(
            f"{processes} processes but this machine has {count} GPU{'s' if count != 1 else ''}{seen}: each "
            f"process trains on a GPU of its own. Start at most {count} (--nproc {count}, or torchrun "
            f"--nproc-per-node {count}), or add --device cpu to train on CPU processes"
        )
