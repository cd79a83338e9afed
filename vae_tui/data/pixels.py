"""How one picture file becomes the pixels a VAE trains on: as the people who made it see it.

- Upright: turned as its EXIF Orientation says (phones store portrait photos on their side and say
  so in that tag), as every viewer shows it.
- Transparency composited on white (RGBA, LA, and palette or grey pictures with a transparent
  colour), as a page or a viewer shows them, whatever colour hides under the transparent pixels.
- More than 8 bits (16-bit integers, 32-bit integers, floats) scaled into 0..255 by the folder's
  range (`Range`, from survey.py): the same for every picture, so they keep their brightness
  relative to each other, and 12-bit data in 16-bit files fills 0..255 instead of its bottom 16th.
- The shorter side to --image-size and the centre cropped to a square, in grey or colour.

A multi-frame file (a TIFF stack, an animated GIF) gives its first frame; the survey says which.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

DECODER = 3  # in the cache key. 2: 16 bits scaled to 8; 3: upright, on white, high bits by the folder's range


@dataclass(frozen=True)
class Range:
    """Pictures of more than 8 bits: values lo..hi become 0..255 (below and above are clipped)."""

    lo: float
    hi: float
    words: str  # what the pictures hold and how they were scaled, for the dataset line

    def to_list(self) -> list[float | str]:
        return [self.lo, self.hi, self.words]


def high_bit(mode: str) -> bool:
    """Pillow's modes of more than 8 bits a value: 32-bit integers, floats, 16-bit integers."""
    return mode in ("I", "F") or mode.startswith("I;16")


def decode(path: Path, size: int, channels: int, scale: Range | None = None) -> np.ndarray:
    """One picture as uint8 (channels, size, size)."""
    from PIL import Image, ImageOps

    with warnings.catch_warnings():  # a very large picture: the survey has said so, in words
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            image = eight_bit(image, scale)
            image = on_white(image)
            image = image.convert("RGB" if channels == 3 else "L")
            if image.size != (size, size):
                image = ImageOps.fit(image, (size, size), method=Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    return array.transpose(2, 0, 1) if channels == 3 else array[None]


def eight_bit(image: "Image.Image", scale: Range | None) -> "Image.Image":
    """A picture of more than 8 bits as 8-bit grey, by the folder's range (Pillow's own conversion
    clips them to white). Without a range (a picture the survey did not see): its mode's full range."""
    from PIL import Image

    if not high_bit(image.mode):
        return image
    values = np.nan_to_num(np.asarray(image).astype(np.float64))
    if scale is None:
        scale = Range(0.0, 1.0 if image.mode == "F" else 65535.0, "")
    span = scale.hi - scale.lo if scale.hi > scale.lo else 1.0
    scaled = (values - scale.lo) * (255.0 / span)
    return Image.fromarray(np.clip(scaled, 0, 255).round().astype(np.uint8), "L")


def on_white(image: "Image.Image") -> "Image.Image":
    """Transparent pixels shown over white; an opaque picture as it is."""
    from PIL import Image

    if image.mode not in ("RGBA", "LA", "PA", "RGBa", "La") and "transparency" not in image.info:
        return image
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB" if colourful(image) else "L")


def colourful(image: "Image.Image") -> bool:
    """Whether a picture has colour: a palette of greys (many GIFs) has none."""
    if image.mode in ("1", "L", "LA", "La", "I", "F") or image.mode.startswith("I;16"):
        return False
    if image.mode in ("P", "PA"):  # its palette is in the header: no pixel is read
        palette = image.getpalette() or []
        return any(not palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette) - 2, 3))
    return True
