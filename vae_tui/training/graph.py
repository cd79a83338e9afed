"""Capturing the training step as one CUDA graph, the "whole-network capture" of PyTorch's CUDA
semantics notes: warm-up steps on a side stream, the capture, then a check that the graph computes
what the eager step computes.

A graph replays kernels, never the Python around them, so the check is made where a frozen value
would show: two steps from the same state on the same batch, with the learning rate and beta changed
between them, once eagerly and once replayed; and before that, the model's own Python values (a
step counter in an attribute, a tensor bound to a new name) looked at across the rehearsal, since a
graph would keep them as captured.

Rehearsal and check take real optimizer steps and draw real noise, so the model (every parameter and
buffer, persistent or not), Adam's state, the step's counters, the random generators and the model's
Python values are kept before and put back after, in place (the graph reads those very tensors):
training starts from exactly the state it would have started from. The rehearsal reads the first
full batch of the data each time, never past it. Anything that goes wrong is a reason, in words, to
train eagerly instead; never a crash.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

from vae_tui.training.frozen import frozen_words, put_back, python_values
from vae_tui.training.static_step import StaticStep

WARMUP_STEPS = 3  # PyTorch's notes warm up a few iterations: lazy initialisation stays out of the graph
# A graph replays the same kernels as the eager step, so both agree to the last bit or nearly (the
# order of a few reductions); a stale input, a lost update or a step the graph left out show up as
# differences of the order of the learning rate (1e-3) in the weights and of whole nats in the loss.
RTOL, ATOL = 1e-3, 1e-5
CHECK_LR, CHECK_BETA = 0.5, 0.5  # the check's second step trains with these times the lr and beta (beta 0: 0.5)


class Graphs(Protocol):
    """How a step is captured: CUDA's graphs, or (emulated_graph.py) recorded replays on any device."""

    def warm_up(self, program: Callable[[], None], times: int) -> None: ...

    def capture(self, program: Callable[[], None]) -> Callable[[], None]: ...


class CudaGraphs:
    def __init__(self, device: torch.device) -> None:
        self.device = device

    def warm_up(self, program: Callable[[], None], times: int) -> None:
        own = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(own)
        try:
            with torch.cuda.stream(side):
                for _ in range(times):
                    program()
        finally:  # the eager step that may follow a failure reads what the side stream wrote
            own.wait_stream(side)

    def capture(self, program: Callable[[], None]) -> Callable[[], None]:
        graph, cause = torch.cuda.CUDAGraph(), []
        own = torch.cuda.current_stream(self.device)
        try:
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # other threads' CUDA calls are theirs
                try:
                    program()
                except Exception as exc:
                    cause.append(exc)
                    raise
        except Exception:
            if cause:  # what the program did, not the capture's complaint about it on the way out
                raise cause[0] from None
            raise
        finally:  # a capture that fails ends inside torch.cuda.graph's exit, before it leaves its stream
            if torch.cuda.current_stream(self.device) != own:
                torch.cuda.set_stream(own)
        return graph.replay


class Kept:
    """The values of everything a step changes, to put back into the same tensors (and attributes)."""

    def __init__(self, step: StaticStep) -> None:
        model = step.model
        self.tensors = [t.detach().clone() for t in _model_tensors(model)]  # parameters and all buffers, persistent or not
        self.optimizer = {id(p): {k: v.detach().clone() for k, v in s.items() if isinstance(v, torch.Tensor)} for p, s in step.optimizer.state.items()}
        self.buffers = [t.clone() for t in step.buffers()]
        self.python = python_values(model)
        self.rng = torch.get_rng_state()
        device = step.state.device
        self.device_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @torch.no_grad()
    def restore(self, step: StaticStep) -> None:
        for t, kept in zip(_model_tensors(step.model), self.tensors):
            t.copy_(kept)
        for p, state in step.optimizer.state.items():
            saved = self.optimizer.get(id(p), {})
            for k, v in state.items():
                if not isinstance(v, torch.Tensor):
                    continue
                if k in saved:
                    v.copy_(saved[k])
                else:  # made by the warm-up: zero, as a fresh Adam starts
                    v.zero_()
        for t, kept in zip(step.buffers(), self.buffers):
            t.copy_(kept)
        put_back(step.model, self.python)
        step.optimizer.zero_grad(set_to_none=True)
        torch.set_rng_state(self.rng)
        if self.device_rng is not None:
            torch.cuda.set_rng_state(self.device_rng, step.state.device)


def _model_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


def capture(step: StaticStep, graphs: Graphs) -> str | None:
    """Capture `step` and check it; None when `step.replay` is set and agrees with the eager step,
    otherwise why not (the state is then as it was, and the run steps eagerly)."""
    kept = Kept(step)
    try:
        graphs.warm_up(step.rehearse, WARMUP_STEPS)
        differs = frozen_words(kept.python, step.model)
        if differs is None:
            kept.restore(step)  # also sets the gradients to None: the capture makes them in the graph's memory
            step.source.rewind()
            replay = graphs.capture(lambda: step.program(step.batch))
            kept.restore(step)
            differs = _check(step, replay, kept)
    except Exception as exc:  # a model that syncs with the host, an operation a graph cannot hold...
        kept.restore(step)
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"capturing it failed ({type(exc).__name__}{': ' + line[:160] if line else ''})"
    kept.restore(step)
    if differs is None:
        step.replay = replay
    return differs


def _check(step: StaticStep, replay: Callable[[], None], kept: Kept) -> str | None:
    """Two steps eagerly and two replayed, from the same state on the same batch, with the lr and beta
    changed between the two: what differs, or None."""
    expected = _two_steps(step, lambda: step.program(step.batch))
    kept.restore(step)
    got = _two_steps(step, replay)
    close = torch.isclose(got, expected, rtol=RTOL, atol=ATOL, equal_nan=True)
    if bool(close.all()):
        return None
    worst = float((got - expected).abs().nan_to_num(float("inf")).max())
    return (
        f"the captured step disagreed with the eager step by up to {worst:.3g} over two steps on the same batch, "
        f"the lr and beta changed between them (tolerance {RTOL:g} relative, {ATOL:g} absolute)"
    )


def _two_steps(step: StaticStep, one: Callable[[], None]) -> torch.Tensor:
    state = step.state
    lr, beta = state.lr, state.beta
    step.source.rewind()
    one()
    _settings(step, lr * CHECK_LR, beta * CHECK_BETA if beta else 0.5)
    step.source.rewind()
    one()
    _settings(step, lr, beta)
    return _outcome(step, 2)


def _settings(step: StaticStep, lr: float, beta: float) -> None:
    """A live change, as the loop makes one (training.Trainer.take_values)."""
    step.state.set_lr(lr)
    step.state.beta = beta
    step.settings_changed()


def _outcome(step: StaticStep, rows: int) -> torch.Tensor:
    """The steps' loss terms and the weights they left, in one vector (one host copy)."""
    weights = [p.detach().reshape(-1).float() for p in step.model.parameters()]
    return torch.cat([step.terms.rows(rows).reshape(-1), *weights]).cpu()
