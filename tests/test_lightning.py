"""The Lightning callback: a LightningModule's fit under vae-tui's run directory, and q ends it."""

import threading

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from conftest import wait_for
from vae_tui.integrations.lightning import VaeTuiCallback
from vae_tui.runfile import control
from vae_tui.runfile.files import read_status
from vae_tui.runfile.layout import RunDir
from vae_tui.runfile.metrics import read_metrics
from vae_tui.runfile.schema import RunState


class LitVAE(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Linear(64, 4)
        self.decoder = torch.nn.Linear(2, 64)

    def forward(self, x):
        mu, logvar = self.encoder(x.flatten(1)).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.decoder(z)), mu, logvar

    def training_step(self, batch, batch_idx):
        x = batch[0].flatten(1)
        x_reconstructed, mu, logvar = self(x)
        recon = F.binary_cross_entropy(x_reconstructed, x, reduction="sum") / len(x)
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / len(x)
        return {"loss": recon + kl, "recon": recon.detach(), "kl": kl.detach()}

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def fit(run_dir, epochs):
    torch.manual_seed(0)
    data = torch.rand(64, 1, 8, 8)
    trainer = pl.Trainer(
        max_epochs=epochs,
        callbacks=[VaeTuiCallback(str(run_dir), images=data[:4])],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(LitVAE(), DataLoader(TensorDataset(data), batch_size=16))
    return trainer


def test_a_lightning_fit_writes_a_run_the_monitor_reads(tmp_path):
    run = RunDir(tmp_path / "lit")
    fit(run.path, 3)
    assert read_status(run)[0].state == RunState.FINISHED
    metrics = read_metrics(run.metrics_path)
    assert len(metrics.batches) == 3 * 4 and [e["epoch"] for e in metrics.epochs] == [1, 2, 3]
    assert (metrics.column("recon") > 0).all() and (run.path / "snapshot.npz").exists()
    assert "state_dict" not in torch.load(run.checkpoints / "last.pt", weights_only=True)  # the module's own weights
    assert "encoder.weight" in torch.load(run.checkpoints / "last.pt", weights_only=True)["model"]


def test_a_stop_from_the_monitor_ends_the_fit_and_saves(tmp_path):
    run = RunDir(tmp_path / "lit")
    stopper = threading.Thread(
        target=lambda: (wait_for(lambda: len(read_metrics(run.metrics_path).batches) > 8, "batches from the fit"), control.send(run, "stop")), daemon=True
    )
    stopper.start()
    trainer = fit(run.path, 100_000)
    assert trainer.current_epoch < 100_000 and read_status(run)[0].state == RunState.STOPPED
    assert (run.checkpoints / "last.pt").exists()
