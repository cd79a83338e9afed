"""Runs `vae-tui train` many times over, each in a process forked from this one once torch and vae-tui
are imported (no torch op has run yet, so forking is safe): the whole of a run's process, its
interpreter's exit included, at a second or two a run instead of the seconds each import takes.

    python tests/ended_runs.py COUNT FOLDER WORKDIR    # prints the exit statuses as JSON
"""

import json
import os
import sys

import torch._dynamo  # noqa: F401  (imported by torch's optimizers on first use: here, once for all runs)

import vae_tui.launch.run_here  # noqa: F401
import vae_tui.training.loop  # noqa: F401
from vae_tui.cli import main


def one(folder: str, run: str, data: str) -> None:
    """In the forked child: a whole run, ending as a process ends (SystemExit, then the interpreter's exit)."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    sys.argv = ["vae-tui", "train", "--headless", "--dataset", folder, "--epochs", "1", "--hidden-dim", "8", "--latent-dim", "2"]
    sys.argv += ["--iw-samples", "0", "--run-dir", run, "--data-dir", data]
    main()


AT_ONCE = 2  # runs side by side: the cores this project's machines have


if __name__ == "__main__":
    count, folder, work = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    statuses = []
    for first in range(0, count, AT_ONCE):
        children = []
        for i in range(first, min(first + AT_ONCE, count)):
            pid = os.fork()
            if pid == 0:
                one(folder, os.path.join(work, f"run{i}"), os.path.join(work, "data"))
            children.append(pid)
        statuses += [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
    print(json.dumps(statuses))
