"""How vae-tui writes lengths of time and moments, everywhere: the plain view, the monitor, `runs`."""

from __future__ import annotations

import time


def duration(seconds: float) -> str:
    """42s, 3m05s, 1h02m03s: short, and the same in every view."""
    minutes, secs = divmod(int(round(max(seconds, 0.0))), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def moment(when: float, now: float | None = None) -> str:
    """2026-11-24 00:50 (5s ago); "-" for never."""
    if not when:
        return "-"
    now = time.time() if now is None else now
    ago = max(0.0, now - when)
    coarse = f"{ago / 86400:.0f}d" if ago >= 86400 else duration(ago) if ago < 3600 else f"{ago / 3600:.0f}h"
    return f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(when))} ({coarse} ago)"
