"""The training configuration: one dataclass, validated once, saved with every run and checkpoint."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

from vae_tui.data import DATASETS
from vae_tui.errors import ConfigError
from vae_tui.models import ARCHS, LIKELIHOODS

PLACEMENTS = ("auto", "device", "stream")  # where the training images are: on the device, or streamed to it
STREAM_AHEAD = 4  # batches a streamed run reads ahead of the one training
MAX_SEED = 2**63 - 16  # torch takes 64-bit signed seeds; the run derives a few more from it (seed + 1, + 2, + 3)
MAX_IW_SAMPLES = 100_000
DEVICES = ("auto", "cpu", "cuda", "mps")
GPU_NUMBER = re.compile(r"cuda:(\d+)")  # --device cuda:N, one GPU of several (as this process sees them)
# the training step: one CUDA graph replayed (auto: where it applies; emulate: rehearsed on any device), or op by op
STEPS = ("auto", "graph", "emulate", "eager")
PRECISIONS = ("fp32", "bf16", "fp16")  # the step's arithmetic: float32, or autocast to bfloat16 / float16
ON_NAN = ("auto", "pause", "stop", "skip")
MODEL_OUTPUTS = ("probs", "logits")  # what a classic model's x_reconstructed is
MODEL_INPUTS = ("flat", "image")  # what a classic model's forward takes  # auto: pause under the monitor, stop otherwise

# An MNIST epoch is 469 batches; 10 of them is the classic example's run.
DEFAULT_EPOCHS = 10
# A digits epoch is only 12 batches (about 20 ms on a laptop CPU); this many make a first
# run last about half a minute, long enough to watch the curves form.
DIGITS_DEFAULT_EPOCHS = 300


def default_data_dir() -> str:
    """A per-user cache folder, so datasets are downloaded once per machine, not per project."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vae-tui", "data")


def default_epochs(dataset: str) -> int:
    return DIGITS_DEFAULT_EPOCHS if dataset == "digits" else DEFAULT_EPOCHS


@dataclass
class TrainConfig:
    dataset: str = "auto"  # a name from DATASETS, or the path of a folder of pictures
    image_size: int | None = None  # a folder's pictures: shorter side resized to this, centre crop
    channels: int | None = None  # a folder's pictures: 1 (grey) or 3 (colour)
    test_dir: str | None = None  # a folder of test pictures, instead of 10% held out
    data_placement: str = "auto"  # on the device when it fits (at most half its free memory), else streamed
    data_dir: str = field(default_factory=default_data_dir)
    epochs: int | None = None  # None: the dataset's default, resolved once the dataset is known
    batch_size: int = 128
    lr: float = 1e-3
    hidden_dim: int = 400
    latent_dim: int = 20
    beta: float = 1.0
    tc_beta: float | None = None  # beta-TCVAE: the total correlation's weight (None: not estimated)
    device: str = "auto"
    precision: str = "fp32"  # fp32, or autocast in bf16 / fp16 (with a GradScaler): faster only where the hardware says so
    compile: bool = False  # torch.compile the training step's model: seconds to start, then faster where measured
    step: str = "auto"  # graph: the whole step captured once as a CUDA graph and replayed; eager: op by op
    seed: int = 0
    arch: str = "mlp"  # the model, by name (vae_tui.models.ARCHS)
    likelihood: str = "bernoulli"  # p(x|z): bernoulli (the classic example's) or gaussian (a learned variance)
    model: str | None = None  # your own model, FILE.py:Class or package.module:Class (vae_tui/models/user.py)
    model_args: str = ""  # its constructor's arguments, as name=value Python literals
    model_output: str | None = None  # probs or logits: what a classic model's x_reconstructed is (None: detected)
    model_input: str | None = None  # flat or image: what a classic model's forward takes (None: detected)
    model_kind: str | None = None  # classic or protocol, as found on the first batch
    model_outputs: str | None = None  # where a classic model's forward puts x_reconstructed, mu and logvar (or std): "0,1,2 logvar"
    checkpoint_every: int = 1  # epochs between routine saves of last.pt
    checkpoint_seconds: float = 30.0  # and at least this long between routine writes of last.pt and of best.pt
    on_nan: str = "auto"
    kl_warmup: int = 0  # epochs over which beta rises linearly from 0 to --beta
    iw_samples: int = 100  # importance samples for the final evaluation; 0 skips it
    snapshot_seconds: float = 1.0  # how often the trainer renders image snapshots for the views
    n_images: int = 16  # reconstructions and prior samples per snapshot

    def validate(self) -> "TrainConfig":
        """Raise ConfigError naming the option and the fix; return self so calls chain."""
        if self.dataset not in DATASETS and not os.path.exists(os.path.expanduser(self.dataset)):
            raise ConfigError(f"unknown --dataset {self.dataset!r}: choose one of {', '.join(DATASETS)}, or give the path of a folder of pictures")
        if self.data_placement not in PLACEMENTS:
            raise ConfigError(f"unknown --data-placement {self.data_placement!r}: choose one of {', '.join(PLACEMENTS)}")
        if self.on_nan not in ON_NAN:
            raise ConfigError(f"unknown --on-nan {self.on_nan!r}: choose one of {', '.join(ON_NAN)}")
        if self.arch not in ARCHS:
            raise ConfigError(f"unknown --arch {self.arch!r}: choose one of {', '.join(ARCHS)}")
        if self.likelihood not in LIKELIHOODS:
            raise ConfigError(f"unknown --likelihood {self.likelihood!r}: choose one of {', '.join(LIKELIHOODS)}")
        if self.model_output not in (None, *MODEL_OUTPUTS):
            raise ConfigError(f"unknown --model-output {self.model_output!r}: choose one of {', '.join(MODEL_OUTPUTS)}")
        if self.model_input not in (None, *MODEL_INPUTS):
            raise ConfigError(f"unknown --model-input {self.model_input!r}: choose one of {', '.join(MODEL_INPUTS)}")
        if self.model is None and (self.model_args or self.model_output or self.model_input):
            raise ConfigError("--model-args, --model-output and --model-input are for your own model: add --model FILE.py:Class")
        if self.model is not None and (self.arch != "mlp" or self.likelihood != "bernoulli"):
            raise ConfigError("--arch and --likelihood choose vae-tui's own models; with --model, your model decides both")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown --precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.device not in DEVICES and not GPU_NUMBER.fullmatch(self.device):
            raise ConfigError(f"unknown --device {self.device!r}: choose one of auto, cpu, cuda, cuda:N (one GPU of several), mps")
        if self.step not in STEPS:
            raise ConfigError(f"unknown --step {self.step!r}: choose one of {', '.join(STEPS)}")
        positive_ints = {
            "--epochs": self.epochs,
            "--batch-size": self.batch_size,
            "--hidden-dim": self.hidden_dim,
            "--latent-dim": self.latent_dim,
            "--checkpoint-every": self.checkpoint_every,
        }
        for option, value in positive_ints.items():
            if value is None and option == "--epochs":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{option} must be a whole number of at least 1, got {value!r}")
        if not _finite(self.lr) or self.lr <= 0:
            raise ConfigError(f"--lr must be a positive number such as 1e-3, got {self.lr!r}")
        if not _finite(self.beta) or self.beta < 0:
            raise ConfigError(f"--beta must be a number of at least 0 (1 is the plain ELBO), got {self.beta!r}")
        if self.tc_beta is not None and (not _finite(self.tc_beta) or self.tc_beta < 0):
            raise ConfigError(f"--tc-beta must be a number of at least 0 (1 weighs the total correlation as the plain ELBO does), got {self.tc_beta!r}")
        if self.tc_beta is not None and self.arch == "vq":
            raise ConfigError("--tc-beta is for a Gaussian posterior: --arch vq's code is one entry per position, with no correlation to weigh")
        for option, value in (("--kl-warmup", self.kl_warmup), ("--iw-samples", self.iw_samples)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{option} must be a whole number of at least 0, got {value!r}")
        if not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"--seed must be a whole number from 0 to {MAX_SEED} (2**63 - 16), got {self.seed!r}")
        if self.iw_samples > MAX_IW_SAMPLES:
            raise ConfigError(
                f"--iw-samples must be at most {MAX_IW_SAMPLES:,}: the bound's gap shrinks like 1/K, so more "
                f"samples barely move it and would take hours; got {self.iw_samples:,}"
            )
        if not _finite(self.snapshot_seconds) or self.snapshot_seconds <= 0:
            raise ConfigError(f"snapshot interval must be positive, got {self.snapshot_seconds!r}")
        if not isinstance(self.n_images, int) or self.n_images < 1:
            raise ConfigError(f"number of snapshot images must be at least 1, got {self.n_images!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Build from a saved dict, ignoring keys this version does not know."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def parse_every(text: str) -> dict[str, Any]:
    """--checkpoint-every: "3" (epochs, at most every 30 s) or "30s" (every epoch, at most every 30 s)."""
    text = text.strip().lower()
    try:
        if text.endswith("s"):
            seconds = float(text[:-1].strip())
            if not math.isfinite(seconds) or seconds < 0:
                raise ValueError
            return {"checkpoint_every": 1, "checkpoint_seconds": seconds}
        return {"checkpoint_every": int(text)}
    except ValueError:
        raise ConfigError(f"--checkpoint-every takes epochs (3) or seconds (30s), got {text!r}") from None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
