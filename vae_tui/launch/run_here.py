"""Training in this process: the trainer on its own thread, the publisher beside it, the plain view
on the main thread. `--headless` runs this; so does the worker process behind the monitor."""

from __future__ import annotations

import math
import time
from typing import Callable

from rich.console import Console

from vae_tui.errors import say_error
from vae_tui.launch import signals
from vae_tui.launch.prepare import Prepared
from vae_tui.runfile import lock
from vae_tui.runfile.schema import RunState
from vae_tui.telemetry import Telemetry
from vae_tui.timefmt import duration
from vae_tui.training.controls import Controls, give_back
from vae_tui.training.hooks import Hook
from vae_tui.training.loop import Trainer, TrainResult, default_hooks
from vae_tui.training.publish import Publisher
from vae_tui.training.world import ALONE, World
from vae_tui.views.output import BROKEN_PIPE_STATUS, Output
from vae_tui.views.plain import follow


class Announce(Hook):
    """Calls back once, when training first starts: the model is built and on its device."""

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback: Callable[[], None] | None = callback

    def on_start(self, trainer: Trainer) -> None:
        if self.callback is not None:
            self.callback()
            self.callback = None


def train_here(p: Prepared, console: Console, on_started: Callable[[], None] | None = None, world: World = ALONE) -> int:
    """Train to the end (or a signal, or a stop command); returns the exit status. Under torchrun,
    rank 0 does this with everything; the other ranks (no run directory) train and say only errors."""
    telemetry, controls = Telemetry(), Controls()
    for warning in p.warnings:  # said before it started; watchers and the monitor see them too
        telemetry.event("warning", warning)
    hooks = default_hooks(p.run) + ([Announce(on_started)] if on_started else []) if world.main else []
    trainer = Trainer(
        p.config,
        p.data,
        p.device,
        telemetry,
        controls,
        p.run if world.main else None,
        resume_state=p.state,
        weights=p.weights,
        on_nan=p.request.on_nan,
        hooks=hooks,
        placement=p.placement,
        world=world,
    )
    publisher = Publisher(p.run, telemetry, controls) if world.main else None
    previous = signals.current_handlers()
    started = time.time()
    if publisher is not None:
        publisher.start()
    said = len(telemetry.events())  # the warnings above, printed by the caller before training
    if p.restarted:  # torchrun's restart: said by the plain view, in events.jsonl for watchers and the monitor
        telemetry.event("restart", p.restarted)
    output = console.file if isinstance(console.file, Output) else None
    if output is not None:  # `| head`: the reader went away; stop as a hang-up does, the run kept to resume
        output.when_gone(lambda: controls.stop(save=True))
    thread = trainer.start()
    code = signals.install_signal_handlers(lambda: controls.stop(save=True), lambda: controls.stopping, None, quiet=not world.main)
    try:
        if world.main:
            follow(thread, telemetry, console, said)
        while thread.is_alive():
            thread.join(0.25)
    finally:
        if thread.is_alive():  # interrupted some other way: stop cleanly, keep the work
            controls.stop(save=True)
            thread.join()
        if publisher is not None:
            publisher.close()
            lock.release(p.run)
        give_back(previous)
    result = trainer.result
    assert result is not None
    if result.state == RunState.ERROR:
        say_error(result.message)
        return 1
    if world.main:
        _say_end(p, console, result, started)
    if output is not None and output.gone.is_set() and not code[0]:
        return BROKEN_PIPE_STATUS
    return code[0]  # a signal's code when one stopped it (also during the final evaluation), else 0


def _say_end(p: Prepared, console: Console, result: TrainResult, started: float) -> None:
    best = f"; best test loss {result.best_test_loss:.3f}" if math.isfinite(result.best_test_loss) else ""
    console.print(f"{result.message} in {duration(time.time() - started)}{best}")
    if result.last_checkpoint:
        console.print(f"checkpoint: {result.last_checkpoint}" + (f" (best: {result.best_checkpoint.name})" if result.best_checkpoint else ""))
    console.print(f"metrics:    {p.run.metrics_path}")
    if result.state == RunState.STOPPED:
        console.print(f"continue with: vae-tui train --resume {p.run.path}")
