"""What a CUDA graph would freeze that no tensor check can see: a model's own Python values.

A graph replays kernels, never the Python that launched them, so a model that keeps a step counter
in an attribute (`self.step += 1` in forward), flips a flag on the host, or binds an attribute to a
new tensor each step trains differently once captured: the graph goes on with the values it saw.
The rehearsal before a capture looks at those values before and after (graph.py); a change refuses
the graph, by name, and they are put back as they were.
"""

from __future__ import annotations

from typing import Any

import torch

STANDARD = frozenset(vars(torch.nn.Module()))  # what every module keeps in its __dict__ (training, _parameters...)
PLAIN = (int, float, bool, str, bytes, type(None))


def python_values(model: torch.nn.Module) -> dict[str, Any]:
    """The model's own attributes a step could change behind a graph's back: plain values (copied) and
    tensors that are neither parameters nor buffers (by identity, with the object)."""
    values: dict[str, Any] = {}
    for prefix, module in model.named_modules():
        for key, value in vars(module).items():
            if key in STANDARD:
                continue
            name = f"{prefix}.{key}" if prefix else key
            if isinstance(value, torch.Tensor):
                values[name] = ("tensor", value)
            elif _plain(value):
                values[name] = ("value", _copy(value))
    return values


def _plain(value: Any, depth: int = 0) -> bool:
    if isinstance(value, PLAIN):
        return True
    if depth < 3 and isinstance(value, (list, tuple)):
        return all(_plain(v, depth + 1) for v in value)
    if depth < 3 and isinstance(value, dict):
        return all(isinstance(k, PLAIN) and _plain(v, depth + 1) for k, v in value.items())
    return False


def _copy(value: Any) -> Any:
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_copy(v) for v in value)
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value


def frozen_words(before: dict[str, Any], model: torch.nn.Module) -> str | None:
    """What the rehearsal changed among the model's Python values, which a graph would have frozen."""
    from vae_tui.models.user import UserVAE

    after = python_values(model)
    changed = [n for n, (kind, v) in before.items() if n in after and (after[n][1] is not v if kind == "tensor" else after[n][1] != v)]
    if not changed:
        return None
    rebound = [n for n in changed if before[n][0] == "tensor"]
    yours = isinstance(model, UserVAE)  # your module is its `inner`: named as your code names it
    names = ", ".join(f"`self.{n.removeprefix('inner.') if yours else n}`" for n in changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
    if rebound:
        return (
            f"the model binds {names} to a new tensor at every step, and a CUDA graph would go on reading the one it captured: "
            "update it in place (for example t.add_(1))"
        )
    return (
        f"the model changes {names} (a Python value) at every step, which a CUDA graph would freeze at its captured value: "
        "keep it in a buffer (register_buffer) updated in place"
    )


def put_back(model: torch.nn.Module, values: dict[str, Any]) -> None:
    """The values `python_values` read, set again (a tensor attribute: the very object it was)."""
    modules = dict(model.named_modules())
    for name, (kind, value) in values.items():
        prefix, _, key = name.rpartition(".")
        setattr(modules[prefix], key, value if kind == "tensor" else _copy(value))
