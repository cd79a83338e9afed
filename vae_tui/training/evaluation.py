"""The final honest evaluation, when a run finishes: importance-weighted -log p(x) on the test split."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from vae_tui.evaluation.analysis import EvaluationStopped, describe_evaluation, importance_weighted
from vae_tui.evaluation.budgets import FINAL_IMAGES
from vae_tui.models.protocol import NoDecoder, evaluating
from vae_tui.runfile.files import write_evaluation
from vae_tui.runfile.layout import RunDir
from vae_tui.runfile.schema import RunState
from vae_tui.training.hooks import Hook
from vae_tui.training.memory import memory_words

if TYPE_CHECKING:
    from vae_tui.training.loop import Trainer, TrainResult


class FinalEvaluationHook(Hook):
    """Into the status, events and eval.json. A failure says why there is no figure; the run is saved
    either way. A stop during it ends it within a decoder pass, and nothing is written as final."""

    def __init__(self, run: RunDir | None) -> None:
        self.run = run

    def on_finish(self, trainer: "Trainer", result: "TrainResult") -> None:
        k = trainer.config.iw_samples
        if result.state != RunState.FINISHED or k <= 0:
            return
        tele, x = trainer.telemetry, trainer.images.test_x
        x, of = x[:FINAL_IMAGES], len(x)

        def progress(done: int, total: int) -> None:
            tele.update_status(state=RunState.EVALUATING, message=f"final evaluation: {done:,} of {total:,} test images, K={k}")

        progress(0, len(x))
        try:
            with evaluating(trainer.state.model):
                evaluation = importance_weighted(
                    trainer.state.vae, x, k, seed=trainer.config.seed + 3, stop=lambda: trainer.controls.stopping, progress=progress
                )
        except EvaluationStopped:
            result.message += "; the final evaluation was cut short (vae-tui eval RUN_DIR evaluates the saved model)"
            return
        except NoDecoder as exc:
            tele.event("warning", f"no importance-weighted -log p(x): it decodes many z per image; {exc}")
            return
        except torch.cuda.OutOfMemoryError as exc:
            tele.event(
                "warning",
                f"the final evaluation ran out of GPU memory ({memory_words(exc, x.device)}); the trained "
                "model is saved, and vae-tui eval RUN_DIR evaluates it when the GPU has room",
            )
            return
        except Exception as exc:
            tele.event("warning", f"the final evaluation failed ({type(exc).__name__}: {exc}); try vae-tui eval")
            return
        figures = {**evaluation.to_dict(), "of": of}
        tele.update_status(evaluation=figures)
        tele.event("info", describe_evaluation(figures))
        if self.run is not None:
            try:
                write_evaluation(self.run, figures, "final model")
            except OSError as exc:
                tele.event("warning", f"could not write {self.run.eval_path}: {exc.strerror or exc}")
