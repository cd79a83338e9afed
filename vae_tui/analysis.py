"""Looking inside a trained VAE: latent projections, PCA as the linear baseline, traversals, KL
per dimension, and an honest estimate of -log p(x). Pure functions over a model and arrays.

The seed conversation's questions, answered with the user's own run:
- what does the encoder do? `encode_means` + `project_2d`: where each test image lands;
- how is a VAE unlike PCA? `pca_fit` / `pca_reconstruct` with as many components as the latent
  has dimensions, scored by the same two numbers as the VAE (`reconstruction_scores`);
- which latent dimensions are used? `kl_per_dim` (near 0: an inactive unit, posterior collapse);
- what does a dimension mean? `traversals`: decode while walking it from -3 to +3;
- how good is the model really? `importance_weighted`: the K-sample bound on log p(x), which is
  never looser than the ELBO computed from the same samples.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vae_tui.model import VAE

EPS = 1e-6  # PCA reconstructions are clipped to [EPS, 1 - EPS] before a Bernoulli likelihood


# -- PCA, the linear baseline -------------------------------------------------------------------
@dataclass
class PCA:
    mean: np.ndarray  # (d,)
    components: np.ndarray  # (k, d), orthonormal rows, largest variance first

    def project(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) @ self.components.T

    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        return self.project(x) @ self.components + self.mean


def pca_fit(x: np.ndarray, k: int) -> PCA:
    """The best k-dimensional linear subspace of x (rows are samples), by SVD."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x).all(axis=1)]  # a damaged image must not take the baseline down
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return PCA(mean, vt[: min(k, len(vt))])


def project_2d(points: np.ndarray) -> np.ndarray:
    """Points in 2-D for a scatter plot: as they are when 2-D, else their first two principal components."""
    points = np.asarray(points, dtype=np.float64)
    if points.shape[1] == 2:
        return points
    if points.shape[1] == 1:
        return np.column_stack([points[:, 0], np.zeros(len(points))])
    return pca_fit(points, 2).project(points)


# -- the two scores, for PCA and the VAE alike ----------------------------------------------------
def bernoulli_nll(probs: np.ndarray, x: np.ndarray) -> float:
    """Mean over images of -log p(x) with one Bernoulli per pixel: the VAE's reconstruction term."""
    p = np.clip(probs, EPS, 1 - EPS)
    return float(-(x * np.log(p) + (1 - x) * np.log(1 - p)).sum(axis=1).mean())


def mse_per_pixel(recon: np.ndarray, x: np.ndarray) -> float:
    return float(((recon - x) ** 2).mean())


def reconstruction_scores(recon: np.ndarray, x: np.ndarray) -> dict[str, float]:
    return {"nll": bernoulli_nll(recon, x), "mse": mse_per_pixel(recon, x)}


# -- the encoder and decoder, looked at ---------------------------------------------------------
@torch.no_grad()
def encode_means(model: VAE, x: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [model.encoder(x[i : i + chunk]) for i in range(0, len(x), chunk)]
    return torch.cat([m for m, _ in parts]), torch.cat([v for _, v in parts])


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> np.ndarray:
    """Mean KL of each latent dimension over the images, in nats: ~0 means the unit is unused."""
    mu, logvar = mu.detach(), logvar.detach()
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).mean(dim=0).cpu().numpy()


@torch.no_grad()
def traversals(model: VAE, dims: list[int], steps: int = 7, span: float = 3.0) -> np.ndarray:
    """(len(dims), steps, input_dim) pixel intensities: each dim walked from -span to +span, the rest at 0."""
    device = next(model.parameters()).device
    values = torch.linspace(-span, span, steps, device=device)
    z = torch.zeros(len(dims), steps, model.z_dim, device=device)
    for row, dim in enumerate(dims):
        z[row, :, dim] = values
    return model.decode_probs(z.reshape(-1, model.z_dim)).reshape(len(dims), steps, -1).cpu().numpy()


# -- honest evaluation ----------------------------------------------------------------------------
@dataclass
class Evaluation:
    """Per-image test figures in nats: lower is better; iw_nll <= elbo_nll always."""

    elbo_nll: float  # the negative ELBO, averaged over the same K samples
    elbo_se: float
    iw_nll: float  # -log p(x) estimated by importance weighting with K samples
    iw_se: float
    samples: int
    images: int

    def to_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


@torch.no_grad()
def importance_weighted(model: VAE, x: torch.Tensor, k: int = 100, seed: int = 0, chunk: int = 256) -> Evaluation:
    """The importance-weighted bound (Burda et al. 2016) with K samples from q(z|x):

        log p(x) >= log (1/K) sum_k p(x, z_k) / q(z_k|x)  >=  (1/K) sum_k log p(x, z_k) / q(z_k|x) = ELBO

    Both figures come from the same K samples, so by Jensen's inequality the importance-weighted
    -log p(x) can never exceed the negative ELBO; with more samples it tightens towards -log p(x).
    """
    gen = torch.Generator(device=x.device)
    gen.manual_seed(seed)
    log_normal = -0.5 * math.log(2 * math.pi)
    iw, elbo = [], []
    for i in range(0, len(x), chunk):
        xb = x[i : i + chunk]
        mu, logvar = model.encoder(xb)
        std = torch.exp(0.5 * logvar)
        eps = torch.randn((k, *mu.shape), generator=gen, device=x.device, dtype=mu.dtype)
        z = mu + std * eps  # (k, b, z)
        logits = model.decoder(z)
        log_px_z = -F.binary_cross_entropy_with_logits(logits, xb.expand(k, -1, -1), reduction="none").sum(-1)
        log_pz = (log_normal - 0.5 * z.pow(2)).sum(-1)
        log_qz = (log_normal - 0.5 * eps.pow(2) - 0.5 * logvar).sum(-1)
        log_w = (log_px_z + log_pz - log_qz).double()  # (k, b)
        iw.append(torch.logsumexp(log_w, dim=0) - math.log(k))
        elbo.append(log_w.mean(dim=0))
    iw_all, elbo_all = -torch.cat(iw).cpu().numpy(), -torch.cat(elbo).cpu().numpy()
    n = len(iw_all)
    se = lambda values: float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")  # noqa: E731
    return Evaluation(float(elbo_all.mean()), se(elbo_all), float(iw_all.mean()), se(iw_all), k, n)


def describe_evaluation(result: dict[str, Any]) -> str:
    return (
        f"test -log p(x) <= {result['iw_nll']:.2f} ± {result['iw_se']:.2f} nats/image "
        f"(importance-weighted, K={result['samples']}); negative ELBO {result['elbo_nll']:.2f} ± {result['elbo_se']:.2f}"
    )


def write_evaluation(path: str | os.PathLike[str], result: dict[str, Any], what: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"model": what, **result}, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


@torch.no_grad()
def compare_with_pca(model: VAE, train_x: np.ndarray, test_x: np.ndarray, fit_limit: int = 10_000) -> dict[str, dict[str, float]]:
    """PCA with as many components as the latent has dimensions against the VAE (decoding the
    posterior mean), on the same test images, by the same two scores."""
    pca = pca_fit(train_x[:fit_limit], model.z_dim)
    device = next(model.parameters()).device
    vae = model.reconstruct(torch.as_tensor(test_x, device=device)).cpu().numpy()
    return {
        "pca": reconstruction_scores(pca.reconstruct(test_x), test_x),
        "vae": reconstruction_scores(vae, test_x),
    }


# -- what the monitor's latent view shows, refreshed as training goes -----------------------------
REPORT_IMAGES = 1000  # test images in the scatter plots: enough to see clusters, cheap to draw
TRAVERSED_DIMS = 3
TRAVERSAL_STEPS = 5  # -3, -1.5, 0, 1.5, 3: few enough to draw each image at full size in half a screen


class LatentReport:
    """Builds the latent view's arrays. The pixel-space PCA, fixed for a dataset, is made once."""

    def __init__(self, train_x: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, image_shape: tuple[int, int], z_dim: int) -> None:
        n = min(REPORT_IMAGES, len(test_x))
        self.x = test_x[:n]
        self.labels = test_y[:n].astype(np.int64)
        self.image_shape = image_shape
        self._train_x, self._z_dim = train_x, z_dim
        self._baseline: dict[str, np.ndarray] | None = None

    def baseline(self) -> dict[str, np.ndarray]:
        if self._baseline is None:
            fit = self._train_x[:5000]
            scores = reconstruction_scores(pca_fit(fit, self._z_dim).reconstruct(self.x), self.x)
            self._baseline = {
                "pixels_2d": project_2d(self.x).astype(np.float32),
                "pca_nll": np.float64(scores["nll"]),
                "pca_mse": np.float64(scores["mse"]),
            }
        return self._baseline

    @torch.no_grad()
    def build(self, model: VAE, epoch: int, step: int) -> dict[str, np.ndarray]:
        device = next(model.parameters()).device
        x = torch.as_tensor(self.x, device=device)
        mu, logvar = encode_means(model, x)
        kl = kl_per_dim(mu, logvar)
        dims = [int(d) for d in np.argsort(-kl)[: min(TRAVERSED_DIMS, len(kl))]]
        h, w = self.image_shape
        scores = reconstruction_scores(model.decode_probs(mu).cpu().numpy(), self.x)
        return {
            **self.baseline(),
            "epoch": np.int64(epoch),
            "step": np.int64(step),
            "labels": self.labels,
            "latent_2d": project_2d(mu.cpu().numpy()).astype(np.float32),
            "kl_per_dim": kl.astype(np.float32),
            "traversal_dims": np.asarray(dims, dtype=np.int64),
            "traversals": traversals(model, dims, steps=TRAVERSAL_STEPS).reshape(len(dims), -1, h, w).astype(np.float32),
            "vae_nll": np.float64(scores["nll"]),
            "vae_mse": np.float64(scores["mse"]),
        }
