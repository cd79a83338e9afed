"""vae-tui: train a variational autoencoder and watch it learn in the terminal."""

from typing import Any

__version__ = "0.1.0"


def log(**values: Any) -> None:
    """Under `vae-tui run`, what the hooks cannot see for themselves, before the optimizer's step:
    `vae_tui.log(recon=recon)` (the reconstruction term), `kl=` (your own KL), other scalars by name.
    Run alone (or with vae_tui.init, whose run.log does this), it does nothing."""
    from vae_tui.hooked import registry

    session = registry.session()
    if session is not None:
        session.log(**values)


def log_epoch(test_loss: Any = None, **values: Any) -> None:
    """Under `vae-tui run`, the test loss of the epoch in progress; run alone, nothing."""
    from vae_tui.hooked import registry

    session = registry.session()
    if session is not None:
        session.log_epoch(test_loss=test_loss, **values)


def __getattr__(name: str) -> Any:
    """`vae_tui.init` and `vae_tui.StopTraining` for your own loop, imported (with torch) only when used:
    the monitor imports this package too, and must stay light."""
    if name in ("init", "StopTraining", "Run"):
        from vae_tui.integrations import your_loop  # only here, when asked for: tests/test_layers.py names this lazy edge

        return getattr(your_loop, name)
    raise AttributeError(f"module 'vae_tui' has no attribute {name!r}")
