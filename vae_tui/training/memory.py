"""CUDA out of memory, in one line: what did not fit, what was free, what is kept, what to try.

PyTorch's own message is a paragraph about its allocator; a person training on a shared GPU wants
to know how much was asked for, how much the GPU had free (another user's job may hold the rest),
that nothing saved is lost, and which option to change.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from vae_tui.training.loop import Trainer

ASKED = re.compile(r"Tried to allocate ([\d.]+ [KMGT]?i?B)")
FREE = re.compile(r"total capacity of ([\d.]+ [KMGT]?i?B) of which ([\d.]+ [KMGT]?i?B) is free")


def out_of_memory(exc: BaseException, trainer: "Trainer") -> str:
    last, good = trainer.checkpointer.last_good()
    kept = f"{last} (step {good['step']}) is intact" if last is not None and good is not None else "no checkpoint had been saved yet"
    smaller = max(1, trainer.config.batch_size // 2)
    return (
        f"CUDA out of memory while {trainer.phase}: {memory_words(exc, trainer.device.torch_device)}. Nothing after the "
        f"last checkpoint was saved; {kept}. Try --batch-size {smaller}, --data-placement stream, or a GPU with more "
        "free memory (nvidia-smi shows what holds it)"
    )


def memory_words(exc: BaseException, device: torch.device) -> str:
    """ "it asked for 2.00 GiB more, with 1.06 GiB of 79.19 GiB free", from PyTorch's message."""
    text = str(exc)
    asked, free = ASKED.search(text), FREE.search(text)
    need = f"it asked for {asked[1]} more" if asked else "it needed more memory"
    return need + (f", with {free[2]} of {free[1]} free" if free else _free_now(device))


def _free_now(device: torch.device) -> str:
    """What the GPU has free now, when PyTorch's message did not say (it always has, so far)."""
    if device.type != "cuda":
        return ""
    try:
        free, total = torch.cuda.mem_get_info(device)
    except RuntimeError:
        return ""
    return f", with {free / 2**30:.2f} GiB of {total / 2**30:.2f} GiB free"
