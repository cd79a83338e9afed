"""The convolutional VAE's geometry, in plain arithmetic: how many layers an image size gets, the
size after each, and how many parameters that makes. conv.py builds the layers from it; the
checks before a run starts count parameters from it without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

WIDTHS = (32, 64, 128, 256, 256, 256)  # channels after each stride-2 convolution
SMALLEST = 4  # halve the image until it is about this small


@dataclass(frozen=True)
class ConvPlan:
    channels: int  # of the images
    sizes: tuple[tuple[int, int], ...]  # (height, width) of the image, then after each convolution
    widths: tuple[int, ...]  # channels after each convolution
    latent_dim: int

    @property
    def flat(self) -> int:
        """Values in the last feature map: what the linear layers to and from z connect."""
        height, width = self.sizes[-1]
        return self.widths[-1] * height * width

    def parameters(self, likelihood: str) -> int:
        ins = (self.channels,) + self.widths
        convs = sum(9 * i * o + o for i, o in zip(ins[:-1], ins[1:]))  # 3x3 kernels, a bias each
        ups = sum(9 * o * i + i for i, o in zip(ins[:-1], ins[1:]))  # the way back up, to the image's channels
        linear = 2 * (self.flat * self.latent_dim + self.latent_dim) + (self.latent_dim * self.flat + self.flat)
        return convs + ups + linear + (self.channels if likelihood == "gaussian" else 0)


def plan(shape: tuple[int, int, int], latent_dim: int) -> ConvPlan:
    """Halve the image (3x3 convolutions of stride 2, rounding up) until it is about 4x4."""
    channels, height, width = shape
    sizes = [(height, width)]
    while min(sizes[-1]) > SMALLEST and len(sizes) <= len(WIDTHS):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    if len(sizes) == 1:  # already tiny: one convolution all the same
        sizes.append(((height + 1) // 2, (width + 1) // 2))
    return ConvPlan(channels, tuple(sizes), WIDTHS[: len(sizes) - 1], latent_dim)
