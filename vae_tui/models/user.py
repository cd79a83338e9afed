"""Your own VAE, trained and watched by vae-tui: `--model FILE.py:Class` or `package.module:Class`.

Two shapes of model work as they are:
  1. the classic example's: `forward(x)` returns `(x_reconstructed, mu, logvar)`, the
     reconstruction as probabilities (a sigmoid at the end) or as logits; or more values, in
     another order, nested, a dict, a standard deviation for the logvar, as `vae-tui run` reads
     them (models/outputs.py: where each is goes into the run's config as `model_outputs`);
  2. the model protocol (vae_tui/models/protocol.py): encode, decode, reconstruction_loss, mean.
`UserVAE` shows either to the rest of vae-tui through the protocol. Its state dict is the user's
model's own, so a checkpoint's "model" loads straight into the user's class. The class is found by
user_source.py and tried on real images, before a run is written, by user_probe.py.
"""

from __future__ import annotations

import ast
import inspect
import re
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from vae_tui.errors import ConfigError
from vae_tui.models import parameter_count
from vae_tui.models.outputs import Layout, parts
from vae_tui.models.protocol import NoDecoder, decoder_of
from vae_tui.models.user_source import load_class
from vae_tui.models.vae import reparameterize

PROTOCOL = ("encode", "decode", "reconstruction_loss", "mean")


def parse_args(text: str) -> dict[str, Any]:
    """--model-args 'hidden_dim=256, z_dim=8': name=value pairs of Python literals."""
    if not text.strip():
        return {}
    usage = "--model-args takes name=value pairs of Python literals, e.g. 'hidden_dim=256, z_dim=8'"
    try:
        call = ast.parse(f"f({text})", mode="eval").body
    except SyntaxError:
        raise ConfigError(f"{usage}; got {text!r}") from None
    if not isinstance(call, ast.Call) or call.args or any(k.arg is None for k in call.keywords):
        raise ConfigError(f"{usage}; got {text!r}")
    out: dict[str, Any] = {}
    for keyword in call.keywords:
        assert keyword.arg is not None  # a **mapping was refused above
        try:
            out[keyword.arg] = ast.literal_eval(keyword.value)
        except ValueError:
            raise ConfigError(f"{usage}: {keyword.arg}={ast.unparse(keyword.value)} is not a literal") from None
    return out


def construct(cls: type, args: dict[str, Any], shape: tuple[int, int, int], hidden_dim: int, latent_dim: int) -> nn.Module:
    """An instance, the arguments named like the classic example's filled from the data and options."""
    channels, height, width = shape
    known = {
        "input_dim": channels * height * width,
        "output_dim": channels * height * width,
        "hidden_dim": hidden_dim,
        "z_dim": latent_dim,
        "latent_dim": latent_dim,
        "image_shape": shape,
        "input_shape": shape,
        "channels": channels,
        "in_channels": channels,
    }
    params = list(inspect.signature(cls).parameters.values())
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params)
    unknown = [k for k in args if k not in {p.name for p in named} and not takes_any]
    if unknown:
        raise ConfigError(f"--model-args: {cls.__name__}() takes no argument {unknown[0]!r} (it takes {', '.join(p.name for p in named) or 'none'})")
    kwargs = dict(args)
    for p in named:
        if p.name not in kwargs and p.name in known:
            kwargs[p.name] = known[p.name]
    missing = [p.name for p in named if p.default is p.empty and p.name not in kwargs]
    if missing:
        raise ConfigError(
            f"--model: {cls.__name__}() needs {', '.join(missing)}; give {'them' if len(missing) > 1 else 'it'} with --model-args '{missing[0]}=...'"
        )
    try:
        return cls(**kwargs)
    except Exception as exc:
        raise ConfigError(f"--model: {cls.__name__}({_call_words(kwargs)}) failed: {type(exc).__name__}: {exc}") from None


def _call_words(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


CLASSIC_OUTPUTS = "0,1,2 logvar"  # forward's (x_reconstructed, mu, logvar)


def outputs_words(layout: Layout, scalars: list[tuple[int, str]] | None = None) -> str:
    """A classic model's output layout as config.json keeps it: "0,1,2 logvar" (the indices in `parts`
    of the reconstruction, mu and the spread, and the spread's kind), then any single numbers forward
    returns besides, each as index=name ("0,1,2 logvar 3=aux_loss"): recorded as terms, not trained on."""
    words = f"{layout.recon},{layout.mu},{layout.logvar} {layout.spread}"
    others = [(i, re.sub(r"[^\w.]+", "_", name)) for i, name in scalars or [] if i not in (layout.recon, layout.mu, layout.logvar)]
    return words + (" " + ",".join(f"{i}={name}" for i, name in others) if others else "")


def output_terms(outputs: str) -> tuple[tuple[int, str], ...]:
    """The single numbers a layout (outputs_words) records: (index in `parts`, name) each."""
    fields = outputs.split()
    if len(fields) < 3:
        return ()
    return tuple((int(i), name) for i, _, name in (pair.partition("=") for pair in fields[2].split(",")))


class UserVAE(nn.Module):
    """A user's model through the protocol. `kind` is "classic" or "protocol"; for a classic one,
    `output` says whether x_reconstructed is probabilities or logits, `flat` whether it takes
    flattened images, `outputs` where forward's values are (outputs_words)."""

    def __init__(
        self,
        inner: nn.Module,
        shape: tuple[int, int, int],
        latent_dim: int,
        kind: str,
        output: str = "logits",
        flat: bool = False,
        outputs: str = CLASSIC_OUTPUTS,
    ) -> None:
        super().__init__()
        self.inner: Any = inner  # your module: its own members (encode, encoder, ...) are looked up, not typed
        self.input_shape, self.latent_dim = shape, latent_dim
        self.kind, self.output, self.flat = kind, output, flat
        picks, self.spread = outputs.split()[:2]
        self.picks = tuple(int(i) for i in picks.split(","))
        self.terms = output_terms(outputs) if kind == "classic" else ()
        self.term_names = tuple(name for _, name in self.terms)  # recorded beside recon and kl, as forward names them

    # The user's own weights, without a prefix: a checkpoint's "model" loads into their class.
    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        return self.inner.load_state_dict(state_dict, strict=strict, assign=assign)

    def _in(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) if self.flat else x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One training pass: (the likelihood's parameters shaped like x, mu, logvar), in x's dtype (a model
        that computes in float64 trains on float32 images); then the single numbers forward returns besides
        (term_names), detached: they are charted, and the loss stays recon + beta * KL."""
        if self.kind == "protocol":
            mu, logvar = self.inner.encode(x)
            return self.inner.decode(reparameterize(mu, logvar)).to(x.dtype), mu.to(x.dtype), logvar.to(x.dtype)
        found = [t for _, t in parts(self.inner(self._in(x)))]
        params, mu, spread = (found[i] for i in self.picks)
        logvar = spread if self.spread == "logvar" else 2 * spread.log()
        terms = (found[i].detach().reshape(()).to(x.dtype) for i, _ in self.terms)
        return params.reshape(x.shape).to(x.dtype), mu.to(x.dtype), logvar.to(x.dtype), *terms

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "protocol":
            return self.inner.encode(x)
        encoder = getattr(self.inner, "encoder", None)
        if isinstance(encoder, nn.Module):
            out = encoder(self._in(x))
            if isinstance(out, (tuple, list)) and len(out) == 2:  # the classic example's Encoder
                return out[0], out[1]
        _, mu, logvar = self.forward(x)[:3]  # the posterior as forward gives it
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.kind == "protocol":
            return self.inner.decode(z).to(z.dtype)
        found = decoder_of(self.inner)
        if found is None:
            raise NoDecoder(f"{type(self.inner).__name__} has neither a decode(z) method nor a decoder, so nothing can be drawn from z")
        out = found[1](z)
        out = out if isinstance(out, torch.Tensor) else parts(out)[0][1]
        return out.reshape(len(z), *self.input_shape).to(z.dtype)

    def reconstruction_loss(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "protocol":
            return self.inner.reconstruction_loss(params, x)
        if self.output == "probs":  # the classic example's binary cross-entropy on probabilities
            try:
                return F.binary_cross_entropy(params, x, reduction="none").flatten(1).sum(1)
            except RuntimeError as exc:
                if "between 0 and 1" not in str(exc):
                    raise
                raise RuntimeError(
                    f"{type(self.inner).__name__}'s x_reconstructed left [0, 1] ({exc}): it is read as probabilities; "
                    "if it is logits (no sigmoid at the end), pass --model-output logits"
                ) from None
        return F.binary_cross_entropy_with_logits(params, x, reduction="none").flatten(1).sum(1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        if self.kind == "protocol":
            return self.inner.mean(params)
        return params.clamp(0, 1) if self.output == "probs" else torch.sigmoid(params)


def built_parameter_count(spec: str, model_args: str, shape: tuple[int, int, int], hidden_dim: int, latent_dim: int) -> int:
    """The model's parameters, by building it (the probe's answer has them when it ran: Probed.parameters)."""
    return parameter_count(construct(load_class(spec)[0], parse_args(model_args), shape, hidden_dim, latent_dim))


def build(
    spec: str, model_args: str, shape: tuple[int, int, int], hidden_dim: int, latent_dim: int, kind: str, output: str, layout: str, outputs: str
) -> UserVAE:
    """The model as a run recorded it (resume, eval): the class rebuilt from its file or module."""
    cls, _ = load_class(spec)
    inner = construct(cls, parse_args(model_args), shape, hidden_dim, latent_dim)
    return UserVAE(inner, shape, latent_dim, kind, output, layout == "flat", outputs)
