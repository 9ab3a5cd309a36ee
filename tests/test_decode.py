import io

import numpy as np
import pytest
from PIL import Image

from featcache.extractor.decode import (
    BadImageError,
    array_to_rgb,
    decode_and_resize,
    decode_image,
    decode_or_reason,
    resize_image,
)
from helpers import png_claiming


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


RGB = Image.fromarray(np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF"])
def test_every_format_decodes_to_rgb(fmt):
    pixels = decode_image(_encode(RGB, fmt))
    assert pixels.shape == (24, 32, 3) and pixels.dtype == np.uint8


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP"])
def test_lossless_formats_keep_pixels(fmt):
    kwargs = {"lossless": True} if fmt == "WEBP" else {}
    assert np.array_equal(decode_image(_encode(RGB, fmt, **kwargs)), np.asarray(RGB))


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "1"])
def test_modes_convert_to_rgb(mode):
    pixels = decode_image(_encode(RGB.convert(mode), "PNG"))
    assert pixels.shape == (24, 32, 3)


def test_grayscale_repeats_channels():
    gray = RGB.convert("L")
    pixels = decode_image(_encode(gray, "PNG"))
    assert np.array_equal(pixels[:, :, 0], np.asarray(gray))
    assert np.array_equal(pixels[:, :, 0], pixels[:, :, 2])


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk_converts(fmt):
    pixels = decode_image(_encode(RGB.convert("CMYK"), fmt))
    assert pixels.shape == (24, 32, 3)
    if fmt == "TIFF":  # lossless: the CMYK round trip keeps the colours closely
        assert np.abs(pixels.astype(int) - np.asarray(RGB, dtype=int)).max() <= 2


def test_16_bit_png_is_scaled_to_8_bit():
    wide = (np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) * 80).astype(np.uint16)
    data = _encode(Image.fromarray(wide), "PNG")
    pixels = decode_image(data)
    assert pixels.shape == (24, 32, 3)
    assert np.abs(pixels[:, :, 0].astype(int) - (wide >> 8).astype(int)).max() <= 1


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    pixels = decode_image(_encode(RGB, "JPEG", exif=exif.tobytes()))
    assert pixels.shape == (32, 24, 3)


def test_gif_takes_the_first_frame():
    frames = [Image.new("RGB", (8, 8), colour) for colour in ("red", "blue")]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    pixels = decode_image(data)
    assert pixels.shape == (8, 8, 3)
    assert pixels[0, 0, 0] > 200 and pixels[0, 0, 2] < 50


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"hello, I am text pretending to be a JPEG", "not an image"),
        (_encode(RGB, "JPEG")[:300], "corrupt or truncated"),
        (_encode(RGB, "PNG")[:200], "corrupt or truncated image: its PNG data ends after"),
        (png_claiming(50_000, 50_000), "decompression bomb"),
    ],
    ids=["empty", "text", "truncated-jpeg", "truncated-png", "bomb"],
)
def test_bad_data_raises_with_reason(data, reason):
    with pytest.raises(BadImageError, match=reason):
        decode_image(data)


def test_max_pixels_is_configurable():
    with pytest.raises(BadImageError, match="decompression bomb"):
        decode_image(_encode(RGB, "PNG"), max_pixels=100)


def test_max_pixels_applies_to_arrays_too():
    array = np.zeros((20, 30, 3), np.uint8)
    with pytest.raises(BadImageError, match="array of 20x30 pixels is over the limit of 599"):
        decode_and_resize(array, (8, 8), "stretch", max_pixels=599)
    assert decode_and_resize(array, (8, 8), "stretch", max_pixels=600).shape == (8, 8, 3)
    _, reason = decode_or_reason(lambda a: decode_and_resize(a, (8, 8), "pad", 10), array)
    assert reason == "array of 20x30 pixels is over the limit of 10"


@pytest.mark.parametrize(
    ("shape", "ok"),
    [((8, 8), True), ((8, 8, 1), True), ((8, 8, 4), True), ((8, 8, 2), False), ((0, 8, 3), False)],
)
def test_array_to_rgb(shape, ok):
    array = np.ones(shape, np.uint8)
    if ok:
        assert array_to_rgb(array).shape == (8, 8, 3)
    else:
        with pytest.raises(BadImageError):
            array_to_rgb(array)


def test_resize_modes():
    pixels = np.asarray(RGB)
    stretched = resize_image(pixels, (16, 16), "stretch")
    padded = resize_image(pixels, (16, 16), "pad")
    cropped = resize_image(pixels, (16, 16), "crop")
    assert stretched.shape == padded.shape == cropped.shape == (16, 16, 3)
    assert stretched.dtype == np.float32
    # a 24x32 image padded to a square has black bars on top and bottom
    assert padded[0].max() == 0 and padded[-1].max() == 0 and stretched[0].max() > 0
    assert not np.allclose(stretched, cropped)


@pytest.mark.parametrize("mode", ["stretch", "pad", "crop"])
def test_resize_to_the_same_size_is_exact(mode):
    import tensorflow as tf

    pixels = np.asarray(RGB)
    reference = tf.image.resize(pixels, (24, 32), method="bilinear").numpy()
    np.testing.assert_array_equal(resize_image(pixels, (24, 32), mode), reference)
