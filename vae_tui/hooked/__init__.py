"""A training script that makes no vae-tui call, watched and steered through PyTorch's own hooks.

`vae-tui run -- python train.py` puts boot/ on the script's PYTHONPATH. Its sitecustomize arms
the hooks (arming.py, no torch); once the script has imported torch, session.py opens the run and
registers PyTorch's global optimizer-step and module-forward hooks (probes.py), from which it
records each step's loss and KL, makes the pictures (outputs.py), and takes the monitor's pause,
checkpoint, stop and learning-rate changes between steps.
"""
