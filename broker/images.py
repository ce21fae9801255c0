"""A VM's screen as libvirt hands it over (QEMU: PPM) turned into a PNG, optionally scaled.

Pure and blocking (Pillow does the work): callers run it off the event loop.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

# The widths a thumbnail may be asked for, in pixels. Wider than the screen gives the
# screen's own size: a thumbnail is never scaled up.
MIN_WIDTH = 16
MAX_WIDTH = 4096
# The largest screen accepted from libvirt (QEMU's PPM of 8192x4096 is 96 MiB; we stop at
# 64 MiB, larger than any 4K screen's 24 MiB): what the broker reads before converting.
MAX_SCREEN_BYTES = 64 * 1024 * 1024
_MAX_PIXELS = MAX_SCREEN_BYTES // 3


class ImageError(ValueError):
    """What libvirt returned is not an image this module can convert; the message says why."""


@dataclass(frozen=True)
class Png:
    data: bytes
    width: int
    height: int


def to_png(data: bytes, width: int | None = None) -> Png:
    """`data` (PPM, or any format Pillow reads) as a PNG, `width` pixels wide (aspect kept)
    when the screen is wider than that."""
    if width is not None and not MIN_WIDTH <= width <= MAX_WIDTH:
        raise ValueError(f"width must be from {MIN_WIDTH} to {MAX_WIDTH}, got {width}")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > _MAX_PIXELS:
                raise ImageError(f"the screen is too large to convert ({image.width}x{image.height})")
            image.load()
            picture = image.convert("RGB") if image.mode not in ("RGB", "RGBA", "L") else image.copy()
    except ImageError:
        raise
    # Pillow's readers raise all of these for broken input (a truncated PPM header: ValueError).
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(f"the screenshot is not an image Pillow can read: {exc}") from None
    if width is not None and width < picture.width:
        height = max(1, round(picture.height * width / picture.width))
        picture = picture.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=2.0)
    out = io.BytesIO()
    # Level 1: a screen compresses about as well as at 6, in a fraction of the time.
    picture.save(out, format="PNG", compress_level=1)
    return Png(out.getvalue(), picture.width, picture.height)


def ppm(width: int, height: int, rgb: tuple[int, int, int] = (0, 0, 0)) -> bytes:
    """A binary PPM (P6) of one colour, as QEMU sends them: for tests and examples."""
    return f"P6\n{width} {height}\n255\n".encode() + bytes(rgb) * (width * height)
