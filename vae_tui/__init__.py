"""vae-tui: train a variational autoencoder and watch it learn in the terminal."""

__version__ = "0.1.0"
