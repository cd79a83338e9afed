"""Fixed budgets of the evaluations: how much of the test split they look at and how much memory a
pass takes. No torch here, so that the launcher estimates a run's memory before importing it."""

EVAL_CHUNK = 2048  # test images per forward pass when evaluating
IW_ELEMENTS = 1 << 23  # floats per decoder pass of the importance-weighted bound: its memory, whatever K is
FINAL_IMAGES = 2_000  # test images in the final evaluation: seconds on a CPU; vae-tui eval does them all
