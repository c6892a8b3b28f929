"""Opening an image file a tenant sent: only with the decoder its suffix names, and never a decompression bomb.

Pillow picks a decoder by the file's content among the 40-odd formats it knows (FITS, PSD, EPS through
Ghostscript where it is installed, ...), whatever the file is called; a ``.png`` holding a TGA or an SGI
image would reach a decoder nobody meant to expose. So a file opens only as the format of its suffix, the
suffixes image-folder datasets use (torchvision's IMG_EXTENSIONS). It imports no torch, so the API checks
uploads with it too.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image

FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".ppm": "PPM", ".pgm": "PPM", ".bmp": "BMP",
           ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP"}
SUFFIXES = tuple(FORMATS)
# Pillow warns above 89 M pixels and refuses above twice that; an image-folder dataset has no use for
# anything near either, and one 89 M-pixel RGB image takes 267 MB to decode.
MAX_PIXELS = 50_000_000


def limit_pixels(max_pixels: int = MAX_PIXELS) -> None:
    """Refuse, in this process, every image of more than ``max_pixels`` pixels before it is decoded."""
    Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow only warns above this (and refuses above twice it) ...
    warnings.simplefilter("error", Image.DecompressionBombWarning)  # ... so the warning is made an error


def open_image(path: Path) -> Image.Image:
    """The image at ``path``, opened (not yet decoded) as the format its suffix names."""
    return Image.open(path, formats=[FORMATS[path.suffix.lower()]])
