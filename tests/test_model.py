import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence as torch_kl

from vae_tui.model import VAE, kl_divergence, parameter_count, reconstruction_loss, vae_loss


def test_analytic_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(32, 20), torch.randn(32, 20)
    expected = torch_kl(Normal(mu, torch.exp(0.5 * logvar)), Normal(torch.zeros(20), torch.ones(20))).sum(1).mean()
    assert torch.allclose(kl_divergence(mu, logvar), expected, rtol=1e-5, atol=1e-5)


def test_kl_is_zero_for_the_prior_itself():
    assert kl_divergence(torch.zeros(4, 3), torch.zeros(4, 3)).item() == 0.0


def test_reconstruction_from_logits_equals_the_seeds_sigmoid_plus_bce():
    torch.manual_seed(0)
    logits, x = torch.randn(16, 64), torch.rand(16, 64)
    seed_form = F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="sum") / 16
    assert torch.allclose(reconstruction_loss(logits, x), seed_form, rtol=1e-4)


def test_loss_is_recon_plus_beta_kl_and_shapes_follow_the_input():
    torch.manual_seed(0)
    model = VAE(64, 32, 5)
    x = torch.rand(8, 64)
    logits, mu, logvar = model(x)
    assert logits.shape == (8, 64) and mu.shape == (8, 5) and logvar.shape == (8, 5)
    loss, recon, kl = vae_loss(logits, x, mu, logvar, beta=0.5)
    assert torch.allclose(loss, recon + 0.5 * kl)
    assert 0 <= model.reconstruct(x).min() and model.reconstruct(x).max() <= 1


def test_default_is_the_seeds_784_400_20_model():
    model = VAE()
    assert parameter_count(model) == (784 * 400 + 400) + 2 * (400 * 20 + 20) + (20 * 400 + 400) + (400 * 784 + 784)
