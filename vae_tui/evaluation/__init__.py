"""Looking at a trained VAE: the latent view's analysis and the PCA comparison (analysis.py), and the
offline commands that evaluate a checkpoint (offline.py)."""
