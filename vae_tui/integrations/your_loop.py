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
stopped. Losses stay on the device: they are copied to the host together about every 0.2 s,
never one `.item()` a call. `vae-tui run -- python train.py` starts a script under the monitor;
the run directory reaches `init` through VAE_TUI_RUN_DIR. (A script with none of these lines is
watched too, through PyTorch's own hooks: vae_tui/hooked/.)
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch

from vae_tui.errors import EXIT_SIGNAL
from vae_tui.evaluation.diagnoses import posterior_figures
from vae_tui.evaluation.live_diagnosis import LiveDiagnosis
from vae_tui.hooked import registry
from vae_tui.runfile import lock
from vae_tui.runfile.files import Snapshot, library_versions, write_config, write_scalars
from vae_tui.runfile.layout import RUN_DIR_ENV, SCRIPT_ENV, RunDir, default_run_path, open_run_dir
from vae_tui.runfile.metrics import MetricsWriter, epoch_line
from vae_tui.runfile.schema import RunInfo, RunState, change_words
from vae_tui.telemetry import Telemetry
from vae_tui.training.checkpoint import save_checkpoint
from vae_tui.training.controls import Controls, give_back, obey, take_signals
from vae_tui.training.losses import LossBuffer, LossChunk
from vae_tui.training.publish import Publisher
from vae_tui.training.reporting import EpochPace, RecordBudget

SNAPSHOT_SECONDS = 1.0  # pictures are made at most this often, on the training thread
FLUSH_SECONDS = 0.2  # losses reach the host (and the charts) this often: fewer, larger copies than the trainer's


class StopTraining(Exception):
    """The run was stopped (the monitor's q, a watcher, a signal). `with vae_tui.init(...)` catches it."""


def init(
    run_dir: str | os.PathLike[str] | None = None,
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    config: dict[str, Any] | None = None,
    images: torch.Tensor | None = None,
) -> "Run":
    """A run for your loop. `images`: a fixed batch of test images (batch, channels, height, width) in
    [0, 1]; with it and a model of either shape `vae-tui train --model` takes, the monitor shows
    reconstructions and samples made from your model as it trains. `config`: any values (argparse's
    `vars(args)` too); what JSON cannot hold is recorded as its text."""
    settings = plain_config(config)
    registry.step_aside()  # this script says what it logs: the hooks of `vae-tui run` leave it alone
    return Run(run_path(run_dir), model, optimizer, settings, images)


class RunExists(ValueError):
    """vae_tui.init(run_dir=...) names a folder that already holds a run."""


_claimed: set[Path] = set()  # run directories a vae_tui.init of this process has used


def run_path(run_dir: str | os.PathLike[str] | None) -> Path:
    """The folder a new run goes to: the one given (refused if it holds a run), else the one `vae-tui run`
    chose (a second run of the script beside it), else a new one under runs/."""
    if run_dir is not None:
        path = Path(run_dir).expanduser()
        if RunDir(path).is_run():
            raise RunExists(f"{path} already holds a run; give vae_tui.init another run_dir, or none for a new folder under runs/")
    elif os.environ.get(RUN_DIR_ENV):
        path = Path(os.environ[RUN_DIR_ENV])
        base, n = path, 2
        while path.resolve() in _claimed or RunDir(path).is_run():
            path, n = base.with_name(f"{base.name}-{n}"), n + 1
        if path != base:
            print(f"vae-tui: this script starts another run; it is written to {path} (watch it: vae-tui watch {path})", file=sys.stderr)
    else:
        path = default_run_path("mine")
    _claimed.add(path.resolve())
    return path


def plain_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """The config as JSON and a weights-only checkpoint hold it: numbers, text, lists and dicts as they
    are, anything else (a Path, an enum, a device) as its text."""

    def plain(value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, str)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else str(value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        return str(value)

    if config is not None and not isinstance(config, dict):
        raise TypeError(f"vae_tui.init: config must be a dict (e.g. vars(args)), got {type(config).__name__}")
    return plain(dict(config or {}))


class Run:
    """One run of your loop: its folder, its telemetry and publisher, and the monitor's requests.

    `vae_tui.init` makes one for a loop that says what it logs; `vae-tui run`'s hooks make one for a
    script that says nothing (view "your script"), and give it the model and optimizer once seen."""

    def __init__(
        self,
        path: Path,
        model: torch.nn.Module | None,
        optimizer: torch.optim.Optimizer | None,
        config: dict[str, Any],
        images: torch.Tensor | None,
        view: str = "your loop",
    ) -> None:
        self.model, self.optimizer, self.config, self.view = model, optimizer, config, view
        beta = config.get("beta")
        if view == "your script":
            self.beta = math.nan  # in the script's own loss, where vae-tui cannot read it
        else:
            self.beta = float(beta) if isinstance(beta, (int, float)) and not isinstance(beta, bool) else 1.0
        self.run: RunDir = open_run_dir(path, claim=lock.hold)
        self.telemetry, self.controls = Telemetry(), Controls()
        self.step, self.epoch = 0, 1
        self.batch_in_epoch, self.batches_per_epoch = 0, 0  # 0: not known (learned after your first log_epoch)
        self._epoch_start = 0  # the step the epoch in progress began after
        self._losses = LossBuffer()
        self._losses.flush_seconds = FLUSH_SECONDS
        self._records = RecordBudget()  # every step its own record while steps are slow, intervals when fast
        self._epochs = EpochPace()  # likewise every epoch's record, or a few a second when epochs are that short
        self._unwritten: dict[str, Any] | None = None  # the latest epoch's record, when the pace held it back
        self._settings: list[tuple[float, float]] = []  # each pending step's lr and beta: either may change any step
        self._said_not_finite = False
        self._scalars: list[tuple[int, dict[str, Any]]] = []  # other values logged, waiting for the next flush
        self._epoch_losses: list[float] = []
        self._epoch_sizes: list[int] = []  # each step's images: the epoch's loss is per image, a short last batch weighing less
        self._epoch_samples, self._epoch_seconds = 0, 0.0
        self._signal: int | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self._pictures: SnapshotMaker | None = None
        self.description = "your model"
        self.device = ""
        self.others: dict[str, tuple[torch.nn.Module | None, torch.optim.Optimizer]] = {}  # a script's other optimizers, by name
        self.diagnosis = LiveDiagnosis(self.telemetry)
        # the latest batch's posterior (mu, logvar), where known: the hooks read it from forward's output, your
        # loop gives it as run.log(mu=..., logvar=...); collapse and holes are diagnosed from it
        self.posterior: tuple[torch.Tensor, torch.Tensor] | None = None
        self.attach(model, optimizer, images)
        write_config(self.run, self._info())
        self.publisher = Publisher(self.run, self.telemetry, self.controls)
        self.metrics = MetricsWriter(self.run.metrics_path)

    def attach(self, model: torch.nn.Module | None, optimizer: torch.optim.Optimizer | None, images: torch.Tensor | None = None) -> None:
        """The model and optimizer the run saves and steers (the hooks find them at the first step)."""
        self.model, self.optimizer = model, optimizer
        if model is not None and images is not None:
            self._pictures = SnapshotMaker(model, images, self.config.get("seed", 0))
        self.description = f"{type(model).__name__} (yours)" if model is not None else "your model"
        self.device = _device_of(model)

    def _info(self) -> RunInfo:
        settings = {"dataset": self.view, "epochs": self.config.get("epochs"), **self.config}
        return RunInfo(
            config=settings,
            dataset={"name": self.view},
            model={"arch": "yours", "description": self.description},
            device={"kind": self.device, "name": ""},
            versions=library_versions(),
            view=self.view,
            script=os.environ.get(SCRIPT_ENV, ""),
        )

    # -- the with block ---------------------------------------------------------------------------
    def __enter__(self) -> "Run":
        self.open()
        self.begin(self.view)
        return self

    def open(self, signals: tuple[signal.Signals, ...] = tuple(EXIT_SIGNAL)) -> None:
        """Publish the run's status from now on, and take `signals` (from the main thread) as a stop that saves."""
        self.telemetry.update_status(run_dir=str(self.run.path), script=os.environ.get(SCRIPT_ENV, ""))
        self.publisher.start()
        if threading.current_thread() is threading.main_thread():
            self._previous = take_signals(self._on_signal, lambda sig: os._exit(EXIT_SIGNAL[signal.SIGINT]), signals=signals)

    def begin(self, dataset: str) -> None:
        """Training has begun: what trains on what, as the status line says it."""
        params = sum(p.numel() for p in self.model.parameters()) if self.model is not None else 0
        lr = self._lr()
        epochs = self.config.get("epochs")
        self.telemetry.update_status(
            state=RunState.TRAINING,
            dataset=dataset,
            device=self.device,
            model=self.description,
            parameters=params,
            lr=0.0 if math.isnan(lr) else lr,
            beta=self.beta,
            epoch=self.epoch,
            epochs=epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else 0,
        )

    def _on_signal(self, sig: signal.Signals) -> None:
        """The first signal asks for a stop that saves (run.log raises); a second Ctrl+C leaves at once."""
        self._signal = sig
        self.controls.stop(save=True)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        self.end(exc)
        if self._signal is not None and (exc is None or isinstance(exc, StopTraining)):
            raise SystemExit(EXIT_SIGNAL.get(signal.Signals(self._signal), 1))
        return isinstance(exc, StopTraining)

    def end(self, exc: BaseException | None, error: str = "") -> None:
        """Record how the run ended (saving the model unless it failed) and close it."""
        try:
            self._flush(final=True)
            if self._unwritten is not None:  # the last epoch's record is always in the file
                self.metrics.write(epoch_line(self._unwritten))
        except Exception:  # the run's end is recorded whatever the last losses held
            pass
        if self.step == self._epoch_start and self.epoch > 1:
            self.epoch -= 1  # no step since the last epoch's end: that is the last epoch, not one more
        if exc is None or isinstance(exc, StopTraining):
            stopped = exc is not None or self.controls.stopping
            saved = self.save("stopped" if stopped else "finished")
            state = RunState.STOPPED if stopped else RunState.FINISHED
            message = f"{'stopped' if stopped else 'finished'} at step {self.step:,}" + (f"; saved {saved}" if saved else "")
        else:
            state, message = RunState.ERROR, error or f"your loop raised {type(exc).__name__}: {exc}"
            self.telemetry.event("error", message)
        self.telemetry.update_status(state=state, message=message, step=self.step, epoch=self.epoch)
        self.close()

    def close(self) -> None:
        """Stop publishing, give back the signals and the run directory's lock."""
        self.metrics.close()
        self.publisher.close()
        give_back(self._previous)
        lock.release(self.run)

    # -- per batch ----------------------------------------------------------------------------------
    def log(self, recon: Any = None, kl: Any = None, loss: Any = None, size: int = 0, **scalars: Any) -> None:
        """One batch: its reconstruction term and KL (per image, or summed; tensors stay on the device),
        and the loss when it is not recon + kl. Where the monitor's keys take effect."""
        mu, logvar = scalars.pop("mu", None), scalars.pop("logvar", None)
        if isinstance(mu, torch.Tensor) and isinstance(logvar, torch.Tensor) and mu.shape == logvar.shape and mu.ndim >= 2:
            self.posterior = (mu.detach().flatten(1), logvar.detach().flatten(1))
        given = next((v for v in (recon, kl, loss) if isinstance(v, torch.Tensor)), None)
        device = given.device if given is not None else torch.device("cpu")
        r, k = _tensor(recon, device), _tensor(kl, device)
        self.add_step(size, r, k, _tensor(loss, device) if loss is not None else r + k, scalars)
        if self.controls.wanted:
            self.honour()

    def add_step(self, size: int, recon: torch.Tensor, kl: torch.Tensor, loss: torch.Tensor, scalars: dict[str, Any] | None = None) -> None:
        """One step's terms as 0-d float32 tensors (on any device: no host copy here)."""
        self.step += 1
        self._losses.add(size, recon, kl, loss)
        self._settings.append((self._lr(), self.beta))
        if scalars:
            self._scalars.append((self.step, scalars))
        if self._losses.due():
            self._flush()
        if self._pictures is not None and self._pictures.due():
            self.telemetry.set_snapshot(self._pictures.take(self.step, self.epoch))

    def add_to_step(self, step: int, values: dict[str, Any]) -> None:
        """More terms of a step already taken (a discriminator that steps after the model on its batch)."""
        if self._scalars and self._scalars[-1][0] == step:
            self._scalars[-1][1].update(values)
        else:
            self._scalars.append((step, values))

    def _flush(self, final: bool = False) -> None:
        """The pending steps to metrics.jsonl and their other terms to scalars.jsonl. A watched script keeps
        its latest step's terms back (unless `final`): a discriminator that steps after the model on the
        same batch (its first time too) adds its loss to that step after the model's step was taken."""
        settings, self._settings = np.asarray(self._settings, dtype=np.float64).reshape(-1, 2), []
        # your loop decides what a NaN means; it is recorded and said once
        chunk = self._losses.flush(self.step, lambda steps: (settings[:, 0], settings[:, 1]), check=False)
        if chunk is not None:
            if not self._said_not_finite and not np.isfinite(chunk.loss).all():
                step = int(chunk.steps[~np.isfinite(chunk.loss)][0])
                self.telemetry.event("warning", f"the loss logged at step {step:,} is not a number (NaN or infinite)")
                self._said_not_finite = True
            ends, first = self._record(chunk), int(chunk.steps[0])
        else:
            ends, first = np.array([self.step]), self.step
        held = self._scalars[-1:] if self.view == "your script" and not final and self._scalars and self._scalars[-1][0] == self.step else []
        pending = self._scalars[: len(self._scalars) - len(held)]
        if pending:
            write_scalars(self.run, over_records(_host_values(pending), ends, first))
        self._scalars = held

    def _record(self, chunk: LossChunk) -> np.ndarray:
        """The chunk into metrics.jsonl (the monitor and watchers read the series from there; fast loops as
        intervals), and the last step of each record written."""
        records = self._records.records(self.epoch, chunk)
        self.metrics.write(records.text)
        self._epoch_losses.extend(chunk.loss.tolist())
        self._epoch_sizes.extend(chunk.sizes.tolist())
        self._epoch_samples += int(chunk.sizes.sum())
        self._epoch_seconds += chunk.seconds
        rate = self._epoch_samples / self._epoch_seconds if self._epoch_seconds > 0 and self._epoch_samples else 0.0
        in_epoch = self.batch_in_epoch or self.step - self._epoch_start
        self.telemetry.update_status(step=self.step, epoch=self.epoch, samples_per_s=rate, batch_in_epoch=in_epoch, batches_per_epoch=self.batches_per_epoch)
        self._diagnose(chunk)
        return records.ends

    def _diagnose(self, chunk: LossChunk) -> None:
        """Spikes from the losses; collapse and holes from the latest batch's posterior where it is known."""
        self.diagnosis.take_losses(chunk.steps, chunk.loss, self._lr())
        posterior = self.posterior
        if posterior is None:
            self.diagnosis.unknown(
                "posterior collapse and holes are not diagnosed: the run does not give its posterior's mu and logvar"
                + (" (run.log(mu=..., logvar=...) gives them)" if self.view == "your loop" else "")
            )
        elif self.diagnosis.posterior_due():
            self.diagnosis.take_posterior(lambda: posterior_figures(posterior[0].float(), posterior[1].float(), None), self.beta, f"step {self.step:,}")

    def honour(self) -> None:
        """A checkpoint, a pause, a stop or a new learning rate asked for by the monitor, a watcher or a signal."""
        if obey(self.controls, self):
            raise StopTraining(f"stopped at step {self.step}")

    # -- what your loop does for each request (controls.obey takes them in order) -------------------------
    def save_on_request(self) -> None:
        self._flush()
        self.save("asked for")

    def pause_begins(self) -> None:
        self._flush()
        self.telemetry.update_status(state=RunState.PAUSED)

    def pause_ends(self) -> None:
        self._losses.restart_clock()
        self.telemetry.update_status(state=RunState.TRAINING)

    def _lr(self) -> float:
        """Your optimizer's learning rate (its first group's), recorded with each step; NaN without one."""
        lr = self.optimizer.param_groups[0].get("lr") if self.optimizer is not None and self.optimizer.param_groups else None
        return float(lr) if isinstance(lr, (int, float)) else math.nan

    def take_values(self, values: dict[str, float]) -> None:
        """A new learning rate goes into your optimizer from the next step. Beta is your loss's own: your
        loop reads it as `run.beta`; a script's, in code vae-tui does not run, is left as it is, and said."""
        if self.view == "your script" and values.get("beta") is not None:
            values = {k: v for k, v in values.items() if k != "beta"}
            self.telemetry.event("warning", "beta is your script's own, in its loss: vae-tui cannot change it" + ("; the learning rate is" if values else ""))
        for name in [k for k in values if k.startswith("lr.")]:
            other = self.others.get(name[3:])
            if other is None:
                self.telemetry.event("warning", f"no other optimizer is named {name[3:]}: nothing changed")
                del values[name]
        if not values:
            return
        self._flush()  # the steps before it on records of their own: an interval never straddles a change
        for name, value in values.items():
            optimizer = self.optimizer if name == "lr" else self.others[name[3:]][1] if name.startswith("lr.") else None
            for group in optimizer.param_groups if optimizer is not None else ():
                group["lr"] = value
        if "beta" in values:
            self.beta = values["beta"]
        changes = [*self.telemetry.status().changes, {"step": self.step, **values}]
        words = change_words(values)
        self.telemetry.event(
            "change",
            f"{words} from step {self.step + 1:,}"
            + (" (beta: your loop reads it as run.beta)" if "beta" in values else "")
            + (" (no optimizer was given to vae_tui.init: the learning rate is unchanged)" if "lr" in values and self.optimizer is None else ""),
        )
        self.telemetry.update_status(changes=changes, lr=values.get("lr", self.telemetry.status().lr), beta=self.beta, optimizers=self.other_lrs())

    def other_lrs(self) -> dict[str, float]:
        """Each other optimizer's learning rate (its first group's), by name."""
        return {name: float(opt.param_groups[0]["lr"]) for name, (_, opt) in self.others.items() if opt.param_groups}

    @property
    def steps_in_epoch(self) -> int:
        return self.step - self._epoch_start

    def log_epoch(self, test_loss: float | None = None, **values: Any) -> None:
        """The end of an epoch: its train loss (the mean of the logged losses), and a test loss if you have
        one (without it the test loss is recorded as not known)."""
        self._flush()
        train = _epoch_mean(self._epoch_losses, self._epoch_sizes)
        test = float(test_loss) if test_loss is not None else math.nan
        rate = self._epoch_samples / self._epoch_seconds if self._epoch_seconds > 0 else 0.0
        record = {
            "epoch": self.epoch,
            "step": self.step,
            "train_loss": train,
            "test_loss": test,
            "test_recon": float(values.get("test_recon", math.nan)),
            "test_kl": float(values.get("test_kl", math.nan)),
            "samples_per_s": rate,
            "time": time.time(),
        }
        self.diagnosis.take_epoch(self.epoch, train, test)
        self._unwritten = None if self._epochs.due() else record
        if self._unwritten is None:
            self.metrics.write(epoch_line(record))
        best = min(self.telemetry.status().best_test_loss, test) if math.isfinite(test) else None
        if not self.batches_per_epoch and self.step > self._epoch_start:
            self.batches_per_epoch = self.step - self._epoch_start  # your loop's epochs are as long as this one
        self.epoch += 1
        self._epoch_start, self.batch_in_epoch = self.step, 0
        self._epoch_losses, self._epoch_sizes, self._epoch_samples, self._epoch_seconds = [], [], 0, 0.0
        self.telemetry.update_status(
            epoch=self.epoch, batch_in_epoch=0, batches_per_epoch=self.batches_per_epoch, **({"best_test_loss": best} if best is not None else {})
        )

    def log_images(self, originals: Any, reconstructions: Any, samples: Any) -> None:
        """Pictures of your own making for the panes: arrays (n, channels, height, width) in [0, 1]."""
        arrays = [np.asarray(_numpy(a), dtype=np.float32) for a in (originals, reconstructions, samples)]
        self.telemetry.set_snapshot(Snapshot(self.step, self.epoch, *arrays))

    def save(self, why: str) -> Path | None:
        """model and optimizer state dicts (loadable with weights_only=True) into checkpoints/last.pt."""
        if self.model is None:
            return None
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else {},
            "step": self.step,
            "epoch": self.epoch,
            "config": self.config,
        }
        if self.others:  # a discriminator and its optimizer, saved with the model they train beside
            state["others"] = {name: {"model": m.state_dict() if m is not None else {}, "optimizer": o.state_dict()} for name, (m, o) in self.others.items()}
        try:
            path = save_checkpoint(state, self.run.checkpoints / "last.pt")
        except OSError as exc:
            self.telemetry.event("warning", f"could not save a checkpoint ({why}): {exc.strerror or exc}")
            return None
        self.telemetry.event("checkpoint", f"{why}: saved {path}")
        self.telemetry.update_status(last_checkpoint=str(path))
        return path


def _epoch_mean(losses: list[float], sizes: list[int]) -> float:
    """The epoch's loss per image: each step's weighed by its images where every step said how many."""
    if not losses:
        return math.nan
    if len(sizes) == len(losses) and all(n > 0 for n in sizes):
        return float(np.average(losses, weights=sizes))
    return float(np.mean(losses))


class SnapshotMaker:
    """Reconstructions of a fixed batch and samples from fixed z, made from your model (either shape
    `vae-tui train --model` takes) at most every SNAPSHOT_SECONDS."""

    def __init__(self, model: torch.nn.Module, images: torch.Tensor, seed: int) -> None:
        from vae_tui.models.user import UserVAE
        from vae_tui.models.user_probe import shape_of

        self.images = images
        self.view: UserVAE | None = shape_of(model, images)
        z = torch.randn(len(images), self.view.latent_dim, generator=torch.Generator().manual_seed(seed + 1)) if self.view else None
        self.prior_z = z.to(images.device) if z is not None else None
        self._last = -math.inf

    def due(self) -> bool:
        return self.view is not None and time.perf_counter() - self._last >= SNAPSHOT_SECONDS

    def take(self, step: int, epoch: int) -> Snapshot:
        from vae_tui.models.protocol import NoDecoder, evaluating, generate, reconstruct, rng_kept

        assert self.view is not None and self.prior_z is not None
        with evaluating(self.view.inner), rng_kept(self.images.device):  # your RNG streams untouched
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
    return [
        {"step": step, **{name: host.get((i, name), v) if isinstance(v, torch.Tensor) else _plain(v) for name, v in values.items()}}
        for i, (step, values) in enumerate(pending)
    ]


def over_records(records: list[dict[str, Any]], ends: np.ndarray, first: int) -> list[dict[str, Any]]:
    """Per-step records of other terms as the loss records of the steps `first` to `ends[-1]` were written:
    one per step where those were, else one per interval ending at each of `ends` (the mean of each number
    over the steps that gave it, the last of any text), so that scalars.jsonl grows with time as
    metrics.jsonl does. A record of a step before `first` (its loss record written already) stays its own."""
    ended = set(ends.tolist())
    earlier = [r for r in records if r["step"] < first]
    records = [r for r in records if r["step"] >= first]
    if len(records) <= 1 or all(r["step"] in ended for r in records):
        return earlier + records
    slots = np.searchsorted(ends, [r["step"] for r in records]).clip(0, len(ends) - 1)
    out = earlier
    for slot in dict.fromkeys(slots.tolist()):
        group = [r for r, s in zip(records, slots) if s == slot]
        merged: dict[str, Any] = {"step": int(ends[slot]), "first": int(ends[slot - 1]) + 1 if slot else first}
        for name in dict.fromkeys(k for r in group for k in r if k != "step"):
            values = [r[name] for r in group if name in r]
            numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
            merged[name] = float(np.mean(numbers)) if numbers else values[-1]
        if merged["first"] == merged["step"]:
            del merged["first"]
        out.append(merged)
    return out


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
