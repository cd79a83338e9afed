"""What a script's model returns, read without being told: which of forward()'s outputs are the
reconstruction, mu and logvar, the KL per image they give, and pictures of inputs and outputs."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import textwrap
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

RECON_NAMES = ("recon", "x_hat", "x_recon", "reconstruction", "recon_x", "output", "logits", "sample", "x_rec", "dec")
MU_NAMES = ("mu", "mean", "z_mean", "means", "loc", "z_mu")
LOGVAR_NAMES = ("logvar", "log_var", "z_log_var", "logvariance", "log_sigma2", "z_logvar")
STD_NAMES = ("std", "sigma", "scale", "stddev", "z_std", "sd")
LOGSTD_NAMES = ("log_std", "logstd", "log_sigma", "logsigma", "log_scale", "logscale", "z_log_std")
SPREADS = {"logvar": LOGVAR_NAMES, "std": STD_NAMES, "log_std": LOGSTD_NAMES}
PICTURES = 8
KEEPS_NAME = ("double", "float", "half", "bfloat16", "to", "cpu", "cuda", "contiguous", "view", "reshape", "flatten", "squeeze", "clone", "detach", "type")


@dataclass(frozen=True)
class Layout:
    """Where the reconstruction, mu and the posterior's spread sit in forward()'s output (indices into
    `parts`), and whether the spread is a log-variance, a standard deviation or a log standard deviation
    ("": it cannot be told, and `why` says so)."""

    recon: int | None
    mu: int | None
    logvar: int | None  # the spread: a log-variance, a standard deviation or its log (`spread` says)
    names: tuple[str, ...]  # each part's name: "output 2", or its key in a dict
    spread: str = "logvar"  # "logvar", "std", "log_std", or "" where nothing tells them apart
    why: str = ""  # why the KL is not known, where mu and the spread were looked for and not told apart

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
        """Why the KL is not known, where a mu and a spread were looked for and could not be told apart."""
        if self.why:
            return self.why
        if not self.pair_words or self.spread:
            return ""
        spread = self.names[self.logvar] if self.logvar is not None else ""
        return f"forward()'s {spread} may be a log-variance, a log standard deviation or a standard deviation"

    @property
    def recon_words(self) -> str:
        return f"forward()'s {self.names[self.recon]}" if self.recon is not None else ""

    def posterior(self, output: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(mu, logvar) of a forward's output, each (batch, latent values), where the layout knows them."""
        found = parts(output)
        if self.mu is None or self.logvar is None or not self.spread or len(found) != len(self.names):
            return None
        mu, spread = found[self.mu][1], found[self.logvar][1]
        if mu.shape != spread.shape:
            return None
        if self.spread == "std":
            spread = 2 * spread.float().log()
        elif self.spread == "log_std":
            spread = 2 * spread.float()
        return mu.flatten(1), spread.flatten(1)

    def kl(self, output: Any) -> torch.Tensor | None:
        """The KL per image from a forward's output, where the layout knows how; on the device."""
        posterior = self.posterior(output)
        return kl_per_image(*posterior) if posterior is not None else None


def posterior_parts(value: Any) -> dict[str, torch.Tensor] | None:
    """A posterior object's mean and spread by name: diffusers' DiagonalGaussianDistribution (`mean`,
    `logvar`), torch.distributions.Normal (`loc`, `scale`), or one with `mean` and `std`; else None."""
    if isinstance(value, torch.Tensor) or value is None:
        return None
    for mean, spread in (("mean", "logvar"), ("loc", "scale"), ("mean", "std"), ("mu", "logvar")):
        try:
            a, b = getattr(value, mean, None), getattr(value, spread, None)
        except Exception:  # a property that cannot be computed for this object
            continue
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            return {mean: a, spread: b}
    return None


def fields_of(value: Any) -> dict[str, Any] | None:
    """A dict's items, a dataclass's fields (diffusers' outputs are both), or None for anything else."""
    if isinstance(value, dict):
        return dict(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name, None) for f in dataclasses.fields(value)}
    return None


def parts(output: Any) -> list[tuple[str, torch.Tensor]]:
    """The tensors a forward returned, named as a person would point at them: 'output 1' of a tuple
    (one nested tuple flattened), a dict's or a dataclass's keys, a posterior object's mean and spread
    ('latent_dist'.mean), or the one tensor."""
    if isinstance(output, torch.Tensor):
        return [("output", output)]
    fields = fields_of(output)
    if fields is not None:
        found = []
        for k, v in fields.items():
            if isinstance(v, torch.Tensor):
                found.append((f"'{k}'", v))
            elif (inner := posterior_parts(v) or fields_of(v)) is not None:
                found += [(f"'{k}'.{name}", t) for name, t in inner.items() if isinstance(t, torch.Tensor)]
        return found
    if (posterior := posterior_parts(output)) is not None:
        return list(posterior.items())
    if isinstance(output, (tuple, list)):
        flat: list[torch.Tensor] = []
        for item in output:
            flat.extend(t for t in (item if isinstance(item, (tuple, list)) else (item,)) if isinstance(t, torch.Tensor))
        return [(f"output {i + 1}", t) for i, t in enumerate(flat)]
    return []


def scalar_parts(output: Any, returned: tuple[str, ...] | None) -> list[tuple[int, str]]:
    """The single numbers a forward returns beside its tensors (a VQ-VAE's commitment loss, perplexity): each
    one's index in `parts` and its name, as the `return` line names it (`returned_names`), else its key or place."""
    found = parts(output)
    named = returned if returned is not None and not isinstance(output, dict) and len(returned) == len(found) else None
    return [
        (i, (named[i] if named is not None and named[i] else name.replace("'", "")))
        for i, (name, t) in enumerate(found)
        if t.numel() == 1 and t.is_floating_point()
    ]


def _key(name: str) -> str:
    """A part's name as a key to look up: 'mu' -> mu, 'latent_dist'.logvar -> logvar."""
    return name.rsplit(".", 1)[-1].strip("'").lower()


def read_layout(inputs: torch.Tensor | None, output: Any, returned: tuple[str, ...] | None = None) -> Layout:
    """Which output is which: by name (a dict's or a dataclass's keys, a posterior's attributes, or
    `returned`: the names forward's `return` gives them), else by shape (the one like the input is the
    reconstruction; two of one (batch, ...) shape are mu and the spread). The spread's kind is told by
    its name alone: a log-variance, a log standard deviation and a standard deviation cannot be told
    apart by their values, and a wrong guess would chart a wrong KL."""
    found = parts(output)
    names = tuple(name for name, _ in found)
    tensors = [t for _, t in found]
    if not names or not names[0].startswith("output"):  # a dict's, a dataclass's or a posterior's own names
        keys = [_key(n) for n in names]
    elif returned is not None and len(returned) == len(tensors):
        keys = [n.lower() for n in returned]
    else:
        keys = [""] * len(tensors)
    pick = lambda wanted: next((i for i, k in enumerate(keys) if k in wanted), None)  # noqa: E731
    recon = pick(RECON_NAMES)
    if recon is None or not _like_input(tensors[recon], inputs):
        recon = next((i for i, t in enumerate(tensors) if _like_input(t, inputs)), recon)
    mu, spread = pick(MU_NAMES), pick(LOGVAR_NAMES + STD_NAMES + LOGSTD_NAMES)
    if mu is None or spread is None:
        mu, spread, why = _pair_by_shape(tensors, names, recon)
        if mu is None or spread is None:
            return Layout(recon, None, None, names, why=why)
    kind = next((k for k, words in SPREADS.items() if keys[spread] in words), "")
    return Layout(recon, mu, spread, names, kind)


def _pair_by_shape(tensors: list[torch.Tensor], names: tuple[str, ...], recon: int | None) -> tuple[int | None, int | None, str]:
    """mu and the spread, unnamed: the two outputs besides the reconstruction of one (batch, ...) shape;
    three or more such (z, mu, logvar) cannot be told apart: (None, None, why)."""
    batch = tensors[recon].shape[0] if recon is not None else None
    rest = [
        i
        for i, t in enumerate(tensors)
        if i != recon and t.ndim >= 2 and t.is_floating_point() and (batch is None or t.shape[0] == batch) and not _like_input(t, None)
    ]
    for n, a in enumerate(rest):
        same = [b for b in rest[n:] if tensors[b].shape == tensors[a].shape]
        if len(same) == 2:
            return same[0], same[1], ""
        if len(same) > 2:
            listed = ", ".join(names[i].split()[-1] for i in same)
            return None, None, f"forward() returns {len(same)} codes of one shape (outputs {listed}): which are mu and the spread is not known"
    return None, None, ""


def returned_names(module: Any) -> tuple[str, ...] | None:
    """The names `forward`'s last `return` gives its values (`return x_hat, mu, std`; `mu.double()` is
    `mu`), flattened as `parts` flattens the output; a forward that returns `super().forward(x)` by its
    base class's. None where no source can be read or its last `return` is not a tuple."""
    for cls in type(module).__mro__:
        forward = cls.__dict__.get("forward")
        if forward is None:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(forward)))
        except (OSError, TypeError, SyntaxError):
            return None
        returns = [node.value for node in ast.walk(tree) if isinstance(node, ast.Return) and node.value is not None]
        last = max(returns, key=lambda node: node.lineno, default=None)
        if isinstance(last, ast.Tuple):
            return tuple(_name(item) for element in last.elts for item in (element.elts if isinstance(element, ast.Tuple) else [element]))
        if not (isinstance(last, ast.Call) and "super" in ast.dump(last.func)):
            return None
    return None


def _name(node: ast.expr) -> str:
    """A returned value's plain name: `mu`, `self.mu`, `mu.double()` and `mu.to(x)` are all `mu`; else ""."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in KEEPS_NAME:
        node = node.func.value
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""


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
