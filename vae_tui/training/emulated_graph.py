"""A CUDA graph's semantics on any device: the step's operations recorded once, then replayed.

A CUDA graph does not run the Python of a step again: it replays the kernels it recorded, with the
arguments they had, on the memory they had. So a Python float, a branch taken on the host, a counter
kept in a Python attribute or a tensor bound to a new name after the capture stay as they were when
it was captured, and each replay's in-place writes land in the tensors the capture wrote. Random
operations draw afresh from the device's generator at each replay, as CUDA's do.

`EmulatedGraphs` records a step the same way, one aten operation at a time (a TorchDispatchMode sees
each with the very tensors it read and wrote), and replays that list: every operation run again on
the recorded tensors, each fresh result copied into the tensor the recording made. Nothing else of
the program runs. What a CUDA graph cannot capture (a value read back to the host, an operation whose
output's size depends on the data) fails the recording as it fails a capture. The capture's protocol
around it (rehearsal, check, fallback) is the one CUDA runs, so this answers "would this step survive
a CUDA graph?" on a laptop (`--step emulate`), and it is what the test suite captures with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

aten = torch.ops.aten

# Operations a CUDA graph cannot hold: each waits for the device to hand a value (or a size) to the host.
HOST_READS = {
    aten._local_scalar_dense.default: "reads a tensor's value on the host (.item(), float(t), or an `if` on a tensor)",
    aten.equal.default: "compares tensors on the host (torch.equal)",
    aten.nonzero.default: "asks for the positions of nonzero values (nonzero, or indexing with a mask), whose count only the data knows",
    aten.masked_select.default: "selects by a mask (its output's size only the data knows)",
    aten._unique2.default: "asks for unique values (their count only the data knows)",
    aten.unique_consecutive.default: "asks for unique values (their count only the data knows)",
    aten.unique_dim.default: "asks for unique values (their count only the data knows)",
}


class CaptureRefused(RuntimeError):
    """What a CUDA graph's capture would refuse, in words."""


@dataclass
class Call:
    """One recorded operation: run again at each replay, its fresh results copied into `outputs`."""

    func: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    outputs: list[torch.Tensor | None]  # the recording's result tensors that are new memory (None: an alias of an input)

    def replay(self) -> None:
        fresh, _ = tree_flatten(self.func(*self.args, **self.kwargs))
        for made, kept in zip(fresh, self.outputs):
            if kept is not None and isinstance(made, torch.Tensor) and made is not kept:
                kept.copy_(made)


def _is_view(func: Any) -> bool:
    """An operation that only makes another look at its input's memory: nothing to run again."""
    schema = func._schema
    writes = any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments)
    return not writes and bool(schema.returns) and all(r.alias_info is not None for r in schema.returns)


def _masks_by_value(func: Any, args: tuple[Any, ...]) -> bool:
    """Indexing with a boolean mask: its kernel asks for the mask's nonzero positions on the host."""
    if func not in (aten.index.Tensor, aten.index_put_.default, aten.index_put.default):
        return False
    indices = args[1] if len(args) > 1 else []
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)


class Recorder(TorchDispatchMode):
    """Runs the program once, as a capture would, keeping each operation with its tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Call] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func in HOST_READS or _masks_by_value(func, args):
            why = HOST_READS.get(func, "indexes with a boolean mask (its count of selected values only the data knows)")
            raise CaptureRefused(f"the step {why}, which a CUDA graph cannot capture")
        out = func(*args, **kwargs)
        if not _is_view(func):
            made, _ = tree_flatten(out)
            inputs = {id(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
            kept = [t if isinstance(t, torch.Tensor) and id(t) not in inputs else None for t in made]
            self.calls.append(Call(func, args, kwargs, kept))
        return out


class Replay:
    """The recorded step; calling it runs every operation again, with autograd and autocast off (the
    recording holds their work already: the backward's operations and autocast's casts)."""

    def __init__(self, calls: list[Call], device: torch.device) -> None:
        self.calls, self.device = calls, device

    def __call__(self) -> None:
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            for call in self.calls:
                call.replay()

    def __len__(self) -> int:
        return len(self.calls)


class EmulatedGraphs:
    """The capture's protocol (graph.Graphs) with recorded replays instead of CUDA graphs."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device or torch.device("cpu")

    def warm_up(self, program: Callable[[], None], times: int) -> None:
        for _ in range(times):
            program()

    def capture(self, program: Callable[[], None]) -> Callable[[], None]:
        recorder = Recorder()
        with recorder:
            program()
        return Replay(recorder.calls, self.device)
