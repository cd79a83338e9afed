"""Latent projections, PCA against the VAE, traversals, KL per dimension, warm-up, honest evaluation."""

import json

import numpy as np
import pytest
import torch

from conftest import copy_run
from vae_tui.config import TrainConfig
from vae_tui.evaluation.analysis import (
    EXACT_PCA_VALUES,
    LatentReport,
    PcaComparison,
    gaussian_nll,
    importance_weighted,
    kl_per_dim,
    pca_fit,
    project_2d,
    reconstruction_scores,
    traversals,
)
from vae_tui.models.vae import kl_divergence
from vae_tui.training.device import pick_device
from vae_tui.training.loop import Trainer
from vae_tui.training.losses import beta_at


@pytest.fixture(scope="module")
def trained(digits):
    """A small VAE trained for a few epochs on digits, in this process."""
    config = TrainConfig(dataset="digits", epochs=8, hidden_dim=64, latent_dim=6, iw_samples=0).validate()
    trainer = Trainer(config, digits, pick_device("cpu"))
    assert trainer.run().state == "finished"
    return trainer.state.model.eval()


def test_pca_error_falls_as_k_grows(digits):
    errors = [reconstruction_scores(pca_fit(digits.train_x, k).reconstruct(digits.test_x.reshape(297, -1)), digits.test_x) for k in (1, 2, 5, 10, 20, 40)]
    mse = [e["mse"] for e in errors]
    assert all(a > b for a, b in zip(mse, mse[1:]))
    assert errors[0]["nll"] > errors[-1]["nll"]


def test_pca_of_large_pictures_finds_the_same_subspace_as_an_exact_svd():
    rng = np.random.default_rng(0)
    pictures = rng.random((300, 8)) @ rng.random((8, 3 * 24 * 24)) + 0.01 * rng.random((300, 3 * 24 * 24))
    assert pictures.shape[1] > EXACT_PCA_VALUES  # the randomized path
    fast = pca_fit(pictures, 5)
    centred = pictures - pictures.mean(axis=0)
    exact = np.linalg.svd(centred, full_matrices=False)[2][:5]
    assert fast.components.shape == (5, 3 * 24 * 24)
    overlap = np.linalg.svd(fast.components @ exact.T, compute_uv=False)  # cosines of the angles between them
    assert overlap.min() > 0.999
    exact_error = ((centred - centred @ exact.T @ exact) ** 2).mean()
    assert ((pictures - fast.reconstruct(pictures)) ** 2).mean() <= exact_error * 1.001


def test_the_latent_report_has_the_right_shapes(digits, trained):
    assert project_2d(digits.test_x).shape == (len(digits.test_x), 2)
    assert project_2d(np.ones((5, 2))).shape == (5, 2) and project_2d(np.ones((5, 1))).shape == (5, 2)
    report = LatentReport(digits.train_x, digits.test_x, digits.test_y, 6).build(trained, 8, 96)
    n = len(digits.test_x)
    assert report["latent_2d"].shape == (n, 2) and report["pixels_2d"].shape == (n, 2) and report["labels"].shape == (n,)
    assert report["kl_per_dim"].shape == (6,) and report["traversals"].shape == (3, 5, 1, 8, 8)
    assert list(report["traversal_dims"]) == list(np.argsort(-report["kl_per_dim"])[:3])  # the most informative dimensions
    assert np.isfinite([report["vae_nll"], report["vae_mse"], report["pca_nll"], report["pca_mse"]]).all()
    unlabelled = LatentReport(digits.train_x, digits.test_x, None, 6).build(trained, 8, 96)
    assert (unlabelled["labels"] == -1).all()


def test_the_latent_view_and_compare_pca_share_one_definition(digits, trained):
    comparison = PcaComparison(digits.train_x, digits.test_x, 6)
    report = LatentReport(digits.train_x, digits.test_x, digits.test_y, 6).build(trained, 8, 96)
    _, vae = comparison.vae(trained)
    assert report["pca_nll"] == comparison.pca_scores["nll"] and report["vae_nll"] == vae["nll"]
    assert report["pca_mse"] == comparison.pca_scores["mse"] and report["vae_mse"] == vae["mse"]


def test_kl_per_dim_sums_to_the_kl_term_and_traversals_move(digits, trained):
    x = torch.as_tensor(digits.test_x)
    with torch.no_grad():
        mu, logvar = trained.encode(x)
    assert kl_per_dim(mu, logvar).sum() == pytest.approx(float(kl_divergence(mu, logvar).mean()), rel=1e-4)
    walk = traversals(trained, [0], steps=5)
    assert walk.shape == (1, 5, 1, 8, 8) and not np.allclose(walk[0, 0], walk[0, -1])


def test_importance_weighted_bound_never_exceeds_the_elbo_and_tightens(digits, trained):
    x = torch.as_tensor(digits.test_x[:150])
    results = [importance_weighted(trained, x, k, seed=1) for k in (1, 10, 200)]
    for r in results:
        assert r.iw_nll <= r.elbo_nll + 1e-9 and r.images == 150 and r.iw_se > 0
    assert results[0].iw_nll == pytest.approx(results[0].elbo_nll)  # one sample: the bound is the ELBO
    assert results[0].iw_nll > results[1].iw_nll > results[2].iw_nll  # more samples, a tighter bound


def test_importance_weighting_in_passes_gives_the_same_bound(digits, trained, monkeypatch):
    """The evaluation's memory does not grow with K: samples go through the decoder a few at a time."""
    from vae_tui.evaluation import budgets

    x = torch.as_tensor(digits.test_x[:64])
    whole = importance_weighted(trained, x, 40, seed=3)
    monkeypatch.setattr(budgets, "IW_ELEMENTS", 64 * 7 * (6 + 64))  # 7 samples a pass: 6 passes, the last one short
    in_passes = importance_weighted(trained, x, 40, seed=3)
    assert in_passes.iw_nll == pytest.approx(whole.iw_nll, rel=1e-6) and in_passes.samples == 40


def test_the_evaluation_reports_progress_and_stops_when_asked(digits, trained):
    from vae_tui.evaluation.analysis import EvaluationStopped

    x = torch.as_tensor(digits.test_x)
    seen = []
    importance_weighted(trained, x, 5, chunk=100, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(100, 297), (200, 297), (297, 297)]
    asked = []
    with pytest.raises(EvaluationStopped):
        importance_weighted(trained, x, 5, chunk=100, stop=lambda: asked.append(1) or len(asked) > 2)
    assert len(asked) == 3  # asked before each pass, and the third answer stopped it


def test_kl_warmup_schedule():
    assert beta_at(1.0, 0, 0, 10) == 1.0
    assert [beta_at(2.0, 4, step, 10) for step in (0, 10, 20, 40, 400)] == [0.0, 0.5, 1.0, 2.0, 2.0]


def test_eval_and_compare_pca_commands(finished_run, tmp_path, vae_tui):
    run = copy_run(finished_run, tmp_path / "run")
    status = json.loads((run / "status.json").read_text())
    assert status["beta"] == 1.0 and status["evaluation"]["samples"] == 20  # warm-up over; the run evaluated itself
    assert json.loads((run / "eval.json").read_text())["samples"] == 20
    code, out, err = vae_tui("eval", run, "--iw-samples", "50")
    assert code == 0, err
    saved = json.loads((run / "eval.json").read_text())
    assert saved["samples"] == 50 and saved["iw_nll"] <= saved["elbo_nll"] and "importance-weighted" in out
    code, out, err = vae_tui("compare-pca", run, "--images", "2")
    assert code == 0, err
    assert "PCA with k = 4 components" in out and "\nPCA " in out and "\nVAE " in out and "input | PCA | VAE" in out


def test_a_gaussian_runs_scores_are_gaussian_with_each_methods_own_sigma():
    rng = np.random.default_rng(0)
    x = rng.random((50, 3, 4, 4))
    recon = x + rng.normal(0, 0.1, x.shape)
    mse = ((recon - x) ** 2).reshape(50, 3, -1).mean(axis=(0, 2))  # per channel
    expected = sum(16 * 0.5 * (np.log(2 * np.pi * m) + 1) for m in mse)  # sigma^2 = each channel's own error
    assert np.isclose(gaussian_nll(recon, x), expected)
    scores = reconstruction_scores(recon, x, "gaussian")
    assert scores["nll"] < 0 and np.isclose(scores["mse"], ((recon - x) ** 2).mean())  # small errors: a density above 1
    assert reconstruction_scores(np.clip(recon, 0, 1), x)["nll"] > 0  # the Bernoulli measure, by default
