"""What people read outside the app: pictures as terminal text (art.py) and the plain view (plain.py)."""
