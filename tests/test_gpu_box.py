"""At home on a GPU box: more processes than GPUs refused in one line, one GPU of several picked with
--device cuda:N, CUDA out of memory said in one line. The GPU count is faked where vae-tui reads
it (device.gpu_count), so all of it runs on a CPU."""

from __future__ import annotations

import pytest
import torch
from rich.console import Console

from test_trainer import make_trainer
from vae_tui import device as device_module
from vae_tui.errors import ConfigError
from vae_tui.launch.prepare import Request, check
from vae_tui.launch.ranks import train_as_rank
from vae_tui.runfile.schema import RunState


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
    with pytest.raises(ConfigError, match=r"^2 processes but this machine has 1 GPU: each process trains on a GPU of its "
                                          r"own\. Start at most 1 \(--nproc 1, or torchrun --nproc-per-node 1\), or add "
                                          r"--device cpu"):
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
    with pytest.raises(ConfigError, match=r"--device cuda:2 asked for, but this process sees 2 GPUs \(cuda:0 to cuda:1, "
                                          r"CUDA_VISIBLE_DEVICES=2,3\); pick one of those"):
        device_module.pick_device("cuda:2")
    with pytest.raises(ConfigError, match="under torchrun each rank takes the GPU of its local rank"):
        device_module.pick_device("cuda:1", local_rank=0)
    with pytest.raises(ConfigError, match="--device cuda:1 picks one GPU for one process; with 2 processes"):
        device_module.check_processes(2, "cuda:1")


# -- out of memory -----------------------------------------------------------------------------------
TORCH_WORDS = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 1.06 GiB "
               "is free. Including non-PyTorch memory, this process has 78.10 GiB memory in use.")


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
    assert result.message.startswith("CUDA out of memory while training: it asked for 2.00 GiB more, with 1.06 GiB of "
                                     "79.19 GiB free"), result.message
    assert f"{run.last_checkpoint} (step 7) is intact" in result.message and "--batch-size 32" in result.message
    assert load_step(run.last_checkpoint) == 7  # nothing of the failed epoch was saved


def load_step(path) -> int:
    from vae_tui.checkpoint import load_checkpoint

    return load_checkpoint(path)["step"]
