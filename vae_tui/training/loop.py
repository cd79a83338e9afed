"""The training loop: runs on any thread, obeys Controls, tells hooks, never waits on a view.

Every torch operation of a run happens inside `Trainer.run`, on the thread that trains,
including moving the dataset onto the device and rendering snapshots. The loop itself is short:
what happens around a step lives in collaborators with names (state, checkpointer, loss buffer,
NaN policy) and in hooks.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from vae_tui.config import TrainConfig
from vae_tui.data import ImageData
from vae_tui.evaluation.analysis import held_out_losses
from vae_tui.models import build_model, memory_format, model_source, model_terms
from vae_tui.models.errors import your_frames
from vae_tui.models.protocol import TotalCorrelation, evaluating
from vae_tui.runfile.files import update_config
from vae_tui.runfile.layout import RunDir
from vae_tui.runfile.schema import RunState, StepPlan
from vae_tui.telemetry import Telemetry
from vae_tui.training.agreement import AgreedControls, Agreement, Alone, Together
from vae_tui.training.checkpoint import CheckpointError, data_mismatch, describe_shape
from vae_tui.training.checkpointer import Checkpointer
from vae_tui.training.controls import Controls, obey
from vae_tui.training.device import DeviceInfo
from vae_tui.training.device_data import DeviceData, to_device
from vae_tui.training.diagnosing import DiagnosisHook
from vae_tui.training.emulated_graph import EmulatedGraphs
from vae_tui.training.evaluation import FinalEvaluationHook
from vae_tui.training.gpus import GpuMeter
from vae_tui.training.graph import CudaGraphs, Graphs, capture
from vae_tui.training.hooks import Hook, Hooks
from vae_tui.training.losses import LossBuffer, NonFiniteLoss, beta_at, betas_at
from vae_tui.training.memory import out_of_memory
from vae_tui.training.nan import NanPolicy
from vae_tui.training.pictures import LatentReportHook, SnapshotHook
from vae_tui.training.precision import Precision
from vae_tui.training.reporting import EpochPace, MetricsHook, TelemetryHook
from vae_tui.training.state import StateMismatch, TrainingState, make_optimizer
from vae_tui.training.static_step import StaticStep
from vae_tui.training.steps import EagerStep, Step, plan_step
from vae_tui.training.streamed import StreamedData
from vae_tui.training.world import ALONE, World, batches_per_epoch, epoch_parts, gather, lost_peer


@dataclass
class TrainResult:
    state: RunState  # finished, stopped or error
    epoch: int = 0  # epochs completed
    step: int = 0
    best_test_loss: float = math.inf
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None
    message: str = ""


def default_hooks(run: RunDir | None) -> list[Hook]:
    """What a run records and shows. Order matters at the finish: the evaluation comes before the final status."""
    hooks: list[Hook] = [MetricsHook(run)] if run is not None else []
    return hooks + [SnapshotHook(), LatentReportHook(), DiagnosisHook(), FinalEvaluationHook(run), TelemetryHook()]


class Trainer:
    """Trains one run. Build it anywhere; call `run()` (or `start()`) on the thread that trains."""

    def __init__(
        self,
        config: TrainConfig,
        data: ImageData,
        device: DeviceInfo,
        telemetry: Telemetry | None = None,
        controls: Controls | None = None,
        run_dir: RunDir | None = None,
        resume_state: dict[str, Any] | None = None,
        on_nan: str = "stop",
        hooks: list[Hook] | None = None,
        placement: str = "device",
        world: World = ALONE,
        graphs: Graphs | None = None,
        weights: dict[str, Any] | None = None,
    ) -> None:
        """`graphs`: how the step is captured (CUDA graphs on a CUDA device, recorded replays for --step
        emulate; tests give the latter on a CPU to stand in for CUDA's). `weights`: a checkpoint a new
        run starts from (--init-from): its model and Adam's state, none of its schedule."""
        if config.epochs is None:
            raise ValueError("config.epochs must be resolved before training")
        self.epochs: int = config.epochs  # the total to reach, resolved (the config's may be None before)
        self.config, self.data, self.device, self.world = config, data, device, world
        self.telemetry = telemetry or Telemetry()
        # --tc-beta: beta-TCVAE's total correlation, a term of its own beside recon and kl
        self.tc = TotalCorrelation(config.tc_beta, len(data.train_x)) if config.tc_beta is not None else None
        self.term_names: tuple[str, ...] = model_terms(config) + (("tc",) if self.tc is not None else ())
        self.losses = LossBuffer(names=self.term_names)
        self.controls: Controls | AgreedControls = controls or Controls()
        self.sync: Alone | Together = Alone(self.controls, self.losses)
        self.agreement: Agreement | None = None
        self.gpu_meter = GpuMeter(device.torch_device)  # busy, memory, temperature, power, through NVML
        if world.distributed:  # the loop reads what all ranks agreed, not this rank's own requests
            self.agreement = Agreement(world, self.controls, device.torch_device, self.gpu_meter.read)
            self.controls = AgreedControls(self.controls, self.agreement, lambda: self.state.step)
            self.sync = Together(self.agreement, lambda: self.state.step)
        self.run_dir = run_dir
        self.resume_state = resume_state
        self.weights = weights
        self.nan = NanPolicy(on_nan)
        self.hooks = Hooks(default_hooks(run_dir) if hooks is None else hooks)
        self.global_batch = config.batch_size * world.size  # images per step, all ranks together
        self.checkpointer = Checkpointer(
            run_dir,
            {
                "config": config.to_dict(),
                "data": data.spec(),
                "model_source": model_source(config),
                "world_size": world.size,
                "global_batch": self.global_batch,
            },
            self.telemetry,
            device.torch_device,
            config.checkpoint_seconds,
        )
        self.batches = batches_per_epoch(world, len(data.train_x), self.global_batch)  # per epoch
        self.precision = Precision(config.precision, device.torch_device)
        self.rank_devices = gather(world, device.words)  # once: each rank's device, in rank order
        self.graphs = graphs if graphs is not None else _graphs(config, device)
        self.plan: StepPlan = plan_step(config, device.kind, world.size, on_nan, self.graphs is not None, strict=False, train_images=len(data.train_x))
        self._stepper: Step | None = None  # made with the state: the graph is captured from its tensors
        self.phase = "starting"  # what the trainer is doing, in words: for a message that it failed doing it
        self.trained: Callable[[torch.Tensor], Any] | None = None  # the model, or DistributedDataParallel (compiled) around it
        self.result: TrainResult | None = None
        self.placement = placement  # the training images on the device, or streamed to it ("stream")
        self._images: DeviceData | StreamedData | None = None  # made on the training thread
        self._state: TrainingState | None = None  # likewise; tests read state.model after run()
        self.epoch_pace = EpochPace()

    # -- what exists once training has started (made on the training thread) -----------------------
    @property
    def built(self) -> bool:
        """The model and optimizer exist: training started (a failure before it leaves none)."""
        return self._state is not None

    @property
    def state(self) -> TrainingState:
        if self._state is None:
            raise RuntimeError("the trainer's state is made when training starts (Trainer.run)")
        return self._state

    @property
    def images(self) -> DeviceData | StreamedData:
        if self._images is None:
            raise RuntimeError("the training images reach the device when training starts (Trainer.run)")
        return self._images

    @property
    def stepper(self) -> Step:
        if self._stepper is None:
            raise RuntimeError("the training step is made when training starts (Trainer.run)")
        return self._stepper

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="vae-trainer", daemon=True)
        thread.start()
        return thread

    def run(self) -> TrainResult:
        """Train to the end, a stop request or an error; never raises."""
        while self.result is None:
            try:
                self.result = self._train()
            except NonFiniteLoss as exc:
                self.result = self.nan.after(self, exc)  # None: rolled back to a checkpoint, train on
            except CheckpointError as exc:
                self.result = self.ended(RunState.ERROR, str(exc))
            except torch.cuda.OutOfMemoryError as exc:
                self.result = self.ended(RunState.ERROR, out_of_memory(exc, self))
            except Exception as exc:  # shown to the user by every view, never lost in a thread
                where = your_frames(exc, self.config.model)
                lost = lost_peer(self.world, exc)
                self.result = self.ended(RunState.ERROR, lost or f"training failed{where}: {type(exc).__name__}: {exc}")
        if self._images is not None:
            self._images.stop()
        self.hooks.on_finish(self, self.result)
        return self.result

    # -- the loop ---------------------------------------------------------------------------------
    def _train(self) -> TrainResult:
        self._build_state()
        self.hooks.on_start(self)
        stopped = False
        while self.state.epoch < self.epochs and not stopped:
            stopped = self._run_epoch()
            if not stopped:
                self._end_epoch()
        if stopped and self.controls.save_on_stop:
            self.save("last", "stopped")
        self._flush()
        if stopped:
            return self.ended(RunState.STOPPED, f"stopped at step {self.state.step}")
        epochs, steps = self.epochs, self.state.step
        return self.ended(RunState.FINISHED, f"finished {epochs} epoch{'s' if epochs != 1 else ''} ({steps:,} step{'s' if steps != 1 else ''})")

    def _run_epoch(self) -> bool:
        """Train the rest of the epoch in progress; True when a stop request ended it early. Per step,
        the loop only asks whether anything is due; all else happens about every 100 ms, in _flush."""
        active = time.perf_counter()  # training time: the epoch's start (its order, its parts) included
        self.phase = "training"
        state, sync, step, losses = self.state, self.sync, self.stepper, self.losses
        perm = state.permutation(len(self.images))
        parts = epoch_parts(self.world, len(perm), state.sample_in_epoch, self.global_batch)
        step.start_epoch(perm, parts)
        after_batch = self.hooks.on_batch_end if self.hooks.listening("on_batch_end") else None
        for part in parts:
            if sync.due(state.step):  # alone: something was asked; under torchrun: the ranks' meeting
                state.progress.seconds += time.perf_counter() - active
                self._flush(meet=True)
                if self.controls.wanted and obey(self.controls, self):
                    return True
                active = time.perf_counter()
            if step(part):
                state.step += 1
                losses.add(part.hi - part.lo)
            state.batch_in_epoch += 1
            state.sample_in_epoch = part.end
            if after_batch is not None:
                after_batch(self)
            if sync.flush_due():
                self._flush()
        state.progress.seconds += time.perf_counter() - active
        self._flush()
        return False

    def _flush(self, meet: bool = False) -> None:
        """Losses to the host and the hooks. Under torchrun this is the ranks' meeting: held when losses
        are pending (on every rank alike, as every rank takes the same steps) or when `meet` says so."""
        together = self.agreement is not None and (meet or self.losses.pending)
        chunk = self.losses.flush(self.state.step, self._settings, reduce=self.sync.reduce if together else None)
        if chunk is not None:  # (a NonFiniteLoss was raised before anything of it was recorded)
            self.state.progress.add(chunk.loss, chunk.sizes)
            self.hooks.on_losses(self, chunk)
        self._tell_saved()

    def _tell_saved(self) -> None:
        """Routine checkpoints the writer thread has written since last asked: to the hooks, from here."""
        for path, why in self.checkpointer.saved():
            self.hooks.on_checkpoint(self, path, why, True)

    def _settings(self, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The lr and beta each of these steps trained with: the lr as it is now (a live change flushes
        first), beta as the warm-up gave it at the step before each (as `beta()` did then)."""
        state = self.state
        return np.full(len(steps), state.lr), betas_at(state.beta, self.config.kl_warmup, steps - 1, self.batches)

    def _end_epoch(self) -> None:
        """Held-out losses, the epoch's record and its checkpoints: rank 0's work (the others go on to
        the next epoch, and wait for it at the first step's all-reduce). Epochs that end many times a
        second are evaluated and recorded a few times a second (EpochPace), and the last always."""
        state = self.state
        self.phase = "ending an epoch (the held-out loss, pictures, checkpoints)"
        due = self.world.main and self.epoch_pace.due(last=state.epoch + 1 >= self.epochs)
        record = self._epoch_record() if due else None
        improved = record is not None and record["test_loss"] < state.best_test_loss
        if record is not None:
            state.best_test_loss = min(state.best_test_loss, record["test_loss"])
        state.finish_epoch()
        if record is not None:
            self.hooks.on_epoch_end(self, record)
        if improved:
            self.save("best", f"best test loss {state.best_test_loss:.2f}", routine=True)
        if state.epoch % self.config.checkpoint_every == 0 or state.epoch == self.epochs:
            self.save("last", f"epoch {state.epoch}", routine=True)

    def _epoch_record(self) -> dict[str, Any]:
        state = self.state
        with evaluating(state.model):
            scores = held_out_losses(state.vae, self.images.test_x, self.config.seed + 2, state.beta)
        return {
            "epoch": state.epoch + 1,
            "step": state.step,
            "train_loss": state.progress.mean_loss,
            **scores,
            "samples_per_s": state.progress.samples_per_s,
            "time": time.time(),
        }

    # -- what the loop does for each request (controls.obey takes them in order) -----------------------
    def save_on_request(self) -> None:
        self.save("last", "checkpoint on request")

    def pause_begins(self) -> None:
        self._flush()
        self.save("last", "paused")  # a full checkpoint at every pause, however seldom epochs save one
        self.telemetry.update_status(state=RunState.PAUSED)
        self.hooks.on_pause(self)

    def pause_ends(self) -> None:
        self.telemetry.update_status(state=RunState.TRAINING)
        self.losses.restart_clock()

    def take_values(self, values: dict[str, float]) -> None:
        """A live change of the learning rate and/or beta, from the next step on; part of the state, so a
        resume goes on with it."""
        state = self.state
        for name in [k for k in values if k.startswith("lr.")]:
            self.telemetry.event("warning", f"this run has one optimizer: --optimizer {name[3:]} names none; its learning rate is --lr alone")
            del values[name]
        values = {k: v for k, v in values.items() if getattr(state, k) != v}
        if not values:
            return
        change = {"step": state.step, **values}
        if "lr" in values:
            state.set_lr(values["lr"])
        if "beta" in values:
            state.beta = values["beta"]
        self.stepper.settings_changed()
        state.changes.append(change)
        self.hooks.on_change(self, change)

    # -- collaborators' helpers ----------------------------------------------------------------
    def _build_state(self) -> None:
        """The model, optimizer and progress: fresh from the random seed, or as the checkpoint left them."""
        self.phase = "moving the images and the model to the device"
        torch.manual_seed(self.config.seed)
        device = self.device.torch_device
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)  # this thread's current GPU: where streams, graphs and caches are made
        layout = memory_format(self.config.arch, device)
        if self._images is None:
            self._images = to_device(self.data, device, layout, self.placement, self.config.batch_size)
        model = build_model(self.config, self.data.shape).to(device, memory_format=layout)  # type: ignore[call-overload]  # a keyword torch's stubs leave out
        self._state = TrainingState(model, make_optimizer(model, self.config.lr), self.config.seed, device, self.config.lr, self.config.beta)
        self.losses.clear()
        if self.resume_state is not None:
            self._check_fits(self.resume_state)
            try:
                self.state.load_state_dict(self.resume_state, *self._resumed_settings(self.resume_state))
            except StateMismatch as exc:
                raise CheckpointError(f"the checkpoint's model ({describe_shape(self.resume_state)}) does not fit this one: {exc}") from None
            self.precision.load_state_dict(self.state.scaler)
            self.state.batch_in_epoch = -(-self.state.sample_in_epoch // self.global_batch)  # in this run's batches
        elif self.weights is not None:
            self._start_from(self.weights)
        self.trained = model
        if self.world.distributed:  # built from the same seed on every rank; DDP also copies rank 0's weights to all
            from torch.nn.parallel import DistributedDataParallel

            self.trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if self.config.compile:  # the forward pass only: checkpoints and pictures use the model itself
            self.trained = torch.compile(self.trained)
        self._stepper = self._make_step()
        self.losses.terms = self.stepper.terms

    def _make_step(self) -> Step:
        """The CUDA-graph step where the plan says so and its capture checks out, else the eager step
        (with a warning that says why, when a graph was meant)."""
        if self.plan.mode in ("graph", "emulated"):
            self.phase = "capturing the training step as a CUDA graph" if self.plan.mode == "graph" else "recording the training step (--step emulate)"
            step = StaticStep(self)
            assert self.graphs is not None  # a graph is planned only where CUDA graphs can be made
            why_not = capture(step, self.graphs)
            if why_not is None:
                if self.plan.mode == "emulated":
                    self.telemetry.event("info", "--step emulate: the step survives a CUDA graph (recorded once and replayed, it trains as eagerly)")
                return step
            step.release()
            self.plan = StepPlan("eager", f"the CUDA graph is not used: {why_not}")
            self.telemetry.event("warning", f"training steps eagerly: {why_not}")
            if self.run_dir is not None:
                try:
                    update_config(self.run_dir, step={"mode": self.plan.mode, "why": self.plan.why})
                except OSError:  # config.json keeps the plan; the status and the warning say what runs
                    pass
        return EagerStep(self)

    def _start_from(self, weights: dict[str, Any]) -> None:
        """--init-from: the checkpoint's model, and Adam's state where it fits, at this run's learning rate."""
        state = self.state
        try:
            state.model.load_state_dict(weights["model"])
        except (RuntimeError, KeyError) as exc:
            raise CheckpointError(f"the checkpoint's model ({describe_shape(weights)}) does not fit this one: {str(exc).splitlines()[0]}") from None
        try:
            state.optimizer.load_state_dict(weights["optimizer"])
        except (ValueError, KeyError, RuntimeError):
            self.telemetry.event("warning", "the checkpoint's Adam state does not fit this optimizer: Adam starts afresh, the weights are the checkpoint's")
        state.set_lr(self.config.lr)

    def _resumed_settings(self, saved: dict[str, Any]) -> tuple[float, float]:
        """The lr and beta to go on with: as the checkpoint left them (live changes included), unless this
        run was given other values than the checkpoint's run started with (--lr, --beta on resume)."""
        started = saved.get("config", {})
        lr = self.config.lr if self.config.lr != started.get("lr", self.config.lr) else saved.get("lr", self.config.lr)
        beta = self.config.beta if self.config.beta != started.get("beta", self.config.beta) else saved.get("beta", self.config.beta)
        return float(lr), float(beta)

    def _check_fits(self, saved: dict[str, Any]) -> None:
        """The same data as the checkpoint's run (prepare checks it too, for a trainer built elsewhere)."""
        why = data_mismatch(saved, self.data.shape, self.data.name, len(self.data.train_x))
        if why is not None:
            raise CheckpointError(why)

    def save(self, which: str, why: str, routine: bool = False) -> None:
        """Save last.pt or best.pt from the state as it is; losses still pending are recorded first
        (which also refuses to save a model whose loss went non-finite). A routine save (every epoch, a
        new best) is written in the background and told to hooks once written; one asked for, now."""
        self._flush()
        self.state.scaler = self.precision.state_dict()
        path = self.checkpointer.save(which, self.state, why, background=routine)
        if path is not None:
            self.hooks.on_checkpoint(self, path, why, routine)

    def roll_back(self, good: dict[str, Any] | None) -> None:
        """After a NaN: train again from the last good checkpoint (or the start); hooks drop what came after."""
        self.resume_state = good

    def ended(self, how: RunState, message: str) -> TrainResult:
        self.checkpointer.drain()  # the result names the files as written
        self._tell_saved()
        state = self._state
        return TrainResult(
            how,
            state.epoch if state else 0,
            state.step if state else 0,
            state.best_test_loss if state else math.inf,
            self.checkpointer.existing("last"),
            self.checkpointer.existing("best"),
            message,
        )

    def beta(self) -> float:
        """The KL weight at this step (below --beta during --kl-warmup)."""
        return beta_at(self.state.beta, self.config.kl_warmup, self.state.step, self.batches)


def _graphs(config: TrainConfig, device: DeviceInfo) -> Graphs | None:
    """How this run captures its step: recorded replays for --step emulate, CUDA's graphs on CUDA."""
    if config.step == "emulate":
        return EmulatedGraphs(device.torch_device)
    return CudaGraphs(device.torch_device) if device.kind == "cuda" else None
