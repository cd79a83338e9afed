"""Whether a script's loss is summed over its batch, read from the autograd graph `backward()` is
about to run: the classic example sums (`reduction="sum"`, `torch.sum`), so its loss grows with the
batch (70,424 for 128 images) and dips at an epoch's short last batch, where a per-image value
(550) is what the KL beside it is in.

Read once, before the graph is freed: the nodes that collapse the batch dimension say how (a sum,
or a mean), and a division by the batch size after a sum makes it a mean again.
"""

from __future__ import annotations

from typing import Any

import torch

MOST_NODES = 2000  # a model's whole graph can be large; the loss's reductions sit near its top

SUMS = {"SumBackward0", "SumBackward1"}
MEANS = {"MeanBackward0", "MeanBackward1"}
SCALINGS = {"DivBackward0", "DivBackward1", "MulBackward0", "MulBackward1"}


def summed_over_batch(loss: torch.Tensor, batch: int) -> bool | None:
    """True where the loss is a sum over the batch's `batch` images, False where it is a mean over
    them (or a sum divided by their number), None where nothing in the graph says."""
    if loss.grad_fn is None or batch < 2:
        return None
    summed = mean = False
    seen: set[Any] = set()
    stack: list[Any] = [loss.grad_fn]
    while stack and len(seen) < MOST_NODES:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        kind = _reduces(node, batch)
        summed, mean = summed or kind == "sum", mean or kind in ("mean", "divided")
        stack.extend(next_node for next_node, _ in node.next_functions)
    return None if not (summed or mean) else summed and not mean


def _reduces(node: Any, batch: int) -> str:
    """ "sum" or "mean" where `node` collapses a batch dimension of `batch` that way, "divided"
    where it scales by 1/batch, else ""."""
    name = type(node).__name__
    sizes = tuple(getattr(node, "_saved_self_sym_sizes", None) or ())
    over_batch = bool(sizes) and sizes[0] == batch
    if name in SUMS or name in MEANS:
        dims = getattr(node, "_saved_dim", None)
        if over_batch and (dims is None or 0 in dims or -len(sizes) in dims):
            return "sum" if name in SUMS else "mean"
        return ""
    reduction = getattr(node, "_saved_reduction", None)  # a loss function's: 1 mean, 2 sum
    if reduction in (1, 2):
        return "mean" if reduction == 1 else "sum"
    if name in SCALINGS:
        other = _number(getattr(node, "_saved_other", None))
        if other is not None and (abs(other - batch) < 1e-6 if name.startswith("Div") else abs(other * batch - 1) < 1e-6):
            return "divided"
    return ""


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.detach().cpu())
    return None
