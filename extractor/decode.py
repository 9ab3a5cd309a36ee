"""Decoding image bytes to RGB pixels and resizing them, as Keras's loader does.

Formats TensorFlow decodes (JPEG, PNG, GIF, BMP) go through ``tf.io.decode_image``
so that features match ``keras.utils.image_dataset_from_directory`` exactly; the rest
(TIFF, WebP, CMYK JPEG, EXIF-rotated photos) go through Pillow. Resizing uses
TensorFlow's bilinear ``tf.image.resize`` (no antialiasing, like Keras) for the ``exact``
decode mode; ``fast`` decodes a large JPEG at reduced scale (Pillow's ``draft``, libjpeg's
scaled IDCT) and box-reduces other large images first, ``antialias`` resizes with
antialiasing (see :data:`~featcache.core.options.DECODE_MODES`).
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..core.options import DEFAULT_MAX_PIXELS, RESIZE_MODES
from ..errors import WeightsError

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
"""File name endings (case-insensitive) treated as images."""


T = TypeVar("T")
_TF_FORMATS = {"JPEG", "PNG", "GIF", "BMP"}
_EXIF_ORIENTATION = 0x0112
_ROTATED = (5, 6, 7, 8)
"""EXIF orientations that swap width and height."""

Target = tuple[tuple[int, int], str]
"""The model input ``(height, width)`` and resize mode a reduced-scale decode must serve."""


class BadImageError(Exception):
    """A file or array that cannot be used as an image; the message is the reason."""


class UnusableFileError(OSError):
    """A dataset entry that is never opened or read (not a regular file, a name that is
    not valid UTF-8); the message is the bad-file reason."""


def decode_image(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, target: Target | None = None
) -> np.ndarray:
    """Decode encoded image bytes to an ``(H, W, 3)`` uint8 RGB array.

    With a ``target``, a JPEG at least 4 times the input (where the resize mode samples
    it) is decoded at 1/2, 1/4 or 1/8 scale, the smallest that stays at least twice the
    input (:func:`jpeg_scale`); every other image is decoded whole, as without.
    Raises :class:`BadImageError` with a short reason for empty, truncated, oversized
    or unrecognised data.
    """
    if not data:
        raise BadImageError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise BadImageError(
                        f"decompression bomb: {width}x{height} pixels is over the "
                        f"limit of {max_pixels}"
                    )
                orientation = _orientation(image, data)
                if target is not None and image.format == "JPEG":
                    scale = jpeg_scale(image.size, orientation in _ROTATED, *target)
                    if scale > 1:
                        image.draft("RGB", (width // scale, height // scale))
                        return _decode_pil(image)
                if image.format in _TF_FORMATS and orientation == 1 and image.mode != "CMYK":
                    pixels = _decode_tf(data)
                    if pixels is not None:
                        return pixels  # TensorFlow refuses PNG data that ends early
                if image.format == "PNG":  # Pillow would fill the missing rows with zeros
                    check_png_data(data)
                return _decode_pil(image)
    except Image.DecompressionBombError as exc:
        raise BadImageError(f"decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise BadImageError("not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImageError(f"corrupt or truncated image: {exc}") from None


def _orientation(image: Image.Image, data: bytes) -> int:
    """The EXIF orientation (1: as stored). A PNG's is read only when it has an eXIf chunk:
    Pillow's ``getexif`` otherwise decodes the whole PNG to look for one after the pixels."""
    if image.format == "PNG" and "exif" not in image.info and not _png_has_exif(data):
        return 1
    return int(image.getexif().get(_EXIF_ORIENTATION, 1))


def _png_has_exif(data: bytes) -> bool:
    """Whether a PNG holds an eXIf chunk (walks the chunk headers, reads no pixels)."""
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if kind == b"eXIf":
            return True
        if kind == b"IEND":
            break
        pos += 12 + length
    return False


def jpeg_scale(size: tuple[int, int], rotated: bool, target: tuple[int, int], mode: str) -> int:
    """The libjpeg scale (1, 2, 4 or 8) by which a JPEG of stored ``size`` (width, height)
    can be decoded and stay at least twice ``target`` (height, width) where the resize
    ``mode`` samples it; ``rotated``: its EXIF orientation swaps the sides."""
    from ..backbones.resize import reduce_factor

    width, height = size
    if rotated:
        width, height = height, width
    factor = reduce_factor(height, width, target[0], target[1], mode)
    return next(s for s in (8, 4, 2, 1) if s <= factor)


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
"""Samples per pixel of each PNG colour type."""
_ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)
"""(x0, y0, dx, dy) of the seven passes of an interlaced PNG."""


def check_png_data(data: bytes) -> None:
    """Refuse a PNG whose image data holds fewer bytes than its header's size needs (its
    chunks whole, its compressed stream ending early): decoders would fill the missing rows
    with zeros. Counts the inflated bytes without keeping them."""
    pos, header, stream = 8, b"", zlib.decompressobj()
    have, expected = 0, -1
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR" and len(body) >= 13:
            header = body
            expected = _png_data_size(*struct.unpack(">IIBBBBB", body[:13]))
        elif kind == b"IDAT":
            try:
                while body and have <= expected:
                    have += len(stream.decompress(body, 1 << 20))
                    body = stream.unconsumed_tail
            except zlib.error as exc:
                raise BadImageError(f"corrupt or truncated image: PNG data: {exc}") from None
        elif kind == b"IEND":
            break
    if header and 0 <= have < expected:
        raise BadImageError(
            f"corrupt or truncated image: its PNG data ends after {have} of {expected} bytes"
        )


def _png_data_size(
    width: int, height: int, depth: int, colour: int, _c: int, _f: int, interlace: int
) -> int:
    """Bytes of filtered scanlines a PNG of this header inflates to (-1: not a known type)."""
    channels = _PNG_CHANNELS.get(colour)
    if channels is None:
        return -1
    bits = channels * depth
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        w = (width - x0 + dx - 1) // dx if width > x0 else 0
        h = (height - y0 + dy - 1) // dy if height > y0 else 0
        if w and h:
            total += h * (1 + (w * bits + 7) // 8)
    return total


def _decode_tf(data: bytes) -> np.ndarray | None:
    """Keras's own decoder; None when TensorFlow refuses the file."""
    import tensorflow as tf

    try:
        tensor = tf.io.decode_image(data, channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
        return None
    return np.asarray(tensor)


def _decode_pil(image: Image.Image) -> np.ndarray:
    """Pillow decoder with EXIF orientation and every mode converted to 8-bit RGB."""
    image.load()
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        wide = np.asarray(image)  # uint16 (I;16) or int32 (I): no wider copy
        if wide.dtype.kind == "i":
            wide = np.clip(wide, 0, 65535)
        gray = (wide >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "F":
        gray = np.clip(np.asarray(image), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def array_to_rgb(array: np.ndarray) -> np.ndarray:
    """Turn one in-memory image (H, W), (H, W, 1|3|4) into (H, W, 3), keeping its dtype.

    Integer arrays wider than 8 bits and float arrays are taken as 0-255 values.
    """
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise BadImageError(f"array of shape {array.shape} is not an image")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise BadImageError(f"array of shape {array.shape} is empty")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.shape[2] == 4:
        array = array[:, :, :3]
    if not np.all(np.isfinite(array)):
        raise BadImageError("array holds NaN or infinite values")
    return np.ascontiguousarray(array)


def decode_and_resize(
    content: bytes | np.ndarray,
    size: tuple[int, int],
    resize: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    decode: str = "exact",
) -> np.ndarray:
    """File bytes or an in-memory image to resized float32 ``(H, W, 3)`` pixels (0-255),
    decoded and resized as the ``decode`` mode says."""
    target = (size, resize) if decode == "fast" else None
    return resize_image(decode_pixels(content, max_pixels, target), size, resize, decode)


def decode_pixels(
    content: bytes | np.ndarray, max_pixels: int = DEFAULT_MAX_PIXELS, target: Target | None = None
) -> np.ndarray:
    """File bytes or an in-memory image to ``(H, W, 3)`` pixels, not resized: uint8 for
    files, the array's own dtype for arrays. ``target``: a large JPEG is decoded at reduced
    scale for it (``fast`` decoding, see :func:`decode_image`)."""
    if isinstance(content, np.ndarray):
        if content.ndim >= 2 and content.shape[0] * content.shape[1] > max_pixels:
            raise BadImageError(
                f"array of {content.shape[0]}x{content.shape[1]} pixels is over the limit "
                f"of {max_pixels}"
            )
        return array_to_rgb(content)
    return decode_image(content, max_pixels, target)


def unreadable_reason(exc: OSError) -> str:
    """The bad-file reason recorded for a file that cannot be read."""
    if isinstance(exc, UnusableFileError):
        return str(exc)
    return f"unreadable: {getattr(exc, 'strerror', None) or exc}"


def decode_or_reason(
    prepare: Callable[[Any], T], content: Any
) -> tuple[T, None] | tuple[None, str]:
    """``(prepare(content), None)``, or ``(None, reason)`` when the image is unusable.

    One odd file must never stop a run, so every exception becomes a reason, except a
    :class:`WeightsError`: the model cannot be built, for any file.
    """
    try:
        return prepare(content), None
    except WeightsError:
        raise
    except BadImageError as exc:
        return None, str(exc)
    except OSError as exc:
        return None, unreadable_reason(exc)
    except MemoryError:
        return None, "decode failed: out of memory"
    except Exception as exc:  # noqa: BLE001 - recorded as the file's reason
        return None, f"decode failed: {type(exc).__name__}: {exc}"


def resize_image(
    pixels: Any, size: tuple[int, int], mode: str = "stretch", decode: str = "exact"
) -> np.ndarray:
    """Resize one ``(H, W, 3)`` image to ``size`` (height, width) as float32, bilinear
    (box-reduced first for ``fast``, antialiased for ``antialias`` decoding).

    The same code as the ``ResizeImages`` layer of exported models
    (:func:`featcache.backbones.resize.resize_batch`).
    """
    from ..backbones.resize import resize_one

    height, width = size
    if mode in RESIZE_MODES and tuple(pixels.shape[:2]) == (height, width):
        return np.asarray(pixels, dtype=np.float32)  # every mode is the identity here
    return resize_one(np.asarray(pixels), height, width, mode, decode)
