"""--precision: the step in float32, or under autocast in bfloat16 or float16.

bf16 keeps float32's range, so it needs nothing more; fp16 does not, and a GradScaler scales the
loss up before backward so small gradients do not underflow (it is saved in checkpoints, so a
resume goes on with the same scale). Parameters and the optimizer stay in float32 either way.
Whether bf16 is faster depends on the CPU or GPU (see BENCHMARKS.md), so nothing picks it for you.
"""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    def __init__(self, mode: str, device: torch.device) -> None:
        self.mode, self.device = mode, device
        self.scaler = torch.amp.GradScaler(device.type) if mode == "fp16" else None

    def autocast(self, cache: bool = True) -> ContextManager[Any]:
        """`cache`: keep the casts of weights for the autocast region (not inside a CUDA graph, whose
        replays would read a cache freed at the first one's end)."""
        if self.mode == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.mode], cache_enabled=cache)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """backward and the optimizer's step (through the scaler in fp16: a step with inf gradients is skipped)."""
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any] | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
