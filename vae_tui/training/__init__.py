"""Training: a short loop (loop.py) over named collaborators. The training state and what a
checkpoint holds (state.py), the checkpointer (checkpointer.py), the loss buffer (losses.py), the
NaN policy (nan.py), requests from other threads (controls.py), and hooks (hooks.py) that turn
progress into metrics, pictures, the latent report, the final evaluation and the status that
views show. A new behaviour is a new hook or collaborator, not another branch in the loop."""
