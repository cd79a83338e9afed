"""status.json's `diagnoses`: what the run is telling you, one record a finding (found by
vae_tui/evaluation/diagnoses.py), read by every view without torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vae_tui.runfile.schema import Status


@dataclass(frozen=True)
class Finding:
    """One diagnosis: its key, a headline, the sentence that says what it means and what to try, since
    when, and the live change that usually helps ({"lr": ...} or {"beta": ...}), offered, never made."""

    key: str
    headline: str
    text: str
    since: str
    fix: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "headline": self.headline, "text": self.text, "since": self.since, "fix": dict(self.fix)}

    @classmethod
    def from_dict(cls, data: Any) -> "Finding | None":
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("key", "headline", "text", "since")):
            return None
        fix = data.get("fix")
        fix = fix if isinstance(fix, dict) else {}
        numbers = {k: float(v) for k, v in fix.items() if k in ("lr", "beta") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        return cls(data["key"], data["headline"], data["text"], data["since"], numbers)


def findings_of(status: "Status") -> list[Finding]:
    """The run's findings as status.json keeps them (a damaged entry left out)."""
    return [f for f in (Finding.from_dict(d) for d in status.diagnoses) if f is not None]
