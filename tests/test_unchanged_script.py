"""`vae-tui run -- python SCRIPT` on scripts that make no vae-tui call, in the shapes people write
them: each runs unchanged, and is recorded, paused, checkpointed, steered and stopped."""

import atexit
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import drain, exit_status, spawn_in_pty, wait_for
from vae_tui.runfile import control
from vae_tui.runfile.files import read_config, read_scalars, read_status
from vae_tui.runfile.layout import RunDir
from vae_tui.runfile.metrics import read_metrics
from vae_tui.runfile.schema import RunState

MODEL = """
import torch
import torch.nn as nn
import torch.nn.functional as F


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(64, 32), nn.Linear(32, 4), nn.Linear(32, 4)
        self.fc3, self.fc4 = nn.Linear(4, 32), nn.Linear(32, 64)

    def encode(self, x):
        h = F.relu(self.fc1(x))
        return self.fc21(h), self.fc22(h)

    def decode(self, z):
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 64))
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar


def loss_function(recon_x, x, mu, logvar):
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 64), reduction="sum")
    return bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
"""

# The classic example's shape: argparse and DataLoaders at module level, train() and test(), print.
CLASSIC = (
    MODEL
    + """
import argparse
from pathlib import Path
from torch.utils.data import DataLoader, TensorDataset

parser = argparse.ArgumentParser(description="VAE example")
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--out", type=Path, default=Path("results"))
args = parser.parse_args()
torch.manual_seed(1)
images = (torch.rand(320, 1, 8, 8, generator=torch.Generator().manual_seed(0)) > 0.6).float()
train_loader = DataLoader(TensorDataset(images[:256], torch.zeros(256)), batch_size=args.batch_size, shuffle=True)
test_loader = DataLoader(TensorDataset(images[256:], torch.zeros(64)), batch_size=args.batch_size)
model = VAE()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)


def train(epoch):
    model.train()
    for batch_idx, (data, _) in enumerate(train_loader):
        optimizer.zero_grad()
        recon_batch, mu, logvar = model(data)
        loss = loss_function(recon_batch, data, mu, logvar)
        loss.backward()
        optimizer.step()
        if batch_idx % 4 == 0:
            print(f"Train Epoch: {epoch} [{batch_idx * len(data)}/{len(train_loader.dataset)}]\\tLoss: {loss.item() / len(data):.4f}")


def test(epoch):
    model.eval()
    with torch.no_grad():
        loss = sum(loss_function(*model(x)[:1], x, *model(x)[1:]).item() for x, _ in test_loader)
    print(f"====> Test set loss: {loss / 64:.4f}")


if __name__ == "__main__":
    for epoch in range(1, args.epochs + 1):
        train(epoch)
        test(epoch)
    print("the script ended")
"""
)

# A main() called from __main__, a tqdm bar, a KeyboardInterrupt handler, its own checkpoints,
# and an evaluation between epochs that takes a while (set by --pause-s).
LONG = (
    MODEL
    + """
import sys
import time
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm


def main(epochs, pause_s, out):
    torch.manual_seed(1)
    images = torch.rand(256, 1, 8, 8)
    loader = DataLoader(TensorDataset(images), batch_size=16, shuffle=True)
    model = VAE()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    try:
        for epoch in range(epochs):
            for (x,) in tqdm(loader, desc=f"epoch {epoch}"):
                optimizer.zero_grad()
                recon, mu, logvar = model(x)
                loss_function(recon, x, mu, logvar).backward()
                optimizer.step()
                time.sleep(0.002)
            torch.save(model.state_dict(), f"{out}/mine-{epoch}.pt")
            time.sleep(pause_s)
    except KeyboardInterrupt:
        torch.save(model.state_dict(), f"{out}/mine-interrupted.pt")
        print("saved my own checkpoint")
    finally:
        print("finally ran")


if __name__ == "__main__":
    main(int(sys.argv[1]), float(sys.argv[2]), sys.argv[3])
"""
)


def start(tmp_path, text, *args, name="train.py", background=False):
    """`vae-tui run --headless -- python SCRIPT ARGS`; `background`: as a shell script's `&` starts it,
    with Ctrl+C's signal ignored."""
    script = tmp_path / name
    script.write_text(text)
    run = RunDir(tmp_path / "run")
    ignore_sigint = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if background else None
    process = subprocess.Popen(
        [sys.executable, "-m", "vae_tui", "run", "--headless", "--run-dir", str(run.path), "--", sys.executable, str(script), *map(str, args)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ignore_sigint,
    )
    return script, run, process


def running(script):
    """Processes whose command line names the script (the script itself, or vae-tui run around it)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if str(script).encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                found.append(int(entry))
        except OSError:
            pass
    return found


def steps_of(run):
    return [int(s) for s in read_metrics(run.metrics_path).covered_steps()]


def test_the_classic_script_unchanged_is_recorded_step_by_step_with_its_kl_and_pictures(tmp_path):
    script, run, process = start(tmp_path, CLASSIC, "--epochs", "3")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert "====> Test set loss" in out and "the script ended" in out  # its own output, passed on
    status = read_status(run)[0]
    assert status.state == RunState.FINISHED and status.step == 24 and (status.epoch, status.epochs) == (3, 3)
    assert status.batches_per_epoch == 8 and status.model == "VAE (yours)" and status.dataset.startswith("TensorDataset (256)")
    assert status.terms["kl"] == "KL from forward()'s outputs 2 and 3 as mu, logvar" and "recon" not in status.terms
    assert "not diagnosed" not in (run.path / "events.jsonl").read_text()  # its mu and logvar are known: collapse and holes are looked for
    metrics = read_metrics(run.metrics_path)
    assert steps_of(run) == list(range(1, 25)) and [e["epoch"] for e in metrics.epochs] == [1, 2, 3]
    assert [int(e) for e in metrics.column("epoch")] == [1] * 8 + [2] * 8 + [3] * 8
    kl, loss = metrics.column("kl"), metrics.column("loss")
    assert (kl > 0).all() and (40 < loss).all() and (loss < 64).all()  # per image: the script sums its loss over a batch of 32
    assert status.terms["loss"] == "backward()'s loss per image (your script sums it over its batch)"
    own = read_scalars(run)  # the script's own numbers, as backward() got them
    assert [r["step"] for r in own] == list(range(1, 25)) and own[0]["script_loss"] == pytest.approx(32 * loss[0], rel=1e-5)
    assert all(v != v for v in metrics.column("recon"))  # not known: recorded as NaN, never as 0
    config = read_config(run)[0]
    assert config["view"] == "your script" and config["config"]["epochs"] == 3 and config["config"]["out"] == "results"
    snapshot = __import__("numpy").load(run.snapshot_path)
    assert snapshot["originals"].shape[1:] == (1, 8, 8) and len(snapshot["samples"]) == 8  # from VAE.decode
    saved = torch.load(run.last_checkpoint, weights_only=True)
    from vae_tui.models.user_source import load_class

    cls, _ = load_class(f"{script}:VAE")  # as --model imports it: its module-level argparse sees none of our options
    cls().load_state_dict(saved["model"])
    assert sys.modules["train"].args.epochs == 3 and not (tmp_path / "results").exists()


def test_pause_checkpoint_lr_and_stop_reach_a_script_that_never_heard_of_vae_tui(tmp_path, vae_tui):
    pytest.importorskip("tqdm")
    script, run, process = start(tmp_path, LONG, 100000, 0, tmp_path)
    wait_for(lambda: run.metrics_path.exists() and len(steps_of(run)) > 20, "the script's steps", proc=process)
    control.send(run, "pause")
    wait_for(lambda: read_status(run)[0].state == RunState.PAUSED, "the run to say it is paused", proc=process)
    held = read_status(run)[0].step
    heartbeat = read_status(run)[0].updated
    wait_for(lambda: read_status(run)[0].updated > heartbeat + 1, "two heartbeats while paused")
    assert read_status(run)[0].step == held and steps_of(run)[-1] == held  # no step while paused

    control.send(run, "checkpoint")
    wait_for(lambda: run.last_checkpoint.exists(), "the checkpoint asked for")
    saved = torch.load(run.last_checkpoint, weights_only=True)
    assert saved["step"] == held and set(saved["optimizer"]) == {"state", "param_groups"}
    runpy.run_path(str(script), run_name="not_main")["VAE"]().load_state_dict(saved["model"])  # its own class

    code, said, err = vae_tui("set", run.path, "--lr", "0.05")
    assert code == 0, err
    control.send(run, "resume")
    wait_for(lambda: len(steps_of(run)) > held + 10, "steps again after resume", proc=process)
    records = read_metrics(run.metrics_path)  # a step of its own, or an interval of them ending at the pause
    lrs, at_pause = records.column("lr"), int(records.column("step").searchsorted(held))
    assert lrs[at_pause] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(0.05)  # read from its own optimizer

    control.send(run, "stop")
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "saved my own checkpoint" in out and "finally ran" in out  # its handler and finally block ran
    assert running(script) == []  # nothing left running
    status = read_status(run)[0]
    assert status.state == RunState.STOPPED and torch.load(run.last_checkpoint, weights_only=True)["step"] == status.step
    assert steps_of(run) == list(range(1, status.step + 1))  # every step once
    log = run.log_path.read_bytes()  # as bytes: read_text would turn each \r into \n
    assert b"epoch 0: " in log and b"\r" in log  # its tqdm bar kept in train.log as it wrote it, carriage returns and all


def test_the_monitor_shows_a_hooked_script_and_q_stops_it(tmp_path):
    script = tmp_path / "main.py"
    script.write_text(CLASSIC)
    run = RunDir(tmp_path / "watched")
    pid, fd = spawn_in_pty(["run", "--run-dir", str(run.path), "--", sys.executable, str(script), "--epochs", "100000"], size=(120, 40))
    seen = drain(fd, 60, until=b"Train Epoch")  # the script's own output, in its pane
    assert b"output of" in seen and b"Train Epoch" in seen, seen[-800:]
    wait_for(lambda: run.metrics_path.exists() and len(steps_of(run)) > 10, "batches under the monitor")
    os.write(fd, b"q")
    drain(fd, 10, until=b"quit?")
    os.write(fd, b"y")
    assert exit_status(pid, fd) == 130  # the script ended as Ctrl+C would end it
    assert read_status(run)[0].state == RunState.STOPPED and run.last_checkpoint.exists()
    wait_for(lambda: running(script) == [], "the script to be gone")


@pytest.mark.parametrize("background", [False, True], ids=["foreground", "background job"])
def test_a_stop_while_the_script_is_not_stepping_interrupts_it_where_it_is(tmp_path, background):
    pytest.importorskip("tqdm")
    script, run, process = start(tmp_path, LONG, 3, 600, tmp_path, background=background)  # ten minutes of "evaluation" after epoch 1
    wait_for(lambda: (tmp_path / "mine-0.pt").exists(), "the script's own first checkpoint", proc=process)
    asked = time.monotonic()
    control.send(run, "stop")
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130 and time.monotonic() - asked < 30, err
    assert "saved my own checkpoint" in out and "finally ran" in out
    status = read_status(run)[0]
    assert status.state == RunState.STOPPED and status.step == 16 and run.last_checkpoint.exists()


def test_a_script_that_calls_vae_tui_init_keeps_its_own_logging(tmp_path):
    from helpers import SCRIPT

    script, run, process = start(tmp_path, SCRIPT, 2)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert steps_of(run) == list(range(1, 17))  # each step once: the hooks stepped aside
    assert read_config(run)[0]["view"] == "your loop" and read_status(run)[0].terms == {}
    assert not any(m.isnan() for m in torch.tensor(read_metrics(run.metrics_path).column("recon")))


def test_vae_tui_log_gives_what_the_hooks_cannot_know_and_does_nothing_alone(tmp_path):
    text = CLASSIC.replace("        loss.backward()\n", "        loss.backward()\n        vae_tui.log(recon=loss / len(data))\n")
    text = text.replace("import argparse\n", "import argparse\nimport vae_tui\n")
    script, run, process = start(tmp_path, text, "--epochs", "1")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert read_status(run)[0].terms["recon"] == "vae_tui.log" and (read_metrics(run.metrics_path).column("recon") > 0).all()
    alone = subprocess.run([sys.executable, str(script), "--epochs", "1"], capture_output=True, text=True, timeout=120)
    assert alone.returncode == 0 and "the script ended" in alone.stdout


def test_argparse_config_with_paths_and_two_runs_in_one_script(tmp_path):
    """vars(args) with a Path is recorded as text; a second init gets a folder of its own."""
    code = """
import argparse, os, sys
from pathlib import Path
import torch
import vae_tui

args = argparse.Namespace(out=Path("x/y"), lr=1e-3, device=torch.device("cpu"))
model = torch.nn.Linear(2, 2)
opt = torch.optim.SGD(model.parameters(), lr=1e-3)
for _ in range(2):
    with vae_tui.init(model=model, optimizer=opt, config=vars(args)) as run:
        run.log(recon=model(torch.ones(1, 2)).sum(), kl=0.0)
try:
    vae_tui.init(run_dir=sys.argv[1], model=model)
except ValueError as exc:
    print("refused:", exc)
"""
    script, run, process = start(tmp_path, code, tmp_path / "run")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert read_config(run)[0]["config"]["out"] == "x/y" and read_config(run)[0]["config"]["device"] == "cpu"
    second = RunDir(tmp_path / "run-2")
    assert read_status(second)[0].state == RunState.FINISHED and "this script starts another run" in out + err
    assert f"refused: {tmp_path / 'run'} already holds a run; give vae_tui.init another run_dir" in out


def test_a_script_that_fails_records_the_error_with_its_line(tmp_path):
    text = CLASSIC.replace("        optimizer.step()\n", "        optimizer.step()\n        if epoch == 2: raise RuntimeError('out of patience')\n")
    script, run, process = start(tmp_path, text, "--epochs", "3")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 1 and "out of patience" in out  # its traceback, where its output goes
    status = read_status(run)[0]
    assert status.state == RunState.ERROR and status.step == 9
    line = text.splitlines().index("        if epoch == 2: raise RuntimeError('out of patience')") + 1
    assert status.message == f"your script raised RuntimeError ({script.name} line {line}): out of patience"


# -- the parts, without a subprocess -------------------------------------------------------------
def test_the_reconstruction_mu_and_logvar_are_found_in_the_shapes_models_return():
    from vae_tui.models.outputs import read_layout

    x = torch.rand(5, 1, 8, 8)
    x_hat, mu, logvar, z = torch.rand(5, 64), torch.rand(5, 3), torch.randn(5, 3), torch.rand(5, 3)  # a logvar goes below 0
    unnamed = read_layout(x, (x_hat, mu, logvar))  # a value below 0: a log-variance or a log standard deviation
    assert unnamed.kl_words == "" and "may be a log-variance, a log standard deviation" in unnamed.unknown_kl_words
    named = read_layout(x, (x_hat, mu, logvar), ("x_hat", "mu", "logvar"))
    assert named.kl_words == "KL from forward()'s outputs 2 and 3 as mu, logvar"
    found = read_layout(x, (mu, logvar, x_hat))
    assert (found.recon, found.mu, found.logvar) == (2, 0, 1)
    found = read_layout(x, [x_hat, x, mu, logvar])  # the input handed back too: the first like it is the reconstruction
    assert (found.recon, found.mu, found.logvar) == (0, 2, 3)
    found = read_layout(x, (x_hat, (mu, logvar)))
    assert (found.recon, found.mu, found.logvar) == (0, 1, 2)
    found = read_layout(x, {"x_hat": x_hat, "z": z, "mu": mu, "log_var": logvar})
    assert (found.recon, found.mu, found.logvar) == (0, 2, 3) and found.kl_words == "KL from forward()'s 'mu' and 'log_var' as mu, logvar"
    assert read_layout(x, x_hat).kl_words == "" and read_layout(x, x_hat).recon == 0  # a plain autoencoder: no KL to take


def test_the_kl_per_image_is_the_classic_formula_over_the_batch():
    from vae_tui.models.outputs import kl_per_image

    mu, logvar = torch.randn(7, 5), torch.randn(7, 5)
    classic = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / 7
    assert kl_per_image(mu, logvar).item() == pytest.approx(classic.item(), rel=1e-5)


def test_pictures_take_the_data_loaders_shape_when_the_model_flattens_its_input():
    from vae_tui.models.outputs import are_logits, image_shape, span_of

    flat = torch.rand(4, 3 * 16 * 16)
    assert image_shape(flat, (torch.rand(4, 3, 16, 16), torch.zeros(4))) == (3, 16, 16)
    assert image_shape(torch.rand(4, 784), None) == (1, 28, 28) and image_shape(torch.rand(4, 10), None) is None
    assert image_shape(torch.rand(4, 1, 5, 7), None) == (1, 5, 7)
    assert span_of(torch.rand(3, 4)) is None and span_of(torch.randn(3, 4) * 3) is not None
    assert are_logits(torch.randn(4, 9) * 4, None) and not are_logits(torch.rand(4, 9), None)


def test_the_script_output_is_what_a_terminal_would_show(tmp_path):
    from vae_tui.watching.output import ScriptOutput

    log = tmp_path / "train.log"
    log.write_bytes(b"loading\n\x1b[32mready\x1b[0m\n\repoch 0:  10%|#  | 1/10\repoch 0:  50%|#####")
    output = ScriptOutput(log)
    output.poll()
    assert output.last(3) == ["loading", "ready", "epoch 0:  50%|#####"]  # a bar at its latest state
    with open(log, "ab") as f:
        f.write("\repoch 0: 100%|##########| 10/10\n====> \u00e9poque 1\n".encode())
    output.poll()
    assert output.last(2) == ["epoch 0: 100%|##########| 10/10", "====> \u00e9poque 1"]


def test_a_finder_runs_code_once_a_module_is_imported_in_full(tmp_path, monkeypatch):
    from vae_tui.hooked.arming import AfterImport

    (tmp_path / "heavy.py").write_text("VALUE = 41\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    finder = AfterImport("heavy", lambda: seen.append(sys.modules["heavy"].VALUE + 1))
    sys.meta_path.insert(0, finder)
    try:
        import heavy  # noqa: F401

        assert seen == [42] and finder not in sys.meta_path and type(heavy.__loader__).__name__ == "SourceFileLoader"
    finally:
        sys.modules.pop("heavy", None)
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)


def test_a_failure_of_vae_tuis_own_never_reaches_the_script(tmp_path, monkeypatch, capsys):
    from vae_tui.hooked.session import ScriptWatch

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    hook = sys.excepthook
    watch = ScriptWatch(tmp_path / "run", lambda: {"epochs": 2})
    try:
        model = torch.nn.Linear(3, 3)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        model(torch.ones(2, 3)).sum().backward()
        optimizer.step()
        assert watch.run.step == 1 and watch.run.config == {"epochs": 2} and watch.model is model

        def broken(*args, **kwargs):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(watch.run, "add_step", broken)
        model(torch.ones(2, 3)).sum().backward()
        optimizer.step()  # the script's step goes on
        optimizer.step()
        assert "vae-tui: stopped watching this script (OSError" in capsys.readouterr().err
        status = read_status(RunDir(tmp_path / "run"))[0]
        assert status.state == RunState.ERROR and "vae-tui stopped watching at step 1" in status.message
        assert not watch.active and torch.autograd.backward.__module__ == "torch.autograd"  # every patch put back
    finally:
        if watch.active:
            watch.step_aside()
        atexit.unregister(watch._at_exit)  # the rest of the suite runs with this process's own hooks
        sys.excepthook = hook
        for s, h in handlers.items():
            signal.signal(s, h)


def test_runs_says_epochs_done_of_all_and_only_done_when_a_loop_never_said():
    from vae_tui.tui.widgets import model_words
    from vae_tui.watching.catalog import RunSummary, epochs_words

    assert epochs_words(RunSummary(Path("r"), "your loop", "finished", 3, 3, 1.0, 0.0)) == "3/3"
    assert epochs_words(RunSummary(Path("r"), "your loop", "finished", 1, 0, 1.0, 0.0)) == "1"
    assert model_words("VAE (yours)") == "VAE (yours)" and model_words("784-400-20 MLP") == "784-400-20 MLP VAE"
