"""A script under `vae-tui run` that makes no vae-tui call: its run, opened when it imports torch,
fed by the probes at each optimizer step, ended when the interpreter ends.

The monitor's requests are taken just before a step (so a pause holds the next step, a new
learning rate trains it); a stop saves, then ends the script as Ctrl+C would (KeyboardInterrupt at
the step, so its own `finally` blocks and handlers run; the shell sees 130). A stop that no step
comes to take (the script is evaluating, or loading data) interrupts it the same way.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import signal
import sys
import threading
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any, Callable

import torch

from vae_tui.hooked import ranks, registry
from vae_tui.hooked.finding import model_trained_by, name_of, owner_in_frames, users_file
from vae_tui.hooked.probes import Forward, Probes
from vae_tui.hooked.ranks import RankWatch
from vae_tui.integrations.your_loop import Run, StopTraining, plain_config
from vae_tui.models.outputs import Layout, are_logits, as_pictures, image_shape, kl_per_image, parts, read_layout, returned_names, scalar_parts, span_of
from vae_tui.models.protocol import decoder_of, evaluating, rng_kept
from vae_tui.runfile.files import update_config
from vae_tui.runfile.layout import RUN_DIR_ENV

PICTURE_SECONDS = 1.0  # pictures are made at most this often, on the script's thread
STOP_WAIT_S = 3.0  # a stop not taken at a step by then interrupts the script between steps
SCRIPT_LOSS = "script_loss"  # scalars.jsonl's name for a summed loss as the script has it, per step
EPOCHS_NAMES = ("epochs", "n_epochs", "num_epochs", "max_epochs", "nepochs")


class StopRequested(KeyboardInterrupt):
    """vae-tui stopped the script (the monitor's q, a watcher, a signal): raised at an optimizer step."""


def watch_script(arguments: Callable[[], dict[str, Any]]) -> "ScriptWatch | RankWatch | None":
    """Rank 0 (or a script alone) writes the run; under a launcher, the other ranks only follow it."""
    path = os.environ.get(RUN_DIR_ENV)
    if not path:
        return None
    if ranks.rank() > 0:
        return RankWatch(lambda: SystemExit(0))
    return ScriptWatch(Path(path), arguments)


class ScriptWatch:
    def __init__(self, path: Path, arguments: Callable[[], dict[str, Any]]) -> None:
        self.arguments = arguments
        self.run = Run(path, None, None, {}, None, view="your script")
        free = tuple(s for s in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(s) is signal.SIG_DFL)
        self.run.open(signals=free)  # the script's own handlers (and Ctrl+C's) stay its own
        self.optimizer: torch.optim.Optimizer | None = None
        self.model: torch.nn.Module | None = None
        self.layout: Layout | None = None
        self.given: dict[str, Any] = {}  # what vae_tui.log gave for the coming step
        self.test_loss: float | None = None  # what vae_tui.log_epoch gave for the epoch in progress
        self._others: dict[int, str] = {}  # each other optimizer (by id) and the name of the module it trains
        self._others_given: dict[str, torch.Tensor] = {}  # their losses since the model's last step
        self._scalar_names: dict[str, str] = {}  # the single numbers forward returns, and where each comes from
        self._model_found: torch.nn.Module | None = None
        self._returned: tuple[str, ...] | None = None  # the names the model's forward gives what it returns
        self._stepped_on: Any = None  # the DataLoader batch of the model's last step: an optimizer stepping after it on the same batch belongs to it
        self._epoch: tuple[Any, weakref.ref[Any], int] | None = None  # the train DataLoader's (dataset, iteration, batches yielded)
        self._pictures_at = -math.inf
        self._decode_failed = False
        self._nan: dict[torch.device, torch.Tensor] = {}
        self._failure: BaseException | None = None
        self.active = True
        self.agreement = ranks.Agreement()
        self.probes = Probes(self._guarded(self._before_step), self._guarded(self._after_step))
        registry.set_session(self)
        self._excepthook = sys.excepthook
        sys.excepthook = self._on_uncaught
        atexit.register(self._at_exit)
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started as a background job: a stop still interrupts it
            signal.signal(signal.SIGINT, signal.default_int_handler)
        threading.Thread(target=self._stop_watchdog, name="vae-stop", daemon=True).start()

    # -- each step -------------------------------------------------------------------------------
    def _guarded(self, hook: Callable[[torch.optim.Optimizer], None]) -> Callable[[torch.optim.Optimizer], None]:
        """A failure of vae-tui's own never reaches the script: it is said once, and the script runs on unwatched."""

        def guarded(optimizer: torch.optim.Optimizer) -> None:
            if not self.active:
                return
            try:
                hook(optimizer)
            except Exception as exc:
                print(f"vae-tui: stopped watching this script ({type(exc).__name__}: {exc}); it runs on", file=sys.stderr)
                with contextlib.suppress(Exception):
                    self._end(exc, f"vae-tui stopped watching at step {self.run.step:,}: {type(exc).__name__}: {exc}")

        return guarded

    def _before_step(self, optimizer: torch.optim.Optimizer) -> None:
        if optimizer is not self.optimizer:
            return
        if self.agreement.active:  # under a launcher: at the steps every rank agrees at, and then on every rank
            if self.agreement.due():
                self._agree()
        elif self.run.controls.wanted:
            try:
                self.run.honour()
            except StopTraining:
                self._stop()

    def _agree(self) -> None:
        """Rank 0's requests, taken now, to every rank; then done here as every rank does them. A pause holds
        the others until it ends, and they then take the learning rates it ended with."""
        controls = self.run.controls
        changes, save = controls.take_changes(), controls.take_checkpoint_request()
        stopped, pause = controls.stopping, controls.paused and not controls.stopping
        lrs = [changes.get("lr", math.nan), *(changes.get(f"lr.{name}", math.nan) for name in self.run.others)]
        self.agreement.agree(ranks.request(stopped, pause, save, lrs))
        self.run.take_values(changes)
        if save:
            self.run.save_on_request()
        if pause:
            try:
                self.run.honour()
            except StopTraining:
                stopped = True
            optimizers = [self.optimizer, *(o for _, o in self.run.others.values())]
            self.agreement.agree(ranks.request(stopped, False, False, [float(o.param_groups[0]["lr"]) for o in optimizers if o is not None]))
        if stopped:
            self._stop()

    def _after_step(self, optimizer: torch.optim.Optimizer) -> None:
        if optimizer is not self.optimizer:
            if self.optimizer is not None or not self._trains_the_model(optimizer):
                self._other_step(optimizer)  # a discriminator's, a probe's: its loss is its own series
                return
            self._first_step(optimizer)
        self._follow_epoch()
        forward, loss = self.probes.take()
        given, self.given = {**self._others_given, **self.given}, {}
        self._others_given = {}
        if forward is not None:
            given = {**self._scalars_of(forward), **given}
        kl = given.pop("kl", None)
        if kl is None and forward is not None:
            kl = self._kl(forward)
        device = loss.device if loss is not None else kl.device if isinstance(kl, torch.Tensor) else torch.device("cpu")
        size = forward.inputs.shape[0] if forward is not None and forward.inputs is not None and forward.inputs.ndim else 0
        recon = given.pop("recon", None)
        if "loss" not in given and loss is not None and self.probes.summed and size:
            given[SCRIPT_LOSS] = loss  # the script's own number, kept beside the per-image one that is charted
            loss = loss / size
        self.run.add_step(size, self._term(recon, device), self._term(kl, device), self._term(given.pop("loss", loss), device), given)
        self._stepped_on = self.probes.batch
        if _now() - self._pictures_at >= PICTURE_SECONDS:
            self._take_pictures()

    def _trains_the_model(self, optimizer: torch.optim.Optimizer) -> bool:
        trains, self._model_found = model_trained_by(self.probes, optimizer, id(optimizer) in self._others)
        return trains

    def _other_step(self, optimizer: torch.optim.Optimizer) -> None:
        """A second optimizer's step: the loss backward() was called on since the last step of any, recorded
        as its own series named after the module it trains; saved with the run's checkpoints."""
        loss = self.probes.take_loss()
        if id(optimizer) not in self._others:
            owner, name = owner_in_frames(optimizer)
            if owner is None:  # a module local to a function: the modules that ran (until the model is known)
                owner = self.probes.model_of(optimizer)[0]
                name = name_of(owner) if owner is not None else f"optimizer {len(self._others) + 2}"
            name = name if name not in ("loss", "recon", "kl", *self.run.others) else f"{name} optimizer"
            self._others[id(optimizer)] = name
            self.run.others[name] = (owner, optimizer)
            self._say_taken()
            self.run.telemetry.update_status(optimizers=self.run.other_lrs())
        if loss is None:
            return
        name = self._others[id(optimizer)]
        if self.optimizer is not None and self.probes.batch is not None and self.probes.batch is self._stepped_on:
            self.run.add_to_step(self.run.step, {name: loss})  # after the model's step on the same batch: that step's
        else:
            self._others_given[name] = loss  # before it (a discriminator that steps first): the coming step's

    def _scalars_of(self, forward: Forward) -> dict[str, torch.Tensor]:
        """The single numbers a forward returns beside its tensors (a VQ-VAE's commitment loss and perplexity),
        each a term by the name forward gives it."""
        found = parts(forward.output)
        scalars = scalar_parts(forward.output, self._returned)
        out = {name: found[i][1] for i, name in scalars}
        if set(out) - set(self._scalar_names):
            self._scalar_names = {**self._scalar_names, **{name: f"forward()'s {found[i][0]}" for i, name in scalars}}
            self._say_taken()
        return out

    def _first_step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer that trains the model is the run's."""
        self.optimizer = optimizer
        name = self._others.pop(id(optimizer), None)  # it stepped before as another's: it is the run's after all
        if name is not None:
            self.run.others.pop(name, None)
            self._others_given.pop(name, None)
        self.model = self._model_found
        self._returned = returned_names(self.model) if self.model is not None else None  # read from its source once, not each step
        self.run.attach(self.model, optimizer)
        arguments = plain_config(self.arguments())
        epochs = next((arguments[n] for n in EPOCHS_NAMES if isinstance(arguments.get(n), int)), None)
        self.run.config = {**arguments, **({"epochs": epochs} if epochs is not None else {})}
        update_config(
            self.run.run,
            config={"dataset": "your script", **self.run.config},
            model={"arch": "yours", "description": self.run.description},
            device={"kind": self.run.device, "name": ""},
        )
        self.run.begin(self._dataset_words())

    def _dataset_words(self) -> str:
        iterator = self.probes.iterator
        data = getattr(iterator, "_dataset", None)
        script = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "your script"
        try:
            return f"{type(data).__name__} ({len(data):,}), {script}" if data is not None else script
        except TypeError:  # an iterable dataset has no length
            return f"{type(data).__name__}, {script}"

    def _follow_epoch(self) -> None:
        """Epochs as the DataLoader that feeds the steps counts them: its iterations (a test loader's
        iterations between them are not epochs). The iteration is held weakly, as the probes hold it."""
        iterator = self.probes.iterator
        if iterator is None:
            return
        data, yielded = getattr(iterator, "_dataset", None), getattr(iterator, "_num_yielded", 0)
        if self._epoch is None:
            self._epoch = (data, weakref.ref(iterator), yielded)
        elif data is self._epoch[0] and (iterator is not self._epoch[1]() or yielded < self._epoch[2]):
            self.run.log_epoch(test_loss=self.test_loss)
            self.test_loss = None
        if data is self._epoch[0]:
            if iterator is not self._epoch[1]() or not self.run.batches_per_epoch:
                with contextlib.suppress(TypeError):  # an iterable dataset has no length
                    self.run.batches_per_epoch = len(iterator)
            self._epoch = (data, weakref.ref(iterator), yielded)
            self.run.batch_in_epoch = yielded

    def _kl(self, forward: Forward) -> torch.Tensor | None:
        if self.layout is None or len(parts(forward.output)) != len(self.layout.names):
            self._read_layout(forward)
        assert self.layout is not None
        posterior = self.layout.posterior(forward.output)
        if posterior is None:
            return None
        mu, logvar = posterior
        self.run.posterior = (mu.detach(), logvar.detach())  # the latest batch's: collapse and holes are diagnosed from it
        return kl_per_image(mu, logvar)

    def _read_layout(self, forward: Forward) -> None:
        """Which of forward()'s outputs is which (again when their number changes)."""
        layout = read_layout(forward.inputs, forward.output, self._returned)
        if layout != self.layout:
            self.layout = layout
            self._say_taken()

    def _term(self, value: Any, device: torch.device) -> torch.Tensor:
        """A step's term as a 0-d float32 tensor on the device, NaN (not known) when there is none."""
        if value is None:
            if device not in self._nan:
                self._nan[device] = torch.full((), math.nan, device=device)
            return self._nan[device]
        if isinstance(value, torch.Tensor):
            value = value.detach()
            return value if value.dtype == torch.float32 and not value.ndim else value.float().mean()
        return torch.tensor(float(value), device=device)

    def _say_taken(self) -> None:
        """Which tensors were taken for what, for the monitor's titles."""
        layout = self.layout
        terms = {"loss": "what backward() was called on"}
        if self.probes.summed:  # the script's own numbers: SCRIPT_LOSS in scalars.jsonl
            terms["loss"] = "backward()'s loss per image (your script sums it over its batch)"
        if layout is not None and layout.kl_words:
            terms["kl"] = layout.kl_words
        elif layout is not None and layout.unknown_kl_words:
            terms["kl_unknown"] = layout.unknown_kl_words
        if layout is not None and layout.recon_words:
            terms["pictures"] = f"input | {layout.recon_words}"
        terms.update(self._scalar_names)
        terms.update({name: f"the loss backward() was called on before {name}'s optimizer stepped" for name in self._others.values()})
        found = decoder_of(self.model) if self.model is not None else None
        if found is not None:
            terms["samples"] = f"{type(self.model).__name__}.{found[0]}(z), z ~ N(0, I)"
        self.run.telemetry.update_status(terms=terms)

    # -- pictures ----------------------------------------------------------------------------------
    def _take_pictures(self) -> None:
        self._pictures_at = _now()
        forward = self.probes.last
        layout = self.layout
        if forward is None or forward.inputs is None or layout is None or layout.recon is None:
            return
        found = parts(forward.output)
        if len(found) != len(layout.names):
            return
        shape = image_shape(forward.inputs, self.probes.batch)
        if shape is None:
            return
        span = span_of(forward.inputs)
        output = found[layout.recon][1]
        logits = are_logits(output, span)
        originals = as_pictures(forward.inputs, shape, False, span)
        recon = as_pictures(output, shape, logits, span)
        samples = self._samples(shape, logits, span, found[layout.mu][1] if layout.mu is not None else None)
        self.run.log_images(originals, recon, samples if samples is not None else originals[:0])

    def _samples(self, shape: tuple[int, int, int], logits: bool, span: Any, mu: torch.Tensor | None) -> Any:
        """The model's decoder (decoder_of) on fixed z ~ N(0, I), when it has one and the latent size is known."""
        found = decoder_of(self.model) if self.model is not None else None
        if self.model is None or found is None or mu is None or self._decode_failed:
            return None
        decode = found[1]
        z = torch.randn(8, *mu.shape[1:], generator=torch.Generator().manual_seed(1)).to(mu.device, mu.dtype)  # a latent map too
        try:
            with torch.no_grad(), rng_kept(mu.device), evaluating(self.model):
                out = decode(z)
            out = out if isinstance(out, torch.Tensor) else parts(out)[0][1]
            return as_pictures(out, shape, logits, span)
        except Exception:  # a decode that wants more than z: no samples (the pane says so), and no second try
            self._decode_failed = True
            terms = dict(self.run.telemetry.status().terms)
            terms.pop("samples", None)
            self.run.telemetry.update_status(terms=terms)
            return None

    # -- what the script adds with vae_tui.log ----------------------------------------------------------
    def log(self, **values: Any) -> None:
        """`vae_tui.log(recon=..., kl=...)` before the optimizer's step: the terms the hooks cannot know."""
        self.given.update(values)
        if "recon" in values or "kl" in values:
            terms = dict(self.run.telemetry.status().terms)
            terms.update({k: "vae_tui.log" for k in ("recon", "kl") if k in values})
            self.run.telemetry.update_status(terms=terms)

    def log_epoch(self, test_loss: float | None = None, **values: Any) -> None:
        self.test_loss = float(test_loss) if test_loss is not None else None

    # -- the end ---------------------------------------------------------------------------------------
    def _stop(self) -> None:
        step = self.run.step
        self._end(StopTraining(f"stopped at step {step}"))
        if self.agreement.active:  # a launcher takes a worker's non-zero status as a failure
            print(f"vae-tui: stopped at step {step:,}; the run is in {self.run.run.path}", file=sys.stderr)
            raise SystemExit(0)
        raise StopRequested(f"stopped at step {step:,}; the run is in {self.run.run.path}")

    def _stop_watchdog(self) -> None:
        """A stop the script does not reach a step to take: interrupt it where it is, as Ctrl+C would."""
        controls = self.run.controls
        while self.active and not controls.stopping:
            controls.wait(0.2)  # wakes at once for a stop; ends with the session
        deadline = _now() + STOP_WAIT_S
        while self.active and _now() < deadline:
            threading.Event().wait(0.05)
        if self.active:
            os.kill(os.getpid(), signal.SIGINT)  # a real signal: it also ends a sleep or a wait on a lock

    def _on_uncaught(self, kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if isinstance(exc, StopRequested):
            print(f"vae-tui: {exc}", file=sys.stderr)
            return
        self._failure = exc
        self._excepthook(kind, exc, tb)

    def _at_exit(self) -> None:
        if not self.active:
            return
        failure = self._failure or getattr(sys, "last_value", None)  # set before any excepthook, the script's own too
        if failure is None or isinstance(failure, KeyboardInterrupt):
            if failure is None and not self.run.controls.stopping and self._epoch is not None and self.run.steps_in_epoch:
                self.run.log_epoch(test_loss=self.test_loss)
            stopped = failure is not None or self.run.controls.stopping
            self._end(StopTraining("interrupted") if stopped else None)
        else:
            where = _script_line(failure)
            self._end(failure, f"your script raised {type(failure).__name__}{where}: {failure}")

    def _end(self, exc: BaseException | None, error: str = "") -> None:
        self._step_out()
        if not self.run.telemetry.status().dataset:
            self.run.begin(self._dataset_words())  # it never stepped: still a run that says what it was
        self.run.end(exc, error)

    def _step_out(self) -> None:
        """The session ends: every hook put back, and the stop watchdog ends."""
        self.active = False
        self.probes.remove()
        registry.set_session(None)

    def step_aside(self) -> None:
        """The script calls vae_tui.init after all: nothing of this run stays, so that init can take the folder."""
        if not self.active:
            return
        self._step_out()
        run = self.run
        run.close()
        for path in (run.run.config_path, run.run.status_path, run.run.events_path, run.run.metrics_path):
            path.unlink(missing_ok=True)
        for folder in (run.run.checkpoints, run.run.control_dir):
            try:
                folder.rmdir()
            except OSError:
                pass


def _script_line(exc: BaseException) -> str:
    """' (solver.py line 182)': the innermost frame of the traceback in the user's own files (not
    Python's, not an installed package's, not vae-tui's), named from the script's folder."""
    home = Path(os.path.abspath(sys.argv[0])).parent if sys.argv and sys.argv[0] else Path.cwd()
    tb, found = exc.__traceback__, None
    while tb is not None:
        file = tb.tb_frame.f_code.co_filename
        if users_file(file):
            found = (file, tb.tb_lineno)
        tb = tb.tb_next
    if found is None:
        return ""
    path = Path(os.path.abspath(found[0]))
    shown = path.relative_to(home) if path.is_relative_to(home) else path.name
    return f" ({shown} line {found[1]})"


def _now() -> float:
    return time.monotonic()
