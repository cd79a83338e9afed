import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal
from torch.distributions import kl_divergence as torch_kl

from vae_tui.config import TrainConfig
from vae_tui.models import build_model, describe_model, parameter_count, parameter_shapes
from vae_tui.models.protocol import VAEModel, elbo_terms, generate, reconstruct
from vae_tui.models.vae import VAE, kl_divergence, reconstruction_loss, vae_loss


def test_analytic_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(32, 20), torch.randn(32, 20)
    expected = torch_kl(Normal(mu, torch.exp(0.5 * logvar)), Normal(torch.zeros(20), torch.ones(20))).sum(1)
    assert torch.allclose(kl_divergence(mu, logvar), expected, rtol=1e-5, atol=1e-5)


def test_kl_is_zero_for_the_prior_itself():
    assert kl_divergence(torch.zeros(4, 3), torch.zeros(4, 3)).abs().max().item() == 0.0


def test_reconstruction_from_logits_equals_the_classic_sigmoid_plus_bce():
    torch.manual_seed(0)
    logits, x = torch.randn(16, 1, 8, 8), torch.rand(16, 1, 8, 8)
    classic = F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="sum") / 16
    assert reconstruction_loss(logits, x).shape == (16,)
    assert torch.allclose(reconstruction_loss(logits, x).mean(), classic, rtol=1e-4)


def test_the_classic_forward_and_the_protocol_agree():
    torch.manual_seed(0)
    model = VAE((1, 8, 8), 32, 5)
    x = torch.rand(8, 1, 8, 8)
    assert isinstance(model, VAEModel) and model.latent_dim == 5 and model.input_shape == (1, 8, 8)
    logits, mu, logvar = model(x)
    assert logits.shape == (8, 1, 8, 8) and mu.shape == (8, 5) and logvar.shape == (8, 5)
    loss, recon, kl = vae_loss(reconstruction_loss(logits, x), mu, logvar, beta=0.5)
    assert torch.allclose(loss, recon + 0.5 * kl)
    torch.manual_seed(1)
    logits, mu, logvar = model(x)
    classic = F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="sum") / 8 + 0.5 * kl_divergence(mu, logvar).mean()
    torch.manual_seed(1)
    assert torch.allclose(elbo_terms(model, x, 0.5)[0], classic, rtol=1e-4)  # the trainer's step is the classic loss
    pictures = reconstruct(model, x)
    assert pictures.shape == x.shape and 0 <= pictures.min() and pictures.max() <= 1
    assert generate(model, torch.zeros(3, 5)).shape == (3, 1, 8, 8)


def test_the_factory_builds_the_classic_784_400_20_model_by_default():
    config = TrainConfig()
    model = build_model(config, (1, 28, 28))
    assert parameter_count(model) == (784 * 400 + 400) + 2 * (400 * 20 + 20) + (20 * 400 + 400) + (400 * 784 + 784)
    assert describe_model(config, (1, 28, 28)) == "784-400-20"
    assert parameter_shapes(config, (3, 8, 8))["encoder.fc1.weight"] == (400, 192)  # colour: three values a pixel


def test_an_unknown_architecture_is_refused():
    from vae_tui.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown --arch"):
        TrainConfig(arch="transformer").validate()
