"""What a folder's pictures are, read once from their headers (and, for pictures of more than 8
bits, their values) before anything is decoded: their size, whether any has colour, the range of
values the high-bit ones use, which hold several frames, and which are too large to open.

--image-size and --channels default from it, pixels.decode scales high bits by its range, and
what a person should know (frames left out, pictures refused) becomes lines said before training.
The answer is kept in the cache: reading 20,000 headers took 1.7 s of a second run's start.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vae_tui.data.pixels import Range, colourful, high_bit

if TYPE_CHECKING:
    from PIL import Image


DEPTHS = (8, 10, 12, 14, 16)  # the bit depths cameras and instruments record: a folder is scaled by the least that holds its values
CONTAINERS = ["16-bit", "32-bit integer", "float"]  # high-bit files, narrowest first: a folder is said by its widest


@dataclass
class Survey:
    sizes: set[tuple[int, int]] = field(default_factory=set)  # (width, height) as shown (upright)
    colour: bool = False
    lo: float = math.inf  # the high-bit pictures' smallest and largest values
    hi: float = -math.inf
    floats: bool = False  # any of them in floats (else integers)
    container: str = ""  # the high-bit pictures' kind of file: "16-bit", "32-bit integer", "float"
    frames: list[tuple[str, int]] = field(default_factory=list)  # files of several frames, and how many
    too_large: list[tuple[str, int]] = field(default_factory=list)  # files Pillow refuses to open, and their pixels

    def range(self) -> Range | None:
        """How the high-bit pictures reach 0..255, or None when there are none."""
        if not math.isfinite(self.hi):
            return None
        if self.floats:
            if self.lo >= 0.0 and self.hi <= 1.0:
                return Range(0.0, 1.0, "float pictures (0 to 1) scaled to 0-255")
            return Range(self.lo, self.hi, f"float pictures scaled from their range in this folder ({self.lo:g} to {self.hi:g}) to 0-255")
        bits = next((b for b in DEPTHS if self.hi < 2**b), 32)
        top = 2**bits - 1
        return Range(0.0, float(top), f"{self.container} pictures holding {bits}-bit values (largest {self.hi:,.0f}) scaled from 0-{top:,} to 0-255")

    def to_record(self) -> dict[str, Any]:
        return {
            "sizes": sorted(self.sizes),
            "colour": self.colour,
            "lo": self.lo if math.isfinite(self.lo) else None,
            "hi": self.hi if math.isfinite(self.hi) else None,
            "floats": self.floats,
            "container": self.container,
            "frames": self.frames,
            "too_large": self.too_large,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "Survey":
        return cls(
            {(int(w), int(h)) for w, h in record["sizes"]},
            bool(record["colour"]),
            math.inf if record["lo"] is None else float(record["lo"]),
            -math.inf if record["hi"] is None else float(record["hi"]),
            bool(record["floats"]),
            str(record["container"]),
            [(str(n), int(c)) for n, c in record["frames"]],
            [(str(n), int(c)) for n, c in record["too_large"]],
        )


def pixel_limit() -> int:
    """The pixels from which Pillow refuses a file as a possible decompression bomb (twice its warning's)."""
    from PIL import Image

    return 2 * int(Image.MAX_IMAGE_PIXELS or 0) or 2**62


def survey(files: list[Path]) -> Survey:
    from PIL import Image

    found = Survey()
    limit = pixel_limit()
    for path in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    _look(found, path, image, limit)
        except Image.DecompressionBombError:
            found.too_large.append((str(path), 0))
        except Exception:  # a damaged file is counted when it is decoded
            continue
    return found


def _look(found: Survey, path: Path, image: "Image.Image", limit: int) -> None:
    width, height = image.size
    if width * height > limit:
        found.too_large.append((str(path), width * height))
        return
    turned = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # EXIF Orientation: a quarter turn
    found.sizes.add((height, width) if turned else (width, height))
    found.colour = found.colour or colourful(image)
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        found.frames.append((str(path), frames))
    if high_bit(image.mode):
        values = np.asarray(image, dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size:
            found.lo, found.hi = min(found.lo, float(values.min())), max(found.hi, float(values.max()))
        found.floats = found.floats or image.mode == "F"
        kind = "float" if image.mode == "F" else "16-bit" if image.mode.startswith("I;16") else "32-bit integer"
        found.container = max(found.container or kind, kind, key=CONTAINERS.index)


def notes(found: Survey, folder: Path) -> list[str]:
    """What a person should hear about the pictures themselves."""
    said = []
    if found.frames:
        name, count = found.frames[0]
        many = len(found.frames)
        said.append(
            f"{many:,} file{'s' if many != 1 else ''} in {folder} hold{'s' if many == 1 else ''} several frames (a TIFF stack, an animated GIF): "
            f"only the first frame of each is trained on, e.g. {Path(name).name} ({count} frames)"
        )
    if found.too_large:
        many = len(found.too_large)
        said.append(f"{many:,} picture{'s' if many != 1 else ''} in {folder} {'are' if many != 1 else 'is'} left out, {too_large_words(found)}")
    return said


def too_large_words(found: Survey) -> str:
    """Which pictures are too large to open, and why, in words."""
    name, pixels = found.too_large[0]
    size = f" ({pixels / 1e6:,.0f} million pixels)" if pixels else ""
    return (
        f"e.g. {Path(name).name}{size}: over {pixel_limit() / 1e6:,.0f} million pixels, which Pillow refuses to open as a possible "
        "decompression bomb; make them smaller (they are trained at --image-size anyway)"
    )
