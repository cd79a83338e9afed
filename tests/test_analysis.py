"""Latent projections, PCA against the VAE, traversals, KL per dimension, warm-up, honest evaluation."""

import json
import sys

import numpy as np
import pytest
import torch

from vae_tui.analysis import (
    LatentReport,
    importance_weighted,
    kl_per_dim,
    pca_fit,
    project_2d,
    reconstruction_scores,
    traversals,
)
from vae_tui.cli import main
from vae_tui.config import TrainConfig
from vae_tui.device import pick_device
from vae_tui.model import VAE
from vae_tui.trainer import Trainer, beta_at


@pytest.fixture(scope="module")
def trained(digits):
    """A small VAE trained for a few epochs on digits, in this process."""
    config = TrainConfig(dataset="digits", epochs=8, hidden_dim=64, latent_dim=6, iw_samples=0).validate()
    trainer = Trainer(config, digits, pick_device("cpu"))
    assert trainer.run().state == "finished"
    return trainer.model.eval()


@pytest.fixture(scope="module")
def digits():
    from vae_tui.data import load_digits

    return load_digits()


def test_pca_error_falls_as_k_grows(digits):
    errors = [reconstruction_scores(pca_fit(digits.train_x, k).reconstruct(digits.test_x), digits.test_x) for k in (1, 2, 5, 10, 20, 40)]
    mse = [e["mse"] for e in errors]
    assert all(a > b for a, b in zip(mse, mse[1:]))
    nll = [e["nll"] for e in errors]
    assert nll[0] > nll[-1]


def test_projections_have_the_right_shapes(digits, trained):
    assert project_2d(digits.test_x).shape == (len(digits.test_x), 2)
    assert project_2d(np.ones((5, 2))).shape == (5, 2) and project_2d(np.ones((5, 1))).shape == (5, 2)
    report = LatentReport(digits.train_x, digits.test_x, digits.test_y, digits.image_shape, 6).build(trained, 8, 96)
    n = len(digits.test_x)
    assert report["latent_2d"].shape == (n, 2) and report["pixels_2d"].shape == (n, 2) and report["labels"].shape == (n,)
    assert report["kl_per_dim"].shape == (6,) and report["traversals"].shape == (3, 5, 8, 8)
    dims = report["traversal_dims"]
    assert list(dims) == list(np.argsort(-report["kl_per_dim"])[:3])  # the most informative dimensions
    assert np.isfinite([report["vae_nll"], report["vae_mse"], report["pca_nll"], report["pca_mse"]]).all()


def test_kl_per_dim_sums_to_the_kl_term_and_traversals_move(digits, trained):
    from vae_tui.model import kl_divergence

    x = torch.as_tensor(digits.test_x)
    with torch.no_grad():
        mu, logvar = trained.encoder(x)
    assert kl_per_dim(mu, logvar).sum() == pytest.approx(float(kl_divergence(mu, logvar)), rel=1e-4)
    walk = traversals(trained, [0], steps=5)
    assert walk.shape == (1, 5, 64) and not np.allclose(walk[0, 0], walk[0, -1])


def test_importance_weighted_bound_never_exceeds_the_elbo_and_tightens(digits, trained):
    x = torch.as_tensor(digits.test_x[:150])
    results = [importance_weighted(trained, x, k, seed=1) for k in (1, 10, 200)]
    for r in results:
        assert r.iw_nll <= r.elbo_nll + 1e-9 and r.images == 150 and r.iw_se > 0
    assert results[0].iw_nll == pytest.approx(results[0].elbo_nll)  # one sample: the bound is the ELBO
    assert results[0].iw_nll > results[1].iw_nll > results[2].iw_nll  # more samples, a tighter bound


def test_kl_warmup_schedule():
    assert beta_at(1.0, 0, 0, 10) == 1.0
    assert [beta_at(2.0, 4, step, 10) for step in (0, 10, 20, 40, 400)] == [0.0, 0.5, 1.0, 2.0, 2.0]


def test_eval_and_compare_pca_commands(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    for argv in (["train", "--dataset", "digits", "--hidden-dim", "32", "--latent-dim", "4", "--epochs", "3", "--kl-warmup", "2",
                  "--iw-samples", "20", "--run-dir", str(run), "--headless"],
                 ["eval", str(run), "--iw-samples", "50"],
                 ["compare-pca", str(run), "--images", "2"]):
        monkeypatch.setattr(sys, "argv", ["vae-tui", *argv])
        with pytest.raises(SystemExit) as done:
            main()
        assert done.value.code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    saved = json.loads((run / "eval.json").read_text())
    assert saved["samples"] == 50 and saved["iw_nll"] <= saved["elbo_nll"]
    assert "importance-weighted" in out and "PCA with k = 4 components" in out
    assert "\nPCA " in out and "\nVAE " in out and "input | PCA | VAE" in out
    status = json.loads((run / "status.json").read_text())
    assert status["beta"] == 1.0 and status["evaluation"]["samples"] == 20  # warm-up over; trained run evaluated itself
