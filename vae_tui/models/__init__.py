"""Models by name: the one place that turns a configuration and an image shape into a VAE.

Everything else uses a model through the protocol in `protocol.py`, so a new architecture is a
new entry here and a file beside `vae_tui/model.py`, not a branch elsewhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch.nn as nn

    from vae_tui.config import TrainConfig

ARCHS = ("mlp",)


def build_model(config: "TrainConfig", shape: tuple[int, int, int]) -> "nn.Module":
    """A fresh model for images of `shape` (channels, height, width), as the configuration says."""
    from vae_tui.model import VAE

    if config.arch == "mlp":
        return VAE(shape, config.hidden_dim, config.latent_dim)
    raise ValueError(f"unknown architecture {config.arch!r}")


def describe_model(config: "TrainConfig", shape: tuple[int, int, int]) -> str:
    """What the model is, in a few words: for the MLP, its layer widths (784-400-20)."""
    channels, height, width = shape
    return f"{channels * height * width}-{config.hidden_dim}-{config.latent_dim}"


def parameter_count_for(config: "TrainConfig", shape: tuple[int, int, int]) -> int:
    """How many parameters such a model has, by arithmetic: for checks made before torch is imported."""
    channels, height, width = shape
    d, h, z = channels * height * width, config.hidden_dim, config.latent_dim
    return (d * h + h) + 2 * (h * z + z) + (z * h + h) + (h * d + d)


def parameter_shapes(config: "TrainConfig", shape: tuple[int, int, int]) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes such a model has, found on the meta device: no memory, no computation."""
    import torch

    with torch.device("meta"):
        model = build_model(config, shape)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def parameter_count(model: "nn.Module") -> int:
    return sum(p.numel() for p in model.parameters())
