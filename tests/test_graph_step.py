"""The training step as one CUDA graph (--step): which step a run uses and why, the same numbers as the
eager step, live changes and resume, and a clear fallback when a capture fails or disagrees.

CUDA graphs need a GPU. Here the step's program runs uncaptured (graph.Uncaptured): the very code a
graph records, with the rehearsal, the restore and the check around it, so everything but the
recording itself is tested on a CPU. The tests marked `cuda` capture for real, where there is one.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from helpers import ChangeAt, StopAtStep, small_config
from vae_tui.config import TrainConfig
from vae_tui.errors import ConfigError
from vae_tui.runfile.files import write_config
from vae_tui.runfile.layout import open_run_dir
from vae_tui.runfile.metrics import read_metrics
from vae_tui.runfile.schema import RunInfo, RunState
from vae_tui.training import static_step
from vae_tui.training.checkpoint import load_checkpoint
from vae_tui.training.device import pick_device
from vae_tui.training.graph import Uncaptured
from vae_tui.training.loop import Trainer, default_hooks
from vae_tui.training.steps import plan_step

CPU = pick_device("cpu")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def trainer_for(tmp_path, data, name, graphs=None, device=CPU, resume_state=None, extra_hooks=(), placement="device", **changes):
    run = open_run_dir(tmp_path / name, resuming=True)
    write_config(run, RunInfo(step={"mode": "not yet", "why": ""}))
    return Trainer(
        small_config(**changes),
        data,
        device,
        run_dir=run,
        resume_state=resume_state,
        graphs=graphs,
        hooks=default_hooks(run) + list(extra_hooks),
        placement=placement,
    ), run


def assert_same_weights(a: Trainer, b: Trainer) -> None:
    for name, param in a.state.model.state_dict().items():
        assert torch.equal(param, b.state.model.state_dict()[name]), name


def assert_same_records(a, b) -> None:
    first, second = read_metrics(a.metrics_path), read_metrics(b.metrics_path)
    columns = [0, 1, 2, 3, 4, 6, 7]  # every field of every batch record but its time
    assert len(first.batches) and np.array_equal(first.batches[:, columns], second.batches[:, columns])


# -- which step, and why ------------------------------------------------------------------------------
def test_auto_uses_the_graph_where_it_applies_and_says_why_not_elsewhere():
    config = TrainConfig().validate()
    assert plan_step(config, "cuda", 1, "stop").mode == "graph"
    assert plan_step(config.replace(precision="bf16"), "cuda", 1, "pause").mode == "graph"
    for kind, ranks, on_nan, changes, words in [
        ("cpu", 1, "stop", {}, "CUDA graphs need a CUDA GPU, and this run trains on cpu"),
        ("mps", 1, "stop", {}, "trains on mps"),
        ("cuda", 2, "stop", {}, "under torchrun each rank steps eagerly"),
        ("cuda", 1, "stop", {"precision": "fp16"}, "fp16's loss scaler"),
        ("cuda", 1, "skip", {}, "--on-nan skip"),
        ("cuda", 1, "stop", {"compile": True}, "--compile"),
        ("cuda", 1, "stop", {"step": "eager"}, "asked for (--step eager)"),
    ]:
        plan = plan_step(config.replace(**changes), kind, ranks, on_nan)
        assert plan.mode == "eager" and words in plan.why, (kind, ranks, on_nan, changes, plan)
    with pytest.raises(ConfigError, match="--step graph cannot be used here: CUDA graphs need a CUDA GPU"):
        plan_step(config.replace(step="graph"), "cpu", 1, "stop")
    assert plan_step(config.replace(step="graph"), "cpu", 1, "stop", strict=False).mode == "eager"
    assert plan_step(config.replace(step="graph", compile=True), "cuda", 1, "stop").mode == "graph"  # asked for: tried
    with pytest.raises(ConfigError, match="unknown --step 'fast'"):
        TrainConfig(step="fast").validate()


def test_a_cpu_run_says_it_steps_eagerly_in_its_status(tmp_path, small_digits):
    trainer, _ = trainer_for(tmp_path, small_digits, "run", epochs=1)
    assert trainer.run().state == RunState.FINISHED
    status = trainer.telemetry.status()
    assert (status.step_mode, status.step_why) == ("eager", "CUDA graphs need a CUDA GPU, and this run trains on cpu")


# -- the same numbers ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"arch": "conv"},
        {"likelihood": "gaussian"},
        {"arch": "conv", "likelihood": "gaussian"},
        {"kl_warmup": 2, "beta": 0.7},
        {"precision": "bf16"},
    ],
    ids=["mlp", "conv", "gaussian", "conv-gaussian", "kl-warmup", "bf16"],
)
def test_the_graphs_step_trains_bit_for_bit_as_the_eager_step(tmp_path, small_digits, changes):
    """The program a graph records, run on a CPU: the same batches, noise, loss terms, gradients and
    Adam updates as the eager step, to the last bit (its learning rate is a float64 tensor here,
    exactly the eager float; CUDA's fused Adam takes float32, see the cuda test below). 400 images in
    batches of 64 end every epoch with a short batch of 16, which runs uncaptured."""
    eager, eager_run = trainer_for(tmp_path, small_digits, "eager", epochs=3, **changes)
    graphed, graphed_run = trainer_for(tmp_path, small_digits, "graphed", graphs=Uncaptured(), epochs=3, **changes)
    assert eager.run().state == RunState.FINISHED and graphed.run().state == RunState.FINISHED
    assert (eager.plan.mode, graphed.plan.mode) == ("eager", "graph")
    assert_same_weights(eager, graphed)
    assert_same_records(eager_run, graphed_run)
    assert graphed.telemetry.status().step_mode == "graph"
    saved = load_checkpoint(graphed_run.last_checkpoint)["optimizer"]["param_groups"][0]
    assert saved["lr"] == 1e-3 and saved["capturable"] is False  # as the eager step's Adam keeps it: either resumes


def test_live_changes_reach_the_graph_without_a_recapture(tmp_path, small_digits):
    changes = [ChangeAt(5, lr=3e-3, beta=0.5), ChangeAt(12, lr=1e-4)]
    eager, eager_run = trainer_for(tmp_path, small_digits, "eager", epochs=3, extra_hooks=changes)
    graphed, graphed_run = trainer_for(tmp_path, small_digits, "graphed", graphs=Uncaptured(), epochs=3, extra_hooks=changes)
    assert eager.run().state == RunState.FINISHED and graphed.run().state == RunState.FINISHED
    assert_same_weights(eager, graphed)
    assert_same_records(eager_run, graphed_run)
    assert graphed.state.optimizer.param_groups[0]["lr"].item() == 1e-4  # the tensor the graph reads, changed in place


@pytest.mark.parametrize("stop_step", [10, 14])  # mid-epoch, and exactly at an epoch's end
def test_a_graphed_run_resumes_exactly(tmp_path, small_digits, stop_step):
    whole, whole_run = trainer_for(tmp_path, small_digits, "whole", graphs=Uncaptured(), epochs=3)
    assert whole.run().state == RunState.FINISHED
    first, run = trainer_for(tmp_path, small_digits, "split", graphs=Uncaptured(), epochs=3, extra_hooks=[StopAtStep(stop_step)])
    first.losses.flush_seconds = 0.0
    assert first.run().state == RunState.STOPPED and first.result.step == stop_step
    second, _ = trainer_for(tmp_path, small_digits, "split", graphs=Uncaptured(), epochs=3, resume_state=load_checkpoint(run.last_checkpoint))
    assert second.run().state == RunState.FINISHED
    assert_same_weights(whole, second)
    assert_same_records(whole_run, run)


def test_streamed_images_reach_the_graphs_input_and_train_as_on_the_device(tmp_path, small_digits):
    """Each batch copied into the buffer the graph reads, stopped mid-epoch and resumed: the eager
    run with every image on the device, to the last bit."""
    data = dataclasses.replace(
        small_digits, train_x=np.round(small_digits.train_x * 255).astype(np.uint8), test_x=np.round(small_digits.test_x * 255).astype(np.uint8)
    )  # as the picture cache holds them
    whole, whole_run = trainer_for(tmp_path, data, "whole", epochs=3)
    first, run = trainer_for(tmp_path, data, "split", graphs=Uncaptured(), epochs=3, placement="stream", extra_hooks=[StopAtStep(10)])
    first.losses.flush_seconds = 0.0
    assert whole.run().state == RunState.FINISHED and first.run().state == RunState.STOPPED
    assert first.plan.mode == "graph" and first.telemetry.status().data_placement == "stream"
    second, _ = trainer_for(tmp_path, data, "split", graphs=Uncaptured(), epochs=3, placement="stream", resume_state=load_checkpoint(run.last_checkpoint))
    assert second.run().state == RunState.FINISHED
    assert_same_weights(whole, second)
    assert_same_records(whole_run, run)


def test_the_loss_ring_is_read_before_it_fills(tmp_path, small_digits, monkeypatch):
    monkeypatch.setattr(static_step.TermRing, "capacity", 3)  # a flush every three steps, however slow the clock
    trainer, run = trainer_for(tmp_path, small_digits, "run", graphs=Uncaptured(), epochs=2)
    trainer.losses.flush_seconds = 3600.0
    assert trainer.run().state == RunState.FINISHED
    steps = read_metrics(run.metrics_path).column("step")
    assert steps.tolist() == list(range(1, 15))


# -- when the graph is not used ------------------------------------------------------------------------
class FailingCapture(Uncaptured):
    """What a model that syncs with the host does to a capture."""

    def capture(self, program):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore detail")


class WrongCapture(Uncaptured):
    """A capture that replays something else than the step: here, a step whose noise is always new."""

    def capture(self, program):
        def replay():
            torch.manual_seed(torch.seed())
            program()

        return replay


@pytest.mark.parametrize(
    "graphs, says",
    [
        (FailingCapture(), "capturing it failed (RuntimeError: CUDA error: operation not permitted when stream is capturing)"),
        (WrongCapture(), "the captured step disagreed with the eager step by up to"),
    ],
    ids=["capture-fails", "capture-disagrees"],
)
def test_a_graph_that_cannot_be_used_leaves_an_eager_run_as_if_none_was_tried(tmp_path, small_digits, graphs, says):
    """One warning that says why, the status and config.json say eager, and the run is the eager run
    to the last bit: the rehearsal's steps and noise were put back."""
    eager, eager_run = trainer_for(tmp_path, small_digits, "eager", epochs=2)
    tried, tried_run = trainer_for(tmp_path, small_digits, "tried", graphs=graphs, epochs=2)
    assert eager.run().state == RunState.FINISHED and tried.run().state == RunState.FINISHED
    assert_same_weights(eager, tried)
    assert_same_records(eager_run, tried_run)
    warnings = [e.message for e in tried.telemetry.events() if e.kind == "warning"]
    assert len(warnings) == 1 and warnings[0].startswith("training steps eagerly: " + says), warnings
    status = tried.telemetry.status()
    assert status.step_mode == "eager" and status.step_why.startswith("the CUDA graph is not used: " + says)
    recorded = json.loads(tried_run.config_path.read_text())["step"]
    assert recorded["mode"] == "eager" and says in recorded["why"]
    assert not isinstance(tried.state.optimizer.param_groups[0]["lr"], torch.Tensor)  # the eager step's Adam again


# -- on a GPU ------------------------------------------------------------------------------------------
@cuda
def test_on_cuda_the_captured_step_trains_as_the_eager_one(tmp_path, small_digits):
    """The one difference is Adam's rate, read as float32 by CUDA's fused Adam in the graph (1e-3 is
    0.0010000000475 there): after 21 steps the weights agree to well within 1e-4."""
    gpu = pick_device("cuda")
    eager, _ = trainer_for(tmp_path, small_digits, "eager", device=gpu, epochs=3, step="eager")
    graphed, _ = trainer_for(tmp_path, small_digits, "graphed", device=gpu, epochs=3)
    assert eager.run().state == RunState.FINISHED and graphed.run().state == RunState.FINISHED
    assert (eager.plan.mode, graphed.plan.mode) == ("eager", "graph"), graphed.plan.why
    for name, param in eager.state.model.state_dict().items():
        torch.testing.assert_close(graphed.state.model.state_dict()[name], param, rtol=1e-4, atol=1e-4)


@cuda
def test_on_cuda_a_graphed_run_resumes_exactly(tmp_path, small_digits):
    gpu = pick_device("cuda")
    whole, whole_run = trainer_for(tmp_path, small_digits, "whole", device=gpu, epochs=3)
    first, run = trainer_for(tmp_path, small_digits, "split", device=gpu, epochs=3, extra_hooks=[StopAtStep(10)])
    first.losses.flush_seconds = 0.0
    assert whole.run().state == RunState.FINISHED and first.run().state == RunState.STOPPED
    second, _ = trainer_for(tmp_path, small_digits, "split", device=gpu, epochs=3, resume_state=load_checkpoint(run.last_checkpoint))
    assert second.run().state == RunState.FINISHED and second.plan.mode == "graph"
    assert_same_weights(whole, second)
    assert_same_records(whole_run, run)
