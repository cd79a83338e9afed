"""Your own training loop under vae-tui's monitor: three added lines.

    import vae_tui
    with vae_tui.init(run_dir="runs/mine", model=model, optimizer=optimizer, config={"lr": 1e-3}) as run:
        for epoch in range(epochs):
            for x, _ in loader:
                ...                                  # your own step
                run.log(recon=recon, kl=kl)          # per batch: tensors or floats
            run.log_epoch(test_loss=test_loss)       # optional

The run directory is the one `vae-tui train` writes (docs/run-format.md), so `vae-tui watch`,
`runs` and `export` read it unchanged, and the monitor's keys reach the loop through it:
`run.log` blocks while paused, writes a checkpoint when one is asked for, and raises
StopTraining when the run is stopped; the `with` block catches that, saves and marks the run
stopped. Losses stay on the device: they are copied to the host together about every 50 ms,
never one `.item()` a call. `vae-tui run -- python train.py` starts a script under the monitor;
the run directory reaches `init` through VAE_TUI_RUN_DIR.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch

from vae_tui.checkpoint import save_checkpoint
from vae_tui.launch.prepare import library_versions
from vae_tui.launch.script import RUN_DIR_ENV
from vae_tui.launch.signals import EXIT_SIGNAL
from vae_tui.runfile import lock
from vae_tui.runfile.files import Snapshot, write_config, write_scalars
from vae_tui.runfile.layout import RunDir, open_run_dir
from vae_tui.runfile.metrics import MetricsWriter, batch_lines, epoch_line
from vae_tui.runfile.schema import RunState
from vae_tui.telemetry import Telemetry
from vae_tui.training.controls import Controls
from vae_tui.training.losses import LossBuffer, LossChunk
from vae_tui.training.publish import Publisher

SNAPSHOT_SECONDS = 1.0  # pictures are made at most this often, on the training thread
FLUSH_SECONDS = 0.2  # losses reach the host (and the charts) this often: fewer, larger copies than the trainer's


class StopTraining(Exception):
    """The run was stopped (the monitor's q, a watcher, a signal). `with vae_tui.init(...)` catches it."""


def init(run_dir: str | os.PathLike[str] | None = None, model: torch.nn.Module | None = None,
         optimizer: torch.optim.Optimizer | None = None, config: dict[str, Any] | None = None,
         images: torch.Tensor | None = None) -> "Run":
    """A run for your loop. `images`: a fixed batch of test images (batch, channels, height, width) in
    [0, 1]; with it and a model of either shape `vae-tui train --model` takes, the monitor shows
    reconstructions and samples made from your model as it trains."""
    where = run_dir or os.environ.get(RUN_DIR_ENV) or Path("runs") / time.strftime("%Y%m%d-%H%M%S-mine")
    return Run(Path(where), model, optimizer, dict(config or {}), images)


class Run:
    def __init__(self, path: Path, model: torch.nn.Module | None, optimizer: torch.optim.Optimizer | None,
                 config: dict[str, Any], images: torch.Tensor | None) -> None:
        self.model, self.optimizer, self.config = model, optimizer, config
        self.beta = float(config.get("beta", 1.0)) if isinstance(config, dict) and isinstance(config.get("beta"), (int, float)) else 1.0
        self.run: RunDir = open_run_dir(path, claim=lock.hold)
        self.telemetry, self.controls = Telemetry(), Controls()
        self.step, self.epoch = 0, 1
        self._losses = LossBuffer()
        self._losses.flush_seconds = FLUSH_SECONDS
        self._lrs: list[float] = []  # each pending step's learning rate: your loop may change it every step
        self._said_not_finite = False
        self._scalars: list[tuple[int, dict[str, Any]]] = []  # other values logged, waiting for the next flush
        self._epoch_losses: list[float] = []
        self._epoch_samples, self._epoch_seconds = 0, 0.0
        self._signal: int | None = None
        self._previous: dict[int, Any] = {}
        self._pictures = Pictures(model, images, config.get("seed", 0)) if model is not None and images is not None else None
        self.description = f"{type(model).__name__} (yours)" if model is not None else "your model"
        self.device = _device_of(model)
        write_config(self.run, self._info())
        self.publisher = Publisher(self.run, self.telemetry, self.controls)
        self.metrics = MetricsWriter(self.run.metrics_path)

    def _info(self) -> dict[str, Any]:
        settings = {"dataset": "your loop", "epochs": self.config.get("epochs"), **self.config}
        return {"config": settings, "dataset": {"name": "your loop"}, "model": {"arch": "yours", "description": self.description},
                "device": {"kind": self.device, "name": ""}, "versions": library_versions(),
                "view": "your loop", "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    # -- the with block ---------------------------------------------------------------------------
    def __enter__(self) -> "Run":
        params = sum(p.numel() for p in self.model.parameters()) if self.model is not None else 0
        self.telemetry.update_status(state=RunState.TRAINING, dataset="your loop", device=self.device,
                                     model=self.description, parameters=params, lr=0.0 if math.isnan(self._lr()) else self._lr(),
                                     epoch=1, epochs=int(self.config.get("epochs") or 0), run_dir=str(self.run.path))
        self.publisher.start()
        if threading.current_thread() is threading.main_thread():
            for sig in EXIT_SIGNAL:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: Any) -> None:
        """The first signal asks for a stop that saves (run.log raises); a second Ctrl+C leaves at once."""
        if self._signal is not None and signum == signal.SIGINT:
            os._exit(EXIT_SIGNAL[signal.SIGINT])
        self._signal = signum
        self.controls.stop(save=True)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        try:
            self._flush()
        except Exception:  # the run's end is recorded whatever the last losses held
            pass
        if exc is None or isinstance(exc, StopTraining):
            stopped = exc is not None or self.controls.stopping
            saved = self.save("stopped" if stopped else "finished")
            state = RunState.STOPPED if stopped else RunState.FINISHED
            message = f"{'stopped' if stopped else 'finished'} at step {self.step:,}" + (f"; saved {saved}" if saved else "")
        else:
            state, message = RunState.ERROR, f"your loop raised {type(exc).__name__}: {exc}"
            self.telemetry.event("error", message)
        self.telemetry.update_status(state=state, message=message, step=self.step)
        self._close()
        if self._signal is not None and (exc is None or isinstance(exc, StopTraining)):
            raise SystemExit(EXIT_SIGNAL.get(signal.Signals(self._signal), 1))
        return isinstance(exc, StopTraining)

    def _close(self) -> None:
        self.metrics.close()
        self.publisher.close()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        lock.release(self.run)

    # -- per batch ----------------------------------------------------------------------------------
    def log(self, recon: Any = None, kl: Any = None, loss: Any = None, size: int = 0, **scalars: Any) -> None:
        """One batch: its reconstruction term and KL (per image, or summed; tensors stay on the device),
        and the loss when it is not recon + kl. Where the monitor's keys take effect."""
        self.step += 1
        given = next((v for v in (recon, kl, loss) if isinstance(v, torch.Tensor)), None)
        device = given.device if given is not None else torch.device("cpu")
        r, k = _tensor(recon, device), _tensor(kl, device)
        total = _tensor(loss, device) if loss is not None else r + k
        self._losses.add(size, r, k, total)
        self._lrs.append(self._lr())
        if scalars:
            self._scalars.append((self.step, scalars))
        if self._losses.due():
            self._flush()
        if self._pictures is not None and self._pictures.due():
            self.telemetry.set_snapshot(self._pictures.take(self.step, self.epoch))
        if self.controls.wanted:
            self._honour()

    def _flush(self) -> None:
        lrs, self._lrs = np.asarray(self._lrs, dtype=np.float64), []
        # your loop decides what a NaN means; it is recorded and said once
        chunk = self._losses.flush(self.step, lambda steps: (lrs, np.full(len(steps), math.nan)), check=False)
        if chunk is not None:
            if not self._said_not_finite and not np.isfinite(chunk.loss).all():
                step = int(chunk.steps[~np.isfinite(chunk.loss)][0])
                self.telemetry.event("warning", f"the loss logged at step {step:,} is not a number (NaN or infinite)")
                self._said_not_finite = True
            self._record(chunk)
        if self._scalars:
            write_scalars(self.run, _host_values(self._scalars))
            self._scalars = []

    def _record(self, chunk: LossChunk) -> None:
        # to metrics.jsonl only: the monitor and watchers read the series from there
        self.metrics.write(batch_lines(self.epoch, chunk.steps, chunk.recon, chunk.kl, chunk.loss, chunk.times, chunk.lr, chunk.beta))
        self._epoch_losses.extend(chunk.loss.tolist())
        self._epoch_samples += int(chunk.sizes.sum())
        self._epoch_seconds += chunk.seconds
        rate = self._epoch_samples / self._epoch_seconds if self._epoch_seconds > 0 and self._epoch_samples else 0.0
        self.telemetry.update_status(step=self.step, epoch=self.epoch, samples_per_s=rate)

    def _honour(self) -> None:
        """A checkpoint, a pause, a stop or a new learning rate asked for by the monitor, a watcher or a signal."""
        self._change(self.controls.take_changes())
        if self.controls.take_checkpoint_request():
            self._flush()
            self.save("asked for")
        if self.controls.paused and not self.controls.stopping:
            self._flush()
            self.telemetry.update_status(state=RunState.PAUSED)
            while self.controls.paused and not self.controls.stopping:
                self.controls.wait(0.05)
                if self.controls.take_checkpoint_request():  # c while paused saves the model as it stands
                    self.save("asked for")
            self._losses.restart_clock()
            self.telemetry.update_status(state=RunState.TRAINING)
        if self.controls.stopping:
            raise StopTraining(f"stopped at step {self.step}")

    def _lr(self) -> float:
        """Your optimizer's learning rate (its first group's), recorded with each step; NaN without one."""
        lr = self.optimizer.param_groups[0].get("lr") if self.optimizer is not None and self.optimizer.param_groups else None
        return float(lr) if isinstance(lr, (int, float)) else math.nan

    def _change(self, values: dict[str, float]) -> None:
        """A new learning rate goes into your optimizer from the next step; beta is your loss's own, so it
        is kept as `run.beta` for your loop to read, and said."""
        if not values:
            return
        if "lr" in values and self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = values["lr"]
        if "beta" in values:
            self.beta = values["beta"]
        changes = [*self.telemetry.status().changes, {"step": self.step, **values}]
        words = ", ".join(f"{name} {value:g}" for name, value in values.items())
        self.telemetry.event("change", f"{words} from step {self.step + 1:,}" + (
            " (beta: your loop reads it as run.beta)" if "beta" in values else "") + (
            " (no optimizer was given to vae_tui.init: the learning rate is unchanged)" if "lr" in values and self.optimizer is None else ""))
        self.telemetry.update_status(changes=changes, lr=values.get("lr", self.telemetry.status().lr))

    def log_epoch(self, test_loss: float | None = None, **values: Any) -> None:
        """The end of an epoch: its train loss (the mean of the logged losses), and a test loss if you have one."""
        self._flush()
        train = float(np.mean(self._epoch_losses)) if self._epoch_losses else math.nan
        test = float(test_loss) if test_loss is not None else train
        rate = self._epoch_samples / self._epoch_seconds if self._epoch_seconds > 0 else 0.0
        record = {"epoch": self.epoch, "step": self.step, "train_loss": train, "test_loss": test,
                  "test_recon": float(values.get("test_recon", math.nan)), "test_kl": float(values.get("test_kl", math.nan)),
                  "samples_per_s": rate, "time": time.time()}
        self.metrics.write(epoch_line(record))
        best = min(self.telemetry.status().best_test_loss, test) if math.isfinite(test) else None
        self.epoch += 1
        self._epoch_losses, self._epoch_samples, self._epoch_seconds = [], 0, 0.0
        self.telemetry.update_status(epoch=self.epoch, **({"best_test_loss": best} if best is not None else {}))

    def log_images(self, originals: Any, reconstructions: Any, samples: Any) -> None:
        """Pictures of your own making for the panes: arrays (n, channels, height, width) in [0, 1]."""
        arrays = [np.asarray(_numpy(a), dtype=np.float32) for a in (originals, reconstructions, samples)]
        self.telemetry.set_snapshot(Snapshot(self.step, self.epoch, *arrays))

    def save(self, why: str) -> Path | None:
        """model and optimizer state dicts (loadable with weights_only=True) into checkpoints/last.pt."""
        if self.model is None:
            return None
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict() if self.optimizer else {},
                 "step": self.step, "epoch": self.epoch, "config": self.config}
        try:
            path = save_checkpoint(state, self.run.checkpoints / "last.pt")
        except OSError as exc:
            self.telemetry.event("warning", f"could not save a checkpoint ({why}): {exc.strerror or exc}")
            return None
        self.telemetry.event("checkpoint", f"{why}: saved {path}")
        self.telemetry.update_status(last_checkpoint=str(path))
        return path


class Pictures:
    """Reconstructions of a fixed batch and samples from fixed z, made from your model (either shape
    `vae-tui train --model` takes) at most every SNAPSHOT_SECONDS."""

    def __init__(self, model: torch.nn.Module, images: torch.Tensor, seed: int) -> None:
        from vae_tui.models.user import UserVAE, shape_of

        self.images = images
        self.view: UserVAE | None = shape_of(model, images)
        z = torch.randn(len(images), self.view.latent_dim, generator=torch.Generator().manual_seed(seed + 1)) if self.view else None
        self.prior_z = z.to(images.device) if z is not None else None
        self._last = -math.inf

    def due(self) -> bool:
        return self.view is not None and time.perf_counter() - self._last >= SNAPSHOT_SECONDS

    def take(self, step: int, epoch: int) -> Snapshot:
        from vae_tui.models.protocol import NoDecoder, evaluating, generate, reconstruct

        assert self.view is not None and self.prior_z is not None
        devices = [self.images.device] if self.images.device.type == "cuda" else []
        with evaluating(self.view.inner), torch.random.fork_rng(devices=devices):  # your RNG streams untouched
            recon = reconstruct(self.view, self.images)
            try:
                samples = generate(self.view, self.prior_z).cpu().numpy()
            except NoDecoder:
                samples = np.zeros((0, *self.images.shape[1:]), dtype=np.float32)
        self._last = time.perf_counter()
        return Snapshot(step, epoch, self.images.cpu().numpy(), recon.cpu().numpy(), samples)


def _tensor(value: Any, device: torch.device) -> torch.Tensor:
    """A batch's term as a 0-d float tensor on `device`, without a host copy."""
    if value is None:
        return torch.zeros((), device=device)
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.ndim or value.dtype != torch.float32:  # most losses are 0-d float32 already: no op to launch
            value = value.float().mean()
        return value if value.device == device else value.to(device)
    return torch.tensor(float(value), device=device)


def _host_values(pending: list[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Other scalars, one record per step, with every tensor among them copied to the host in one
    transfer per device."""
    tensors: dict[torch.device, list[tuple[int, str, torch.Tensor]]] = {}
    for i, (_, values) in enumerate(pending):
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors.setdefault(value.device, []).append((i, name, value))
    host: dict[tuple[int, str], float] = {}
    for entries in tensors.values():
        numbers = torch.stack([v.detach().float().mean() for _, _, v in entries]).cpu().tolist()
        host.update({(i, name): x for (i, name, _), x in zip(entries, numbers)})
    return [{"step": step, **{name: host.get((i, name), v) if isinstance(v, torch.Tensor) else _plain(v)
                               for name, v in values.items()}} for i, (step, values) in enumerate(pending)]


def _plain(value: Any) -> Any:
    """A number as JSON writes it (None for one that is not finite), anything else as text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value if math.isfinite(value) else None
    return str(value)


def _numpy(value: Any) -> Any:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value


def _device_of(model: torch.nn.Module | None) -> str:
    if model is None:
        return ""
    parameter = next(model.parameters(), None)
    return str(parameter.device) if parameter is not None else "cpu"
