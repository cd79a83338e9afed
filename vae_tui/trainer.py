"""The training loop: runs in any thread, obeys Controls, publishes to Telemetry, never waits on a view.

Every torch operation happens inside `Trainer.run` (DESIGN principle 5), including moving the
dataset onto the device and rendering image snapshots. Losses stay on the device and are copied
to the host in chunks (principle 4), so the loop never syncs with the GPU per step.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vae_tui.analysis import LatentReport, describe_evaluation, importance_weighted, write_evaluation
from vae_tui.checkpoint import CheckpointError, describe_shape, load_checkpoint, save_checkpoint
from vae_tui.config import TrainConfig
from vae_tui.data import ArrayDataset, DeviceData, to_device
from vae_tui.device import DeviceInfo
from vae_tui.model import VAE, kl_divergence, parameter_count, reconstruction_loss, vae_loss
from vae_tui.rundir import RunDir
from vae_tui.telemetry import Snapshot, Telemetry

FLUSH_SECONDS = 0.05  # how often per-batch losses are copied off the device
EVAL_CHUNK = 2048
REPORT_SECONDS = 2.0  # the latent view is rebuilt at an epoch's end at most this often (and at the last)
MAX_SKIPPED = 20  # --on-nan skip: this many non-finite batches in a row means the model itself is broken


class Controls:
    """Requests from any thread (keys, signals, a watcher); the trainer honours each within one batch."""

    def __init__(self) -> None:
        self._paused = threading.Event()
        self._stop = threading.Event()
        self._checkpoint = threading.Event()
        self.save_on_stop = True

    def pause(self) -> None:
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()

    def toggle_pause(self) -> bool:
        """Flip pause; return whether it is now paused."""
        if self._paused.is_set():
            self.resume()
            return False
        self.pause()
        return True

    def stop(self, save: bool = True) -> None:
        self.save_on_stop = save
        self._stop.set()

    def request_checkpoint(self) -> None:
        self._checkpoint.set()

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def take_checkpoint_request(self) -> bool:
        if self._checkpoint.is_set():
            self._checkpoint.clear()
            return True
        return False

    def wait(self, seconds: float) -> None:
        self._stop.wait(seconds)


class NonFiniteLoss(Exception):
    def __init__(self, step: int, epoch: int) -> None:
        super().__init__(step, epoch)
        self.step, self.epoch = step, epoch


@dataclass
class TrainResult:
    state: str  # finished, stopped, error
    epoch: int = 0  # epochs completed
    step: int = 0
    best_test_loss: float = math.inf
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None
    message: str = ""


@dataclass
class _EpochProgress:
    """Running sums for the epoch in progress, saved in mid-epoch checkpoints."""

    loss_sum: float = 0.0
    samples: int = 0
    seconds: float = 0.0


@dataclass
class _Pending:
    """Per-batch results still on the device, copied to the host together."""

    recon: list[torch.Tensor] = field(default_factory=list)
    kl: list[torch.Tensor] = field(default_factory=list)
    loss: list[torch.Tensor] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.steps)

    def clear(self) -> None:
        for values in (self.recon, self.kl, self.loss, self.steps, self.sizes, self.times):
            values.clear()


def beta_at(beta: float, warmup_epochs: int, step: int, batches_per_epoch: int) -> float:
    """KL warm-up: beta rises linearly from 0 to `beta` over the first `warmup_epochs` epochs.

    Early on the decoder learns to use z before the KL term pulls every posterior onto the prior,
    a common guard against posterior collapse. A function of the step alone, so resume is exact.
    """
    if warmup_epochs <= 0:
        return beta
    return beta * min(1.0, step / (warmup_epochs * batches_per_epoch))


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam with the fused kernel where this device has one, the multi-tensor one otherwise."""
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.Adam(model.parameters(), lr=lr, foreach=True)


@torch.no_grad()
def evaluate(model: VAE, x: torch.Tensor, seed: int, beta: float = 1.0) -> dict[str, float]:
    """Mean per-image loss terms over a whole split, with a fixed noise seed so it is repeatable.

    The noise comes from its own generator, so evaluating never shifts the training RNG and a
    resumed run stays identical to an uninterrupted one.
    """
    gen = torch.Generator(device=x.device)
    gen.manual_seed(seed)
    recon_sum = torch.zeros((), device=x.device)
    kl_sum = torch.zeros((), device=x.device)
    for i in range(0, len(x), EVAL_CHUNK):
        xb = x[i : i + EVAL_CHUNK]
        mu, logvar = model.encoder(xb)
        eps = torch.randn(mu.shape, generator=gen, device=mu.device, dtype=mu.dtype)
        logits = model.decoder(mu + eps * torch.exp(0.5 * logvar))
        recon_sum += reconstruction_loss(logits, xb) * len(xb)
        kl_sum += kl_divergence(mu, logvar) * len(xb)
    recon, kl = (torch.stack((recon_sum, kl_sum)) / len(x)).tolist()
    return {"test_loss": recon + beta * kl, "test_recon": recon, "test_kl": kl}


def _rng_state(shuffle: torch.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if getattr(torch, "mps", None) is not None and torch.backends.mps.is_available():
        state["mps"] = torch.mps.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any], shuffle: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    shuffle.set_state(state["shuffle"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "mps" in state and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])


class Trainer:
    """Trains one run. Build it anywhere; call `run()` (or `start()`) on the thread that trains."""

    def __init__(
        self,
        config: TrainConfig,
        data: ArrayDataset,
        device: DeviceInfo,
        telemetry: Telemetry | None = None,
        controls: Controls | None = None,
        run_dir: RunDir | None = None,
        resume_state: dict[str, Any] | None = None,
        on_nan: str = "stop",
    ) -> None:
        if config.epochs is None:
            raise ValueError("config.epochs must be resolved before training")
        self.config = config
        self.arrays = data
        self.device = device
        self.telemetry = telemetry or Telemetry()
        self.controls = controls or Controls()
        self.run_dir = run_dir
        self.resume_state = resume_state
        self.on_nan = on_nan if on_nan != "auto" else "stop"
        self.result: TrainResult | None = None
        self.model: VAE | None = None  # set on the trainer thread; read by tests after run()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="vae-trainer", daemon=True)
        thread.start()
        return thread

    def run(self) -> TrainResult:
        """Train to the end, a stop request or an error; never raises."""
        while True:
            try:
                self.result = self._train()
            except NonFiniteLoss as exc:
                last, good = self._last_good()  # read once: the message, the rollback and the result share it
                message = self._non_finite_message(exc, last, good)
                if self.on_nan == "pause" and self._wait_after_non_finite(message):
                    try:
                        self._roll_back(last, good)
                    except Exception as err:  # the checkpoint to go back to is unreadable
                        self.result = self._fail(f"{message}; rolling back failed: {err}")
                        return self.result
                    continue
                self.result = self._fail(message) if self.on_nan != "pause" else self._stopped_after(message, last)
            except CheckpointError as exc:
                self.result = self._fail(str(exc))
            except Exception as exc:  # shown to the user by every view, never lost in a thread
                self.result = self._fail(f"training failed: {type(exc).__name__}: {exc}")
            return self.result

    def _last_good(self) -> tuple[Path | None, dict[str, Any] | None]:
        """The last checkpoint that loads, and its state; (None, None) when there is none."""
        last = self.run_dir.last_checkpoint if self.run_dir is not None else None
        if last is None or not last.exists():
            return None, None
        try:
            return last, load_checkpoint(last)
        except CheckpointError:
            return None, None

    def _non_finite_message(self, exc: NonFiniteLoss, last: Path | None, good: dict[str, Any] | None) -> str:
        lr = self.config.lr
        lower = f"{min(lr / 10, 1e-3):g}"  # the default, or a tenth of a rate that was already small
        if last is not None and good is not None and self.run_dir is not None:
            kept, retry = f"{last} (step {good['step']}) is intact", f"vae-tui train --resume {self.run_dir.path} --lr {lower}"
        else:
            kept, retry = "no checkpoint had been saved yet", f"start again with --lr {lower}"
        return (  # what to do first: the status line may show only the start of it
            f"loss became NaN or infinite at step {exc.step} (epoch {exc.epoch}). Try a lower learning rate "
            f"(now {lr:g}): {retry}. Nothing was saved after it; {kept}"
        )

    def _wait_after_non_finite(self, message: str) -> bool:
        """--on-nan pause: hold here until resumed (then roll back) or stopped (keep what is saved)."""
        self.controls.pause()
        self.telemetry.update_status(state="paused", message=message + "; or press space to go back to the last checkpoint and go on")
        self.telemetry.event("error", message)
        while self.controls.paused and not self.controls.stopping:
            self.controls.take_checkpoint_request()  # a model with NaN in it is never saved
            self.controls.wait(0.05)
        return not self.controls.stopping

    def _roll_back(self, last: Path | None, good: dict[str, Any] | None) -> None:
        """Continue from the last checkpoint (or the start), dropping the records written since."""
        self.resume_state = good
        step, epoch = (int(good["step"]), int(good["epoch"])) if good else (0, 0)
        self.telemetry.rewind(step, epoch)
        self.telemetry.event("warning", f"rolled back to step {step}" + (f" ({last})" if last else " (the start)"))

    def _stopped_after(self, message: str, last: Path | None) -> TrainResult:
        status = self.telemetry.status()
        self.telemetry.update_status(state="stopped", message=message)
        return TrainResult("stopped", epoch=max(status.epoch - 1, 0), step=status.step, last_checkpoint=last, message=message)

    def _fail(self, message: str) -> TrainResult:
        self.telemetry.update_status(state="error", message=message)
        self.telemetry.event("error", message)
        status = self.telemetry.status()
        last = self.run_dir.last_checkpoint if self.run_dir and self.run_dir.last_checkpoint.exists() else None
        return TrainResult("error", epoch=max(status.epoch - 1, 0), step=status.step, last_checkpoint=last, message=message)

    # ------------------------------------------------------------------------------------
    def _train(self) -> TrainResult:
        cfg, tele, controls = self.config, self.telemetry, self.controls
        dev = self.device.torch_device
        torch.manual_seed(cfg.seed)
        data = to_device(self.arrays, dev)
        n, bs = len(data.train_x), cfg.batch_size
        batches = math.ceil(n / bs)
        model = VAE(data.input_dim, cfg.hidden_dim, cfg.latent_dim).to(dev)
        optimizer = make_optimizer(model, cfg.lr)
        self.model = model
        shuffle = torch.Generator(device=dev)
        shuffle.manual_seed(cfg.seed)

        epochs_done, step, batch0, perm = 0, 0, 0, None
        progress = _EpochProgress()
        best = math.inf
        if self.resume_state is not None:
            epochs_done, step, batch0, perm, progress, best = self._restore(model, optimizer, shuffle, data, dev)

        k = min(cfg.n_images, len(data.test_x))
        originals = data.test_x[:k]
        prior_gen = torch.Generator().manual_seed(cfg.seed + 1)
        prior_z = torch.randn(cfg.n_images, cfg.latent_dim, generator=prior_gen).to(dev)
        h, w = data.image_shape
        originals_np = originals.cpu().numpy().reshape(k, h, w)

        report: LatentReport | None = LatentReport(self.arrays.train_x, self.arrays.test_x, self.arrays.test_y, data.image_shape, cfg.latent_dim)
        last_report = -math.inf
        pending = _Pending()
        last_ckpt: Path | None = self.run_dir.last_checkpoint if self.run_dir and self.run_dir.last_checkpoint.exists() else None
        best_ckpt: Path | None = None
        epoch = epochs_done + 1

        def snapshot() -> None:
            recon = model.reconstruct(originals).cpu().numpy().reshape(k, h, w)
            samples = model.decode_probs(prior_z).cpu().numpy().reshape(len(prior_z), h, w)
            tele.set_snapshot(Snapshot(step, epoch, originals_np, recon, samples))

        def flush() -> None:
            """Copy pending losses to the host in one transfer and publish them."""
            nonlocal flush_clock
            if not pending:
                return
            values = torch.stack(pending.recon + pending.kl + pending.loss).cpu().numpy()
            m = len(pending)
            recon, kl, loss = values[:m], values[m : 2 * m], values[2 * m :]
            steps = np.asarray(pending.steps)
            if not np.isfinite(loss).all():
                bad = int(steps[~np.isfinite(loss)][0])
                raise NonFiniteLoss(bad, epoch)
            sizes = np.asarray(pending.sizes)
            progress.loss_sum += float((loss.astype(np.float64) * sizes).sum())
            progress.samples += int(sizes.sum())
            tele.add_batches(epoch, steps, recon, kl, loss, np.asarray(pending.times))
            now = time.perf_counter()
            changes: dict[str, Any] = {"step": step, "epoch": epoch, "batch_in_epoch": b_done,
                                       "beta": beta_at(cfg.beta, cfg.kl_warmup, step, batches)}
            if dev.type == "cuda":
                changes["device_memory"] = torch.cuda.memory_allocated(dev)
            if now > flush_clock:
                changes["samples_per_s"] = int(sizes.sum()) / (now - flush_clock)
            flush_clock = now
            tele.update_status(**changes)
            pending.clear()

        def checkpoint_state(completed: int, batch_in_epoch: int, epoch_perm: torch.Tensor | None) -> dict[str, Any]:
            return {
                "config": cfg.to_dict(),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": completed,
                "step": step,
                "batch_in_epoch": batch_in_epoch,
                "perm": epoch_perm.cpu() if epoch_perm is not None else None,
                "epoch_progress": {"loss_sum": progress.loss_sum, "samples": progress.samples, "seconds": progress.seconds},
                "best_test_loss": best,
                "rng": _rng_state(shuffle),
                "input_dim": data.input_dim,
                "image_shape": list(data.image_shape),
                "dataset": data.name,
                "train_size": n,
                "saved_at": time.time(),
            }

        def save(path: Path, state: dict[str, Any], why: str, routine: bool = True) -> bool:
            try:
                save_checkpoint(state, path)
            except OSError as exc:
                tele.event("warning", f"could not save {path} ({exc.strerror or exc}); the previous one is intact, training goes on")
                return False
            tele.event("autosave" if routine else "checkpoint", f"{why}: saved {path}")
            return True

        def save_last(completed: int, batch_in_epoch: int, epoch_perm: torch.Tensor | None, why: str, routine: bool = False) -> None:
            nonlocal last_ckpt
            if self.run_dir is None:
                return
            flush()  # also refuses to save a model whose loss went non-finite
            if save(self.run_dir.last_checkpoint, checkpoint_state(completed, batch_in_epoch, epoch_perm), why, routine):
                last_ckpt = self.run_dir.last_checkpoint
                tele.update_status(last_checkpoint=str(last_ckpt))

        tele.update_status(
            state="paused" if controls.paused else "training",
            message="",
            dataset=data.name,
            device=f"{self.device.kind} ({self.device.name})",
            model=f"{data.input_dim}-{cfg.hidden_dim}-{cfg.latent_dim}",
            parameters=parameter_count(model),
            epoch=epoch,
            epochs=cfg.epochs,
            step=step,
            batch_in_epoch=batch0,
            batches_per_epoch=batches,
            run_dir=str(self.run_dir.path) if self.run_dir else "",
            best_test_loss=best,
            last_checkpoint=str(last_ckpt) if last_ckpt else "",
        )
        snapshot()
        last_snapshot = time.perf_counter()
        flush_clock = time.perf_counter()
        b_done = batch0
        stopped = False
        skip_non_finite, skipped = self.on_nan == "skip", 0

        while epoch <= cfg.epochs and not stopped:
            if perm is None:
                perm = torch.randperm(n, generator=shuffle, device=dev)
            active = time.perf_counter()
            for b in range(batch0, batches):
                b_done = b
                if controls.take_checkpoint_request():
                    progress.seconds += time.perf_counter() - active
                    save_last(epoch - 1, b, perm, "checkpoint on request")
                    active = time.perf_counter()
                if controls.paused and not controls.stopping:
                    progress.seconds += time.perf_counter() - active
                    flush()
                    tele.update_status(state="paused")
                    while controls.paused and not controls.stopping:
                        if controls.take_checkpoint_request():
                            save_last(epoch - 1, b, perm, "checkpoint on request")
                        controls.wait(0.05)
                    tele.update_status(state="training")
                    active = flush_clock = time.perf_counter()
                if controls.stopping:
                    progress.seconds += time.perf_counter() - active
                    stopped = True
                    break
                idx = perm[b * bs : (b + 1) * bs]
                x = data.train_x[idx]
                logits, mu, logvar = model(x)
                beta_now = beta_at(cfg.beta, cfg.kl_warmup, step, batches)
                loss, recon, kl = vae_loss(logits, x, mu, logvar, beta_now)
                if skip_non_finite and not torch.isfinite(loss).item():  # a host sync per step, only in this mode
                    skipped += 1
                    if skipped >= MAX_SKIPPED:
                        raise NonFiniteLoss(step + 1, epoch)
                    if skipped == 1:
                        tele.event("warning", f"loss was NaN or infinite at step {step + 1}: batch skipped (--on-nan skip)")
                    continue
                skipped = 0
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                b_done = b + 1
                pending.recon.append(recon.detach())
                pending.kl.append(kl.detach())
                pending.loss.append(loss.detach())
                pending.steps.append(step)
                pending.sizes.append(len(idx))
                pending.times.append(time.time())
                now = time.perf_counter()
                if now - flush_clock >= FLUSH_SECONDS:
                    flush()
                if now - last_snapshot >= cfg.snapshot_seconds:
                    snapshot()
                    last_snapshot = time.perf_counter()
            else:
                flush()
                progress.seconds += time.perf_counter() - active
                record = self._end_epoch(model, data, epoch, step, progress)
                tele.add_epoch(record)
                snapshot()
                last_snapshot = time.perf_counter()
                if report is not None and (last_snapshot - last_report >= REPORT_SECONDS or epoch == cfg.epochs):
                    try:
                        tele.set_analysis(report.build(model, epoch, step))
                    except (ValueError, np.linalg.LinAlgError) as exc:  # a view's trouble never stops training
                        tele.event("warning", f"the latent view could not be updated ({exc}); training goes on")
                        report = None
                    last_report = time.perf_counter()
                if record["test_loss"] < best and self.run_dir is not None:
                    best = record["test_loss"]
                    if save(self.run_dir.best_checkpoint, checkpoint_state(epoch, 0, None), f"best test loss {best:.2f}"):
                        best_ckpt = self.run_dir.best_checkpoint
                elif record["test_loss"] < best:
                    best = record["test_loss"]
                tele.update_status(best_test_loss=best)
                epochs_done, perm, batch0 = epoch, None, 0
                progress = _EpochProgress()
                if epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs:
                    save_last(epoch, 0, None, f"epoch {epoch}", routine=True)
                epoch += 1

        epoch = min(epoch, cfg.epochs)
        if stopped:
            if controls.save_on_stop:
                save_last(epochs_done, b_done, perm, "stopped")
            state, message = "stopped", f"stopped at step {step}"
        else:
            flush()
            state, message = "finished", f"finished {cfg.epochs} epochs ({step} steps)"
            if cfg.iw_samples > 0:
                try:
                    self._final_evaluation(model, data)
                except Exception as exc:  # the run itself finished and is saved; say why there is no figure
                    tele.event("warning", f"the final evaluation failed ({type(exc).__name__}: {exc}); try vae-tui eval")
        tele.update_status(state=state, message=message, step=step, epoch=epoch, batch_in_epoch=b_done)
        if best_ckpt is None and self.run_dir is not None and self.run_dir.best_checkpoint.exists():
            best_ckpt = self.run_dir.best_checkpoint
        return TrainResult(state, epochs_done, step, best, last_ckpt, best_ckpt, message)

    def _final_evaluation(self, model: VAE, data: DeviceData) -> None:
        """The test split's negative ELBO and importance-weighted -log p(x), into status and eval.json."""
        self.telemetry.update_status(message=f"evaluating: {self.config.iw_samples} importance samples per test image...")
        result = importance_weighted(model, data.test_x, self.config.iw_samples, seed=self.config.seed + 3).to_dict()
        self.telemetry.update_status(evaluation=result)
        self.telemetry.event("info", describe_evaluation(result))
        if self.run_dir is not None:
            try:
                write_evaluation(self.run_dir.eval_path, result, "final model")
            except OSError as exc:
                self.telemetry.event("warning", f"could not write {self.run_dir.eval_path}: {exc.strerror or exc}")

    def _end_epoch(
        self, model: VAE, data: DeviceData, epoch: int, step: int, progress: _EpochProgress
    ) -> dict[str, Any]:
        scores = evaluate(model, data.test_x, self.config.seed + 2, self.config.beta)
        train_loss = progress.loss_sum / max(progress.samples, 1)
        return {
            "epoch": epoch,
            "step": step,
            "train_loss": train_loss,
            **scores,
            "samples_per_s": progress.samples / progress.seconds if progress.seconds > 0 else 0.0,
            "time": time.time(),
        }

    def _restore(
        self, model: VAE, optimizer: torch.optim.Optimizer, shuffle: torch.Generator, data: DeviceData, dev: torch.device
    ) -> tuple[int, int, int, torch.Tensor | None, _EpochProgress, float]:
        state = self.resume_state
        assert state is not None
        if state["input_dim"] != data.input_dim or state.get("train_size", len(data.train_x)) != len(data.train_x):
            raise CheckpointError(
                f"the checkpoint was trained on {state.get('dataset', '?')} ({state.get('train_size', '?')} images of "
                f"{state['input_dim']} pixels), but this data is {data.name} ({len(data.train_x)} images of "
                f"{data.input_dim} pixels); resume with the same --dataset"
            )
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(
                f"the checkpoint's model ({describe_shape(state)}) does not fit this one "
                f"({data.input_dim}-{self.config.hidden_dim}-{self.config.latent_dim}): {str(exc).splitlines()[0]}"
            ) from None
        for group in optimizer.param_groups:
            group["lr"] = self.config.lr  # an explicit --lr on resume takes effect
        _set_rng_state(state["rng"], shuffle)
        perm = state.get("perm")
        progress = _EpochProgress(**state.get("epoch_progress", {}))
        return (
            int(state["epoch"]),
            int(state["step"]),
            int(state.get("batch_in_epoch", 0)),
            perm.to(dev) if perm is not None else None,
            progress,
            float(state.get("best_test_loss", math.inf)),
        )
