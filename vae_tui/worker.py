"""The trainer process behind the monitor and `--detach`: `python -m vae_tui.worker RUN_DIR`.

The parent has already checked every option and written RUN_DIR/config.json; this process
reads it, trains with the plain view writing to train.log, and publishes its state into the run
directory for any number of watchers.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

from vae_tui.errors import VaeTuiError
from vae_tui.runner import describe, error, prepare_worker, train_here


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        error("usage: python -m vae_tui.worker RUN_DIR (started by vae-tui train, not by hand)")
        return 2
    console = Console(highlight=False, soft_wrap=True)
    try:
        prepared = prepare_worker(Path(argv[0]))
        describe(prepared, console)
        return train_here(prepared, console)
    except VaeTuiError as exc:
        error(str(exc))
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
