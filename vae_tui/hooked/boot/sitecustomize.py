"""Python runs this at start-up in a script that `vae-tui run` starts (it is first on PYTHONPATH).

It arms vae-tui's hooks in that one process (the variable that asks for them, the path of the run's
hooks.txt, is taken out of the environment, so the script's own child processes run plain), then
runs the sitecustomize it hides, if the Python installation has one. It never stops the script: if
vae_tui cannot be imported here, one line says so, hooks.txt says why for `vae-tui run`, and the
script runs unwatched.
"""

import os
import sys


def _run_hidden_sitecustomize() -> None:
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    path = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        sys.modules["sitecustomize"] = module
        spec.loader.exec_module(module)


def _say(report: str, line: str) -> None:
    """hooks.txt's one line: what `vae-tui run` waits on before it says the script runs unwatched."""
    try:
        with open(report, "w", encoding="utf-8") as f:
            f.write(line + "\n")
    except OSError:
        pass


LAUNCHERS = ("torchrun", "accelerate", "deepspeed")  # commands that start the script's ranks as their children
LAUNCHER_MODULES = ("torch.distributed.run", "torch.distributed.launch", "accelerate.commands.launch", "accelerate.commands.accelerate_cli")


def _launcher() -> bool:
    """This Python is a launcher (torchrun, accelerate launch): the workers it starts are the script."""
    argv = getattr(sys, "orig_argv", [])[1:]
    while argv and argv[0].startswith("-") and argv[0] != "-m":  # python's own flags (-u, -X ...)
        argv = argv[1:]
    if argv[:1] == ["-m"]:
        return len(argv) > 1 and argv[1] in LAUNCHER_MODULES
    return bool(argv) and os.path.basename(argv[0]) in LAUNCHERS


def _arm() -> None:
    if "VAE_TUI_HOOKS" not in os.environ or _launcher():
        return  # not asked for; or asked of the launcher's workers, who inherit the request
    report = os.environ.pop("VAE_TUI_HOOKS")
    here = os.path.dirname(os.path.abspath(__file__))
    kept = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and os.path.abspath(p) != here]
    if kept:
        os.environ["PYTHONPATH"] = os.pathsep.join(kept)
    else:
        os.environ.pop("PYTHONPATH", None)
    try:
        from vae_tui.hooked.arming import arm
    except ImportError as exc:
        _say(report, f"unwatched: this Python ({sys.executable}) cannot import vae_tui ({exc}); install vae-tui where the script's packages are")
        return
    arm(lambda line: _say(report, line))


_arm()
_run_hidden_sitecustomize()
