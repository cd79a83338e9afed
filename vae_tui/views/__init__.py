"""What people read outside the app: pictures as terminal text (art.py), the plain view (plain.py)
and the `vae-tui runs` table (runs.py)."""
