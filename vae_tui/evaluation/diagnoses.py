"""What the run is telling you: the failures a VAE's first trainers (and many later ones) lose hours to,
found from figures the trainer has anyway, and said in words with what usually fixes them.

Each finding has a measure and a threshold chosen so that a healthy run says nothing:

- posterior collapse: every latent dimension's KL below CARRYING_KL nats, and a decoder that
  reconstructs no better from an image's code than from a random z (`decoder_gain`), for COLLAPSE_REPORTS
  reports in a row, never while a KL warm-up is still raising beta. A small latent in use is not collapse:
  the 8x8 digits use about 5 of 20 dimensions when healthy, so fewer dimensions in use is not said;
- holes: the codes of held-out images, taken together (their means' covariance plus their mean variance),
  against N(0, I): the KL of that moment-matched Gaussian above HOLES_KL_PER_DIM nats a latent dimension,
  for HOLES_REPORTS reports in a row, says samples from the prior land where no image's code lies. A
  healthy MNIST run's codes are 7 nats from N(0, I) (20 dimensions) in its first epochs and 3 by its 12th;
  digits at beta 0.01 reach 26. Moments can miss holes between clusters whose cloud is round;
- overfitting: the test loss OVERFIT_RISE above its best for OVERFIT_EPOCHS epochs or more while the
  training loss went on falling;
- lr too high: SPIKES_SAID or more of the last SPIKE_WINDOW batch losses each above SPIKE_FACTOR times
  the median of the SPIKE_BEFORE losses before it (for a loss that can be negative, a Gaussian
  likelihood's: more than SPIKE_FACTOR - 1 times the median's size above it) and above it by
  SPIKE_SPREADS times their median absolute deviation, so that small batches' noise is not a spike. On
  digits (20 epochs, three seeds), Adam at lr 1e-3 gives none in batches of 128 or of 8; at 0.05, 1 or 2
  in a window (it collapses instead); at 0.1, 2 to 30 in batches of 128 and 15 to 52 in batches of 64.

Active units follow Burda et al. (2016): a dimension is active when its posterior mean varies across
held-out images, Cov_x(E[z|x]) > 0.01. Free bits are Kingma et al.'s (2016).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from vae_tui.runfile.findings import Finding

ACTIVE_COVARIANCE = 0.01  # Burda et al.'s active unit: Cov_x(E[z|x]) above this
CARRYING_KL = 0.01  # nats: a dimension whose KL is below this carries nothing
DECODER_GAIN = 0.5  # nats/image: a decoder that gains less than this from the code ignores it
COLLAPSE_REPORTS = 3  # reports in a row before collapse is said (the KL dips early in healthy runs)
HOLES_KL_PER_DIM = 0.5  # nats a latent dimension: the codes taken together this far from N(0, I)
HOLES_REPORTS = 3
OVERFIT_RISE = 0.02  # the test loss this far (2%) above its best...
OVERFIT_EPOCHS = 3  # ...for this many epochs since the best
SPIKE_FACTOR = 2.0
SPIKE_SPREADS = 6.0
SPIKE_WINDOW = 500  # steps
SPIKE_BEFORE = 50  # the losses each one is held against
SPIKE_LEAST = 1  # and at least this many of them (the first steps are judged against fewer)
SPIKES_SAID = 3


@dataclass(frozen=True)
class PosteriorFigures:
    """The posterior of held-out images, summed up: what the collapse and holes findings read."""

    kl_per_dim: np.ndarray  # nats, mean over the images
    active_units: int  # Burda et al.'s rule
    aggregate_kl: float  # KL(N(m, S) || N(0, I)) of the codes taken together, nats
    # -log p(x|z) with z ~ N(0, I) minus with the code's mean: what the code is worth to the decoder (None:
    # not known, a decoder that cannot run alone or a script's; collapse is then judged by the KL alone)
    decoder_gain: float | None

    @property
    def carrying(self) -> int:
        return int((self.kl_per_dim >= CARRYING_KL).sum())


def aggregate_kl(mu: torch.Tensor, logvar: torch.Tensor) -> float:
    """The aggregate posterior q(z) = mean_x q(z|x) by its first two moments, N(m, S) with S = Cov(mu) +
    mean(exp(logvar)) on the diagonal, and its KL to the prior: 0.5 (tr S + m.m - D - log det S)."""

    mu, logvar = mu.double(), logvar.double()
    m = mu.mean(0)
    centred = mu - m
    s = centred.t() @ centred / max(len(mu) - 1, 1) + torch.diag(logvar.exp().mean(0))
    sign, log_det = torch.linalg.slogdet(s)
    if sign <= 0:
        return math.inf
    return float(0.5 * (torch.trace(s) + m @ m - len(m) - log_det))


def active_units(mu: torch.Tensor) -> int:
    return int((mu.double().var(0) > ACTIVE_COVARIANCE).sum())


def posterior_figures(mu: torch.Tensor, logvar: torch.Tensor, gain: float | None) -> PosteriorFigures:
    kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).double().mean(0).cpu().numpy()
    return PosteriorFigures(kl, active_units(mu), aggregate_kl(mu, logvar), gain)


def spike_flags(values: np.ndarray, new: int) -> np.ndarray:
    """For the last `new` of `values` (batch losses), which are spikes: each is held against the SPIKE_BEFORE
    losses just before it (at least SPIKE_LEAST of them), so a loss falling fast at the start of training is
    no spike, and a plateau's wobbles are not either. Called on each flush's new losses only."""
    values = np.asarray(values, dtype=np.float64)
    new = min(new, len(values))
    if new <= 0:
        return np.zeros(0, dtype=bool)
    padded = np.concatenate([np.full(SPIKE_BEFORE, np.nan), values])[-(new + SPIKE_BEFORE) :]
    before = np.lib.stride_tricks.sliding_window_view(padded[:-1], SPIKE_BEFORE)  # (new, SPIKE_BEFORE)
    enough = np.isfinite(before).sum(axis=1) >= SPIKE_LEAST
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a window of no finite loss has no median: no spike there
        reference = np.nanmedian(before, axis=1)
        spread = np.nanmedian(np.abs(before - reference[:, None]), axis=1)
        return enough & (values[-new:] - reference > np.maximum((SPIKE_FACTOR - 1) * np.abs(reference), SPIKE_SPREADS * spread))


def spikes(losses: np.ndarray) -> tuple[np.ndarray, float]:
    """Which of the last SPIKE_WINDOW batch losses are spikes (spike_flags), and the window's median."""
    values = np.asarray(losses, dtype=np.float64)
    window = values[-SPIKE_WINDOW:]
    finite = window[np.isfinite(window)]
    return spike_flags(values, len(window)), float(np.median(finite)) if len(finite) else math.nan


def overfitting(epochs: list[tuple[int, float, float]]) -> tuple[int, float, float] | None:
    """(the epoch of the best test loss, how far above it the test loss is now, how far the training loss
    fell since), when the test loss has stayed OVERFIT_RISE above its best for OVERFIT_EPOCHS epochs while
    the training loss fell; from (epoch, train loss, test loss) records. None otherwise."""
    if len(epochs) <= OVERFIT_EPOCHS:
        return None
    best = min(range(len(epochs)), key=lambda i: epochs[i][2])
    best_epoch, best_train, best_test = epochs[best]
    since = epochs[best + 1 :]
    if len(since) < OVERFIT_EPOCHS or best_test == 0:
        return None
    rise = lambda test: (test - best_test) / abs(best_test)  # noqa: E731
    if not all(rise(test) > OVERFIT_RISE for _, _, test in since[-OVERFIT_EPOCHS:]):
        return None
    _, train_now, test_now = epochs[-1]
    fall = (best_train - train_now) / abs(best_train) if best_train else 0.0
    return (best_epoch, rise(test_now), fall) if fall > 0 else None


def collapse(figures: PosteriorFigures, since: str, beta: float) -> Finding | None:
    dims = len(figures.kl_per_dim)
    if figures.carrying or (figures.decoder_gain is not None and figures.decoder_gain >= DECODER_GAIN):
        return None
    fix = {"beta": round(beta / 4, 6)} if beta > 0.25 else {}
    weaker = f"a lower beta (now {beta:g}; k offers {fix['beta']:g}), " if fix else ""
    return Finding(
        "collapse",
        "posterior collapse",
        f"posterior collapse: all {dims} dimensions carry nothing (KL < {CARRYING_KL} nats each; {figures.active_units} of {dims} "
        f"active by Cov_x(E[z|x]) > {ACTIVE_COVARIANCE}) since {since}"
        + (", and the decoder does as well from a random z as from the image's code" if figures.decoder_gain is not None else "")
        + f": samples all look alike. Try {weaker}a KL warm-up "
        "(--kl-warmup 10 on a new run), free bits, or a weaker decoder",
        since,
        fix,
    )


def holes(figures: PosteriorFigures, since: str, beta: float) -> Finding | None:
    if not figures.aggregate_kl > HOLES_KL_PER_DIM * len(figures.kl_per_dim):
        return None
    fix = {"beta": 1.0} if beta < 1.0 else {}
    stronger = f"raise beta towards 1 (now {beta:g}; k offers 1)" if fix else "train longer, or a larger KL weight"
    return Finding(
        "holes",
        "holes in the latent space",
        f"holes in the latent space: the codes of held-out images, taken together, are {figures.aggregate_kl:.1f} nats from "
        f"N(0, I) (since {since}), so samples from the prior fall where no image's code lies and decode to noise. "
        f"Try to {stronger}",
        since,
        fix,
    )


def overfit(found: tuple[int, float, float], since: str) -> Finding:
    best_epoch, rise, fall = found
    return Finding(
        "overfitting",
        "overfitting",
        f"overfitting since epoch {best_epoch + 1}: test loss up {rise:.0%} from its best while train fell {fall:.0%}: the model "
        "is memorising its training images. The best checkpoint (best.pt) keeps epoch "
        f"{best_epoch}; try more data, a smaller model, or stop here",
        since,
    )


def lr_spikes(count: int, median: float, lr: float, since: str) -> Finding:
    fix = {"lr": float(f"{lr / 3:.3g}")} if lr > 0 else {}
    offer = f", a third of {lr:g} (k offers {fix['lr']:g})" if fix else ""
    return Finding(
        "spikes",
        "lr too high?",
        f"lr too high? {count} loss spikes over {SPIKE_FACTOR:g}x the median ({median:.3g}) in the last {SPIKE_WINDOW} steps: "
        f"each is a step too large for the loss's curvature, and the next one may be NaN. Try a lower learning rate{offer}",
        since,
        fix,
    )


class Diagnoser:
    """Which findings hold now. Each is said once when it starts and once when it ends; collapse and holes
    wait for a few reports in a row, since a healthy run's KL dips, and its codes spread, in its first epochs."""

    WAIT = {"collapse": COLLAPSE_REPORTS, "holes": HOLES_REPORTS}

    def __init__(self) -> None:
        self.active: dict[str, Finding] = {}
        self._streak: dict[str, int] = {}
        self._began: dict[str, str] = {}

    def since(self, key: str, now: str) -> str:
        """When the finding `key` began to hold: its streak's first report, else `now`."""
        return self._began.get(key, now)

    def update(self, found: dict[str, Finding | None], keys: tuple[str, ...]) -> tuple[list[Finding], list[Finding]]:
        """Take the latest verdicts on `keys` (None: does not hold); return (started, ended)."""
        started, ended = [], []
        for key in keys:
            finding = found.get(key)
            self._streak[key] = self._streak.get(key, 0) + 1 if finding is not None else 0
            if finding is None:
                self._began.pop(key, None)
            else:
                self._began.setdefault(key, finding.since)
            if finding is not None and key not in self.active and self._streak[key] >= self.WAIT.get(key, 1):
                self.active[key] = finding
                started.append(finding)
            elif finding is not None and key in self.active:
                self.active[key] = Finding(key, finding.headline, finding.text, self.active[key].since, finding.fix)  # its figures now
            elif finding is None and key in self.active:
                ended.append(self.active.pop(key))
        return started, ended
