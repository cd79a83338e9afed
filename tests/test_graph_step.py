"""The training step as one CUDA graph (--step): which step a run uses and why, the same numbers as the
eager step, live changes and resume, and a clear fallback when a capture fails or disagrees.

CUDA graphs need a GPU. Here the step is captured by the emulated graph (emulated_graph.py, also
--step emulate): recorded once and replayed without its Python, so whatever a CUDA graph would
freeze (a float, a rebound tensor, a counter in an attribute) is frozen here too, and the rehearsal,
the restore and the check around it run as on CUDA. The tests marked `cuda` capture for real, where
there is one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json

import numpy as np
import pytest
import torch

from helpers import ChangeAt, StopAtStep, small_config
from vae_tui.config import TrainConfig
from vae_tui.errors import ConfigError
from vae_tui.runfile.files import read_scalars, write_config
from vae_tui.runfile.layout import open_run_dir
from vae_tui.runfile.metrics import read_metrics
from vae_tui.runfile.schema import RunInfo, RunState
from vae_tui.training import static_step
from vae_tui.training.checkpoint import load_checkpoint
from vae_tui.training.device import pick_device
from vae_tui.training.emulated_graph import EmulatedGraphs
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
    assert read_scalars(a) == read_scalars(b)  # the named terms too (a VQ-VAE's)


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
        {"arch": "vq"},
    ],
    ids=["mlp", "conv", "gaussian", "conv-gaussian", "kl-warmup", "bf16", "vq"],
)
def test_the_graphs_step_trains_bit_for_bit_as_the_eager_step(tmp_path, small_digits, changes):
    """The program a graph records, run on a CPU: the same batches, noise, loss terms, gradients and
    Adam updates as the eager step, to the last bit (its learning rate is a float64 tensor here,
    exactly the eager float; CUDA's fused Adam takes float32, see the cuda test below). 400 images in
    batches of 64 end every epoch with a short batch of 16, which runs uncaptured."""
    eager, eager_run = trainer_for(tmp_path, small_digits, "eager", epochs=3, **changes)
    graphed, graphed_run = trainer_for(tmp_path, small_digits, "graphed", graphs=EmulatedGraphs(), epochs=3, **changes)
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
    graphed, graphed_run = trainer_for(tmp_path, small_digits, "graphed", graphs=EmulatedGraphs(), epochs=3, extra_hooks=changes)
    assert eager.run().state == RunState.FINISHED and graphed.run().state == RunState.FINISHED
    assert_same_weights(eager, graphed)
    assert_same_records(eager_run, graphed_run)
    assert graphed.state.optimizer.param_groups[0]["lr"].item() == 1e-4  # the tensor the graph reads, changed in place


@pytest.mark.parametrize("stop_step", [10, 14])  # mid-epoch, and exactly at an epoch's end
def test_a_graphed_run_resumes_exactly(tmp_path, small_digits, stop_step):
    whole, whole_run = trainer_for(tmp_path, small_digits, "whole", graphs=EmulatedGraphs(), epochs=3)
    assert whole.run().state == RunState.FINISHED
    first, run = trainer_for(tmp_path, small_digits, "split", graphs=EmulatedGraphs(), epochs=3, extra_hooks=[StopAtStep(stop_step)])
    first.losses.flush_seconds = 0.0
    assert first.run().state == RunState.STOPPED and first.result.step == stop_step
    second, _ = trainer_for(tmp_path, small_digits, "split", graphs=EmulatedGraphs(), epochs=3, resume_state=load_checkpoint(run.last_checkpoint))
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
    first, run = trainer_for(tmp_path, data, "split", graphs=EmulatedGraphs(), epochs=3, placement="stream", extra_hooks=[StopAtStep(10)])
    first.losses.flush_seconds = 0.0
    assert whole.run().state == RunState.FINISHED and first.run().state == RunState.STOPPED
    assert first.plan.mode == "graph" and first.telemetry.status().data_placement == "stream"
    second, _ = trainer_for(tmp_path, data, "split", graphs=EmulatedGraphs(), epochs=3, placement="stream", resume_state=load_checkpoint(run.last_checkpoint))
    assert second.run().state == RunState.FINISHED
    assert_same_weights(whole, second)
    assert_same_records(whole_run, run)


def test_the_loss_ring_is_read_before_it_fills(tmp_path, small_digits, monkeypatch):
    monkeypatch.setattr(static_step.TermRing, "capacity", 3)  # a flush every three steps, however slow the clock
    trainer, run = trainer_for(tmp_path, small_digits, "run", graphs=EmulatedGraphs(), epochs=2)
    trainer.losses.flush_seconds = 3600.0
    assert trainer.run().state == RunState.FINISHED
    steps = read_metrics(run.metrics_path).column("step")
    assert steps.tolist() == list(range(1, 15))


# -- when the graph is not used ------------------------------------------------------------------------
class FailingCapture(EmulatedGraphs):
    """What a model that syncs with the host does to a capture."""

    def capture(self, program):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore detail")


class WrongCapture(EmulatedGraphs):
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


# -- what a graph freezes, and data a graph must not read past ------------------------------------------
def subset(data, count):
    return dataclasses.replace(data, train_x=data.train_x[:count], train_y=data.train_y[:count])


@pytest.mark.parametrize("images", [150, 100], ids=["two-batches-and-a-bit", "one-batch-and-a-bit"])
def test_a_graph_is_rehearsed_on_data_of_fewer_than_three_batches(tmp_path, small_digits, images):
    """The rehearsal reads the first full batch each time, never past the data (on CUDA an index out of
    range is a device-side assert that ends the process's use of the GPU)."""
    data = subset(small_digits, images)
    eager, eager_run = trainer_for(tmp_path, data, "eager", epochs=3)
    graphed, graphed_run = trainer_for(tmp_path, data, "graphed", graphs=EmulatedGraphs(), epochs=3)
    assert eager.run().state == RunState.FINISHED and graphed.run().state == RunState.FINISHED
    assert graphed.plan.mode == "graph", graphed.plan.why
    assert not [e for e in graphed.telemetry.events() if e.kind == "warning"]
    assert_same_weights(eager, graphed)
    assert_same_records(eager_run, graphed_run)


def test_data_of_less_than_one_batch_steps_eagerly_and_says_why(tmp_path, small_digits):
    trainer, _ = trainer_for(tmp_path, subset(small_digits, 50), "run", graphs=EmulatedGraphs(), epochs=2)
    assert trainer.run().state == RunState.FINISHED
    assert trainer.plan.mode == "eager" and "the 50 training images are fewer than one batch (64)" in trainer.plan.why
    assert not [e for e in trainer.telemetry.events() if e.kind == "warning"]  # a plan, not a failed capture
    with pytest.raises(ConfigError, match="--step graph cannot be used here: the 50 training images are fewer than one batch"):
        plan_step(small_config(step="graph"), "cuda", 1, "stop", train_images=50)


@pytest.mark.parametrize("stop_step", [1, 2], ids=["two-batches-left", "one-batch-left"])
def test_a_graphed_run_resumes_with_few_batches_left_in_its_epoch(tmp_path, small_digits, stop_step):
    """150 images in batches of 64: 64, 64 and 22 an epoch; stopped after the first or second."""
    data = subset(small_digits, 150)
    whole, whole_run = trainer_for(tmp_path, data, "whole", epochs=2)
    first, run = trainer_for(tmp_path, data, "split", graphs=EmulatedGraphs(), epochs=2, extra_hooks=[StopAtStep(stop_step)])
    first.losses.flush_seconds = 0.0
    assert whole.run().state == RunState.FINISHED and first.run().state == RunState.STOPPED
    second, _ = trainer_for(tmp_path, data, "split", graphs=EmulatedGraphs(), epochs=2, resume_state=load_checkpoint(run.last_checkpoint))
    assert second.run().state == RunState.FINISHED
    assert (first.plan.mode, second.plan.mode) == ("graph", "graph"), (first.plan.why, second.plan.why)
    assert_same_weights(whole, second)
    assert_same_records(whole_run, run)


YOUR_MODELS = """
import torch
from torch import nn


class Small(nn.Module):
    def __init__(self, latent_dim=4):
        super().__init__()
        self.enc, self.dec = nn.Linear(64, 2 * latent_dim), nn.Linear(latent_dim, 64)

    def forward(self, x):
        mu, logvar = self.enc(x).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() * self.noise()
        return self.decode(z) + self.offset(), mu, logvar

    def decode(self, z):
        return self.dec(z)

    def noise(self):
        return 1.0

    def offset(self):
        return 0.0


class Annealed(Small):
    # The noise annealed in by a Python counter: a CUDA graph keeps the value it captured.

    def __init__(self, latent_dim=4):
        super().__init__(latent_dim)
        self.calls = 0

    def noise(self):
        self.calls += self.training  # pictures and held-out losses are drawn in eval mode, at their own pace
        return min(1.0, self.calls / 50)


class Branching(Small):
    # A branch taken on the host from a Python flag the forward flips.

    def __init__(self, latent_dim=4):
        super().__init__(latent_dim)
        self.odd = False

    def offset(self):
        self.odd = self.odd != self.training
        return 0.1 if self.odd else -0.1


class Rebinding(Small):
    # A tensor attribute (not a buffer) bound to a new tensor each step.

    def __init__(self, latent_dim=4):
        super().__init__(latent_dim)
        self.scale = torch.ones(())

    def noise(self):
        self.scale = self.scale * (0.9 if self.training else 1.0)
        return self.scale


class Counting(Small):
    # A non-persistent buffer the forward changes in place: a graph keeps it right.

    def __init__(self, latent_dim=4):
        super().__init__(latent_dim)
        self.register_buffer("seen", torch.zeros(()), persistent=False)

    def offset(self):
        self.seen += self.training
        return 0.01 * self.seen
"""


def your_model(tmp_path, name):
    path = tmp_path / "models.py"
    path.write_text(YOUR_MODELS)
    return dict(model=f"{path}:{name}", model_kind="classic", model_output="logits", model_input="flat", model_outputs="0,1,2 logvar")


@pytest.mark.parametrize(
    "name, says",
    [
        ("Annealed", "the model changes `self.calls` (a Python value) at every step, which a CUDA graph would freeze"),
        ("Branching", "the model changes `self.odd` (a Python value) at every step"),
        ("Rebinding", "the model binds `self.scale` to a new tensor at every step"),
    ],
)
def test_a_model_whose_python_values_change_is_refused_the_graph_and_trains_as_eagerly(tmp_path, small_digits, name, says):
    model = your_model(tmp_path, name)
    eager, eager_run = trainer_for(tmp_path, small_digits, "eager", epochs=2, **model)
    tried, tried_run = trainer_for(tmp_path, small_digits, "tried", graphs=EmulatedGraphs(), epochs=2, **model)
    assert eager.run().state == RunState.FINISHED and tried.run().state == RunState.FINISHED
    assert tried.plan.mode == "eager" and says in tried.plan.why, tried.plan.why
    assert_same_weights(eager, tried)  # the rehearsal's changes to the Python values were put back too
    assert_same_records(eager_run, tried_run)


def test_a_models_non_persistent_buffer_is_put_back_after_the_rehearsal(tmp_path, small_digits):
    model = your_model(tmp_path, "Counting")
    eager, eager_run = trainer_for(tmp_path, small_digits, "eager", epochs=2, **model)
    graphed, graphed_run = trainer_for(tmp_path, small_digits, "graphed", graphs=EmulatedGraphs(), epochs=2, **model)
    assert eager.run().state == RunState.FINISHED and graphed.run().state == RunState.FINISHED
    assert graphed.plan.mode == "graph", graphed.plan.why
    assert graphed.state.model.inner.seen.item() == eager.state.model.inner.seen.item() == 14  # 7 steps an epoch
    assert_same_weights(eager, graphed)
    assert_same_records(eager_run, graphed_run)


def test_a_live_change_the_graph_would_not_read_is_caught_by_the_check(tmp_path, small_digits, monkeypatch):
    """A learning rate rebound to a new tensor (as a float would be) is one the graph never reads: the
    check's two steps, the lr changed between them, see it and the run steps eagerly."""
    from vae_tui.training.state import TrainingState

    def set_lr(self, lr):
        self.lr = lr
        for group in self.optimizer.param_groups:
            group["lr"] = torch.tensor(lr, dtype=torch.float64) if isinstance(group["lr"], torch.Tensor) else lr

    monkeypatch.setattr(TrainingState, "set_lr", set_lr)
    trainer, _ = trainer_for(tmp_path, small_digits, "run", graphs=EmulatedGraphs(), epochs=1)
    assert trainer.run().state == RunState.FINISHED
    assert trainer.plan.mode == "eager" and "disagreed with the eager step" in trainer.plan.why and "the lr and beta changed" in trainer.plan.why


def test_a_step_that_reads_a_value_on_the_host_cannot_be_captured(tmp_path, small_digits):
    from vae_tui.training.emulated_graph import CaptureRefused, Recorder

    x = torch.ones(3)
    with pytest.raises(CaptureRefused, match="reads a tensor's value on the host"), Recorder():
        if x.sum() > 0:
            pass
    with pytest.raises(CaptureRefused, match="boolean mask"), Recorder():
        x[x > 0] = 2.0


def test_emulate_is_a_step_users_can_ask_for_on_any_device(tmp_path, small_digits):
    """--step emulate on a CPU: the graph's protocol with recorded replays, and its verdict said."""
    trainer, run = trainer_for(tmp_path, small_digits, "run", epochs=2, step="emulate")
    assert trainer.run().state == RunState.FINISHED
    status = trainer.telemetry.status()
    assert (status.step_mode, trainer.plan.mode) == ("emulated", "emulated") and "--step emulate" in status.step_why
    infos = [e.message for e in trainer.telemetry.events() if e.kind == "info"]
    assert any("the step survives a CUDA graph" in m for m in infos), infos
    eager, _ = trainer_for(tmp_path, small_digits, "eager", epochs=2)
    assert eager.run().state == RunState.FINISHED
    assert_same_weights(eager, trainer)
    refused, _ = trainer_for(tmp_path, small_digits, "refused", epochs=1, step="emulate", **your_model(tmp_path, "Annealed"))
    assert refused.run().state == RunState.FINISHED
    warnings = [e.message for e in refused.telemetry.events() if e.kind == "warning"]
    assert warnings == [f"training steps eagerly: {refused.plan.why.removeprefix('the CUDA graph is not used: ')}"]
    with pytest.raises(ConfigError, match="--step emulate cannot be used here: fp16's loss scaler"):
        plan_step(small_config(step="emulate", precision="fp16"), "cpu", 1, "stop")


# -- CUDA's streams, simulated ---------------------------------------------------------------------------
class SimStream:
    """A CUDA stream on a simulated clock: its work runs in order, after what it was told to wait for."""

    def __init__(self, clock, name):
        self.clock, self.name, self.ready = clock, name, 0.0

    def wait_stream(self, other):
        self.ready = max(self.ready, other.ready)

    def wait_event(self, event):
        self.ready = max(self.ready, event.at)

    def run(self, seconds):
        start = max(self.ready, self.clock.host)
        self.ready = start + seconds
        return start, self.ready


class SimEvent:
    def __init__(self, clock, at):
        self.clock, self.at = clock, at

    def query(self):
        return self.at <= self.clock.host

    def synchronize(self):
        self.clock.host = max(self.clock.host, self.at)


class SimStreams:
    """streamed.CudaStreams on a simulated clock: each copy takes COPY seconds on its stream; the test
    runs each step for STEP seconds on the training stream. The host waits only where it synchronizes."""

    COPY, STEP = 1.0, 1.0

    def __init__(self):
        self.host = 0.0
        self.training = self.now = SimStream(self, "training")
        self.copies = []  # (destination's address, start, end)

    def current(self):
        return self.now

    def new(self):
        return SimStream(self, "copier")

    @contextlib.contextmanager
    def using(self, stream):
        before, self.now = self.now, stream
        try:
            yield
        finally:
            self.now = before

    def event(self):
        return SimEvent(self, self.now.ready)

    def copy(self, dst, src):
        dst.copy_(src)
        self.copies.append((dst.data_ptr(), *self.now.run(self.COPY)))


def test_streamed_batches_are_copied_while_the_step_before_runs(tmp_path):
    """Double-buffered: the copy of batch n+1 runs beside step n, never into the buffer a step still
    reads, and each step reads its own batch once its copy is done."""
    from vae_tui.training.static_step import StreamedBatches
    from vae_tui.training.streamed import StreamedData
    from vae_tui.training.world import Part

    images = np.arange(40 * 4, dtype=np.uint8).reshape(40, 1, 2, 2)
    sim = SimStreams()
    data = StreamedData(images, torch.zeros(1, 1, 2, 2), CPU.torch_device, 4, streams=sim)
    batches = StreamedBatches(data, 4)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    parts = [Part(lo, lo + 4, 0, 4, lo + 4) for lo in range(0, 40, 4)]
    batches.start_epoch(perm, parts)
    buffers = {batches.raws[k].data_ptr(): k for k in (0, 1)}
    steps = []
    try:
        for part in parts:
            batches.prepare(part)
            reads = int(batches.slot)
            x = batches.take(4)
            assert torch.equal(x, torch.from_numpy(images[perm[part.lo : part.hi].numpy()]).float().div(255)), part
            steps.append((reads, *sim.training.run(SimStreams.STEP)))
            batches.stepped()
    finally:
        data.stop()
    copies = [(buffers[ptr], start, end) for ptr, start, end in sim.copies]
    for n, ((into, copy_start, copy_end), (reads, step_start, _)) in enumerate(zip(copies, steps)):
        assert into == reads and step_start >= copy_end, n  # a step reads its own batch, once copied
        earlier = [end for k, _, end in steps[:n] if k == into]
        assert not earlier or copy_start >= earlier[-1], n  # never over a batch a step still reads
    assert steps[-1][2] <= len(parts) * SimStreams.STEP + SimStreams.COPY  # copies beside steps: not 2 s a batch


class FakeCudaGraphs:
    """torch.cuda's streams and graphs as a thread sees them: a current stream, torch.cuda.stream's
    context, and torch.cuda.graph's way in and out: its enter enters the capture stream and begins the
    capture; its exit ends the capture (which raises after one that failed) and only then leaves the
    stream."""

    def __init__(self, monkeypatch):
        self.default = SimStream(self, "default")
        self.host, self.now, self.failed = 0.0, self.default, False
        test = self

        class Graph:
            def capture_begin(self, *args, **kwargs):
                test.failed = False

            def capture_end(self):
                if test.failed:
                    raise RuntimeError("CUDA error: operation failed due to a previous error during capture")

        class CaptureContext:
            def __init__(self, graph, capture_error_mode="global"):
                self.graph, self.capture_stream = graph, SimStream(test, "capture")

            def __enter__(self):
                test.now = self.capture_stream
                self.graph.capture_begin()

            def __exit__(self, *exc):
                self.graph.capture_end()
                test.now = test.default

        @contextlib.contextmanager
        def stream(s):
            before, test.now = test.now, s
            try:
                yield
            finally:
                test.now = before

        for name, value in {
            "CUDAGraph": Graph,
            "graph": CaptureContext,
            "Stream": lambda device=None: SimStream(test, "side"),
            "stream": stream,
            "current_stream": lambda device=None: test.now,
            "set_stream": lambda s: setattr(test, "now", s),
        }.items():
            monkeypatch.setattr(torch.cuda, name, value)

    def failing(self):
        self.failed = True
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")


def test_a_failed_capture_leaves_the_thread_on_its_own_stream(monkeypatch):
    """So the eager step that takes over runs where the run's other work does, and a recapture after a
    NaN's rollback does not nest inside a stream context left open."""
    from vae_tui.training.graph import CudaGraphs

    cuda_ = FakeCudaGraphs(monkeypatch)
    graphs = CudaGraphs(CPU.torch_device)
    with pytest.raises(RuntimeError, match="operation not permitted when stream is capturing"):
        graphs.capture(cuda_.failing)
    assert cuda_.now is cuda_.default
    with pytest.raises(RuntimeError):
        graphs.warm_up(cuda_.failing, 3)
    assert cuda_.now is cuda_.default


# -- on a GPU ------------------------------------------------------------------------------------------
@cuda
@pytest.mark.parametrize("images", [400, 150, 100, 50])
def test_on_cuda_the_captured_step_trains_as_the_eager_one(tmp_path, small_digits, images):
    """The one difference is Adam's rate, read as float32 by CUDA's fused Adam in the graph (1e-3 is
    0.0010000000475 there): after 21 steps the weights agree to well within 1e-4. 150 and 100 images
    are fewer than the rehearsal's three batches; 50 fewer than one (stepped eagerly, as planned)."""
    gpu, data = pick_device("cuda"), subset(small_digits, images)
    eager, _ = trainer_for(tmp_path, data, "eager", device=gpu, epochs=3, step="eager")
    graphed, _ = trainer_for(tmp_path, data, "graphed", device=gpu, epochs=3)
    assert eager.run().state == RunState.FINISHED and graphed.run().state == RunState.FINISHED
    assert (eager.plan.mode, graphed.plan.mode) == ("eager", "graph" if images >= 64 else "eager"), graphed.plan.why
    for name, param in eager.state.model.state_dict().items():
        torch.testing.assert_close(graphed.state.model.state_dict()[name], param, rtol=1e-4, atol=1e-4)


@cuda
@pytest.mark.parametrize("images, stop_step", [(400, 10), (150, 1), (150, 2)], ids=["mid-epoch", "two-batches-left", "one-batch-left"])
def test_on_cuda_a_graphed_run_resumes_exactly(tmp_path, small_digits, images, stop_step):
    gpu, data = pick_device("cuda"), subset(small_digits, images)
    whole, whole_run = trainer_for(tmp_path, data, "whole", device=gpu, epochs=3)
    first, run = trainer_for(tmp_path, data, "split", device=gpu, epochs=3, extra_hooks=[StopAtStep(stop_step)])
    first.losses.flush_seconds = 0.0
    assert whole.run().state == RunState.FINISHED and first.run().state == RunState.STOPPED
    second, _ = trainer_for(tmp_path, data, "split", device=gpu, epochs=3, resume_state=load_checkpoint(run.last_checkpoint))
    assert second.run().state == RunState.FINISHED and second.plan.mode == "graph", second.plan.why
    assert_same_weights(whole, second)
    assert_same_records(whole_run, run)


@cuda
def test_on_cuda_emulate_agrees_with_the_real_graph(tmp_path, small_digits):
    """--step emulate on the GPU itself: the recorded replay trains as the captured graph does."""
    gpu = pick_device("cuda")
    graphed, _ = trainer_for(tmp_path, small_digits, "graphed", device=gpu, epochs=2)
    emulated, _ = trainer_for(tmp_path, small_digits, "emulated", device=gpu, epochs=2, step="emulate")
    assert graphed.run().state == RunState.FINISHED and emulated.run().state == RunState.FINISHED
    assert (graphed.plan.mode, emulated.plan.mode) == ("graph", "emulated"), (graphed.plan.why, emulated.plan.why)
    for name, param in graphed.state.model.state_dict().items():
        torch.testing.assert_close(emulated.state.model.state_dict()[name], param, rtol=1e-4, atol=1e-4)
