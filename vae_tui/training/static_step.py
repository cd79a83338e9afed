"""The training step on fixed buffers: what a CUDA graph captures and replays.

A CUDA graph replays the very kernels it recorded, on the very memory it recorded, so everything a
step reads or writes that changes from one step to the next lives in a tensor on the device that
stays put, and the step changes it there:

- the batch: gathered inside the step from the training images already on the device, at the
  positions `cursor + 0..batch-1` of the epoch's permutation (copied into a buffer once an epoch;
  the cursor moves on by itself); or, for images streamed from disk, copied before each step into
  one of two buffers, on a stream of its own, while the step before reads the other (the step
  reads the one a device-side slot names, and flips it);
- the noise of the reparameterization: drawn inside the step from the device's generator, which
  PyTorch advances at every replay, so runs stay reproducible and a checkpoint resumes them;
- the learning rate (Adam's, as a tensor: capturable Adam reads it on the device) and beta (and
  the KL warm-up's step count), changed in place by live changes: no recapture;
- each step's loss terms: written to a ring on the device at a slot the step moves on; the loss
  buffer copies the filled rows to the host with everything else, about every 100 ms.

The same code runs uncaptured too: for an epoch's short last batch (a graph has one batch size),
and in the rehearsal and the check around a capture (graph.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from vae_tui.models.protocol import as_vae, elbo_terms
from vae_tui.training.device_data import DeviceData
from vae_tui.training.streamed import StreamedData, as_floats
from vae_tui.training.world import Part

if TYPE_CHECKING:
    from vae_tui.training.loop import Trainer

RING_ROWS = 8192  # steps whose loss terms wait on the device; the loss buffer flushes before it fills


class TermRing:
    """Each step's (recon, kl, loss, other terms) in a device buffer, at a slot kept on the device."""

    capacity = RING_ROWS

    def __init__(self, device: torch.device, width: int = 3) -> None:
        self.ring = torch.zeros(RING_ROWS, width, dtype=torch.float32, device=device)
        self.slot = torch.zeros(1, dtype=torch.int64, device=device)

    def put(self, recon: torch.Tensor, kl: torch.Tensor, loss: torch.Tensor, *extra: torch.Tensor) -> None:
        self.ring.index_copy_(0, self.slot, torch.stack((recon, kl, loss, *extra)).detach().float().view(1, -1))
        self.slot += 1

    def rows(self, n: int) -> torch.Tensor:
        return self.ring[:n]

    def clear(self) -> None:
        self.slot.zero_()


class ResidentBatches:
    """Batches gathered inside the step from the training images on the device."""

    def __init__(self, data: DeviceData, batch: int) -> None:
        device = data.train_x.device
        self.train_x = data.train_x
        self.perm = torch.arange(len(data.train_x), device=device)  # the epoch's order (until the first, the images' own)
        self.cursor = torch.zeros((), dtype=torch.int64, device=device)
        self.offsets = torch.arange(batch, device=device)

    def start_epoch(self, perm: torch.Tensor, parts: list[Part]) -> None:
        self.perm.copy_(perm)
        self.cursor.fill_(parts[0].lo if parts else 0)

    def prepare(self, part: Part) -> None:
        """Nothing: the step finds its images by itself."""

    def stepped(self) -> None:
        """Nothing: no buffer waits for the step."""

    def rewind(self) -> None:
        """A rehearsal's step reads the first full batch of the data (the plan makes sure there is one),
        wherever the epoch is: never past the data, which on CUDA is a device-side assert."""
        self.cursor.zero_()

    def take(self, size: int) -> torch.Tensor:
        indices = self.perm.index_select(0, self.offsets[:size] + self.cursor)
        self.cursor += size
        return self.train_x[indices]

    def buffers(self) -> list[torch.Tensor]:
        return [self.cursor]


class StreamedBatches:
    """Batches streamed from disk, double-buffered: each copied before its step into one of two
    buffers while the step before still reads the other, so the copy overlaps the compute."""

    def __init__(self, data: StreamedData, batch: int) -> None:
        self.data = data
        first = torch.from_numpy(data.train[: min(batch, len(data.train))].copy()).to(data.device)  # real images to rehearse on
        self.raws = first.new_zeros((2, batch, *first.shape[1:]))
        self.raws[:, : len(first)] = first
        self.slot = torch.zeros(1, dtype=torch.int64, device=data.device)  # which buffer the next step reads
        self.filling = 0  # the same, as the host counts it: which buffer the next batch is copied into
        self.read: list[object | None] = [None, None]  # each buffer free once this has run (a CUDA event; None: now)

    def start_epoch(self, perm: torch.Tensor, parts: list[Part]) -> None:
        self.data.start_epoch(perm, parts)
        self.slot.zero_()
        self.filling = 0
        self.read = [self.data.mark()] * 2  # after what came before the epoch (a rehearsal, the last epoch's steps)

    def prepare(self, part: Part) -> None:
        self.data.fill(self.raws[self.filling], part.size, reusable=self.read[self.filling])

    def stepped(self) -> None:
        """The step that reads the buffer just filled is queued: the buffer is free again once it has run."""
        self.read[self.filling] = self.data.mark()
        self.filling ^= 1

    def rewind(self) -> None:
        """Nothing: both buffers hold the first batch for a rehearsal (and the slot is put back after it)."""

    def take(self, size: int) -> torch.Tensor:
        x = self.raws.index_select(0, self.slot)[0, :size]
        self.slot.bitwise_xor_(1)
        return as_floats(x, self.data.layout)

    def buffers(self) -> list[torch.Tensor]:
        return [self.slot]


def lr_to_tensor(optimizer: torch.optim.Optimizer, lr: float, device: torch.device) -> None:
    """Adam reads its learning rate from the device and may be captured. CUDA's fused Adam takes a
    float32 rate; on a CPU a float64 one, which is exactly the float rate the eager step uses."""
    dtype = torch.float32 if device.type == "cuda" else torch.float64
    for group in optimizer.param_groups:
        group["lr"] = torch.tensor(lr, dtype=dtype, device=device)
        group["capturable"] = True
    for state in optimizer.state.values():  # a checkpoint's step counts: where capturable Adam keeps them
        if "step" in state:
            state["step"] = state["step"].to(device)


def lr_to_float(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Back to the eager step's optimizer (after a capture that failed)."""
    for group in optimizer.param_groups:
        group["lr"], group["capturable"] = lr, False


class StaticStep:
    """The step on fixed buffers; `replay`, once captured (graph.py), runs a whole batch's step."""

    def __init__(self, trainer: "Trainer") -> None:
        state, config = trainer.state, trainer.config
        self.model, self.forward, self.optimizer = state.model, trainer.trained, state.optimizer
        self.state, self.precision, self.batch = state, trainer.precision, config.batch_size
        device = state.device
        images = trainer.images
        self.source = StreamedBatches(images, self.batch) if isinstance(images, StreamedData) else ResidentBatches(images, self.batch)
        self.terms = TermRing(device, 3 + len(trainer.term_names))
        self.tc = trainer.tc
        self.beta = torch.tensor(state.beta, dtype=torch.float64, device=device)
        self.taken = torch.tensor(float(state.step), dtype=torch.float64, device=device)  # the KL warm-up's clock
        self.warmup_steps = config.kl_warmup * trainer.batches  # steps over which beta rises from 0 (0: none)
        self.replay: Callable[[], None] | None = None
        self.mode = trainer.plan.mode  # "graph", or "emulated" (--step emulate)
        lr_to_tensor(self.optimizer, state.lr, device)

    def start_epoch(self, perm: torch.Tensor, parts: list[Part]) -> None:
        self.source.start_epoch(perm, parts)

    def __call__(self, part: Part) -> bool:
        self.source.prepare(part)
        if self.replay is not None and part.hi - part.lo == self.batch:
            self.replay()
        else:  # not captured (yet), or an epoch's short last batch
            self.program(part.hi - part.lo)
        self.source.stepped()
        return True

    def settings_changed(self) -> None:
        self.beta.fill_(self.state.beta)  # the learning rate was filled in by state.set_lr

    def rehearse(self) -> None:
        """One step of the capture's rehearsal, on the data's first full batch."""
        self.source.rewind()
        self.program(self.batch)

    def program(self, size: int) -> None:
        """One step on `size` images: device operations only, in the order a graph records them."""
        x = self.source.take(size)
        beta = self.beta if not self.warmup_steps else self.beta * torch.clamp(self.taken / self.warmup_steps, max=1.0)
        with self.precision.autocast(cache=False):  # autocast's weight cache cannot live across replays
            loss, recon, kl, extra = elbo_terms(as_vae(self.model), x, beta.float(), forward=self.forward, tc=self.tc)
        self.precision.step(loss, self.optimizer)
        self.terms.put(recon, kl, loss, *extra)
        self.taken += 1

    def buffers(self) -> list[torch.Tensor]:
        """The device tensors a step changes besides the model and the optimizer: to put back after a rehearsal."""
        return [self.taken, self.terms.slot, *self.source.buffers()]

    def release(self) -> None:
        """Undo what this step did to the optimizer, for the eager step that takes over."""
        lr_to_float(self.optimizer, self.state.lr)
