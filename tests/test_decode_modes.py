"""Decode modes (``--decode exact|fast|antialias``): large images decoded at reduced scale,
the same path in extraction, ``predict`` and exported models, recorded in caches."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from featcache import extract, read_cache
from featcache.core.options import DECODE_MODES, BackboneConfig
from featcache.core.settings import CacheSettings
from featcache.errors import SettingsMismatchError
from featcache.extractor.decode import decode_and_resize, decode_pixels, jpeg_scale
from helpers import TINY, write_image


def _photo(size: tuple[int, int], seed: int = 0, fmt: str = "JPEG", exif: bytes = b"") -> bytes:
    """A photo-like image (width, height): smooth shapes plus fine noise, so that the
    decode mode matters."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(small).resize(size, Image.BICUBIC), np.int16)
    image = np.clip(image + rng.integers(-40, 40, image.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    extra = {"exif": exif} if exif else {}
    Image.fromarray(image).save(buffer, fmt, quality=90, **extra)
    return buffer.getvalue()


def _rotated_exif() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: stored width is the displayed height
    return exif.tobytes()


def test_a_large_jpeg_is_decoded_at_the_smallest_scale_still_twice_the_input():
    data = _photo((1200, 900))
    assert decode_pixels(data).shape == (900, 1200, 3)
    # 900 // (2 * 64) = 7 -> libjpeg's 1/4 (1/8 would leave 113 rows, below 128)
    assert decode_pixels(data, target=((64, 64), "stretch")).shape == (225, 300, 3)
    assert jpeg_scale((1200, 900), False, (64, 64), "stretch") == 4
    assert jpeg_scale((1200, 900), False, (32, 32), "stretch") == 8
    assert jpeg_scale((1200, 900), False, (450, 450), "stretch") == 1
    # pad keeps the side that limits the scale only: 1200 // 256 = 4 (crop: 900 // 256 = 3)
    assert jpeg_scale((1200, 900), False, (128, 128), "pad") == 4
    assert jpeg_scale((1200, 900), False, (128, 128), "crop") == 2
    fast = decode_and_resize(data, (64, 64), "stretch", decode="fast")
    exact = decode_and_resize(data, (64, 64), "stretch", decode="exact")
    assert fast.shape == exact.shape == (64, 64, 3) and fast.dtype == np.float32
    assert np.abs(fast - exact).mean() < 20 and not np.array_equal(fast, exact)


def test_exif_rotation_is_applied_after_the_reduced_decode_with_the_sides_swapped():
    """Stored 1200x300 turned upright (300 wide, 1200 high): for a 32x96 (h, w) input the
    displayed width (300 < 2 * 96) allows no reduction, the stored sides would allow 1/4."""
    data = _photo((1200, 300), exif=_rotated_exif())
    assert jpeg_scale((1200, 300), True, (32, 96), "stretch") == 1
    assert jpeg_scale((1200, 300), False, (32, 96), "stretch") == 4
    target = ((32, 96), "stretch")
    assert decode_pixels(data, target=target).shape == (1200, 300, 3)  # upright, whole
    np.testing.assert_array_equal(
        decode_and_resize(data, (32, 96), "stretch", decode="fast"),
        decode_and_resize(data, (32, 96), "stretch", decode="exact"),
    )
    tall = decode_pixels(data, target=((32, 32), "stretch"))  # 300 // 64 = 4: 1/4 scale
    assert tall.shape == (300, 75, 3)


@pytest.mark.parametrize("resize", ["stretch", "pad", "crop"])
def test_images_below_twice_the_input_take_the_exact_path(resize, tmp_path):
    for i, (size, fmt) in enumerate((((60, 50), "PNG"), ((63, 40), "JPEG"), ((32, 32), "PNG"))):
        data = write_image(tmp_path / f"{i}.{fmt.lower()}", 3, size, fmt).read_bytes()
        exact = decode_and_resize(data, (32, 32), resize, decode="exact")
        fast = decode_and_resize(data, (32, 32), resize, decode="fast")
        np.testing.assert_array_equal(fast, exact)


@pytest.mark.parametrize("resize", ["stretch", "pad", "crop"])
def test_the_exported_resize_layer_computes_what_extraction_computes(resize):
    """PNGs (decoded whole either way) give equal pixels through ``ResizeImages``, the
    layer of exported models, for every mode; a JPEG's reduced-scale decode is close to the
    layer's box reduction of the whole image."""
    from featcache.heads.layers import ResizeImages

    png = _photo((700, 500), 1, "PNG")
    jpeg = _photo((700, 500), 1, "JPEG")
    for decode in DECODE_MODES:
        layer = ResizeImages(48, 40, resize, decode)
        whole = decode_pixels(png).astype(np.float32)
        got = np.asarray(layer(whole[None]))[0]
        want = decode_and_resize(png, (48, 40), resize, decode=decode)
        np.testing.assert_allclose(got, want, atol=1e-3)
        restored = ResizeImages.from_config(layer.get_config())
        assert (restored.mode, restored.decode) == (resize, decode)
    old = ResizeImages.from_config({"height": 48, "width": 40, "mode": resize})
    assert old.decode == "exact"  # models saved before the decode mode
    layer = ResizeImages(48, 40, resize, "fast")
    from_whole = np.asarray(layer(decode_pixels(jpeg).astype(np.float32)[None]))[0]
    reduced = decode_and_resize(jpeg, (48, 40), resize, decode="fast")
    exact = decode_and_resize(jpeg, (48, 40), resize, decode="exact")
    assert np.abs(from_whole - reduced).mean() < np.abs(exact - reduced).mean()


def test_caches_record_the_mode_and_old_caches_read_as_exact(tmp_path):
    from featcache.backbones.backbone import resolve_backbone

    base = resolve_backbone(BackboneConfig("vgg16", "none", 32, decode="exact"))
    common = dict(dtype="float32", split_ratios=(0.7, 0.2, 0.1), split_source="hash",
                  dataset_root="/d")  # fmt: skip
    exact = CacheSettings.of(base, **common)
    fast = CacheSettings.of(resolve_backbone(BackboneConfig("vgg16", "none", 32)), **common)
    assert fast.decode == "fast" and exact.decode == "exact"
    assert fast.fingerprint != exact.fingerprint
    attrs = exact.to_attrs()
    assert attrs["decode"] == "exact"
    del attrs["decode"]  # a cache from before the decode mode was recorded
    old = CacheSettings.from_attrs(attrs)
    assert old.decode == "exact" and old.fingerprint == attrs["fingerprint"]
    assert "decode" not in exact.identity()  # exact caches keep their old fingerprint
    assert fast.differences(exact) == [
        "decode 'fast' (cache) vs 'exact' (now): images became the model's input another "
        "way (--decode)"
    ]
    assert base.model_key() == fast.model_key()  # one loaded model serves every mode


def _large_folder(root):
    """Two classes of 1200x900 photos (JPEGs and a PNG), large for a 32 px input, in
    train/val/test folders (2, 1 and 1 per class)."""
    for k in range(2):
        for i, split in enumerate(("train", "train", "val", "test")):
            fmt, ext = ("PNG", "png") if (k, i) == (1, 1) else ("JPEG", "jpg")
            path = root / split / f"class_{k}" / f"img_{i}.{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_photo((1200, 900), 10 * k + i, fmt))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("decode", DECODE_MODES)
def test_journey_extract_train_predict_through_one_decode_path(decode, tmp_path):
    """extract (--decode) -> train-head -> predict on the same files: the probabilities
    predict computes equal the head's on the cached features; resuming with another mode
    is refused, resuming without one keeps the cache's."""
    from featcache.heads.images import predict_images
    from featcache.heads.train import load_head, train_head

    data = _large_folder(tmp_path / "data")
    cache = tmp_path / "c.h5"
    extract(data, output=cache, decode=decode, **TINY)
    cached = read_cache(cache)
    assert cached.settings.decode == decode and len(cached.paths) == 8
    run = tmp_path / "head"
    train_head(cache, head="dense", hidden=(8,), epochs=2, output=run)
    expected = load_head(run).predict_proba(cached.features)
    results = predict_images(run, str(data), None, top_k=2)
    by_path = {r.path: r for r in results}
    names = load_head(run).class_names
    for path, row in zip(cached.paths, expected):
        got = dict(by_path[str(data / path)].top)
        for column, name in enumerate(names):
            assert got[name] == pytest.approx(float(row[column]), abs=1e-4)
    from featcache.heads.images import load_classifier

    classifier = load_classifier(run)
    assert classifier.decode == decode
    whole = [decode_and_resize((data / p).read_bytes(), (32, 32), "stretch") for p in cached.paths]
    plain = np.asarray(classifier.predict(np.stack(whole)))  # the exact path, whatever the cache's
    assert np.allclose(plain, expected, atol=1e-4) == (decode == "exact")
    other = "exact" if decode != "exact" else "fast"
    with pytest.raises(SettingsMismatchError, match=f"decode '{decode}' \\(cache\\) vs '{other}'"):
        extract(data, output=cache, decode=other, **TINY)
    again = extract(data, output=cache, **TINY)  # no decode given: the cache's
    assert again.reused == 8 and read_cache(cache).settings.decode == decode


@pytest.mark.slow
def test_an_old_cache_without_a_decode_mode_resumes_as_exact(tmp_path):
    import h5py

    data = _large_folder(tmp_path / "data")
    cache = tmp_path / "c.h5"
    extract(data, output=cache, decode="exact", **TINY)
    with h5py.File(cache, "a") as handle:  # as featcache wrote caches before the mode
        del handle.attrs["decode"]
    (data / "train" / "class_0" / "new.jpg").write_bytes(_photo((1200, 900), 99))
    summary = extract(data, output=cache, **TINY)
    assert summary.reused == 8 and summary.new == 1
    cached = read_cache(cache)
    assert cached.settings.decode == "exact"
    fresh = tmp_path / "fresh.h5"
    extract(data, output=fresh, decode="exact", **TINY)
    again = read_cache(fresh)
    rows = {path: row for path, row in zip(again.paths, again.features)}
    for path, row in zip(cached.paths, cached.features):
        np.testing.assert_allclose(row, rows[path], atol=1e-5)


def _chunks(data: bytes) -> list[bytes]:
    """A PNG's chunks, each whole (length, type, body, CRC)."""
    import struct

    out, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        out.append(data[pos : pos + 12 + length])
        pos += 12 + length
    return out


def test_a_png_is_turned_by_its_exif_orientation_before_or_after_its_pixels():
    """PNG orientation is read from the chunk list (Pillow's getexif would decode the whole
    image to look for an eXIf chunk after the pixels), wherever the chunk is."""
    image = Image.fromarray(np.arange(30 * 40 * 3, dtype=np.uint8).reshape(30, 40, 3))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", exif=_rotated_exif())
    before = buffer.getvalue()
    chunks = _chunks(before)
    kinds = [c[4:8] for c in chunks]
    assert kinds.index(b"eXIf") < kinds.index(b"IDAT")
    exif = chunks[kinds.index(b"eXIf")]
    rest = [c for c in chunks if c is not exif]
    after = before[:8] + b"".join(rest[:-1]) + exif + rest[-1]  # eXIf just before IEND
    plain = io.BytesIO()
    image.save(plain, "PNG")
    upright = decode_pixels(plain.getvalue())
    assert upright.shape == (30, 40, 3)
    for data in (before, after):
        turned = decode_pixels(data)
        np.testing.assert_array_equal(turned, np.rot90(upright, -1))
