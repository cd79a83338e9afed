"""What each record of a run directory holds, and the words for a run's state.

The format carries a version (`FORMAT`) in config.json and status.json. Readers ignore fields
and record kinds they do not know, so a newer writer's extra fields never break an older
reader; a field with the wrong type is reported and replaced by its default.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

FORMAT = 4  # 1: runs written before the format carried a version; 2: batch records without lr and beta; 3: no intervals

# metrics.jsonl: one JSON object per line, in this key order (metrics.py writes and parses them)
BATCH_FIELDS = ("epoch", "step", "recon", "kl", "loss", "time", "lr", "beta")
SETTING_FIELDS = ("lr", "beta")  # the last two: NaN when a record does not have them (format 2, or not known)
# An interval record (format 4) is a batch record for its last step, with the means of its steps, and these:
SPAN_FIELDS = ("first", "recon_min", "recon_max", "kl_min", "kl_max", "loss_min", "loss_max")
EPOCH_FIELDS = ("epoch", "step", "train_loss", "test_loss", "test_recon", "test_kl", "samples_per_s", "time")
# analysis.npz's `likelihood`: which -log p(x) its vae_nll and pca_nll are, in words
LIKELIHOOD_WORDS = {"bernoulli": "Bernoulli NLL", "gaussian": "Gaussian NLL, sigma fitted per channel"}
# snapshot.npz: uint8 images (n, channels, height, width); analysis.npz: see docs/run-format.md
SNAPSHOT_IMAGES = ("originals", "reconstructions", "samples")


class RunState(str, Enum):
    """What the trainer says it is doing (status.json's `state`)."""

    STARTING = "starting"
    TRAINING = "training"
    PAUSED = "paused"
    EVALUATING = "evaluating"  # training is done; the final evaluation is under way
    FINISHED = "finished"
    STOPPED = "stopped"
    ERROR = "error"

    @property
    def final(self) -> bool:
        return self in (RunState.FINISHED, RunState.STOPPED, RunState.ERROR)


class Liveness(str, Enum):
    """What a watcher concludes about the trainer's process from its heartbeat and pid."""

    STARTING = "starting"  # started by this watcher, not heard from yet
    RUNNING = "running"
    NOT_ANSWERING = "not answering"  # alive, but its heartbeat is old
    ENDED = "ended"  # said its final word
    GONE = "gone"  # its process died without one (killed, crashed), or never spoke


def shown_state(state: RunState, liveness: Liveness) -> str:
    """The one word a person reads for a run, in the monitor and in `vae-tui runs`."""
    if state.final:
        return state.value  # finished, stopped, or error (the trainer said why)
    if liveness == Liveness.GONE:
        return "crashed"  # died without a word: killed, or out of memory
    if liveness == Liveness.NOT_ANSWERING:
        return "not answering"
    return state.value


# The colour each of shown_state's words (and "stopping", "damaged", "starting") is shown in, everywhere
STATE_COLOUR = {
    "training": "green",
    "paused": "yellow",
    "evaluating": "cyan",
    "finished": "cyan",
    "stopped": "yellow",
    "stopping": "yellow",
    "error": "red",
    "crashed": "red",
    "not answering": "red",
    "damaged": "red",
    "starting": "dim",
}
PLACEMENT_WORDS = {"device": "images on the device", "stream": "images streamed from disk"}  # Status.data_placement, said
STEP_WORDS = {"graph": "CUDA-graph step", "emulated": "emulated CUDA-graph step", "eager": "eager step"}  # Status.step_mode, said


@dataclass(frozen=True)
class StepPlan:
    """How a run's training step runs (config.json's "step", status.json's step_mode and step_why)."""

    mode: str  # "graph", "emulated" (--step emulate) or "eager"
    why: str  # in words

    @property
    def words(self) -> str:
        return STEP_WORDS.get(self.mode, self.mode)


@dataclass
class Status:
    """status.json: the trainer's state and progress, replaced whole about every second."""

    state: RunState = RunState.STARTING
    dataset: str = ""
    device: str = ""
    device_memory: int = 0  # bytes allocated on a CUDA device, 0 elsewhere
    data_placement: str = ""  # "device": the training images sit on it; "stream": read from disk batch by batch
    step_mode: str = ""  # "graph": each step one CUDA graph replayed; "emulated": a recorded replay; "eager": op by op ("": not said)
    step_why: str = ""  # why that one, in words
    model: str = ""  # what the model is, in a few words, e.g. "784-400-20 MLP"
    parameters: int = 0
    epoch: int = 0  # the epoch in progress (or the last one finished)
    epochs: int = 0
    step: int = 0
    batch_in_epoch: int = 0
    batches_per_epoch: int = 0
    samples_per_s: float = 0.0
    message: str = ""
    run_dir: str = ""
    started: float = field(default_factory=time.time)
    best_test_loss: float = math.inf
    last_checkpoint: str = ""
    beta: float = math.nan  # the KL weight in use now (below --beta during --kl-warmup); NaN (null): not known, as a script's
    lr: float = 0.0  # the learning rate in use now (0: not known)
    changes: list = field(default_factory=list)  # live changes of lr and beta: [{"step", "lr" and/or "beta"}], the latest
    world_size: int = 1  # processes training the run together (torchrun's ranks)
    global_batch: int = 0  # images per step, all ranks together
    ranks: list = field(default_factory=list)  # under torchrun: each rank's {"device", "samples_per_s"}, in rank order
    # Each rank's GPU as NVML reads it (one for a run alone; none without NVML), in rank order:
    # {"busy": percent, "memory_used", "memory_total": bytes, "temperature": °C, "power": W} (None: not reported)
    gpus: list = field(default_factory=list)
    evaluation: dict[str, Any] = field(default_factory=dict)  # the final honest evaluation, once done
    script: str = ""  # the command of your own script under `vae-tui run` ("": vae-tui's own trainer)
    # For a script watched without vae-tui calls: what each series was taken from, in words
    # ({"loss": "the tensor backward() was called on", "kl": ...}); a term not named is not known.
    terms: dict[str, str] = field(default_factory=dict)
    # A script's other optimizers (a discriminator's), by the name of the module each trains, with the
    # learning rate in use: `vae-tui set --lr X --optimizer NAME` changes one.
    optimizers: dict[str, Any] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)  # failures going on now (a full disk), with counts
    # What the run is telling you, found as it trains (vae_tui/evaluation/diagnoses.py): the findings that
    # hold now, each {"key", "headline", "text", "since", "fix": {"lr" or "beta": a value offered}}
    diagnoses: list = field(default_factory=list)
    # Which process on which host, and when it last said so: a watcher in another process tells
    # a live trainer from one that was killed.
    pid: int = 0
    host: str = ""
    updated: float = 0.0

    @property
    def final(self) -> bool:
        return self.state.final

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: a number that is not finite (no best test loss yet) is written as null."""
        values = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in dataclasses.asdict(self).items()}
        return {"format": FORMAT, **values, "state": self.state.value}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> tuple["Status", list[str]]:
        """The status, and what was wrong with it: unknown fields are ignored, bad ones defaulted."""
        values: dict[str, Any] = {}
        problems: list[str] = []
        for f in dataclasses.fields(cls):
            if data.get(f.name) is None:  # missing, or null for "none yet": the default
                continue
            value = _coerce(f.name, data[f.name])
            if value is None:
                problems.append(f"{f.name}={data[f.name]!r:.40}")
            else:
                values[f.name] = value
        return cls(**values), problems


@dataclass
class RunInfo:
    """config.json: what the run is, written when it starts (and again once the trainer has picked its
    device). Every writer builds this one record; a reader gets it with defaults for what is missing."""

    config: dict[str, Any] = field(default_factory=dict)  # the resolved settings: TrainConfig's, or your loop's
    dataset: dict[str, Any] = field(default_factory=dict)  # {"name", ...}: ImageData.spec(), or a few words
    view: str = ""  # how it was started: here, monitor, detached, your loop, your script
    model: dict[str, Any] = field(default_factory=dict)  # {"arch", "description"}
    device: dict[str, Any] = field(default_factory=dict)  # {"kind", "name", "index"}
    data_placement: str = ""  # "device" or "stream" (as in status.json); "" until decided
    step: dict[str, Any] = field(default_factory=dict)  # {"mode", "why"}: how each training step runs
    world_size: int = 1
    global_batch: int = 0  # images of one step, all ranks together (0: not said)
    versions: dict[str, str] = field(default_factory=dict)
    resumed_from: str | None = None
    resume_checkpoint: str | None = None
    weights_from: str | None = None  # --init-from: the checkpoint a new run took its weights (and Adam's state) from
    script: str = ""  # the command of a script watched under `vae-tui run` or calling vae_tui.init
    torchrun: dict[str, Any] | None = None  # {"agent", "run_id"} under torchrun: how a restarted worker finds the run
    written: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunInfo":
        """Known fields of the right kind; the rest left at their defaults (a reader never raises)."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            kind = _KINDS[str(f.type).split("[")[0].split(" |")[0]]
            value = data.get(f.name)
            if isinstance(value, kind) and not isinstance(value, bool):
                values[f.name] = value
        return cls(**values)


_KINDS: dict[str, type] = {"dict": dict, "str": str, "int": int}


_DEFAULTS = Status()


def _coerce(name: str, value: Any) -> Any:
    """The value as the field's type, or None when it cannot be one."""
    default = getattr(_DEFAULTS, name)
    if isinstance(default, RunState):
        try:
            return RunState(value)
        except ValueError:
            return None
    if isinstance(value, bool):
        return None
    if isinstance(default, float) and isinstance(value, (int, float)):
        return float(value)
    if type(default) in (int, str, dict, list) and isinstance(value, type(default)):
        return value
    return None


def epoch_words(epoch: int, epochs: int) -> str:
    """ "epoch 2/10", or "epoch 2" where the run does not say how many it has (a script that counts iterations)."""
    return f"epoch {epoch}/{epochs}" if epochs > 0 else f"epoch {epoch}"


def going_on_words(script: str) -> str:
    """How a stopped run goes on: vae-tui's own from its checkpoint; a script (`vae-tui run`), whose
    loop is its own, by running it again."""
    if script:
        return f"run your script again to go on ({script}); checkpoints/last.pt holds its model's and optimizer's state dicts"
    return "continue with vae-tui train --resume RUN_DIR"


def model_words(description: str) -> str:
    """ "784-400-20 MLP VAE"; a model that names itself ("VAE (yours)", "VQ-VAE 64-400-20") as it is."""
    return description if "vae" in description.lower() else f"{description} VAE"


def change_words(values: dict[str, float]) -> str:
    """A live change of lr and/or beta as every view says it: "lr 0.0005, beta 2" (a change's step left out)."""
    return ", ".join(f"{name} {value:g}" for name, value in values.items() if name != "step")


def ranks_words(status: Status, training: bool | None = None) -> str:
    """Each rank's samples per second, for the monitor's status line and `vae-tui runs`: "2 ranks: 612 + 598/s";
    only the count while the run is not `training` (by default: while its status says it is not)."""
    rates = [r.get("samples_per_s") for r in status.ranks if isinstance(r, dict)]
    if status.world_size <= 1:
        return ""
    training = status.state == RunState.TRAINING if training is None else training
    if not training or len(rates) != status.world_size or not all(isinstance(r, (int, float)) for r in rates):
        return f"{status.world_size} ranks"
    return f"{status.world_size} ranks: " + " + ".join(f"{r:,.0f}" for r in rates) + "/s"


def gpu_words(status: Status) -> str:
    """ "GPU 87% busy, 12.1 of 80.0 GiB, 61°C, 312 W"; for several, how busy each is and the hottest; ""
    when nothing was read (a CPU run, no NVML)."""
    readings = [g for g in status.gpus if isinstance(g, dict) and isinstance(g.get("busy"), (int, float))]
    if not readings:
        return ""
    if len(readings) > 1:
        hottest = max((g["temperature"] for g in readings if isinstance(g.get("temperature"), (int, float))), default=None)
        return (
            f"{len(readings)} GPUs " + ", ".join(f"{g['busy']:.0f}" for g in readings) + "% busy" + (f", up to {hottest:.0f}°C" if hottest is not None else "")
        )
    g = readings[0]
    words = [f"GPU {g['busy']:.0f}% busy"]
    if isinstance(g.get("memory_used"), (int, float)) and isinstance(g.get("memory_total"), (int, float)):
        words.append(f"{g['memory_used'] / 2**30:.1f} of {g['memory_total'] / 2**30:.1f} GiB")
    if isinstance(g.get("temperature"), (int, float)):
        words.append(f"{g['temperature']:.0f}°C")
    if isinstance(g.get("power"), (int, float)):
        words.append(f"{g['power']:.0f} W")
    return ", ".join(words)


def devices_words(status: Status) -> str:
    """Where the run trains: one device, "2 x cuda (H100)" when every rank has the same kind, else each."""
    devices = [str(r.get("device", "?")) for r in status.ranks if isinstance(r, dict)]
    if status.world_size <= 1 or not devices:
        return status.device
    if len(set(devices)) == 1:
        return f"{len(devices)} x {devices[0]}"
    return ", ".join(devices)


@dataclass
class Event:
    """A line of events.jsonl: a checkpoint saved, a warning, an error."""

    kind: str  # checkpoint, autosave, warning, error, info
    message: str
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "time": round(self.time, 3)}
