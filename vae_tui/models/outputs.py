"""What a script's model returns, read without being told: which of forward()'s outputs are the
reconstruction, mu and logvar, the KL per image they give, and pictures of inputs and outputs."""

from __future__ import annotations

import ast
import inspect
import math
import textwrap
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

RECON_NAMES = ("recon", "x_hat", "x_recon", "reconstruction", "recon_x", "output", "logits")
MU_NAMES = ("mu", "mean", "z_mean", "means")
LOGVAR_NAMES = ("logvar", "log_var", "z_log_var", "logvariance", "log_sigma2")
STD_NAMES = ("std", "sigma", "scale", "stddev", "z_std", "sd")
PICTURES = 8


@dataclass(frozen=True)
class Layout:
    """Where the reconstruction, mu and the posterior's spread sit in forward()'s output (indices into
    `parts`), and whether the spread is a log-variance or a standard deviation ("": it cannot be told)."""

    recon: int | None
    mu: int | None
    logvar: int | None  # the spread: a log-variance, a standard deviation, or either (`spread` says)
    names: tuple[str, ...]  # each part's name: "output 2", or its key in a dict
    spread: str = "logvar"  # "logvar", "std", or "" where nothing tells them apart

    @property
    def pair_words(self) -> str:
        if self.mu is None or self.logvar is None:
            return ""
        a, b = self.names[self.mu], self.names[self.logvar]
        return f"outputs {a.split()[-1]} and {b.split()[-1]}" if a.startswith("output ") and b.startswith("output ") else f"{a} and {b}"

    @property
    def kl_words(self) -> str:
        """Where the KL comes from, or "" where it is not known."""
        if not self.pair_words or not self.spread:
            return ""
        return f"KL from forward()'s {self.pair_words} as mu, {self.spread}"

    @property
    def unknown_kl_words(self) -> str:
        """Why the KL is not known, where a mu and a spread were found but the spread's kind was not."""
        if not self.pair_words or self.spread:
            return ""
        spread = self.names[self.logvar] if self.logvar is not None else ""
        return f"forward()'s {spread} may be a standard deviation or a log-variance"

    @property
    def recon_words(self) -> str:
        return f"forward()'s {self.names[self.recon]}" if self.recon is not None else ""

    def kl(self, output: Any) -> torch.Tensor | None:
        """The KL per image from a forward's output, where the layout knows how; on the device."""
        found = parts(output)
        if self.mu is None or self.logvar is None or not self.spread or len(found) != len(self.names):
            return None
        mu, spread = found[self.mu][1], found[self.logvar][1]
        if mu.shape != spread.shape:
            return None
        return kl_per_image(mu, spread if self.spread == "logvar" else 2 * spread.float().log())


def parts(output: Any) -> list[tuple[str, torch.Tensor]]:
    """The tensors a forward returned, named as a person would point at them: 'output 1' of a tuple
    (one nested tuple flattened), a dict's keys, or the one tensor."""
    if isinstance(output, torch.Tensor):
        return [("output", output)]
    if isinstance(output, dict):
        return [(f"'{k}'", v) for k, v in output.items() if isinstance(v, torch.Tensor)]
    if isinstance(output, (tuple, list)):
        flat: list[torch.Tensor] = []
        for item in output:
            flat.extend(t for t in (item if isinstance(item, (tuple, list)) else (item,)) if isinstance(t, torch.Tensor))
        return [(f"output {i + 1}", t) for i, t in enumerate(flat)]
    return []


def read_layout(inputs: torch.Tensor | None, output: Any, returned: tuple[str, ...] | None = None) -> Layout:
    """Which output is which: by a dict's keys, else by shape (the one like the input is the
    reconstruction; two of one (batch, n) shape are mu and the spread). The spread is a log-variance
    or a standard deviation by its name (a dict's key, or `returned`: the names forward's `return`
    gives them), else a log-variance where it has a value below 0 (a standard deviation never does),
    else not known."""
    found = parts(output)
    names = tuple(name for name, _ in found)
    tensors = [t for _, t in found]
    if isinstance(output, dict):
        keys = [name.strip("'").lower() for name in names]
    elif returned is not None and len(returned) == len(tensors):
        keys = [name.lower() for name in returned]
    else:
        keys = [""] * len(tensors)
    pick = lambda wanted: next((i for i, k in enumerate(keys) if k in wanted), None)  # noqa: E731
    if isinstance(output, dict):
        recon, mu, spread = pick(RECON_NAMES), pick(MU_NAMES), pick(LOGVAR_NAMES + STD_NAMES)
    else:
        recon = next((i for i, t in enumerate(tensors) if _like_input(t, inputs)), None)
        rest = [
            i
            for i in range(len(tensors))
            if i != recon and tensors[i].ndim == 2 and tensors[i].is_floating_point() and (recon is None or tensors[i].shape[0] == tensors[recon].shape[0])
        ]
        pair = next(((a, b) for n, a in enumerate(rest) for b in rest[n + 1 :] if tensors[a].shape == tensors[b].shape), None)
        mu, spread = pair if pair is not None else (None, None)
    if spread is None:
        return Layout(recon, mu, None, names)
    if keys[spread] in LOGVAR_NAMES:
        kind = "logvar"
    elif keys[spread] in STD_NAMES:
        kind = "std"
    else:
        kind = "logvar" if bool((tensors[spread].detach() < 0).any()) else ""
    return Layout(recon, mu, spread, names, kind)


def returned_names(module: Any) -> tuple[str, ...] | None:
    """The names `forward`'s last `return` gives its values (`return x_hat, mu, std`), flattened as
    `parts` flattens the output; None where its source cannot be read or a value has no plain name."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(type(module).forward)))
    except (OSError, TypeError, SyntaxError):
        return None
    returns = [node.value for node in ast.walk(tree) if isinstance(node, ast.Return) and node.value is not None]
    last = max(returns, key=lambda node: node.lineno, default=None)
    if not isinstance(last, ast.Tuple):
        return None
    names: list[str] = []
    for element in last.elts:
        for item in element.elts if isinstance(element, ast.Tuple) else [element]:
            name = item.id if isinstance(item, ast.Name) else item.attr if isinstance(item, ast.Attribute) else ""
            names.append(name)
    return tuple(names)


def _like_input(t: torch.Tensor, inputs: torch.Tensor | None) -> bool:
    if inputs is None or not t.is_floating_point() or t.ndim == 0 or inputs.ndim == 0:
        return False
    return t.shape[0] == inputs.shape[0] and t[0].numel() == inputs[0].numel()


def kl_per_image(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) summed over latent dimensions, averaged over the batch; on the device."""
    with torch.no_grad():  # four kernels and two on a scalar: this runs every step
        mu, logvar = mu.float(), logvar.float()
        return torch.addcmul(logvar.exp().sub_(logvar), mu, mu).sum().sub_(logvar.numel()).mul_(0.5 / max(mu.shape[0], 1))


def image_shape(inputs: torch.Tensor, batch: Any) -> tuple[int, int, int] | None:
    """(channels, height, width) of the pictures the model sees: the DataLoader's images when they hold
    as many values as the model's input (the classic example flattens them), else the input's own
    shape, else a square of one or three channels."""
    per_image = inputs[0].numel() if inputs.ndim else 0
    data = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    if isinstance(data, torch.Tensor) and data.ndim == 4 and data[0].numel() == per_image:
        return tuple(data.shape[1:])  # type: ignore[return-value]
    if inputs.ndim == 4 and inputs.shape[1] in (1, 3):
        return tuple(inputs.shape[1:])  # type: ignore[return-value]
    if inputs.ndim == 3:
        return (1, *inputs.shape[1:])
    for channels in (1, 3):
        side = math.isqrt(per_image // channels) if per_image % channels == 0 else 0
        if side > 1 and side * side * channels == per_image:
            return (channels, side, side)
    return None


def as_pictures(tensor: torch.Tensor, shape: tuple[int, int, int], logits: bool, span: tuple[float, float] | None) -> np.ndarray:
    """Up to PICTURES images (n, c, h, w) in [0, 1] for the panes: logits through a sigmoid, data outside
    [0, 1] (normalised images) stretched by `span`, the inputs' own range."""
    with torch.no_grad():
        values = tensor.detach()[:PICTURES].float().reshape(-1, *shape)
        if logits:
            values = values.sigmoid()
        elif span is not None:
            lo, hi = span
            values = (values - lo) / max(hi - lo, 1e-8)
        return values.clamp(0, 1).cpu().numpy()


def span_of(inputs: torch.Tensor) -> tuple[float, float] | None:
    """The inputs' range when it is not [0, 1] (normalised data), else None."""
    lo, hi = (float(v) for v in torch.aminmax(inputs.detach()[:PICTURES].float()))
    return None if lo >= 0.0 and hi <= 1.0 else (lo, hi)


def are_logits(output: torch.Tensor, span: tuple[float, float] | None) -> bool:
    """A reconstruction outside [0, 1] for inputs inside it: logits, as a BCE-with-logits loss takes them."""
    if span is not None:
        return False
    lo, hi = (float(v) for v in torch.aminmax(output.detach()[:PICTURES].float()))
    return lo < 0.0 or hi > 1.0
