"""Hooks that draw what the model does: snapshots of reconstructions and samples, and the latent report."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vae_tui.evaluation.analysis import REPORT_SECONDS, LatentReport
from vae_tui.models.protocol import NoDecoder, evaluating, from_prior, prior_draws, reconstruct, rng_kept
from vae_tui.runfile.files import Snapshot
from vae_tui.training.hooks import Hook

if TYPE_CHECKING:
    from vae_tui.training.loop import Trainer
    from vae_tui.training.losses import LossChunk


class SnapshotHook(Hook):
    """Reconstructions of fixed test images and samples from fixed z, about every snapshot_seconds
    (looked at when losses reach the host, never per step).

    The same images and the same z every time, so a watcher sees the same pictures sharpen.
    """

    def __init__(self) -> None:
        self._last = -math.inf
        self._said_no_decoder = False

    def on_start(self, trainer: "Trainer") -> None:
        config, test_x = trainer.config, trainer.images.test_x
        self.originals = test_x[: min(config.n_images, len(test_x))]
        prior = torch.Generator().manual_seed(config.seed + 1)
        self.prior_z = prior_draws(trainer.state.model, config.n_images, prior).to(test_x.device)
        self._originals_np = self.originals.cpu().numpy()
        self._take(trainer)

    def on_losses(self, trainer: "Trainer", chunk: "LossChunk") -> None:
        if time.perf_counter() - self._last >= trainer.config.snapshot_seconds:
            self._take(trainer)

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        """By time, not by epoch (at GPU speed an epoch may last a tenth of a second); and the last one."""
        if time.perf_counter() - self._last >= trainer.config.snapshot_seconds or trainer.state.epoch >= trainer.epochs:
            self._take(trainer, ended=True)

    def on_pause(self, trainer: "Trainer") -> None:
        self._take(trainer)  # paused: the pictures show the model as it stands

    def _take(self, trainer: "Trainer", ended: bool = False) -> None:
        """`ended`: at an epoch's end, whose number the pictures then carry (state.epoch counts it already)."""
        model, state = trainer.state.vae, trainer.state
        with evaluating(trainer.state.model), rng_kept(state.device):
            recon = reconstruct(model, self.originals).cpu().numpy()
            try:
                samples = from_prior(trainer.state.model, self.prior_z).cpu().numpy()
            except NoDecoder as exc:  # said once; the samples pane stays empty
                samples = np.zeros((0, *recon.shape[1:]), dtype=np.float32)
                if not self._said_no_decoder:
                    trainer.telemetry.event("warning", f"no samples: {exc}")
                    self._said_no_decoder = True
        trainer.telemetry.set_snapshot(Snapshot(state.step, state.epoch if ended else state.epoch + 1, self._originals_np, recon, samples))
        self._last = time.perf_counter()


class LatentReportHook(Hook):
    """The latent view's arrays at an epoch's end (at most every REPORT_SECONDS, and at the last
    epoch), and when training pauses, so the view shows the model being looked at."""

    def __init__(self) -> None:
        self._report: LatentReport | None = None
        self._last = -math.inf
        self._step = -1  # the step of the last report
        self._broken = False

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        if time.perf_counter() - self._last >= REPORT_SECONDS or trainer.state.epoch >= trainer.epochs:
            self._build(trainer)

    def on_pause(self, trainer: "Trainer") -> None:
        if trainer.state.step != self._step:
            self._build(trainer)

    def _build(self, trainer: "Trainer") -> None:
        if self._broken:
            return
        data, state = trainer.data, trainer.state
        if self._report is None:
            self._report = LatentReport(data.train_x, data.test_x, data.test_y, trainer.config.latent_dim, data.class_names, trainer.config.likelihood)
        try:
            with evaluating(state.model), rng_kept(state.device):
                trainer.telemetry.set_analysis(self._report.build(state.vae, state.epoch, state.step))
        except (ValueError, np.linalg.LinAlgError) as exc:  # a view's trouble never stops training
            trainer.telemetry.event("warning", f"the latent view could not be updated ({exc}); training goes on")
            self._broken = True
        self._last, self._step = time.perf_counter(), state.step
