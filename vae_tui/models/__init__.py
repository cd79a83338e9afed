"""Models by name: the one place that turns a configuration and an image shape into a VAE.

Everything else uses a model through the protocol in `protocol.py`, so a new architecture is a
new entry here and a file beside `vae_tui/models/vae.py`, not a branch elsewhere.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from vae_tui.config import TrainConfig

from vae_tui.models.conv_plan import plan

ARCHS = ("mlp", "conv", "vq")
LIKELIHOODS = ("bernoulli", "gaussian")


def build_model(config: "TrainConfig", shape: tuple[int, int, int]) -> "nn.Module":
    """A fresh model for images of `shape` (channels, height, width), as the configuration says."""
    if config.model is not None:
        from vae_tui.models.user import build

        return build(
            config.model,
            config.model_args,
            shape,
            config.hidden_dim,
            config.latent_dim,
            config.model_kind or "classic",
            config.model_output or "logits",
            config.model_input or "flat",
            config.model_outputs or "0,1,2 logvar",
        )
    if config.arch == "mlp":
        from vae_tui.models.vae import VAE

        return VAE(shape, config.hidden_dim, config.latent_dim, config.likelihood)
    if config.arch == "conv":
        from vae_tui.models.conv import ConvVAE

        return ConvVAE(shape, config.latent_dim, config.likelihood)
    if config.arch == "vq":
        from vae_tui.models.vq import VQVAE

        return VQVAE(shape, config.hidden_dim, config.latent_dim, config.likelihood)
    raise ValueError(f"unknown architecture {config.arch!r}")


def model_terms(config: "TrainConfig") -> tuple[str, ...]:
    """The named terms the model's training step gives besides recon and kl: a VQ-VAE's vq_loss and perplexity,
    the single numbers your model's forward returns besides its reconstruction and posterior."""
    if config.model is not None:
        from vae_tui.models.user import output_terms

        return tuple(name for _, name in output_terms(config.model_outputs or ""))
    if config.arch == "vq":
        from vae_tui.models.vq import VQVAE

        return VQVAE.term_names
    return ()


def model_source(config: "TrainConfig") -> dict[str, str | None] | None:
    """Where your own model's class lives, with a hash of its file, for checkpoints; None for ours."""
    if config.model is None:
        return None
    from vae_tui.models.user_source import source_of

    source = source_of(config.model)
    return {"spec": source.spec, "file": source.file, "sha256": source.sha256}


def memory_format(arch: str, device: "torch.device") -> "torch.memory_format":
    """How the trainer lays out images and convolution weights: channels last for convolutions on a
    CPU, where oneDNN's kernels trained the conv VAE about 15% faster on 2 cores (595 against 519
    samples/s, training steps on 64x64 colour batches); the default layout elsewhere, where nothing
    was measured."""
    import torch

    return torch.channels_last if arch == "conv" and device.type == "cpu" else torch.contiguous_format


def describe_model(config: "TrainConfig", shape: tuple[int, int, int]) -> str:
    """What the model is, in a few words: the MLP's layer widths (784-400-20), the convolutions'
    channels; and the likelihood when it is not the classic Bernoulli."""
    channels, height, width = shape
    if config.model is not None:
        where, _, name = config.model.rpartition(":")
        return f"{os.path.basename(where) if where.endswith('.py') else where}:{name} (yours), z {config.latent_dim}"
    if config.arch == "conv":
        words = f"conv {'-'.join(map(str, plan(shape, config.latent_dim).widths))}, z {config.latent_dim}"
    elif config.arch == "vq":
        from vae_tui.models.vq import CODES

        words = f"VQ-VAE {channels * height * width}-{config.hidden_dim}-{config.latent_dim}, {CODES} codes"
    else:
        words = f"{channels * height * width}-{config.hidden_dim}-{config.latent_dim}"
    return words + (f", {config.likelihood}" if config.likelihood != "bernoulli" else "")


def parameter_count_for(config: "TrainConfig", shape: tuple[int, int, int]) -> int:
    """How many parameters such a model has, by arithmetic: for checks made before torch is imported
    (your own model is built to count them: it has imported torch already)."""
    if config.model is not None:
        from vae_tui.models.user import built_parameter_count as your_parameter_count

        return your_parameter_count(config.model, config.model_args, shape, config.hidden_dim, config.latent_dim)
    if config.arch == "conv":
        return plan(shape, config.latent_dim).parameters(config.likelihood)
    channels, height, width = shape
    d, h, z = channels * height * width, config.hidden_dim, config.latent_dim
    gaussian = channels if config.likelihood == "gaussian" else 0
    if config.arch == "vq":
        from vae_tui.models.vq import CODE_DIM

        e = z * CODE_DIM
        return (d * h + h) + (h * e + e) + (e * h + h) + (h * d + d) + gaussian  # the codebook is buffers
    return (d * h + h) + 2 * (h * z + z) + (z * h + h) + (h * d + d) + gaussian


def parameter_shapes(config: "TrainConfig", shape: tuple[int, int, int]) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes such a model has, found on the meta device: no memory, no computation."""
    import torch

    if config.model is not None:  # a user's model may make tensors of its own: built for real
        model = build_model(config, shape)
    else:
        with torch.device("meta"):
            model = build_model(config, shape)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def parameter_count(model: "nn.Module") -> int:
    return sum(p.numel() for p in model.parameters())
