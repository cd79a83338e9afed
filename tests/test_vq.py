"""The built-in VQ-VAE (--arch vq): the quantizer's arithmetic by hand, its loss and terms, its pictures
and latent view, and a run of it beside the Gaussian VAE."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers import make_trainer
from vae_tui.config import TrainConfig
from vae_tui.errors import ConfigError
from vae_tui.models.protocol import elbo_terms, from_prior, prior_draws, quantized, reconstruct
from vae_tui.models.vq import CODES, COMMITMENT, DECAY, SMOOTHING, VQVAE, VectorQuantizer
from vae_tui.runfile.files import read_scalars
from vae_tui.runfile.metrics import read_metrics
from vae_tui.runfile.schema import RunState


def test_each_vector_takes_its_nearest_entry_and_the_entries_follow_their_vectors_means():
    torch.manual_seed(0)
    q = VectorQuantizer(positions=2, codes=4, dim=3)
    before = q.entries.clone()
    z_e = torch.randn(5, 2, 3)
    codes = q.nearest(z_e)
    by_hand = torch.cdist(z_e.reshape(-1, 3), before).argmin(1).view(5, 2)
    assert torch.equal(codes, by_hand)
    q.train()
    z_q, commitment, perplexity = q(z_e)
    counts = torch.bincount(by_hand.flatten(), minlength=4).float()
    sums = torch.zeros(4, 3).index_add_(0, by_hand.flatten(), z_e.reshape(-1, 3))
    count = DECAY * 1.0 + (1 - DECAY) * counts
    total = count.sum()
    smoothed = (count + SMOOTHING) / (total + 4 * SMOOTHING) * total
    assert torch.allclose(q.entries, (DECAY * before + (1 - DECAY) * sums) / smoothed.unsqueeze(1), atol=1e-6)
    assert torch.allclose(commitment, (z_e - before[by_hand]).pow(2).sum((1, 2)).mean())  # the entries chosen, before the move
    share = counts / counts.sum()
    assert perplexity.item() == pytest.approx(math.exp(-(share[share > 0] * share[share > 0].log()).sum().item()), rel=1e-5)
    assert torch.allclose(z_q, before[by_hand])  # the value the decoder sees: the entries


def test_the_decoders_gradient_reaches_the_encoder_straight_through():
    q = VectorQuantizer(positions=1, codes=4, dim=2)
    z_e = torch.randn(3, 1, 2, requires_grad=True)
    z_q, _, _ = q(z_e)
    (z_q * torch.tensor([2.0, -1.0])).sum().backward()
    assert torch.equal(z_e.grad, torch.tensor([2.0, -1.0]).expand(3, 1, 2))  # copied as if quantizing were the identity


def test_the_loss_is_the_negative_elbo_with_a_constant_kl_plus_the_weighed_commitment():
    torch.manual_seed(1)
    model = VQVAE((1, 8, 8), hidden_dim=16, z_dim=5)
    x = torch.rand(7, 1, 8, 8)
    z_e = model.encode_vectors(x).detach()
    entries = model.quantizer.entries[model.quantizer.nearest(z_e)]  # as they are before the step moves them
    loss, recon, kl, (vq_loss, perplexity) = elbo_terms(model, x, beta=2.0)
    assert kl.item() == pytest.approx(5 * math.log(CODES))  # one code of CODES at each of 5 positions, under a uniform prior
    assert vq_loss.item() == pytest.approx(COMMITMENT * (z_e - entries).pow(2).sum((1, 2)).mean().item(), rel=1e-5)
    assert loss.item() == pytest.approx((recon + 2.0 * kl + vq_loss).item(), rel=1e-6)
    assert 1 <= perplexity.item() <= CODES


def test_samples_draw_each_positions_code_by_its_usage_and_reconstructions_decode_the_code():
    model = VQVAE((1, 8, 8), hidden_dim=16, z_dim=3).eval()
    model.quantizer.usage.zero_()
    model.quantizer.usage[:, 5] = 1.0  # every position has only ever used entry 5...
    model.quantizer.usage[1, 9] = 3.0  # ...but position 1 used entry 9 three times as often
    draws = torch.tensor([[0.1, 0.1, 0.9], [0.9, 0.2, 0.1]])
    assert model.prior_codes(draws).tolist() == [[5, 5, 5], [5, 5, 5]]  # entry 5 holds the first quarter of position 1's mass
    assert model.prior_codes(torch.tensor([[0.0, 0.5, 0.0]])).tolist() == [[5, 9, 5]]
    assert quantized(model) is not None and prior_draws(model, 4, torch.Generator()).shape == (4, 3)
    assert from_prior(model, draws).shape == (2, 1, 8, 8)
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(reconstruct(model, x), model.mean(model.decode_codes(model.codes(x))))


def test_a_vq_run_records_its_terms_each_step_and_an_exact_bound_and_shows_code_entropies(tmp_path, small_digits):
    trainer, run = make_trainer(tmp_path, small_digits, epochs=2, arch="vq", beta=1.0, iw_samples=10)
    assert trainer.run().state == RunState.FINISHED
    metrics, scalars = read_metrics(run.metrics_path), read_scalars(run)
    assert [r["step"] for r in scalars] == metrics.column("step").astype(int).tolist()
    assert np.allclose(metrics.column("kl"), trainer.config.latent_dim * math.log(CODES))
    vq = np.array([r["vq_loss"] for r in scalars])
    assert np.allclose(metrics.column("loss"), metrics.column("recon") + metrics.column("kl") + vq, rtol=1e-5)
    evaluation = trainer.telemetry.status().evaluation
    assert evaluation["samples"] == 1 and evaluation["iw_nll"] == evaluation["elbo_nll"]  # one code: the bound is exact
    analysis = trainer.telemetry.analysis()
    assert str(analysis["per_dim_measure"]) == "code entropy"
    entropy = analysis["kl_per_dim"]
    assert entropy.shape == (trainer.config.latent_dim,) and (entropy >= 0).all() and (entropy <= math.log(CODES) + 1e-5).all()
    assert analysis["traversals"].shape[:2] == (3, 5) and analysis["latent_2d"].shape[1] == 2
    said = [e.message for e in trainer.telemetry.events() if e.kind in ("info", "diagnosis")]
    assert said.count("posterior collapse and holes are not diagnosed: a VQ-VAE's code has no Gaussian posterior") == 1


def test_code_entropy_per_position_is_by_hand():
    from vae_tui.evaluation.analysis import code_view

    model = VQVAE((1, 8, 8), hidden_dim=16, z_dim=2).eval()
    fixed = torch.tensor([[0, 3], [0, 3], [0, 4], [0, 5]])
    model.codes = lambda x: fixed[: len(x)]  # type: ignore[method-assign]
    view = code_view(model, torch.rand(4, 1, 8, 8))
    # position 0 always 0: nothing; position 1: 3 half the time, 4 and 5 a quarter each
    assert view["per_dim"][0] == pytest.approx(0.0)
    assert view["per_dim"][1] == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    assert view["dims"][0] == 1
    assert view["walks"].shape == (2, 5, 1, 8, 8)


def test_tc_beta_asks_for_a_gaussian_posterior():
    with pytest.raises(ConfigError, match="--tc-beta is for a Gaussian posterior"):
        TrainConfig(arch="vq", tc_beta=2.0).validate()
