"""Your model tried on a batch of real images before anything is written: which of the two shapes it
has, what its output and input are, how many parameters it has; everything that would make training
fail is one ConfigError here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from vae_tui.errors import ConfigError
from vae_tui.models import parameter_count
from vae_tui.models.outputs import Layout, parts, read_layout, returned_names, scalar_parts
from vae_tui.models.protocol import evaluating, rng_kept
from vae_tui.models.user import CLASSIC_OUTPUTS, PROTOCOL, UserVAE, construct, outputs_words, parse_args
from vae_tui.models.user_source import Source, load_class, user_line


# -- checking a model on the first batch, before anything is written ------------------------------
@dataclass(frozen=True)
class Probed:
    """What was found out about the model on a batch of real images."""

    spec: str
    kind: str  # "classic" or "protocol"
    output: str  # "probs" or "logits" (classic models)
    input: str  # "flat" or "image" (classic models)
    latent_dim: int
    detected: str  # what was detected, in words, for the run's first lines
    parameters: int  # how many the model has, counted as it was built
    outputs: str = CLASSIC_OUTPUTS  # where a classic model's forward puts x_reconstructed, mu and logvar (outputs_words)


def probe(
    spec: str,
    model_args: str,
    shape: tuple[int, int, int],
    hidden_dim: int,
    latent_dim: int,
    x: torch.Tensor,
    output: str | None = None,
    layout: str | None = None,
) -> Probed:
    """Build the model and run it on `x` (a few training images in [0, 1]); each thing that would
    make training fail is one ConfigError here."""
    cls, source = load_class(spec)
    inner = construct(cls, parse_args(model_args), shape, hidden_dim, latent_dim)
    name = cls.__name__
    with torch.no_grad():
        if all(callable(getattr(inner, m, None)) for m in PROTOCOL):
            mu, logvar = _checked_posterior(_run(name, "encode", source, inner.encode, x), name, len(x))
            params = _run(name, "decode", source, inner.decode, mu)
            if not isinstance(params, torch.Tensor) or params.shape != x.shape:
                raise ConfigError(f"--model: {name}.decode must give a tensor shaped like the images {tuple(x.shape)}, it gave {_described(params)}")
            model = UserVAE(inner, shape, mu.shape[1], "protocol")
            found = Probed(source.spec, "protocol", "logits", "image", mu.shape[1], "the encode/decode protocol", parameter_count(inner))
        else:
            found = _probe_classic(inner, name, source, x, output, layout)
            model = UserVAE(inner, shape, found.latent_dim, "classic", found.output, found.input == "flat", found.outputs)
        loss = _run(name, "forward", source, lambda: model.reconstruction_loss(model(x)[0], x).mean())
    if not torch.isfinite(loss):
        raise ConfigError(
            f"--model: the first batch's reconstruction loss is {loss.item()} (not a number): check the decoder's last layer and the loss's inputs"
        )
    return found


def _probe_classic(inner: nn.Module, name: str, source: Source, x: torch.Tensor, output: str | None, layout: str | None) -> Probed:
    layout = layout or _first_layer_layout(inner)
    x_in = x.flatten(1) if layout == "flat" else x
    with torch.enable_grad():  # the graph says how x_reconstructed ends (a sigmoid or not)
        out = _run(name, "forward", source, inner, x_in)
    found = read_layout(x_in, out, returned_names(inner))
    tensors = [t for _, t in parts(out)]
    if found.recon is None and len(tensors) >= 3 and tensors[0].ndim:
        raise ConfigError(
            f"--model: {name}'s x_reconstructed has shape {tuple(tensors[0].shape)} where its input "
            f"has {tuple(x_in.shape)}: the decoder must give back as many values as the image has"
        )
    if found.recon is None or found.mu is None or found.logvar is None:
        raise ConfigError(
            f"--model: {name}.forward must return (x_reconstructed, mu, logvar) (or more values, in any order), or the model "
            f"must have encode and decode methods; it returned {_described(out)}"
        )
    if not found.spread:
        raise ConfigError(
            f"--model: {name}.forward's {found.names[found.logvar]} may be a standard deviation or a log-variance, and nothing "
            "tells which (it has no value below 0): name it logvar or std where forward returns it"
        )
    x_reconstructed = tensors[found.recon]
    mu, _ = _checked_posterior((tensors[found.mu], tensors[found.logvar]), name, len(x))
    low, high = x_reconstructed.min().item(), x_reconstructed.max().item()
    ends = last_operation(x_reconstructed)
    if output is None and ends == "tanh":
        raise ConfigError(
            f"--model: {name}'s x_reconstructed ends in a tanh (values in [-1, 1]), but images here are in [0, 1]: end the decoder "
            "with a sigmoid (probabilities) or with no activation (logits), or pass --model-output logits to read it as logits"
        )
    detected = reads_as(x_reconstructed, ends)
    if output == "probs" and not 0.0 <= low <= high <= 1.0:
        raise ConfigError(
            f"--model: {name}'s x_reconstructed runs from {low:.3g} to {high:.3g}, outside [0, 1], so it "
            "is not probabilities: end the decoder with a sigmoid, or pass --model-output logits"
        )
    output = output or detected
    how = "from its last operation" if ends else "from its values on the first batch"
    words = (
        f"forward(x) -> {_layout_words(found)}, {'flat' if layout == 'flat' else 'image-shaped'} input, "
        f"x_reconstructed read as {'probabilities' if output == 'probs' else 'logits'} ({how}; --model-output says otherwise)"
    )
    scalars = scalar_parts(out, returned_names(inner))
    return Probed(source.spec, "classic", output, layout, mu.shape[1], words, parameter_count(inner), outputs_words(found, scalars))


def _layout_words(found: Layout) -> str:
    """ "(x_reconstructed, mu, logvar)", or where each is in a forward that returns more, or std."""
    if outputs_words(found) == CLASSIC_OUTPUTS and len(found.names) == 3:
        return "(x_reconstructed, mu, logvar)"
    assert found.recon is not None and found.mu is not None and found.logvar is not None
    return f"x_reconstructed, mu, {found.spread} as its {found.names[found.recon]}, {found.names[found.mu]}, {found.names[found.logvar]}"


SHAPE_ONLY = ("View", "Reshape", "UnsafeView", "Clone", "Expand", "Permute", "Transpose", "Squeeze", "Unsqueeze", "ToCopy", "Slice", "Select", "Alias")


def last_operation(t: torch.Tensor) -> str:
    """How a tensor was made, past reshapes: "sigmoid", "tanh", "clamp", "other", or "" where it has no
    autograd graph to say."""
    node = t.grad_fn
    while node is not None and type(node).__name__.startswith(SHAPE_ONLY) and node.next_functions:
        node = node.next_functions[0][0]
    if node is None:
        return ""
    name = type(node).__name__
    for op in ("sigmoid", "tanh", "clamp"):
        if name.lower().startswith(op) or name.lower().startswith("hard" + op):
            return op
    return "other"


def _first_layer_layout(inner: nn.Module) -> str:
    """Flat input for a model whose first layer is a Linear, image-shaped for a convolution."""
    for module in inner.modules():
        if isinstance(module, nn.Linear):
            return "flat"
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return "image"
    return "flat"


def _checked_posterior(out: Any, name: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)):
        raise ConfigError(f"--model: {name}'s encoder must give (mu, logvar), it gave {_described(out)}")
    mu, logvar = out
    if mu.ndim != 2 or len(mu) != n or logvar.shape != mu.shape:
        raise ConfigError(f"--model: {name}'s mu and logvar must both be (batch, latent dims); they are {tuple(mu.shape)} and {tuple(logvar.shape)}")
    return mu, logvar


def _run(name: str, method: str, source: Source, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:
        line = user_line(exc, source.file) if source.file else ""
        shape = f" on a batch of shape {tuple(args[0].shape)}" if args and isinstance(args[0], torch.Tensor) else ""
        raise ConfigError(f"--model: {name}.{method} failed{shape}{line}: {type(exc).__name__}: {exc}") from None


def _described(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}: ({', '.join(_described(v) for v in value)})"
    return f"a {type(value).__name__}"


def shape_of(model: nn.Module, images: torch.Tensor) -> UserVAE | None:
    """Your model seen through the protocol, to draw pictures with in your own loop; None when it
    has neither shape. Tried on two of `images` (batch, channels, height, width) in [0, 1]; your
    random number generators, and its batch norms' statistics, are left as they were."""
    if images.ndim != 4:
        return None
    channels, height, width = images.shape[1:]
    shape, x = (channels, height, width), images[:2]
    with rng_kept(x.device), evaluating(model):
        try:
            if all(callable(getattr(model, m, None)) for m in PROTOCOL):
                with torch.no_grad():
                    mu, _ = getattr(model, "encode")(x)  # found above: a member of your class, not a layer
                return UserVAE(model, shape, mu.shape[1], "protocol")
            layout = _first_layer_layout(model)
            x_in = x.flatten(1) if layout == "flat" else x
            with torch.enable_grad():  # a graph of two images, to see how the reconstruction ends
                out = model(x_in)
        except Exception:
            return None
    found = read_layout(x_in, out, returned_names(model))
    tensors = [t for _, t in parts(out)]
    if found.recon is None or found.mu is None or found.logvar is None or not found.spread:
        return None
    recon = tensors[found.recon]
    return UserVAE(model, shape, tensors[found.mu].shape[1], "classic", reads_as(recon, last_operation(recon)), layout == "flat", outputs_words(found))


def reads_as(x_reconstructed: torch.Tensor, ends: str) -> str:
    """Probabilities where the decoder ends in a sigmoid (or a clamp), logits where it ends in anything
    else (values that happen to lie in [0, 1] on a first batch are still logits). Without a graph to
    say: probabilities when every value is in [0, 1]."""
    if ends:
        return "probs" if ends in ("sigmoid", "clamp") else "logits"
    return "probs" if 0.0 <= x_reconstructed.min().item() and x_reconstructed.max().item() <= 1.0 else "logits"
