"""vae-tui: train a variational autoencoder and watch it learn in the terminal."""

__version__ = "0.1.0"


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    """`vae_tui.init` and `vae_tui.StopTraining` for your own loop, imported (with torch) only when used:
    the monitor imports this package too, and must stay light."""
    if name in ("init", "StopTraining", "Run"):
        import importlib  # by name: the monitor's side must not even appear to import the trainer's

        return getattr(importlib.import_module("vae_tui.your_loop"), name)
    raise AttributeError(f"module 'vae_tui' has no attribute {name!r}")
