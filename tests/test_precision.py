"""--precision: autocast in bf16 or fp16 (with a loss scaler that is saved and resumed)."""

from __future__ import annotations

import json

from helpers import make_trainer
from vae_tui.launch.prepare import Request, check, describe, ready
from vae_tui.runfile.schema import RunState
from vae_tui.training.checkpoint import load_checkpoint
from vae_tui.training.hooks import Hook


def test_bf16_trains_and_the_loss_falls(tmp_path, digits):
    trainer, _ = make_trainer(tmp_path, digits, epochs=4, precision="bf16")
    result = trainer.run()
    assert result.state == RunState.FINISHED
    epochs = trainer.telemetry.epochs()
    assert epochs[-1]["train_loss"] < 0.9 * epochs[0]["train_loss"]
    assert load_checkpoint(result.last_checkpoint)["config"]["precision"] == "bf16"


def test_fp16_saves_its_loss_scale_and_a_resume_goes_on_with_it(tmp_path, digits):
    trainer, _ = make_trainer(tmp_path, digits, epochs=1, precision="fp16")
    first = trainer.run()
    saved = load_checkpoint(first.last_checkpoint)
    assert saved["scaler"] is not None and saved["scaler"]["scale"] > 0
    at_start = ScalerAtStart()
    resumed, _ = make_trainer(tmp_path, digits, name="run", resume_state=saved, epochs=2, precision="fp16", extra_hooks=[at_start])
    result = resumed.run()
    assert result.state == RunState.FINISHED and result.step == 2 * first.step
    assert at_start.state == saved["scaler"]  # the resumed run starts from the saved scale, not a fresh 65536
    assert load_checkpoint(result.last_checkpoint)["scaler"]["scale"] > 0


class ScalerAtStart(Hook):
    """The loss scaler's state as training (re)starts."""

    def on_start(self, trainer):
        self.state = trainer.precision.state_dict()


def test_the_precision_is_said_and_recorded_in_config_json(tmp_path):
    prepared = check(Request({"dataset": "digits", "precision": "bf16", "epochs": 1}, run_dir=str(tmp_path / "run")))
    ready(prepared)
    assert any("bf16" in line for line in describe(prepared) if line.startswith("model:"))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["precision"] == "bf16"
