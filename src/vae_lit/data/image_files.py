"""Image files on disk: finding them under a folder and decoding one into a fixed-size uint8 array.

Every format quirk is settled here, once, so the cache holds plain (C, H, W) uint8 rows: grayscale,
RGBA, palette and 16-bit images become the configured channels, and a file that does not decode is
reported, never replaced by a blank image.
"""

import errno
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
RESIZE_MODES = ("squash", "center_crop")
# The filter of torchvision's Resize: bilinear, antialiased when shrinking (PIL widens the kernel).
RESAMPLE = Image.Resampling.BILINEAR
EXIF_ORIENTATION = 0x0112


def find_images(root: Path) -> list[str]:
    """Image files under `root`, searched recursively, as sorted POSIX paths relative to `root`.

    Hidden files and folders are skipped: `._x.jpg` (macOS metadata) and `.ipynb_checkpoints` hold
    no images even when their names say so.
    """
    root = Path(root)
    found = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        relative = Path(folder).relative_to(root)
        for name in names:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append((relative / name).as_posix())
    return sorted(found)


def unreadable_reason(path: Path, exc: OSError) -> str:
    """Why a directory entry could not be opened, in a few words."""
    if os.path.islink(path):
        if exc.errno == errno.ELOOP:
            return "a symlink loop"
        if exc.errno == errno.ENOENT:
            return f"a symlink to a missing file ({os.readlink(path)})"
    return exc.strerror or str(exc)


def printable(name: str) -> str:
    """A file name fit for a log line: bytes that are not UTF-8 (a Latin-1 `café`) shown as
    `\\xe9` escapes instead of failing the line."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _to_channels(image: Image.Image, channels: int) -> Image.Image:
    """`image` as mode L (channels=1) or RGB (channels=3), whatever it was stored as."""
    if image.mode.startswith("I"):
        # 16-bit grayscale: PIL's convert("L") clips at 255 instead of scaling, so scale by hand.
        values = np.asarray(image).astype(np.float32) / 257.0
        image = Image.fromarray(np.clip(values + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels become white, as an image viewer shows them on a page.
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("L" if channels == 1 else "RGB")


def decode_image(path: Path, image_size: int, channels: int, resize_mode: str) -> np.ndarray:
    """The image at `path` as uint8 (channels, image_size, image_size); raises if it cannot decode.

    `squash` resizes the whole image to a square (aspect ratio lost, nothing cut); `center_crop`
    cuts the largest centred square first. Large JPEGs are decoded at a reduced DCT scale that is
    still at least `image_size` wide, several times faster than a full decode.
    """
    with Image.open(path) as image:
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
        if image.format == "JPEG":
            image.draft("L" if channels == 1 else "RGB", (image_size, image_size))
        image.load()  # raises on a truncated file instead of leaving grey rows behind
        if orientation != 1:  # phone photos: store pixels sideways and say so in EXIF
            image = ImageOps.exif_transpose(image)
        image = _to_channels(image, channels)
    if resize_mode == "center_crop":  # crop first: resize(box=...) would blend in the cut sides
        width, height = image.size
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    image = image.resize((image_size, image_size), RESAMPLE)
    pixels = np.asarray(image)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
