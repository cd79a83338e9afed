"""`vae-tui train --model FILE.py:Class`: the classic example's classes as they are, a model with the
encode/decode protocol, and each way a model can be wrong as one line."""

import importlib.util
import json
import textwrap

import pytest
import torch

from vae_tui.training.checkpoint import load_checkpoint

CLASSIC = """\
import torch
import torch.nn as nn
import torch.nn.functional as F


# Define the encoder
class Encoder(nn.Module):
    def __init__(self, input_dim, hidden_dim, z_dim):
        super(Encoder, self).__init__()
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.fc2_mu = nn.Linear(hidden_dim, z_dim)
        self.fc2_logvar = nn.Linear(hidden_dim, z_dim)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        mu = self.fc2_mu(h)
        logvar = self.fc2_logvar(h)
        return mu, logvar

# Define the decoder
class Decoder(nn.Module):
    def __init__(self, z_dim, hidden_dim, output_dim):
        super(Decoder, self).__init__()
        self.fc3 = nn.Linear(z_dim, hidden_dim)
        self.fc4 = nn.Linear(hidden_dim, output_dim)

    def forward(self, z):
        h = F.relu(self.fc3(z))
        x_reconstructed = torch.sigmoid(self.fc4(h))
        return x_reconstructed

# Define the VAE
class VAE(nn.Module):
    def __init__(self, input_dim, hidden_dim, z_dim):
        super(VAE, self).__init__()
        self.encoder = Encoder(input_dim, hidden_dim, z_dim)
        self.decoder = Decoder(z_dim, hidden_dim, input_dim)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def forward(self, x):
        mu, logvar = self.encoder(x)
        z = self.reparameterize(mu, logvar)
        x_reconstructed = self.decoder(z)
        return x_reconstructed, mu, logvar
"""

PROTOCOL = '''\
import torch
import torch.nn as nn
import torch.nn.functional as F


class TinyConvVAE(nn.Module):
    """Image-shaped throughout: the protocol's encode, decode, reconstruction_loss and mean."""

    def __init__(self, input_shape, latent_dim=3):
        super().__init__()
        c, h, w = input_shape
        self.input_shape, self.latent_dim = input_shape, latent_dim
        self.conv = nn.Conv2d(c, 4, 3, padding=1)
        self.to_stats = nn.Linear(4 * h * w, 2 * latent_dim)
        self.back = nn.Linear(latent_dim, c * h * w)

    def encode(self, x):
        mu, logvar = self.to_stats(F.relu(self.conv(x)).flatten(1)).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z):
        return self.back(z).view(-1, *self.input_shape)

    def reconstruction_loss(self, params, x):
        return F.binary_cross_entropy_with_logits(params, x, reduction="none").flatten(1).sum(1)

    def mean(self, params):
        return torch.sigmoid(params)
'''


def write(folder, name, text):
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def train(vae_tui, tmp_path, model, *more):
    run = tmp_path / "run"
    code, out, err = vae_tui("train", "--dataset", "digits", "--model", model, "--epochs", "2", "--iw-samples", "2", "--run-dir", run, *more)
    return run, code, out, err


def test_the_classic_example_trains_as_it_is_and_its_checkpoint_loads_into_its_own_class(tmp_path, vae_tui):
    path = write(tmp_path, "classic_vae.py", CLASSIC)
    run, code, out, err = train(vae_tui, tmp_path, f"{path}:VAE", "--model-args", "hidden_dim=32, z_dim=4")
    assert code == 0, err
    assert "model:   classic_vae.py:VAE (yours), z 4, beta" in out
    assert "flat input, x_reconstructed read as probabilities" in out and "finished 2 epochs" in out
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["model_kind"] == "classic" and config["model_output"] == "probs" and config["latent_dim"] == 4
    saved = load_checkpoint(run / "checkpoints" / "last.pt")
    assert saved["model_source"]["file"] == str(path.resolve()) and len(saved["model_source"]["sha256"]) == 64
    spec = importlib.util.spec_from_file_location("their_own", path)
    theirs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(theirs)
    model = theirs.VAE(64, 32, 4)
    model.load_state_dict(torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"])  # no prefix

    code, out, err = vae_tui("eval", run, "--iw-samples", "2")
    assert code == 0 and "test -log p(x) <=" in out, err
    path.write_text(CLASSIC + "\n# a comment added since\n")
    code, out, err = vae_tui("eval", run, "--iw-samples", "2")
    assert code == 0 and "note: " in out and "classic_vae.py has changed since the checkpoint was written" in out, err
    code, out, err = vae_tui("train", "--resume", run, "--epochs", "3")
    assert code == 0, err
    assert "classic_vae.py has changed since the checkpoint was written" in out and "finished 3 epochs" in out


def test_a_model_with_the_protocol_and_a_classic_one_giving_logits(tmp_path, vae_tui):
    path = write(tmp_path, "mine.py", PROTOCOL)
    run, code, out, err = train(vae_tui, tmp_path, f"{path}:TinyConvVAE", "--latent-dim", "3")  # fills latent_dim
    assert code == 0, err
    assert "the encode/decode protocol" in out and "mine.py:TinyConvVAE (yours), z 3, beta" in out and "finished 2 epochs" in out

    logits = write(tmp_path, "logits.py", CLASSIC.replace("torch.sigmoid(self.fc4(h))", "self.fc4(h)"))
    run, code, out, err = train(vae_tui, tmp_path / "second", f"{logits}:VAE")
    assert code == 0, err
    assert "x_reconstructed read as logits" in out


BAD = {
    "missing file": (None, "VAE", [], "--model: no such file "),
    "syntax error": ("import torch\nclass VAE(torch.nn.Module:\n    pass\n", "VAE", [], "bad.py line 2: syntax error"),
    "missing class": (CLASSIC, "Vae", [], "has no class Vae; it has Encoder, Decoder, VAE"),
    "not a module": ("class VAE:\n    pass\n", "VAE", [], "VAE in "),
    "missing argument": (
        CLASSIC.replace(
            "def __init__(self, input_dim, hidden_dim, z_dim):\n        super(VAE",
            "def __init__(self, input_dim, hidden_dim, z_dim, depth):\n        super(VAE",
        ),
        "VAE",
        [],
        "VAE() needs depth; give it with --model-args 'depth=...'",
    ),
    "returns one tensor": (
        CLASSIC.replace("return x_reconstructed, mu, logvar", "return x_reconstructed"),
        "VAE",
        [],
        "VAE.forward must return (x_reconstructed, mu, logvar)",
    ),
    "wrong output shape": (
        CLASSIC.replace("self.decoder = Decoder(z_dim, hidden_dim, input_dim)", "self.decoder = Decoder(z_dim, hidden_dim, 10)"),
        "VAE",
        [],
        "x_reconstructed has shape (8, 10) where its input has (8, 64)",
    ),
    "not probabilities": (
        CLASSIC.replace("torch.sigmoid(self.fc4(h))", "self.fc4(h) * 3"),
        "VAE",
        ["--model-output", "probs"],
        "outside [0, 1], so it is not probabilities",
    ),
    "NaN": (
        CLASSIC.replace("return x_reconstructed, mu, logvar", "return x_reconstructed * float('nan'), mu, logvar"),
        "VAE",
        [],
        "the first batch's reconstruction loss is nan",
    ),
    "raises": (
        CLASSIC.replace("h = F.relu(self.fc1(x))", "h = F.relu(self.fc1(x)) / 0 + {}['oops']"),
        "VAE",
        [],
        "VAE.forward failed on a batch of shape (8, 64) (line 15): KeyError",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_each_wrong_model_is_one_line_and_no_run(tmp_path, vae_tui, case):
    text, name, more, message = BAD[case]
    path = tmp_path / "bad.py"
    if text is not None:
        path.write_text(text)
    run, code, out, err = train(vae_tui, tmp_path, f"{path}:{name}", *more)
    assert code != 0 and err.count("\n") == 1 and message in err, err
    assert "Traceback" not in err + out and not run.exists()


def test_your_own_exception_in_training_shows_your_frames_and_keeps_the_last_good_checkpoint(tmp_path, vae_tui):
    write(tmp_path, "classic_vae.py", CLASSIC)
    path = write(
        tmp_path,
        "late.py",
        """\
        from classic_vae import VAE as Base


        class VAE(Base):
            calls = 0

            def forward(self, x):
                VAE.calls += 1
                if VAE.calls > 16:  # the probe's batch, then an epoch of 12 and a few more
                    raise ValueError("my own bug")
                return super().forward(x)
        """,
    )
    run, code, out, err = train(vae_tui, tmp_path, f"{path}:VAE")
    assert code != 0
    assert f'File "{path.resolve()}", line 10, in forward' in err and "ValueError: my own bug" in err
    assert "training failed in your model (late.py line 10, in forward): ValueError: my own bug" in err
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1  # the epoch it finished is kept


def test_a_model_without_a_decoder_of_its_own_trains_and_says_why_there_are_no_samples(tmp_path, vae_tui):
    path = write(
        tmp_path,
        "nodec.py",
        """\
        import torch
        import torch.nn as nn
        import torch.nn.functional as F


        class VAE(nn.Module):
            def __init__(self, input_dim, hidden_dim, z_dim):
                super().__init__()
                self.fc1 = nn.Linear(input_dim, hidden_dim)
                self.mu, self.logvar = nn.Linear(hidden_dim, z_dim), nn.Linear(hidden_dim, z_dim)
                self.fc3, self.fc4 = nn.Linear(z_dim, hidden_dim), nn.Linear(hidden_dim, input_dim)

            def forward(self, x):
                h = F.relu(self.fc1(x))
                mu, logvar = self.mu(h), self.logvar(h)
                z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
                return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar
        """,
    )
    run, code, out, err = train(vae_tui, tmp_path, f"{path}:VAE", "--model-args", "hidden_dim=16")
    assert code == 0, err
    assert out.count("warning: no samples: VAE has neither a decode(z) method nor a decoder") == 1 and "finished 2 epochs" in out
    assert "no importance-weighted -log p(x)" in out
    import numpy as np

    with np.load(run / "snapshot.npz") as snapshot:
        assert snapshot["reconstructions"].shape == (16, 1, 8, 8) and len(snapshot["samples"]) == 0


def test_the_explain_screen_names_your_model_file():
    from vae_tui.config import TrainConfig
    from vae_tui.models import describe_model
    from vae_tui.tui.screens import explain_text

    words = describe_model(TrainConfig(model="/home/me/classic_vae.py:VAE", latent_dim=4), (1, 28, 28))
    text = explain_text(words)
    assert "**This run:** a classic_vae.py:VAE (yours), z 4 VAE. It is your own model, read from that file" in text


def test_a_model_computing_in_float64_trains_and_a_moved_model_file_is_one_line(tmp_path, vae_tui):
    path = write(
        tmp_path, "double_vae.py", CLASSIC.replace("return x_reconstructed, mu, logvar", "return x_reconstructed.double(), mu.double(), logvar.double()")
    )
    run, code, out, err = train(vae_tui, tmp_path, f"{path}:VAE", "--model-args", "hidden_dim=32, z_dim=4")
    assert code == 0 and "finished 2 epochs" in out, err
    path.rename(tmp_path / "elsewhere.py")
    code, out, err = vae_tui("eval", run, "--iw-samples", "2")
    assert code == 1 and err.count("\n") == 1 and "--model" not in err, err
    assert f"your model {path}:VAE, whose file {path} is gone; put the file back there to load it" in err


def test_the_single_numbers_your_forward_returns_besides_are_recorded_by_their_names_and_not_trained_on(tmp_path, vae_tui):
    from vae_tui.data import load_digits
    from vae_tui.runfile.files import read_scalars
    from vae_tui.runfile.layout import RunDir
    from vae_tui.runfile.metrics import read_metrics

    extra = CLASSIC.replace(
        "        return x_reconstructed, mu, logvar\n",
        "        brightness = x.mean()\n        return x_reconstructed, mu, logvar, brightness\n",
    )
    path = write(tmp_path, "with_extra.py", extra)
    run, code, out, err = train(vae_tui, tmp_path, f"{path}:VAE", "--model-args", "hidden_dim=32, z_dim=4", "--batch-size", "100")
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["config"]["model_outputs"] == "0,1,2 logvar 3=brightness"
    records = read_scalars(RunDir(run))
    metrics = read_metrics(RunDir(run).metrics_path)
    assert [r["step"] for r in records] == metrics.column("step").astype(int).tolist()  # one a step, as the losses
    first_epoch = [r["brightness"] for r in records[:15]]  # 1,500 images in batches of 100
    assert sum(first_epoch) / 15 == pytest.approx(float(load_digits().train_x.mean()), rel=1e-4)  # each batch's own mean pixel
    assert torch.allclose(torch.tensor(metrics.column("loss")), torch.tensor(metrics.column("recon") + metrics.column("kl")), rtol=1e-5)
