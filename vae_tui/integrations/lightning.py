"""vae-tui's monitor on a PyTorch Lightning run: `pip install 'vae-tui[lightning]'`, then

    from vae_tui.integrations.lightning import VaeTuiCallback
    trainer = L.Trainer(max_epochs=10, callbacks=[VaeTuiCallback("runs/lit", images=test_images[:16])])

Your LightningModule's `training_step` returns a dict with "loss" and, for the two charts,
"recon" and "kl" (per image); a plain loss is charted as the reconstruction term. A "val_loss"
it logs is the epoch's test loss. The monitor's keys work as with `vae_tui.init`: pause holds the
batch loop, c saves the module's and optimizer's state dicts, q (or a signal) ends the fit after
the batch in progress and saves. Only the first process (global rank 0) writes the run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch

from vae_tui.integrations.your_loop import Run, StopTraining, init


class VaeTuiCallback(pl.Callback):
    def __init__(self, run_dir: str | None = None, images: torch.Tensor | None = None, config: dict[str, Any] | None = None) -> None:
        self.run_dir, self.images, self.config = run_dir, images, config
        self.run: Run | None = None
        self.stopped = False

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        config = {"epochs": trainer.max_epochs, **(self.config or {})}
        images = self.images.to(pl_module.device) if self.images is not None else None
        self.run = init(self.run_dir, model=pl_module, optimizer=optimizer, config=config, images=images).__enter__()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.run is None or self.stopped:
            return
        terms = outputs if isinstance(outputs, Mapping) else {"loss": outputs}
        loss = terms.get("loss")
        recon = terms.get("recon", loss if "kl" not in terms else None)
        first = batch[0] if isinstance(batch, (tuple, list)) else batch
        try:
            self.run.log(recon=recon, kl=terms.get("kl"), loss=loss, size=len(first) if hasattr(first, "__len__") else 0)
        except StopTraining:
            self.stopped = True
            trainer.should_stop = True  # the fit ends after this batch; on_fit_end saves

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.run is not None and not self.stopped:
            val = trainer.callback_metrics.get("val_loss")
            self.run.log_epoch(test_loss=float(val) if val is not None else None)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(StopTraining("stopped") if self.stopped else None)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._end(exception)

    def _end(self, exc: BaseException | None) -> None:
        run, self.run = self.run, None
        if run is not None:
            run.__exit__(type(exc) if exc else None, exc, None)
