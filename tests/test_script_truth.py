"""Watching a script never changes it, and says only what is true of it: the training flags of its
frozen parts, what it frees, its exit status and failing line, a script vae-tui could not watch, a
beta it cannot know, a loss summed over the batch, and `--model` reading a model as `vae-tui run` does."""

import atexit
import gc
import json
import math
import signal
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from vae_tui.runfile.files import read_scalars, read_status, write_config, write_status
from vae_tui.runfile.layout import RunDir
from vae_tui.runfile.metrics import read_metrics
from vae_tui.runfile.schema import RunInfo, RunState, Status, epoch_words


@pytest.fixture
def watching(tmp_path):
    """A ScriptWatch in this process, as the bootstrap opens one, and everything it changed put back
    after (its excepthook, its exit handler, the signal handlers, the hooks)."""
    from vae_tui.hooked.session import ScriptWatch

    hook, handlers = sys.excepthook, {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    made = []

    def watch():
        made.append(ScriptWatch(tmp_path / "run", lambda: {}))
        return made[-1]

    yield watch
    for w in made:
        if w.active:
            w.step_aside()
        atexit.unregister(w._at_exit)
    sys.excepthook = hook
    for s, h in handlers.items():
        signal.signal(s, h)


class FrozenEncoderVAE(nn.Module):
    """A pretrained encoder kept in eval mode (its BatchNorm's statistics frozen), a trained decoder."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(16, 8), nn.BatchNorm1d(8))
        self.mu, self.logvar, self.dec = nn.Linear(8, 2), nn.Linear(8, 2), nn.Linear(2, 16)

    def decode(self, z):
        return torch.sigmoid(self.dec(z))

    def forward(self, x):
        h = self.enc(x)
        mu, logvar = self.mu(h), self.logvar(h)
        return self.decode(mu + torch.randn_like(mu) * (0.5 * logvar).exp()), mu, logvar


def test_taking_pictures_leaves_a_frozen_part_in_eval_mode(watching):
    watch = watching()
    model = FrozenEncoderVAE()
    model.train()
    model.enc.eval()  # frozen: its running statistics must not move
    optimizer = torch.optim.SGD([p for n, p in model.named_parameters() if not n.startswith("enc")], lr=0.1)
    x = torch.rand(32, 16)
    for _ in range(2):
        optimizer.zero_grad()
        recon, mu, logvar = model(x)
        (recon - x).pow(2).sum().backward()
        optimizer.step()  # the first step takes pictures: samples from decode, in eval mode
    assert watch.run.telemetry.snapshot() is not None  # pictures were taken
    assert model.training and model.dec.training and not model.enc.training and not model.enc[1].training
    before = model.enc[1].running_mean.clone()
    model(x)
    assert torch.equal(model.enc[1].running_mean, before)  # the frozen statistics stay frozen


def test_the_probes_keep_no_graph_and_no_data_loader_alive(watching):
    watch = watching()
    model = FrozenEncoderVAE()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.rand(8, 16)), batch_size=4)
    iterator = iter(loader)
    (x,) = next(iterator)
    model(x)[0].sum().backward()
    optimizer.step()
    recon, _, _ = model(x)  # a forward with gradients and no backward: its activations are the script's to free
    kept = watch.probes.last
    assert kept is not None and not kept.output[0].requires_grad and kept.output[0].grad_fn is None
    assert watch.probes.iterator is iterator
    gone = weakref.ref(iterator)
    del iterator
    gc.collect()
    assert gone() is None and watch.probes.iterator is None  # the loop's iterator (and its workers) go when the loop ends


# -- what a script's end says ------------------------------------------------------------------------
FAILS_IN_A_HELPER = """
import sys
import torch
import solver

sys.excepthook = lambda kind, exc, tb: print("my own excepthook:", exc)  # as rich.traceback.install() does
net = torch.nn.Linear(4, 4)
opt = torch.optim.SGD(net.parameters(), lr=0.1)
for i in range(5):
    opt.zero_grad()
    net(torch.ones(2, 4)).sum().backward()
    opt.step()
if sys.argv[1] == "raise":
    net.train()
    solver.solve()
sys.exit(int(sys.argv[1]) if sys.argv[1].isdigit() else 0)
"""

SOLVER = """
def solve():
    scores = [1, 2]
    return scores[5]
"""


def run_headless(tmp_path, script, *args, python=()):
    (tmp_path / "main.py").write_text(script)
    (tmp_path / "solver.py").write_text(SOLVER)
    run = RunDir(tmp_path / f"run-{'-'.join(map(str, args)) or 'plain'}")
    command = [sys.executable, "-m", "vae_tui", "run", "--headless", "--run-dir", str(run.path), "--", sys.executable, *python, "main.py", *map(str, args)]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    return run, done


def test_a_failure_behind_its_own_excepthook_is_an_error_at_the_innermost_line_of_the_users_files(tmp_path):
    run, done = run_headless(tmp_path, FAILS_IN_A_HELPER, "raise")
    assert done.returncode == 1 and "my own excepthook" in done.stdout
    status = read_status(run)[0]
    assert status.state == RunState.ERROR and status.step == 5
    assert status.message == "your script raised IndexError (solver.py line 4): list index out of range"  # not main.py's net.train()


def test_a_script_that_exits_non_zero_is_an_error(tmp_path):
    run, done = run_headless(tmp_path, FAILS_IN_A_HELPER, 3)
    assert done.returncode == 3
    status = read_status(run)[0]
    assert status.state == RunState.ERROR and "exited with status 3 after step 5" in status.message


def test_a_script_vae_tui_cannot_watch_runs_on_and_keeps_its_log(tmp_path):
    run, done = run_headless(tmp_path, FAILS_IN_A_HELPER, 0, python=("-E",))
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if line.startswith("vae-tui:")]
    assert len(said) == 1 and "runs unwatched: python -E starts without the PYTHONPATH" in said[0] and "Traceback" not in done.stderr
    assert run.log_path.exists() and read_status(run)[0].state == RunState.FINISHED  # kept, and said what it was
    assert "ran unwatched" in read_status(run)[0].message and not (run.path / "metrics.jsonl").exists()


def test_a_python_that_cannot_import_vae_tui_says_why_in_hooks_txt(tmp_path):
    """A venv of the script's own (uv, poetry) finds the bootstrap but not vae_tui: the bootstrap says so."""
    from vae_tui.launch.script import BOOT_DIR, hooks_report

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    env = {"VAE_TUI_HOOKS": str(run.hooks_path), "PYTHONPATH": str(BOOT_DIR), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-S", "-c", "import sitecustomize; print('ran')"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ran"  # -S: no site-packages, so no vae_tui
    assert hooks_report(run).startswith("unwatched: this Python") and "cannot import vae_tui" in hooks_report(run)


# -- beta, epochs, going on -----------------------------------------------------------------------------
def script_run(tmp_path, **status):
    run = RunDir(tmp_path / "script-run")
    run.path.mkdir()
    write_config(run, RunInfo(config={"epochs": 0}, view="your script", script="python solver.py --beta 4"))
    write_status(run, Status(state=RunState.TRAINING, script="python solver.py --beta 4", **status))
    return run


def test_a_scripts_beta_is_not_known_and_cannot_be_set(tmp_path, vae_tui):
    from vae_tui.integrations.your_loop import Run
    from vae_tui.tui.widgets import settings_words

    run = Run(tmp_path / "hooked", None, None, {"beta": 4.0}, None, view="your script")
    try:
        assert run.beta != run.beta  # NaN: in the script's own loss
        status = Status(state=RunState.TRAINING, lr=0.001, beta=run.beta)
        assert settings_words(status) == "lr 0.001"  # never "beta 1"
        assert math.isnan(Status.from_dict(json.loads(json.dumps(status.to_dict())))[0].beta)  # still not known, read back
    finally:
        run.close()
    code, out, err = vae_tui("set", script_run(tmp_path).path, "--beta", "2")
    assert code == 2 and "beta is your script's own" in err and "nothing was changed" in err


def test_an_unknown_epoch_count_is_never_shown_as_of_0():
    assert epoch_words(2, 0) == "epoch 2" and epoch_words(2, 10) == "epoch 2/10"


def test_a_scripts_run_says_to_run_the_script_again_and_resume_refuses_it(tmp_path, vae_tui):
    from vae_tui.runfile.schema import going_on_words
    from vae_tui.tui.screens import ConfirmStop

    words = going_on_words("python solver.py --beta 4")
    assert "run your script again" in words and "--resume" not in words
    assert "run your script again" in ConfirmStop(words).QUESTION
    run = script_run(tmp_path)
    (run.checkpoints).mkdir()
    torch.save({"model": {}, "optimizer": {}, "step": 3}, run.last_checkpoint)
    code, out, err = vae_tui("train", "--resume", run.path)
    assert code == 2 and err.count("\n") == 1 and "a run of your own script" in err and "run your script again" in err


# -- the KL and the loss ----------------------------------------------------------------------------------
class MeanStd(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc, self.dec = nn.Linear(16, 4), nn.Linear(2, 16)

    def forward(self, x):
        h = self.enc(x)
        mean, std = h[:, :2], nn.functional.softplus(h[:, 2:])
        return torch.sigmoid(self.dec(mean + std * torch.randn_like(std))), mean, std


def test_a_standard_deviation_is_never_read_as_a_logvar():
    from vae_tui.models.outputs import read_layout, returned_names

    model, x = MeanStd(), torch.rand(8, 16)
    output = model(x)
    unnamed = read_layout(x, output)
    assert unnamed.kl_words == "" and unnamed.kl(output) is None  # all positive: std or logvar, not known
    assert unnamed.unknown_kl_words == "forward()'s output 3 may be a log-variance, a log standard deviation or a standard deviation"
    named = read_layout(x, output, returned_names(model))  # `return ..., mean, std`
    assert named.kl_words == "KL from forward()'s outputs 2 and 3 as mu, std"
    mean, std = output[1], output[2]
    own = torch.distributions.kl_divergence(torch.distributions.Normal(mean, std), torch.distributions.Normal(0.0, 1.0)).sum(1).mean()
    assert named.kl(output).item() == pytest.approx(own.item(), rel=1e-5)


SUMMED = """
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
images = (torch.rand(100, 16) > 0.5).float()
loader = DataLoader(TensorDataset(images), batch_size=32)  # 32, 32, 32 and a short last batch of 4
enc, dec = torch.nn.Linear(16, 4), torch.nn.Linear(2, 16)
opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3)


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.enc, self.dec = enc, dec

    def forward(self, x):
        mu, logvar = self.enc(x).chunk(2, dim=1)
        return torch.sigmoid(self.dec(mu + torch.randn_like(mu) * (0.5 * logvar).exp())), mu, logvar


model = Model()
for epoch in range(2):
    total = 0.0
    for (x,) in loader:
        opt.zero_grad()
        recon, mu, logvar = model(x)
        loss = F.binary_cross_entropy(recon, x, reduction="sum") - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        loss.backward()
        total += loss.item()
        opt.step()
    print(f"====> Epoch: {epoch} Average loss: {total / len(loader.dataset):.6f}")
"""


def test_a_loss_summed_over_the_batch_is_charted_per_image_and_kept_as_the_script_has_it(tmp_path):
    script = tmp_path / "summed.py"
    script.write_text(SUMMED)
    run = RunDir(tmp_path / "run")
    done = subprocess.run(
        [sys.executable, "-m", "vae_tui", "run", "--headless", "--run-dir", str(run.path), "--", sys.executable, str(script)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    printed = [float(line.split()[-1]) for line in done.stdout.splitlines() if line.startswith("====>")]
    metrics = read_metrics(run.metrics_path)
    loss = metrics.column("loss")
    assert len(loss) == 8 and loss.max() < 1.5 * loss.min()  # per image: no dip at each epoch's batch of 4
    assert [e["train_loss"] for e in metrics.epochs] == pytest.approx(printed, rel=1e-4)  # what the script prints
    own = [r["script_loss"] for r in read_scalars(run)]
    assert own[3] == pytest.approx(4 * loss[3], rel=1e-5) and own[0] == pytest.approx(32 * loss[0], rel=1e-5)  # its own numbers
    assert "per image" in read_status(run)[0].terms["loss"]


def test_a_mean_loss_is_left_as_it_is(watching):
    watch = watching()
    model = FrozenEncoderVAE()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.rand(8, 16)
    recon, mu, logvar = model(x)
    torch.nn.functional.mse_loss(recon, x).backward()
    optimizer.step()
    assert watch.probes.summed is False


# -- --model reads a model as vae-tui run does --------------------------------------------------------------
FOUR_AND_DECODE = """
import torch
import torch.nn as nn


class VAE(nn.Module):
    def __init__(self, input_dim=64, z_dim=2):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(input_dim, 2 * z_dim), nn.Linear(z_dim, input_dim), nn.Linear(z_dim, input_dim)

    def decode(self, z):
        return self.fc2(z) * 0.01 + 0.5  # logits that start inside [0, 1]: no sigmoid at the end

    def forward(self, x):
        mu, logvar = self.fc1(x).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return self.decode(z), mu, logvar, z
"""


def test_model_reads_four_outputs_logits_from_the_graph_and_samples_from_decode(tmp_path):
    from vae_tui.models.user import build
    from vae_tui.models.user_probe import probe

    (tmp_path / "main.py").write_text(FOUR_AND_DECODE)
    x = torch.rand(6, 1, 8, 8)
    found = probe(f"{tmp_path / 'main.py'}:VAE", "", (1, 8, 8), 16, 2, x)
    assert found.kind == "classic" and found.output == "logits" and found.outputs == "0,1,2 logvar"
    model = build(found.spec, "", (1, 8, 8), 16, 2, found.kind, found.output, found.input, found.outputs)
    assert model.decode(torch.zeros(3, 2)).shape == (3, 1, 8, 8)  # from VAE.decode: it has no `decoder`
    params, mu, logvar = model(x)
    assert params.shape == x.shape and mu.shape == logvar.shape == (6, 2)


def test_model_imports_a_package_from_the_working_directory(tmp_path, monkeypatch):
    from vae_tui.models.user_source import load_class

    package = tmp_path / "disvae" / "models"
    package.mkdir(parents=True)
    (tmp_path / "disvae" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "vae.py").write_text(FOUR_AND_DECODE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        cls, _ = load_class("disvae.models.vae:VAE")
        assert cls.__name__ == "VAE" and Path(sys.modules["disvae"].__file__).parent == tmp_path / "disvae"
    finally:
        for name in [n for n in sys.modules if n == "disvae" or n.startswith("disvae.")]:
            del sys.modules[name]
