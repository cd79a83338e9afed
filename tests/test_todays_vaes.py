"""The VAEs people train today, under `vae-tui run` unchanged: a latent-diffusion style KL autoencoder
with a perceptual term and a patch discriminator on its own optimizer, a VQ-VAE, a model returning
(x_hat, z, mu, logvar), diffusers' AutoencoderKL, and a DDP script under torchrun and accelerate.
The recorded series must equal the script's own printed numbers; a KL is the model's own or not known."""

import importlib.util
import math
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import wait_for
from vae_tui.runfile import control
from vae_tui.runfile.files import read_scalars, read_status
from vae_tui.runfile.layout import RunDir
from vae_tui.runfile.metrics import read_metrics
from vae_tui.runfile.schema import RunState

SCRIPTS = Path(__file__).parent / "scripts"


def start(tmp_path, *command, run_name="run"):
    run = RunDir(tmp_path / run_name)
    process = subprocess.Popen(
        [sys.executable, "-m", "vae_tui", "run", "--headless", "--run-dir", str(run.path), "--", *map(str, command)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return run, process


def finished(tmp_path, *command):
    run, process = start(tmp_path, *command)
    out, err = process.communicate(timeout=180)
    assert process.returncode == 0, err
    return run


def printed(run, name, rank=None):
    """The script's own numbers called `name` in its output (train.log), in order; with `rank`, that rank's
    (two ranks' lines can run together in the file: each is found by its "rank N step S" start)."""
    text = run.log_path.read_text()
    if rank is None:
        return [float(m.group(1)) for line in text.splitlines() if (m := re.search(rf"\b{name} (\S+)", line))]
    found = re.findall(rf"rank {rank} step (\d+) [^\n]*?\b{name} ([-\d.e]+)", text)
    return [float(value) for _, value in sorted(found, key=lambda f: int(f[0]))]


def terms(run):
    records = read_scalars(run)
    return {name: [r.get(name) for r in records] for name in dict.fromkeys(k for r in records for k in r)}


@pytest.mark.parametrize("disc_first", [False, True], ids=["discriminator-after", "discriminator-first"])
def test_a_kl_autoencoder_with_a_discriminator_records_every_term_as_the_script_printed_it(tmp_path, disc_first):
    flags = ["--disc-first", "--disc-start", "0"] if disc_first else ["--disc-start", "4"]
    run = finished(tmp_path, sys.executable, SCRIPTS / "kl_autoencoder_gan.py", "--steps", "10", *flags)
    status = read_status(run)[0]
    assert status.state == RunState.FINISHED and status.step == 10
    assert status.model == "KLAutoencoder (yours)"  # the model whose encode/decode give pictures, never the discriminator
    assert status.terms["kl"] == "KL from forward()'s 'latent_dist.mean' and 'latent_dist.logvar' as mu, logvar"
    assert status.optimizers == {"discriminator": pytest.approx(2e-4)}
    metrics = read_metrics(run.metrics_path)
    assert metrics.column("loss").tolist() == pytest.approx(printed(run, "loss"), abs=2e-6)  # the VAE's own: no discriminator loss in it
    assert metrics.column("recon").tolist() == pytest.approx(printed(run, "rec"), abs=2e-6)
    kl = metrics.column("kl").tolist()
    assert math.isnan(kl[0]) and kl[1:] == pytest.approx(printed(run, "kl")[1:], rel=1e-5)  # encode/decode are watched from the second step
    logged = terms(run)
    assert logged["lpips"] == pytest.approx(printed(run, "lpips"), abs=2e-6) and logged["g_loss"] == pytest.approx(printed(run, "g"), abs=2e-6)
    own_d = printed(run, "d")
    recorded_d = [math.nan if v is None else v for v in logged["discriminator"]]
    if not disc_first:  # its series starts with its first step, at the model's step on the same batch
        recorded_d = [math.nan] * (10 - len(recorded_d)) + recorded_d if len(recorded_d) < 10 else recorded_d
    assert [v for v in own_d if not math.isnan(v)] == pytest.approx([v for v in recorded_d if not math.isnan(v)], abs=2e-6)
    saved = __import__("torch").load(run.last_checkpoint, weights_only=True)
    assert set(saved["others"]) == {"discriminator"} and saved["others"]["discriminator"]["optimizer"]["param_groups"][0]["lr"] == 2e-4


def test_a_vq_vae_records_its_commitment_loss_and_perplexity_and_no_kl(tmp_path):
    run = finished(tmp_path, sys.executable, SCRIPTS / "vq_vae.py")
    status = read_status(run)[0]
    assert status.terms["vq_loss"] == "forward()'s output 2" and status.terms["perplexity"] == "forward()'s output 3" and "kl" not in status.terms
    logged = terms(run)
    assert logged["vq_loss"] == pytest.approx(printed(run, "vq"), abs=2e-6)
    assert logged["perplexity"] == pytest.approx(printed(run, "perplexity"), abs=2e-5)
    assert all(math.isnan(v) for v in read_metrics(run.metrics_path).column("kl"))  # not known, never 0
    assert "posterior collapse and holes are not diagnosed" in (run.path / "events.jsonl").read_text()  # said, not guessed


def test_x_hat_z_mu_logvar_gives_the_kl_of_mu_and_logvar_and_not_known_when_unnamed(tmp_path):
    run = finished(tmp_path, sys.executable, SCRIPTS / "four_outputs.py")
    assert read_status(run)[0].terms["kl"] == "KL from forward()'s outputs 3 and 4 as mu, logvar"
    assert read_metrics(run.metrics_path).column("kl").tolist() == pytest.approx(printed(run, "kl"), rel=1e-5)
    (tmp_path / "again").mkdir()
    run = finished(tmp_path / "again", sys.executable, SCRIPTS / "four_outputs.py", "--unnamed")
    status = read_status(run)[0]
    assert "kl" not in status.terms and status.terms["kl_unknown"].startswith("forward() returns 3 codes of one shape (outputs 2, 3, 4)")
    assert all(math.isnan(v) for v in read_metrics(run.metrics_path).column("kl"))


@pytest.mark.skipif(importlib.util.find_spec("diffusers") is None, reason="diffusers is not installed")
def test_diffusers_autoencoder_kl_gives_its_own_kl(tmp_path):
    run = finished(tmp_path, sys.executable, SCRIPTS / "diffusers_kl.py")
    status = read_status(run)[0]
    assert status.model == "AutoencoderKL (yours)" and "latent_dist.logvar" in status.terms["kl"]
    kl = read_metrics(run.metrics_path).column("kl").tolist()
    assert kl[1:] == pytest.approx(printed(run, "kl")[1:], rel=1e-5)


def _ddp_under(tmp_path, launcher):
    run, process = start(tmp_path, *launcher, SCRIPTS / "ddp_vae.py", "--epochs", "200", "--sleep", "0.01")
    try:
        _steer_every_rank(run, process)
    finally:
        if process.poll() is None:  # a failed check: the run stopped as a user would, every rank with it
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=60)


def _steer_every_rank(run, process):
    wait_for(lambda: (s := read_status(run)[0]) is not None and s.step >= 6, "rank 0's run to train", timeout=120, proc=process)
    control.send(run, control.set_command({"lr": 0.0005}))
    wait_for(lambda: 0.0005 in printed(run, "lr", 1) and 0.0005 in printed(run, "lr", 0), "the new lr on both ranks", proc=process)
    assert printed(run, "lr", 0).index(0.0005) == printed(run, "lr", 1).index(0.0005)  # the same step on each rank
    control.send(run, "pause")
    wait_for(lambda: read_status(run)[0].state == RunState.PAUSED, "the pause", proc=process)
    counts, beat = (len(printed(run, "lr", 0)), len(printed(run, "lr", 1))), read_status(run)[0].updated
    wait_for(lambda: read_status(run)[0].updated > beat + 1.5, "two heartbeats of the paused run", proc=process)
    assert (len(printed(run, "lr", 0)), len(printed(run, "lr", 1))) == counts  # every rank held, not rank 0 alone
    control.send(run, "resume")
    wait_for(lambda: len(printed(run, "lr", 1)) > counts[1] + 8, "rank 1 to train again", proc=process)
    control.send(run, "stop")
    process.communicate(timeout=60)
    status = read_status(run)[0]
    assert process.returncode == 130 and status.state == RunState.STOPPED  # as after Ctrl+C; the launcher itself ended cleanly
    own, metrics = printed(run, "loss", 0), read_metrics(run.metrics_path)
    means = [sum(own[int(a) - 1 : int(b)]) / (b - a + 1) for a, b in zip(metrics.column("first"), metrics.column("step"))]  # an interval's mean
    assert metrics.column("loss").tolist() == pytest.approx(means, abs=2e-4)  # rank 0's numbers (the script prints 5 decimals)
    assert abs(len(printed(run, "lr", 0)) - len(printed(run, "lr", 1))) <= 1  # both ranks stopped together


def test_a_ddp_script_under_torchrun_is_watched_on_every_rank(tmp_path):
    _ddp_under(tmp_path, [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"])


@pytest.mark.skipif(importlib.util.find_spec("accelerate") is None, reason="accelerate is not installed")
def test_a_ddp_script_under_accelerate_launch_is_watched_on_every_rank(tmp_path):
    accelerate = Path(sys.executable).with_name("accelerate")  # --multi_gpu: its torchrun launcher, which trains on the CPU with gloo as well
    _ddp_under(
        tmp_path, [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    )
