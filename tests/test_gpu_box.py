"""At home on a GPU box: more processes than GPUs refused in one line, one GPU of several picked with
--device cuda:N, CUDA out of memory said in one line, the GPU's own figures on the status line. The
GPU count is faked where vae-tui reads it (device.gpu_count) and NVML by a stand-in, so all of it
runs on a CPU."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
from rich.console import Console

from helpers import StopAtStep, make_trainer, small_config
from vae_tui.errors import ConfigError
from vae_tui.launch.prepare import Request, check
from vae_tui.launch.ranks import train_as_rank
from vae_tui.runfile.files import read_status
from vae_tui.runfile.layout import open_run_dir
from vae_tui.runfile.schema import RunState, Status, gpu_words
from vae_tui.training import device as device_module
from vae_tui.training.agreement import Agreement
from vae_tui.training.checkpoint import load_checkpoint
from vae_tui.training.controls import Controls
from vae_tui.training.device import pick_device
from vae_tui.training.gpus import GpuMeter, as_floats, from_floats
from vae_tui.training.loop import Trainer, default_hooks
from vae_tui.training.publish import Publisher
from vae_tui.training.streamed import StreamedData
from vae_tui.training.world import World
from vae_tui.watching.catalog import summarize


@pytest.fixture
def gpus(monkeypatch):
    """This process sees `n` GPUs (named "Fake GPU k")."""

    def see(n: int) -> None:
        monkeypatch.setattr(device_module, "gpu_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: f"Fake GPU {index}")

    return see


# -- more processes than GPUs -----------------------------------------------------------------------
def test_nproc_beyond_the_gpus_is_refused_before_anything_starts(tmp_path, gpus):
    gpus(1)
    request = Request({"dataset": "digits", "epochs": 1}, run_dir=str(tmp_path / "run"), nproc=2, world_size=2)
    with pytest.raises(
        ConfigError,
        match=r"^2 processes but this machine has 1 GPU: each process trains on a GPU of its "
        r"own\. Start at most 1 \(--nproc 1, or torchrun --nproc-per-node 1\), or add "
        r"--device cpu",
    ):
        check(request)
    assert not (tmp_path / "run").exists()
    check(Request({"dataset": "digits", "epochs": 1, "device": "cpu"}, run_dir=str(tmp_path / "cpu"), nproc=2, world_size=2))
    gpus(0)  # no GPU at all: auto means CPU processes, as before
    check(Request({"dataset": "digits", "epochs": 1}, run_dir=str(tmp_path / "auto"), nproc=2, world_size=2))


def test_the_visible_gpus_are_named_in_the_refusal(tmp_path, gpus, monkeypatch):
    gpus(2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    with pytest.raises(ConfigError, match=r"3 processes but this machine has 2 GPUs visible \(CUDA_VISIBLE_DEVICES=4,5\)"):
        check(Request({"dataset": "digits", "epochs": 1}, run_dir=str(tmp_path / "run"), nproc=3, world_size=3))


@pytest.mark.parametrize("local_rank", [0, 1])
def test_torchrun_ranks_beyond_the_gpus_say_it_once_before_touching_one(tmp_path, gpus, monkeypatch, local_rank):
    """torchrun --nproc-per-node 2 on a one-GPU machine: the machine's first rank says it, the other
    only exits, and neither joins the process group nor picks a GPU (which raised "invalid device ordinal")."""
    gpus(1)
    for name, value in {"RANK": local_rank, "WORLD_SIZE": 2, "LOCAL_RANK": local_rank, "LOCAL_WORLD_SIZE": 2}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setattr("vae_tui.training.world.join", lambda *a: pytest.fail("joined the process group"))
    request = Request({"dataset": "digits", "epochs": 1}, run_dir=str(tmp_path / "run"))
    if local_rank == 0:
        with pytest.raises(ConfigError, match="2 processes but this machine has 1 GPU"):
            train_as_rank(request, Console(quiet=True))
    else:
        assert train_as_rank(request, Console(quiet=True)) == 2
    assert not (tmp_path / "run").exists()


# -- one GPU of several ----------------------------------------------------------------------------
def test_device_cuda_n_picks_that_gpu_and_says_so(gpus, monkeypatch):
    gpus(2)
    picked = device_module.pick_device("cuda:1")
    assert (picked.index, picked.words, str(picked.torch_device)) == (1, "cuda:1 (Fake GPU 1)", "cuda:1")
    assert device_module.pick_device("cuda").words == "cuda (Fake GPU 0)"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    with pytest.raises(
        ConfigError,
        match=r"--device cuda:2 asked for, but this process sees 2 GPUs \(cuda:0 to cuda:1, "
        r"CUDA_VISIBLE_DEVICES=2,3\); pick one of those",
    ):
        device_module.pick_device("cuda:2")
    with pytest.raises(ConfigError, match="under torchrun each rank takes the GPU of its local rank"):
        device_module.pick_device("cuda:1", local_rank=0)
    with pytest.raises(ConfigError, match="--device cuda:1 picks one GPU for one process; with 2 processes"):
        device_module.check_processes(2, "cuda:1")


# -- out of memory -----------------------------------------------------------------------------------
TORCH_WORDS = (
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 1.06 GiB "
    "is free. Including non-PyTorch memory, this process has 78.10 GiB memory in use."
)


class OutOfMemoryAt:
    """A step that runs out of GPU memory at a given step, as a too-large batch does."""

    mode = "eager"

    def __init__(self, real, step: int) -> None:
        self.real, self.step, self.terms = real, step, real.terms

    def start_epoch(self, perm, parts) -> None:
        self.real.start_epoch(perm, parts)

    def __call__(self, part) -> bool:
        if self.real.state.step + 1 == self.step:
            raise torch.cuda.OutOfMemoryError(TORCH_WORDS)
        return self.real(part)

    def settings_changed(self) -> None:
        self.real.settings_changed()


def test_out_of_memory_is_one_line_and_the_last_checkpoint_stays(tmp_path, small_digits):
    trainer, run = make_trainer(tmp_path, small_digits, epochs=3)
    make = trainer._make_step
    trainer._make_step = lambda: OutOfMemoryAt(make(), 10)  # in the second epoch: epoch 1's checkpoint is on disk
    result = trainer.run()
    assert result.state == RunState.ERROR and "\n" not in result.message
    assert result.message.startswith("CUDA out of memory while training: it asked for 2.00 GiB more, with 1.06 GiB of 79.19 GiB free"), result.message
    assert f"{run.last_checkpoint} (step 7) is intact" in result.message and "--batch-size 32" in result.message
    assert load_checkpoint(run.last_checkpoint)["step"] == 7  # nothing of the failed epoch was saved


def load_step(path) -> int:
    return load_checkpoint(path)["step"]


# -- the GPU on the status line, through NVML -------------------------------------------------------------
class FakeNvml:
    """The part of pynvml vae-tui uses, answering as one H200 would; `unsupported` fields raise as NVML does."""

    NVML_TEMPERATURE_GPU = 0

    def __init__(self, unsupported=(), missing=False):
        self.unsupported, self.missing, self.asked = set(unsupported), missing, 0
        self.looked_up: list[str] = []  # the UUIDs asked for

    def nvmlInit(self):
        if self.missing:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlDeviceGetHandleByUUID(self, uuid):
        self.looked_up.append(uuid)
        return ("gpu", uuid)

    def nvmlDeviceGetUtilizationRates(self, handle):
        self.asked += 1
        return SimpleNamespace(gpu=87, memory=40)

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(used=12 * 2**30, total=80 * 2**30, free=68 * 2**30)

    def nvmlDeviceGetTemperature(self, handle, sensor):
        return 61

    def nvmlDeviceGetPowerUsage(self, handle):
        if "power" in self.unsupported:
            raise RuntimeError("Not Supported")
        return 312_000  # milliwatts


@pytest.fixture
def a_gpu(monkeypatch):
    """torch says which GPU cuda:0 is (its UUID), as it does on a GPU box."""
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: SimpleNamespace(uuid="1234-abcd"))


def test_the_meter_reads_nvml_about_once_a_second(a_gpu):
    nvml = FakeNvml()
    meter = GpuMeter(torch.device("cuda", 0), nvml)
    reading = meter.read()
    assert reading == {"busy": 87.0, "memory_used": 12 * 2**30, "memory_total": 80 * 2**30, "temperature": 61.0, "power": 312.0}
    assert meter.read() == reading and nvml.asked == 1  # the same second: not asked again
    assert nvml.looked_up == ["GPU-1234-abcd"]  # found by its UUID, whatever CUDA_VISIBLE_DEVICES says
    words = gpu_words(Status(gpus=[reading]))
    assert words == "GPU 87% busy, 12.0 of 80.0 GiB, 61°C, 312 W"


def test_a_field_the_gpu_does_not_report_is_left_out(a_gpu):
    reading = GpuMeter(torch.device("cuda", 0), FakeNvml(unsupported={"power"})).read()
    assert reading["power"] is None and gpu_words(Status(gpus=[reading])) == "GPU 87% busy, 12.0 of 80.0 GiB, 61°C"


def test_without_nvml_nothing_is_read_or_said(a_gpu):
    nvml = FakeNvml(missing=True)
    meter = GpuMeter(torch.device("cuda", 0), nvml)
    assert meter.read() is None and meter.read() is None and nvml.asked == 0
    assert GpuMeter(torch.device("cpu"), FakeNvml()).read() is None  # a CPU run has no GPU to ask about
    assert gpu_words(Status()) == ""


def test_each_ranks_gpu_travels_through_the_agreement_and_reads_in_one_line():
    reading = {"busy": 87.0, "memory_used": 1.0, "memory_total": 2.0, "temperature": None, "power": 300.0}
    assert from_floats(as_floats(reading)) == reading and from_floats(as_floats(None)) is None
    four = [dict(reading, busy=b, temperature=t) for b, t in ((91, 60), (85, 68), (90, 64), (88, None))]
    assert gpu_words(Status(gpus=four)) == "4 GPUs 91, 85, 90, 88% busy, up to 68°C"


def test_a_trainer_publishes_its_gpu_and_the_status_line_and_runs_show_it(tmp_path, small_digits, a_gpu):
    trainer, run = make_trainer(tmp_path, small_digits, epochs=1)
    trainer.gpu_meter = GpuMeter(torch.device("cuda", 0), FakeNvml())  # as a CUDA trainer's would read
    assert trainer.run().state == RunState.FINISHED
    status = trainer.telemetry.status()
    assert status.gpus and status.gpus[0]["busy"] == 87.0
    Publisher(run, trainer.telemetry, trainer.controls).publish()
    written, _ = read_status(run)
    assert written.gpus == status.gpus  # in status.json: a watcher anywhere sees it
    assert summarize(run.path).gpu == ""  # finished: the last reading is not news
    live = {**written.to_dict(), "state": "training", "pid": os.getpid(), "updated": time.time()}
    run.status_path.write_text(json.dumps(live))
    assert summarize(run.path).gpu == "GPU 87% busy, 12.0 of 80.0 GiB, 61°C, 312 W"


# -- what only CUDA has (skipped without a GPU) ----------------------------------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("step", ["eager", "graph"])
def test_on_cuda_the_mlp_resumes_bit_for_bit(tmp_path, small_digits, step):
    """What "exact resume" means on CUDA: the MLP's kernels (cuBLAS, elementwise, reductions, fused
    Adam) are deterministic, so a resumed run ends where an uninterrupted one does, to the last bit."""

    gpu = pick_device("cuda")

    def trainer(name, **kwargs):
        run = open_run_dir(tmp_path / name, resuming=True)
        hooks = default_hooks(run) + list(kwargs.pop("hooks", []))
        return Trainer(small_config(epochs=3, step=step), small_digits, gpu, run_dir=run, hooks=hooks, **kwargs), run

    whole, _ = trainer("whole")
    first, run = trainer("split", hooks=[StopAtStep(10)])
    first.losses.flush_seconds = 0.0
    assert whole.run().state == RunState.FINISHED and first.run().state == RunState.STOPPED
    second, _ = trainer("split", resume_state=load_checkpoint(run.last_checkpoint))
    assert second.run().state == RunState.FINISHED
    for name, param in whole.state.model.state_dict().items():
        assert torch.equal(param, second.state.model.state_dict()[name]), name
    status = second.telemetry.status()
    assert status.device_memory > 0 and status.device.startswith("cuda")  # what PyTorch holds, on the status line


@cuda
def test_on_cuda_streamed_batches_come_through_pinned_memory_and_train_as_on_the_device(tmp_path, small_digits):
    data = dataclasses.replace(
        small_digits, train_x=np.round(small_digits.train_x * 255).astype(np.uint8), test_x=np.round(small_digits.test_x * 255).astype(np.uint8)
    )
    gpu = pick_device("cuda")
    runs = {placement: Trainer(small_config(epochs=2), data, gpu, hooks=[], placement=placement) for placement in ("device", "stream")}
    for trainer in runs.values():
        assert trainer.run().state == RunState.FINISHED
    assert isinstance(runs["stream"].images, StreamedData) and all(b.is_pinned() for b in runs["stream"].images._buffers)
    for name, param in runs["device"].state.model.state_dict().items():
        assert torch.equal(param, runs["stream"].state.model.state_dict()[name]), name


@cuda
def test_on_cuda_nvml_reads_the_gpu_the_run_trains_on():
    reading = GpuMeter(torch.device("cuda", 0)).read()
    if reading is None:
        pytest.skip("NVML is not readable on this machine (no driver library)")
    assert 0 <= reading["busy"] <= 100 and 0 < reading["memory_used"] <= reading["memory_total"]


def test_the_ranks_meeting_carries_each_ranks_gpu():
    """Under torchrun rank 0 publishes every rank's GPU: the readings ride on the ranks' one all-reduce
    (here a world of one, in this process, on gloo)."""
    reading = {"busy": 87.0, "memory_used": 1.5 * 2**30, "memory_total": 80 * 2**30, "temperature": 61.0, "power": None}
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        agreement = Agreement(World(0, 1, 0), Controls(), torch.device("cpu"), gpu=lambda: reading)
        agreement.meet(0, None, 0)
        assert agreement.gpus == [reading]
        silent = Agreement(World(0, 1, 0), Controls(), torch.device("cpu"))  # a rank without NVML
        silent.meet(0, None, 0)
        assert silent.gpus == [None]
    finally:
        dist.destroy_process_group()
