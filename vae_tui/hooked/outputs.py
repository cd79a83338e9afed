"""What a script's model returns, read without being told: which of forward()'s outputs are the
reconstruction, mu and logvar, the KL per image they give, and pictures of inputs and outputs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

RECON_NAMES = ("recon", "x_hat", "x_recon", "reconstruction", "recon_x", "output", "logits")
MU_NAMES = ("mu", "mean", "z_mean", "means")
LOGVAR_NAMES = ("logvar", "log_var", "z_log_var", "logvariance")
PICTURES = 8


@dataclass(frozen=True)
class Layout:
    """Where the reconstruction, mu and logvar sit in forward()'s output (indices into `parts`), in words."""

    recon: int | None
    mu: int | None
    logvar: int | None
    names: tuple[str, ...]  # each part's name: "output 2", or its key in a dict

    @property
    def kl_words(self) -> str:
        if self.mu is None or self.logvar is None:
            return ""
        a, b = self.names[self.mu], self.names[self.logvar]
        both = f"outputs {a.split()[-1]} and {b.split()[-1]}" if a.startswith("output ") and b.startswith("output ") else f"{a} and {b}"
        return f"KL from forward()'s {both} as mu, logvar"

    @property
    def recon_words(self) -> str:
        return f"forward()'s {self.names[self.recon]}" if self.recon is not None else ""


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


def read_layout(inputs: torch.Tensor | None, output: Any) -> Layout:
    found = parts(output)
    names = tuple(name for name, _ in found)
    tensors = [t for _, t in found]
    if isinstance(output, dict):
        keys = [name.strip("'").lower() for name in names]
        pick = lambda wanted: next((i for i, k in enumerate(keys) if k in wanted), None)  # noqa: E731
        return Layout(pick(RECON_NAMES), pick(MU_NAMES), pick(LOGVAR_NAMES), names)
    recon = next((i for i, t in enumerate(tensors) if _like_input(t, inputs)), None)
    rest = [
        i
        for i in range(len(tensors))
        if i != recon and tensors[i].ndim == 2 and tensors[i].is_floating_point() and (recon is None or tensors[i].shape[0] == tensors[recon].shape[0])
    ]
    pair = next(((a, b) for n, a in enumerate(rest) for b in rest[n + 1 :] if tensors[a].shape == tensors[b].shape), None)
    mu, logvar = pair if pair is not None else (None, None)
    return Layout(recon, mu, logvar, names)


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
