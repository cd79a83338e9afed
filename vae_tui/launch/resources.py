"""What a run will need, estimated before anything starts: refuse what cannot fit, warn about what
will be slow or odd. Plain arithmetic on the configuration and the data's shape, no torch, so the
estimate costs nothing and comes before the run directory is made."""

from __future__ import annotations

from dataclasses import dataclass

from vae_tui.config import STREAM_AHEAD, TrainConfig
from vae_tui.data import ImageData
from vae_tui.errors import ConfigError
from vae_tui.evaluation.budgets import EVAL_CHUNK, FINAL_IMAGES, IW_ELEMENTS
from vae_tui.models import parameter_count_for

FLOAT = 4  # bytes
BIG_CHECKPOINT = 256 * 2**20
SLOW_EVALUATION = 2 * 10**7  # decoder rows in the final evaluation (samples x images): minutes on a CPU


@dataclass
class Estimate:
    parameters: int
    bytes: int  # the most the trainer holds at once: model and optimizer, the data, a batch, an evaluation pass
    checkpoint_bytes: int


def data_bytes(data: ImageData) -> int:
    """The training and held-out images as float32, as they are when they sit on the device."""
    return (len(data.train_x) + len(data.test_x)) * data.train_x[0].size * FLOAT


def placement(config: TrainConfig, data: ImageData, free: int | None, parameters: int | None = None) -> str:
    """Where the training images live, "device" or "stream". The rule for auto: on the device when
    they take at most half of its free memory (the other half is for the model, a batch's
    activations and everything else running there) and the whole run fits beside them; streamed
    from the decoded cache otherwise."""
    if config.data_placement != "auto":
        return config.data_placement
    if free is None or data_bytes(data) <= free // 2 and estimate(config, data, "device", parameters).bytes <= free:
        return "device"
    return "stream"


def estimate(config: TrainConfig, data: ImageData, where: str = "device", parameters: int | None = None) -> Estimate:
    """`parameters`: the model's count when it is known (your own model, counted by its probe)."""
    parameters = parameters if parameters is not None else parameter_count_for(config, data.shape)
    pixels = data.train_x[0].size
    widths = 2 * pixels + 2 * config.hidden_dim + 3 * config.latent_dim  # one image's activations, forward
    state = parameters * FLOAT * 4  # weights, gradients and Adam's two moments
    if where == "device":
        dataset = data_bytes(data)
    else:  # the held-out images stay on the device; a few batches of bytes are read ahead
        dataset = len(data.test_x) * pixels * FLOAT + (STREAM_AHEAD + 2) * config.batch_size * pixels
    batch = config.batch_size * widths * FLOAT * 3  # forward, backward and the loss's own
    evaluation = max(EVAL_CHUNK * widths, IW_ELEMENTS * 3) * FLOAT
    return Estimate(parameters, state + dataset + batch + evaluation, parameters * FLOAT * 3)


def available_memory() -> int | None:
    """Bytes this machine can still give (Linux's MemAvailable); None where that is not known."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check(config: TrainConfig, data: ImageData, available: int | None = None, parameters: int | None = None) -> tuple[str, list[str]]:
    """Raise ConfigError when the run cannot fit in memory; where its images will live, and the
    warnings to show, otherwise."""
    free = available_memory() if available is None else available
    where = placement(config, data, free, parameters)
    need = estimate(config, data, where, parameters)
    if free is not None and need.bytes > free:
        data_part = "the data, " if where == "device" else "the held-out images, "
        raise ConfigError(
            f"this run needs about {gb(need.bytes)} of memory ({need.parameters:,} parameters, their gradients and "
            f"Adam's state, {data_part}a batch) and {gb(free)} is free; {fixes(config, data, where)}"
        )
    return where, warnings(config, data, need)


BIG_PICTURE = 64 * 64  # pixels a side squared from which the picture's size is the first thing to change


def fixes(config: TrainConfig, data: ImageData, where: str) -> str:
    """What to change, the weightiest first: for large pictures their size (an MLP's first layer has
    a weight for every pixel and hidden unit), then the model's size."""
    channels, height, width = data.shape
    said = []
    if height * width >= BIG_PICTURE:
        smaller = max(16, min(64, height // 4))
        said.append(f"smaller pictures (--image-size {smaller}: the {height}x{width} pictures are {channels * height * width:,} values each)")
        if config.model is None and config.arch == "mlp":
            said.append("--arch conv (its weights do not grow with the picture's size, as the MLP's first layer does)")
    said.append("a smaller --hidden-dim, --latent-dim or --batch-size")
    if where == "device":
        said.append("--data-placement stream, to read the training images from disk")
    return "use " + "; or ".join(said)


def warnings(config: TrainConfig, data: ImageData, need: Estimate) -> list[str]:
    said = []
    pixels, train = data.train_x[0].size, len(data.train_x)
    if need.checkpoint_bytes > BIG_CHECKPOINT:
        said.append(
            f"each checkpoint will be about {gb(need.checkpoint_bytes)} ({need.parameters:,} parameters and "
            "Adam's state), written every --checkpoint-every epochs"
        )
    if config.latent_dim >= pixels:
        said.append(
            f"--latent-dim {config.latent_dim:,} is not smaller than an image ({pixels:,} values): the code "
            "compresses nothing, and a latent that large is slow to train"
        )
    if config.batch_size > train:
        said.append(f"--batch-size {config.batch_size:,} is more than the {train:,} training images: each epoch is one batch of {train:,}")
    if config.kl_warmup > (config.epochs or 0):
        reached = (config.epochs or 0) / config.kl_warmup
        epochs = f"{config.epochs} epoch{'s' if config.epochs != 1 else ''}"
        said.append(
            f"--kl-warmup {config.kl_warmup} is longer than the run's {epochs}: beta only reaches {reached * config.beta:.3g} (of --beta {config.beta:g})"
        )
    rows = config.iw_samples * min(len(data.test_x), FINAL_IMAGES)
    if rows > SLOW_EVALUATION:
        said.append(f"the final evaluation decodes {rows:,} samples (--iw-samples {config.iw_samples:,}): expect it to take a while; a stop ends it at once")
    return said


def gb(n: int) -> str:
    return f"{n / 2**30:,.1f} GB" if n >= 2**30 else f"{n / 2**20:,.0f} MB"
