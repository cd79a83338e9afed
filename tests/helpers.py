"""What several test modules share: a small trainer and hooks that steer it, the app as the commands
open it, what a widget shows, and the classic loop with vae-tui's lines added."""

from __future__ import annotations

import contextlib
import time

from conftest import pilot_wait
from vae_tui.config import TrainConfig
from vae_tui.runfile.layout import open_run_dir
from vae_tui.training.controls import Controls
from vae_tui.training.device import pick_device
from vae_tui.training.hooks import Hook
from vae_tui.training.loop import Trainer, default_hooks
from vae_tui.tui.app import VaeApp

CPU = pick_device("cpu")


def small_config(**changes):
    base = dict(dataset="digits", epochs=3, hidden_dim=64, latent_dim=4, batch_size=64, snapshot_seconds=0.05, n_images=4, iw_samples=0)
    base.update(changes)
    return TrainConfig(**base).validate()


def make_trainer(tmp_path, data, name="run", resume_state=None, controls=None, on_nan="stop", extra_hooks=(), **changes):
    run = open_run_dir(tmp_path / name, resuming=True)
    hooks = default_hooks(run) + list(extra_hooks)
    return Trainer(small_config(**changes), data, CPU, controls=controls or Controls(), run_dir=run, resume_state=resume_state, on_nan=on_nan, hooks=hooks), run


class StopAtStep(Hook):
    """Asks for a stop once a given step reaches the host, like a user pressing q mid-epoch."""

    def __init__(self, step):
        self.stop_step = step

    def on_losses(self, trainer, chunk):
        if chunk.steps[-1] >= self.stop_step:
            trainer.controls.stop(save=True)


class ChangeAt(Hook):
    """Asks for a change after a given step, as a key or `vae-tui set` would."""

    def __init__(self, step: int, **values: float) -> None:
        self.step, self.values = step, values

    def on_batch_end(self, trainer) -> None:
        if trainer.state.step == self.step:
            trainer.controls.change(**self.values)


def owned(fake):
    """The app as `vae-tui train` opens it: owning the run's trainer."""
    return VaeApp(fake.watch(owner=True))


def guest(fake):
    """The app as `vae-tui watch` opens it."""
    return VaeApp(fake.watch())


@contextlib.asynccontextmanager
async def watching(fake, owner: bool = True, size: tuple[int, int] = (120, 40), steps: int | None = 6, toasts: bool = True):
    """(app, pilot): the app on a fake run, as `vae-tui train` (the owner) or `vae-tui watch` opens it,
    once the fake has taken `steps` more steps and the app has seen them (None: at once, the fake as it
    is). Notifications show as toasts, as they do for a person (`toasts` False: not drawn, for a test
    that reads the screen under them)."""
    app = owned(fake) if owner else guest(fake)
    async with app.run_test(size=size, notifications=toasts) as pilot:
        if steps is not None:
            target = fake.advance(steps).status.step
            await pilot_wait(pilot, lambda: app.telemetry.status().step >= target, f"the app to see step {target}")
        yield app, pilot


def lines_of(widget) -> list:
    """The widget's lines as its render path hands them to the screen."""
    return [widget.render_line(y) for y in range(widget.size.height)]


def text_of(app, selector):
    """What the widget shows now, as plain text."""
    return "\n".join(line.text for line in lines_of(app.query_one(selector)))


def toasts(app, severity: str | None = None) -> list[str]:
    """The notifications on screen now, as a person reads them (of one severity: information, warning, error)."""
    return [toast.render().plain for toast in app.screen.query("Toast") if severity is None or toast.has_class(f"-{severity}")]


async def drawn(pilot, app, condition, what: str, timeout: float = 10.0) -> None:
    """Draw every view now, again until `condition` holds: what the test means by "on screen"."""
    deadline = time.monotonic() + timeout
    while True:
        app.redraw_all()
        await pilot.pause(0.03)
        if condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


# The classic example's loop on random 8x8 "images", with the three lines added.
SCRIPT = """\
import sys
import torch
import torch.nn as nn
import torch.nn.functional as F
import vae_tui


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.mu, self.logvar = nn.Linear(64, 16), nn.Linear(16, 2), nn.Linear(16, 2)
        self.decoder = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 64), nn.Sigmoid())

    def forward(self, x):
        h = F.relu(self.fc1(x))
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decoder(z), mu, logvar


torch.manual_seed(0)
data = torch.rand(256, 1, 8, 8)
model = VAE()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
epochs = int(sys.argv[1])
with vae_tui.init(model=model, optimizer=optimizer, config={"lr": 1e-3, "epochs": epochs}, images=data[:8]) as run:
    for epoch in range(epochs):
        for i in range(0, len(data), 32):
            x = data[i : i + 32].view(-1, 64)
            x_reconstructed, mu, logvar = model(x)
            recon = F.binary_cross_entropy(x_reconstructed, x, reduction="sum") / len(x)
            kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / len(x)
            optimizer.zero_grad()
            (recon + kl).backward()
            optimizer.step()
            run.log(recon=recon, kl=kl, size=len(x), lr=optimizer.param_groups[0]["lr"])
        run.log_epoch()
print("the loop ended")
"""
