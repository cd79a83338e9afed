"""Looking inside a trained VAE: latent projections, PCA as the linear baseline, traversals, KL
per dimension, held-out losses and an honest estimate of -log p(x). Functions over a model (through
the protocol in vae_tui/models/protocol.py, so any architecture works) and arrays.

A newcomer's questions, answered with their own run:
- what does the encoder do? `encode_means` + `project_2d`: where each test image lands;
- how is a VAE unlike PCA? `PcaComparison`: PCA with as many components as the latent has
  dimensions against the VAE, on the same images, by the same two scores;
- which latent dimensions are used? `kl_per_dim` (near 0: an inactive unit, posterior collapse);
- what does a dimension mean? `traversals`: decode while walking it from -3 to +3;
- how good is the model really? `importance_weighted`: the K-sample bound on log p(x), which is
  never looser than the ELBO computed from the same samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from vae_tui.data.images import as_unit
from vae_tui.evaluation import budgets
from vae_tui.evaluation.budgets import EVAL_CHUNK
from vae_tui.models.protocol import NoDecoder, QuantizedModel, VAEModel, elbo_terms, encode_means, generate, quantized, reconstruct, rng_kept
from vae_tui.models.vae import kl_divergence

EPS = 1e-6  # PCA reconstructions are clipped to [EPS, 1 - EPS] before a Bernoulli likelihood


# -- PCA, the linear baseline -------------------------------------------------------------------
@dataclass
class PCA:
    """Principal components of images seen as vectors of pixels (PCA knows no image shape)."""

    mean: np.ndarray  # (d,)
    components: np.ndarray  # (k, d), orthonormal rows, largest variance first

    def project(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) @ self.components.T

    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        return self.project(x) @ self.components + self.mean


def as_vectors(images: np.ndarray) -> np.ndarray:
    """(count, ...) images as (count, pixels) rows, the view PCA and the pixel scores take."""
    return np.asarray(images).reshape(len(images), -1)


EXACT_PCA_VALUES = 1024  # values per image up to which PCA is an exact SVD (MNIST's 784 included)


def pca_fit(x: np.ndarray, k: int) -> PCA:
    """The best k-dimensional linear subspace of x (rows are samples), by SVD: exact for small
    images; for larger ones (a 64x64 colour picture has 12,288 values, and an exact SVD of 10,000
    of them takes many minutes) scikit-learn's randomized SVD, which finds the top k in a second."""
    x = as_vectors(x)
    x = x[np.isfinite(x).all(axis=1)]  # a damaged image must not take the baseline down
    if x.shape[1] <= EXACT_PCA_VALUES:
        x = x.astype(np.float64)
        mean = x.mean(axis=0)
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        return PCA(mean, vt[: min(k, len(vt))])
    from sklearn.utils.extmath import randomized_svd

    x = x.astype(np.float32)
    mean = x.mean(axis=0)
    _, _, vt = randomized_svd(x - mean, min(k, *x.shape), n_iter=4, random_state=0)
    return PCA(mean.astype(np.float64), vt.astype(np.float64))


def project_2d(points: np.ndarray) -> np.ndarray:
    """Points in 2-D for a scatter plot: as they are when 2-D, else their first two principal components."""
    points = as_vectors(points).astype(np.float64)
    if points.shape[1] == 2:
        return points
    if points.shape[1] == 1:
        return np.column_stack([points[:, 0], np.zeros(len(points))])
    return pca_fit(points, 2).project(points)


# -- the two scores, for PCA and the VAE alike ----------------------------------------------------
def bernoulli_nll(probs: np.ndarray, x: np.ndarray) -> float:
    """Mean over images of -log p(x) with one Bernoulli per pixel: the VAE's reconstruction term."""
    p, x = np.clip(as_vectors(probs), EPS, 1 - EPS), as_vectors(x)
    return float(-(x * np.log(p) + (1 - x) * np.log(1 - p)).sum(axis=1).mean())


def gaussian_nll(mean: np.ndarray, x: np.ndarray) -> float:
    """Mean over images of -log p(x) with one Gaussian per value, sigma fitted per channel to these
    reconstructions (as a Gaussian VAE learns its own): a fair measure for PCA and the VAE alike, in
    the family of the run's own loss. sigma >= 0.01, as the model's is."""
    n, c = len(x), x.shape[1] if x.ndim == 4 else 1
    errors = (np.asarray(mean, dtype=np.float64) - np.asarray(x, dtype=np.float64)).reshape(n, c, -1) ** 2
    variance = np.maximum(errors.mean(axis=(0, 2)), 1e-4)  # per channel
    per_value = 0.5 * np.log(2 * np.pi * variance)[None, :, None] + 0.5 * errors / variance[None, :, None]
    return float(per_value.sum(axis=(1, 2)).mean())


def reconstruction_scores(recon: np.ndarray, x: np.ndarray, likelihood: str = "bernoulli") -> dict[str, float]:
    """-log p(x) by the run's own likelihood, and the mean squared error per value (comparable across runs)."""
    nll = gaussian_nll(recon, x) if likelihood == "gaussian" else bernoulli_nll(recon, x)
    return {"nll": nll, "mse": float(((as_vectors(recon) - as_vectors(x)) ** 2).mean())}


PCA_FIT_IMAGES = 10_000  # training images PCA is fitted on, at most
PCA_FIT_VALUES = 25_000_000  # and at most this many values (2,034 pictures of 64x64 in colour)
SCORED_IMAGES = 2_000  # the first test images both are scored on: cheap enough for every report


class PcaComparison:
    """PCA with k = latent dimensions against the VAE, on the same test images by the same scores.

    The one definition of this comparison: the latent view and `vae-tui compare-pca` both use it,
    so they print the same numbers for the same model.
    """

    def __init__(self, train_x: np.ndarray, test_x: np.ndarray, k: int, likelihood: str = "bernoulli") -> None:
        self.x = as_unit(test_x[:SCORED_IMAGES])
        self.k, self.likelihood = k, likelihood
        fit = min(PCA_FIT_IMAGES, max(k + 1, PCA_FIT_VALUES // int(np.prod(train_x.shape[1:]))))
        pca = pca_fit(as_unit(train_x[:fit]), k)
        self.pca_images = pca.reconstruct(as_vectors(self.x)).reshape(self.x.shape)
        self.pca_scores = reconstruction_scores(self.pca_images, self.x, likelihood)

    def vae(self, model: VAEModel) -> tuple[np.ndarray, dict[str, float]]:
        """The VAE's reconstructions of the same images (decoding the posterior mean), and their scores."""
        device = next(model.parameters()).device  # type: ignore[attr-defined]
        images = np.concatenate(
            [reconstruct(model, torch.as_tensor(self.x[i : i + EVAL_CHUNK], device=device)).cpu().numpy() for i in range(0, len(self.x), EVAL_CHUNK)]
        )
        return images, reconstruction_scores(images, self.x, self.likelihood)


# -- the encoder and decoder, looked at ---------------------------------------------------------
def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> np.ndarray:
    """Mean KL of each latent dimension over the images, in nats: ~0 means the unit is unused."""
    mu, logvar = mu.detach(), logvar.detach()
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).mean(dim=0).cpu().numpy()


@torch.no_grad()
def traversals(model: VAEModel, dims: list[int], steps: int = 7, span: float = 3.0) -> np.ndarray:
    """(len(dims), steps, C, H, W) images: each dim walked from -span to +span, the rest at 0."""
    device = next(model.parameters()).device  # type: ignore[attr-defined]
    values = torch.linspace(-span, span, steps, device=device)
    z = torch.zeros(len(dims), steps, model.latent_dim, device=device)
    for row, dim in enumerate(dims):
        z[row, :, dim] = values
    try:
        images = generate(model, z.reshape(-1, model.latent_dim))
    except NoDecoder:  # a model without a decoder of its own: no traversals to show
        return np.zeros((0, steps, *model.input_shape), dtype=np.float32)
    return images.reshape(len(dims), steps, *images.shape[1:]).cpu().numpy()


# -- held-out losses and honest evaluation --------------------------------------------------------
@torch.no_grad()
def held_out_losses(model: VAEModel, x: torch.Tensor, seed: int, beta: float = 1.0) -> dict[str, float]:
    """Mean per-image loss terms over a whole split, with a fixed noise seed so it is repeatable.

    The noise comes from its own generator, so evaluating never shifts the training RNG and a
    resumed run stays identical to an uninterrupted one.
    """
    if quantized(model) is not None:  # no noise: a VQ-VAE's code is a function of the image
        return _quantized_losses(model, x, beta)
    gen = torch.Generator(device=x.device)
    gen.manual_seed(seed)
    recon_sum = torch.zeros((), device=x.device)
    kl_sum = torch.zeros((), device=x.device)
    for i in range(0, len(x), EVAL_CHUNK):
        xb = x[i : i + EVAL_CHUNK]
        mu, logvar = model.encode(xb)
        eps = torch.randn(mu.shape, generator=gen, device=mu.device, dtype=mu.dtype)
        try:
            params = model.decode(mu + eps * torch.exp(0.5 * logvar))
        except NoDecoder:
            params, mu, logvar = _run_whole(model, xb, seed + i)
        recon_sum += model.reconstruction_loss(params, xb).sum()
        kl_sum += kl_divergence(mu, logvar).sum()
    recon, kl = (torch.stack((recon_sum, kl_sum)) / len(x)).tolist()
    return {"test_loss": recon + beta * kl, "test_recon": recon, "test_kl": kl}


def _quantized_losses(model: VAEModel, x: torch.Tensor, beta: float) -> dict[str, float]:
    """The training step's loss (the commitment term in it, so test and train read alike) and its two ELBO terms."""
    sums = torch.zeros(3, device=x.device)
    for i in range(0, len(x), EVAL_CHUNK):
        xb = x[i : i + EVAL_CHUNK]
        loss, recon, kl, _ = elbo_terms(model, xb, beta)
        sums += torch.stack((loss, recon, kl)) * len(xb)
    loss, recon, kl = (sums / len(x)).tolist()
    return {"test_loss": loss, "test_recon": recon, "test_kl": kl}


def _run_whole(model: VAEModel, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A model that decodes only inside its forward, run whole: its noise seeded on its own, and the
    training's random streams left as they were."""
    with rng_kept(x.device):
        torch.manual_seed(seed)
        params, mu, logvar = model(x)[:3]  # your model's own numbers after them are not needed here
        return params, mu, logvar


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


class EvaluationStopped(Exception):
    """A stop request arrived while evaluating: there is no figure."""


@torch.no_grad()
def importance_weighted(
    model: VAEModel,
    x: torch.Tensor,
    k: int = 100,
    seed: int = 0,
    chunk: int = 256,
    stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """The importance-weighted bound (Burda et al. 2016) with K samples from q(z|x):

        log p(x) >= log (1/K) sum_k p(x, z_k) / q(z_k|x)  >=  (1/K) sum_k log p(x, z_k) / q(z_k|x) = ELBO

    Both figures come from the same K samples, so by Jensen's inequality the importance-weighted
    -log p(x) can never exceed the negative ELBO; with more samples it tightens towards -log p(x).
    Samples go through the decoder a pass at a time, `stop` is asked before each pass (raising
    EvaluationStopped), and `progress(images done, images)` is told after each chunk of images.
    """
    discrete = quantized(model)
    if discrete is not None:
        return _quantized_evaluation(discrete, x, chunk, stop, progress)
    gen = torch.Generator(device=x.device)
    gen.manual_seed(seed)
    rows = max(1, budgets.IW_ELEMENTS // (model.latent_dim + x[:1].numel()))  # images x samples a pass holds
    chunk = max(1, min(chunk, rows))
    iw, elbo = [], []
    for i in range(0, len(x), chunk):
        xb = x[i : i + chunk]
        mu, logvar = model.encode(xb)
        per_pass, passes = max(1, rows // len(xb)), []
        for s in range(0, k, per_pass):
            if stop is not None and stop():
                raise EvaluationStopped()
            passes.append(_log_weights(model, xb, mu, logvar, min(per_pass, k - s), gen))
        log_w = torch.cat(passes)
        iw.append(torch.logsumexp(log_w, dim=0) - math.log(k))
        elbo.append(log_w.mean(dim=0))
        if progress is not None:
            progress(min(i + chunk, len(x)), len(x))
    iw_all, elbo_all = -torch.cat(iw).cpu().numpy(), -torch.cat(elbo).cpu().numpy()
    n = len(iw_all)
    se = lambda values: float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")  # noqa: E731
    return Evaluation(float(elbo_all.mean()), se(elbo_all), float(iw_all.mean()), se(iw_all), k, n)


def _quantized_evaluation(
    model: QuantizedModel, x: torch.Tensor, chunk: int, stop: Callable[[], bool] | None, progress: Callable[[int, int], None] | None
) -> Evaluation:
    """A VQ-VAE's posterior is one code, so every sample is the same: the importance-weighted bound equals
    the negative ELBO, -log p(x|code) + positions * log CODES, with one sample."""
    nll = []
    for i in range(0, len(x), chunk):
        if stop is not None and stop():
            raise EvaluationStopped()
        xb = x[i : i + chunk]
        nll.append((model.reconstruction_loss(model.decode_codes(model.codes(xb)), xb) + model.prior_kl).double())
        if progress is not None:
            progress(min(i + chunk, len(x)), len(x))
    values = torch.cat(nll).cpu().numpy()
    n = len(values)
    se = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return Evaluation(float(values.mean()), se, float(values.mean()), se, 1, n)


def _log_weights(model: VAEModel, xb: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, m: int, gen: torch.Generator) -> torch.Tensor:
    """log p(x, z) - log q(z|x) for m samples of z per image: (m, batch), in float64."""
    log_normal = -0.5 * math.log(2 * math.pi)
    eps = torch.randn((m, *mu.shape), generator=gen, device=mu.device, dtype=mu.dtype)
    z = mu + torch.exp(0.5 * logvar) * eps  # (m, b, z)
    params = model.decode(z.reshape(-1, mu.shape[1]))
    targets = xb.unsqueeze(0).expand(m, *xb.shape).reshape(-1, *xb.shape[1:])
    log_px_z = -model.reconstruction_loss(params, targets).reshape(m, len(xb))
    log_pz = (log_normal - 0.5 * z.pow(2)).sum(-1)
    log_qz = (log_normal - 0.5 * eps.pow(2) - 0.5 * logvar).sum(-1)
    return (log_px_z + log_pz - log_qz).double()


def describe_evaluation(result: dict[str, Any]) -> str:
    of = result.get("of", result["images"])
    images = f", the first {result['images']:,} of {of:,} test images" if of > result["images"] else ""
    return (
        f"test -log p(x) <= {result['iw_nll']:.2f} ± {result['iw_se']:.2f} nats/image "
        f"(importance-weighted, K={result['samples']}{images}); negative ELBO {result['elbo_nll']:.2f} ± {result['elbo_se']:.2f}"
    )


# -- what the monitor's latent view shows, refreshed as training goes -----------------------------
REPORT_SECONDS = 2.0  # the latent view is rebuilt at an epoch's end at most this often (and at the last)
REPORT_IMAGES = 1000  # test images in the scatter plots: enough to see clusters, cheap to draw
TRAVERSED_DIMS = 3
TRAVERSAL_STEPS = 5  # -3, -1.5, 0, 1.5, 3: few enough to draw each image at full size in half a screen


class LatentReport:
    """Builds the latent view's arrays. The pixel-space parts, fixed for a dataset, are made once."""

    def __init__(
        self,
        train_x: np.ndarray,
        test_x: np.ndarray,
        test_y: np.ndarray | None,
        z_dim: int,
        class_names: tuple[str, ...] | None = None,
        likelihood: str = "bernoulli",
    ) -> None:
        n = min(REPORT_IMAGES, len(test_x))
        self.x = as_unit(test_x[:n])
        self.labels = test_y[:n].astype(np.int64) if test_y is not None else np.full(n, -1, dtype=np.int64)
        self.class_names = class_names
        self._train_x, self._test_x, self._z_dim, self.likelihood = train_x, test_x, z_dim, likelihood
        self._fixed: dict[str, Any] | None = None
        self._comparison: PcaComparison | None = None

    def fixed(self) -> dict[str, Any]:
        if self._fixed is None:
            self._comparison = PcaComparison(self._train_x, self._test_x, self._z_dim, self.likelihood)
            scores = self._comparison.pca_scores
            self._fixed = {
                "pixels_2d": project_2d(self.x).astype(np.float32),
                "labels": self.labels,
                **({"class_names": np.array(self.class_names, dtype=str)} if self.class_names else {}),
                "pca_nll": np.float64(scores["nll"]),
                "pca_mse": np.float64(scores["mse"]),
                "likelihood": np.array(self.likelihood),  # which -log p(x) the nll scores are
            }
        return self._fixed

    @torch.no_grad()
    def build(self, model: VAEModel, epoch: int, step: int) -> dict[str, Any]:
        fixed = self.fixed()
        assert self._comparison is not None
        device = next(model.parameters()).device  # type: ignore[attr-defined]
        x = torch.as_tensor(self.x, device=device)
        discrete = quantized(model)
        if discrete is not None:
            latent = code_view(discrete, x)
        else:
            mu, logvar = encode_means(model, x)
            kl = kl_per_dim(mu, logvar)
            dims = [int(d) for d in np.argsort(-kl)[: min(TRAVERSED_DIMS, len(kl))]]
            latent = {"points": mu.cpu().numpy(), "per_dim": kl, "dims": dims, "walks": traversals(model, dims, steps=TRAVERSAL_STEPS)}
        _, scores = self._comparison.vae(model)
        return {
            **fixed,
            "epoch": np.int64(epoch),
            "step": np.int64(step),
            "latent_2d": project_2d(latent["points"]).astype(np.float32),
            "kl_per_dim": np.asarray(latent["per_dim"], dtype=np.float32),
            **({"per_dim_measure": np.array("code entropy")} if discrete is not None else {}),
            "traversal_dims": np.asarray(latent["dims"], dtype=np.int64),
            "traversals": latent["walks"].astype(np.float32),
            "vae_nll": np.float64(scores["nll"]),
            "vae_mse": np.float64(scores["mse"]),
        }


@torch.no_grad()
def code_view(model: QuantizedModel, x: torch.Tensor) -> dict[str, Any]:
    """The latent view of a VQ-VAE. Points: each image's code entries. Per position, the entropy of its codes
    over these images, in nats: with one code per image, that is the information the position carries (the
    Gaussian VAE's KL per dimension bounds the same thing), 0 for a position that always takes the same
    entry. Walks: the first image decoded with one position swapped through its most used entries."""
    codes = torch.cat([model.codes(x[i : i + EVAL_CHUNK]) for i in range(0, len(x), EVAL_CHUNK)])
    counts = torch.nn.functional.one_hot(codes, int(codes.max()) + 1).sum(0).double()  # (positions, entries)
    share = counts / counts.sum(1, keepdim=True)
    entropy = -(share * torch.log(share.clamp(min=1e-12))).sum(1)
    dims = [int(d) for d in torch.argsort(-entropy)[: min(TRAVERSED_DIMS, len(entropy))]]
    walked = codes[:1].repeat(len(dims) * TRAVERSAL_STEPS, 1).view(len(dims), TRAVERSAL_STEPS, -1)
    for row, dim in enumerate(dims):
        common = torch.argsort(-counts[dim])[:TRAVERSAL_STEPS]
        walked[row, : len(common), dim] = common
    images = model.mean(model.decode_codes(walked.view(-1, codes.shape[1])))
    return {
        "points": model.code_vectors(codes).cpu().numpy(),
        "per_dim": entropy.cpu().numpy(),
        "dims": dims,
        "walks": images.view(len(dims), TRAVERSAL_STEPS, *images.shape[1:]).cpu().numpy(),
    }
