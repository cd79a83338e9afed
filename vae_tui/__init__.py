"""vae-tui: train a variational autoencoder and watch it learn in the terminal."""

__version__ = "0.1.0"


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    """`vae_tui.init` and `vae_tui.StopTraining` for your own loop, imported (with torch) only when used:
    the monitor imports this package too, and must stay light."""
    if name in ("init", "StopTraining", "Run"):
        from vae_tui import your_loop

        return getattr(your_loop, name)
    raise AttributeError(f"module 'vae_tui' has no attribute {name!r}")
