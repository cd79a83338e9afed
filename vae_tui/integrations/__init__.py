"""vae-tui's monitor on training frameworks' own loops (each an optional extra)."""
