"""Reading runs from the outside, without torch: following one live (follow.py), listing them
(catalog.py, `vae-tui runs`) and exporting their metrics (export.py)."""
