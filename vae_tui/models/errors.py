"""Your model's own exception during training: the traceback is yours to read, so its frames in
your file are printed (to the terminal, or to train.log under the monitor) and the run's message
says where it was raised."""

from __future__ import annotations

import sys
import traceback


def your_frames(exc: BaseException, spec: str | None) -> str:
    """' in your model (FILE line N, in FUNCTION)' after printing the frames of `exc` that are in
    the model's file; '' for vae-tui's own models or an error raised elsewhere."""
    if spec is None:
        return ""
    file = spec.rpartition(":")[0]
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == file]
    if not frames:
        return ""
    print("Traceback, the frames in your model (most recent call last):", file=sys.stderr)
    print("".join(traceback.format_list(frames)) + f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    last = frames[-1]
    return f" in your model ({last.filename.rsplit('/', 1)[-1]} line {last.lineno}, in {last.name})"
