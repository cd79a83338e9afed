"""Capturing the training step as one CUDA graph, the "whole-network capture" of PyTorch's CUDA
semantics notes: warm-up steps on a side stream, the capture, then one check that the graph
computes what the eager step computes, on the same batch from the same state.

Warm-up and check take real optimizer steps and draw real noise, so the model, Adam's state, the
step's counters and the random generators are kept before and put back after, in place (the graph
reads those very tensors): training starts from exactly the state it would have started from.
Anything that goes wrong is a reason, in words, to train eagerly instead; never a crash.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

from vae_tui.training.static_step import StaticStep

WARMUP_STEPS = 3  # PyTorch's notes warm up a few iterations: lazy initialisation stays out of the graph
# A graph replays the same kernels as the eager step, so both agree to the last bit or nearly (the
# order of a few reductions); a stale input, a lost update or a step the graph left out show up as
# differences of the order of the learning rate (1e-3) in the weights and of whole nats in the loss.
RTOL, ATOL = 1e-3, 1e-5


class Graphs(Protocol):
    """How a step is captured: CUDA's graphs, or (on a CPU, for tests) the program run as it is."""

    def warm_up(self, program: Callable[[], None], times: int) -> None: ...

    def capture(self, program: Callable[[], None]) -> Callable[[], None]: ...


class CudaGraphs:
    def __init__(self, device: torch.device) -> None:
        self.device = device

    def warm_up(self, program: Callable[[], None], times: int) -> None:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(times):
                program()
        torch.cuda.current_stream(self.device).wait_stream(side)

    def capture(self, program: Callable[[], None]) -> Callable[[], None]:
        graph, cause = torch.cuda.CUDAGraph(), []
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
        return graph.replay


class Uncaptured:
    """The capture's protocol with no graph: `replay` runs the program. What a CPU can do, so that the
    rehearsal, the check and the fallbacks around a capture are tested where there is no GPU."""

    def warm_up(self, program: Callable[[], None], times: int) -> None:
        for _ in range(times):
            program()

    def capture(self, program: Callable[[], None]) -> Callable[[], None]:
        return program


class Kept:
    """The values of everything a step changes, to put back into the same tensors."""

    def __init__(self, step: StaticStep) -> None:
        self.model = {name: t.detach().clone() for name, t in step.model.state_dict().items()}
        self.optimizer = {id(p): {k: v.detach().clone() for k, v in s.items() if isinstance(v, torch.Tensor)} for p, s in step.optimizer.state.items()}
        self.buffers = [t.clone() for t in step.buffers()]
        self.rng = torch.get_rng_state()
        device = step.state.device
        self.device_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @torch.no_grad()
    def restore(self, step: StaticStep) -> None:
        for name, t in step.model.state_dict().items():
            t.copy_(self.model[name])
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
        step.optimizer.zero_grad(set_to_none=True)
        torch.set_rng_state(self.rng)
        if self.device_rng is not None:
            torch.cuda.set_rng_state(self.device_rng, step.state.device)


def capture(step: StaticStep, graphs: Graphs) -> str | None:
    """Capture `step` and check it; None when `step.replay` is set and agrees with the eager step,
    otherwise why not (the state is then as it was, and the run steps eagerly)."""
    kept = Kept(step)
    whole = lambda: step.program(step.batch)  # noqa: E731
    try:
        graphs.warm_up(whole, WARMUP_STEPS)
        kept.restore(step)  # also sets the gradients to None: the capture makes them in the graph's memory
        replay = graphs.capture(whole)
        kept.restore(step)
        differs = _check(step, whole, replay, kept)
    except Exception as exc:  # a model that syncs with the host, an operation a graph cannot hold...
        kept.restore(step)
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"capturing it failed ({type(exc).__name__}{': ' + line[:160] if line else ''})"
    kept.restore(step)
    if differs is None:
        step.replay = replay
    return differs


def _check(step: StaticStep, eager: Callable[[], None], replay: Callable[[], None], kept: Kept) -> str | None:
    """One step eagerly and one replayed, from the same state on the same batch: what differs, or None."""
    eager()
    expected = _outcome(step)
    kept.restore(step)
    replay()
    got = _outcome(step)
    close = torch.isclose(got, expected, rtol=RTOL, atol=ATOL, equal_nan=True)
    if bool(close.all()):
        return None
    worst = float((got - expected).abs().nan_to_num(float("inf")).max())
    return f"the captured step disagreed with the eager step by up to {worst:.3g} on the same batch (tolerance {RTOL:g} relative, {ATOL:g} absolute)"


def _outcome(step: StaticStep) -> torch.Tensor:
    """The step's loss terms and the weights it left, in one vector (one host copy)."""
    weights = [p.detach().reshape(-1).float() for p in step.model.parameters()]
    return torch.cat([step.terms.rows(1).reshape(-1), *weights]).cpu()
