"""`vae-tui eval` and `vae-tui compare-pca`: a saved model looked at after training."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.segment import Segment

from vae_tui.data import ImageData, as_unit, load_dataset
from vae_tui.errors import ConfigError
from vae_tui.evaluation.analysis import PcaComparison, describe_evaluation, importance_weighted
from vae_tui.models import build_model
from vae_tui.models.protocol import as_vae
from vae_tui.runfile.files import write_evaluation
from vae_tui.runfile.layout import RunDir
from vae_tui.runfile.schema import LIKELIHOOD_WORDS
from vae_tui.training.checkpoint import check_model_shape, image_shape, load_checkpoint, resolve_checkpoint_path, saved_config
from vae_tui.training.device import pick_device
from vae_tui.views import art


@dataclass
class Saved:
    """A checkpoint's model, on the best device, and the dataset it was trained on."""

    path: Path
    state: dict[str, Any]
    data: ImageData
    model: torch.nn.Module
    device: torch.device


def load_saved(checkpoint: Path, data_dir: Path | None) -> Saved:
    path = resolve_checkpoint_path(checkpoint)
    state = load_checkpoint(path)
    check_model_shape(state)
    config = saved_config(state)
    data = load_dataset(
        config.dataset, str(data_dir) if data_dir else config.data_dir, image_size=config.image_size, channels=config.channels, test_dir=config.test_dir
    )
    if data.shape != image_shape(state):
        raise ConfigError(f"{path} was trained on images of shape {list(image_shape(state))} but {data.name} has {list(data.shape)}")
    device = pick_device("auto").torch_device
    model = build_model(config, data.shape).to(device)
    model.load_state_dict(state["model"])
    return Saved(path, state, data, model.eval(), device)


def evaluate(saved: Saved, k: int) -> list[str]:
    """The importance-weighted bound on the test split, written to the run's eval.json when it has one."""
    seed = int(saved.state["config"].get("seed", 0)) + 3
    test_x = torch.as_tensor(as_unit(saved.data.test_x), device=saved.device)
    result = {**importance_weighted(as_vae(saved.model), test_x, k, seed=seed).to_dict(), "of": len(test_x)}
    lines = [f"{saved.path}: step {saved.state['step']}, {saved.data.name} test split, {result['images']:,} images", describe_evaluation(result)]
    if saved.state.get("model_source"):
        from vae_tui.models.user_source import changed_since

        changed = changed_since(saved.state)
        lines[1:1] = [f"note: {changed}"] if changed else []
    if saved.path.parent.name == "checkpoints":
        run = RunDir(saved.path.parent.parent)
        write_evaluation(run, result, str(saved.path))  # OSError: the caller says it could not
        lines.append(f"written to {run.eval_path}")
    return lines


def compare_pca(saved: Saved, images: int, mode: str = "ramp") -> tuple[list[str], list[list[Segment]]]:
    """The latent view's PCA comparison as a table, and pictures of both reconstructions (in
    colour, as half blocks, when `mode` is "blocks")."""
    data = saved.data
    likelihood = str(saved.state.get("config", {}).get("likelihood", "bernoulli"))
    model = as_vae(saved.model)
    comparison = PcaComparison(data.train_x, data.test_x, model.latent_dim, likelihood)
    vae_images, vae_scores = comparison.vae(model)
    measure = f"{LIKELIHOOD_WORDS[likelihood]} (nats/image)"
    lines = [
        f"{data.name}, the first {len(comparison.x):,} test images; PCA with k = {comparison.k} components "
        f"(the latent's size), fitted on training images; VAE from {saved.path}, decoding the mean z",
        f"{'':6}{measure:>{len(measure) + 4}}{'MSE per value':>16}",
    ]
    for name, s in (("PCA", comparison.pca_scores), ("VAE", vae_scores)):
        lines.append(f"{name:6}{s['nll']:>{len(measure) + 4}.2f}{s['mse']:>16.5f}")
    lines.append("lower is better; the VAE's decoder is non-linear, PCA's reconstruction is a linear projection")
    shown = min(images, len(comparison.x))
    groups = [[np.clip(a[i], 0, 1) for a in (comparison.x, comparison.pca_images, vae_images)] for i in range(shown)]
    lines.append("\ninput | PCA | VAE")
    height = data.shape[1] // (2 if mode == "blocks" else 1) + 1
    return lines, art.grid(groups, mode, 100, shown * height)
