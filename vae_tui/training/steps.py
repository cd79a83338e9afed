"""The training step, and which one a run uses.

A step takes one part of a batch (world.Part) and trains on it: its images, the forward pass, the
loss, backward and Adam, and its loss terms left on the device for the loss buffer. Two kinds:

- `EagerStep` runs the operations one by one, as any PyTorch loop does. It works everywhere: on a
  CPU, on Apple's GPU, under torchrun, with fp16's loss scaler and with --on-nan skip.
- `StaticStep` (static_step.py) runs the same operations on fixed buffers, so that on CUDA the
  whole step is captured once as a CUDA graph and replayed: one launch a step instead of the
  dozens of kernel launches and the Python between them, which is what bounds a small VAE's step
  on a GPU (2.2 ms a step at batch 128 and 512 alike on an H200, the GPU mostly idle).

`plan_step` says which a run uses (--step auto|graph|emulate|eager) and why, in words the device
line, config.json and status.json carry. `--step emulate` runs the graph's protocol on any device
with a recorded replay in place of a CUDA graph (emulated_graph.py): the same rehearsal, check and
verdict, to learn on a laptop whether a model survives a CUDA graph.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Protocol

import torch

from vae_tui.config import TrainConfig
from vae_tui.errors import ConfigError
from vae_tui.models.noise import global_rows
from vae_tui.models.protocol import elbo_terms
from vae_tui.runfile.schema import StepPlan
from vae_tui.training.losses import TermList

if TYPE_CHECKING:
    from vae_tui.training.loop import Trainer
    from vae_tui.training.world import Part


GRAPH_WHY = "the whole step (batch, forward, loss, backward, Adam) is one CUDA graph, replayed every step"
EMULATED_WHY = (
    "--step emulate: the whole step recorded once and replayed as a CUDA graph replays it (Python values frozen as captured), "
    "op by op: a rehearsal of the graph, no faster than the eager step"
)


def plan_step(
    config: TrainConfig,
    device_kind: str,
    world_size: int,
    on_nan: str,
    capturable: bool | None = None,
    strict: bool = True,
    train_images: int | None = None,
) -> StepPlan:
    """--step resolved for this run. `capturable`: whether the device can capture (CUDA, unless told).
    With `strict`, --step graph or emulate where it cannot apply is a ConfigError that says why; without,
    eager. `train_images`: this run's training images, once known (a graph needs one full batch)."""
    if config.step == "eager":
        return StepPlan("eager", "asked for (--step eager)")
    emulated = config.step == "emulate"
    capturable = emulated or (device_kind == "cuda" if capturable is None else capturable)
    blocker = _blocker(config, device_kind, world_size, on_nan, capturable, train_images)
    if blocker is not None:
        if config.step in ("graph", "emulate") and strict:
            raise ConfigError(f"--step {config.step} cannot be used here: {blocker}; use --step auto or eager")
        return StepPlan("eager", blocker)
    if emulated:
        return StepPlan("emulated", EMULATED_WHY)
    if config.compile and config.step == "auto":
        return StepPlan("eager", "--compile's code runs op by op; add --step graph to capture it in a CUDA graph too")
    return StepPlan("graph", GRAPH_WHY)


def _blocker(config: TrainConfig, device_kind: str, world_size: int, on_nan: str, capturable: bool, train_images: int | None) -> str | None:
    """Why a CUDA graph cannot run this step, or None when it can."""
    if not capturable:
        return f"CUDA graphs need a CUDA GPU, and this run trains on {device_kind}"
    if train_images is not None and train_images < config.batch_size:
        return (
            f"the {train_images:,} training images are fewer than one batch ({config.batch_size:,}), "
            "so every step is an epoch's short batch, which a graph (captured at one batch size) never replays"
        )
    if world_size > 1:
        return "under torchrun each rank steps eagerly: DistributedDataParallel's all-reduce is not captured (a captured DDP step is not measured yet)"
    if config.precision == "fp16":
        return "fp16's loss scaler checks every step's gradients on the host, which a CUDA graph cannot"
    if on_nan == "skip":
        return "--on-nan skip looks at every step's loss on the host, which a CUDA graph cannot"
    return None


class Step(Protocol):
    """What the loop asks of a step."""

    @property
    def mode(self) -> str:
        """ "graph" or "eager"."""

    @property
    def terms(self) -> object:
        """Where each step's (recon, kl, loss) wait for the loss buffer (losses.TermList or a ring)."""

    def start_epoch(self, perm: torch.Tensor, parts: list[Part]) -> None:
        """The epoch's order of images, and this rank's parts of it from where the epoch resumes."""

    def __call__(self, part: Part) -> bool:
        """Train on `part`; False when the batch was skipped (--on-nan skip), so no step was taken."""

    def settings_changed(self) -> None:
        """The learning rate or beta changed (live): from the next step on."""


class EagerStep:
    """The step op by op: any device, any precision, any number of ranks."""

    mode = "eager"

    def __init__(self, trainer: "Trainer") -> None:
        self.trainer, self.state, self.images = trainer, trainer.state, trainer.images
        self.precision, self.nan = trainer.precision, trainer.nan
        self.distributed = trainer.world.distributed
        self.terms = TermList(3 + len(trainer.term_names))
        self.perm: torch.Tensor | None = None

    def start_epoch(self, perm: torch.Tensor, parts: list[Part]) -> None:
        self.perm = perm
        self.images.start_epoch(perm, parts)

    def __call__(self, part: Part) -> bool:
        trainer, state = self.trainer, self.state
        assert self.perm is not None, "start_epoch comes first"
        x = self.images.batch(self.perm[part.lo : part.hi])
        noise = global_rows(part.offset, part.global_size) if self.distributed else contextlib.nullcontext()
        with noise, self.precision.autocast():
            loss, recon, kl, extra = elbo_terms(state.vae, x, trainer.beta(), forward=trainer.trained, tc=trainer.tc)
        if self.nan.skip(trainer, loss):
            return False
        self.precision.step(loss * part.weight if part.weight != 1.0 else loss, state.optimizer)
        self.terms.add(recon, kl, loss, *extra)
        return True

    def settings_changed(self) -> None:
        """Nothing to do: the next step reads state.lr (in the optimizer) and beta afresh."""
