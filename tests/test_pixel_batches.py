"""uint8 batches resized in the model's graph give the features of per-image resizing.

``LocalEmbedder`` keeps small images of one size uint8 and unresized and lets the graph
resize, cast and preprocess a whole batch; larger or odd-sized images are resized on the
reader threads. Every mix must give the features :func:`decode_and_resize` would.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from featcache.core.settings import BackboneConfig
from featcache.extractor.decode import decode_and_resize
from featcache.extractor.engines import LocalEmbedder


def _png(seed: int, size: tuple[int, int]) -> bytes:
    """A smooth random RGB PNG of (width, height)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(small).resize(size, Image.BILINEAR).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module", params=["stretch", "crop", "pad"])
def embedder(request: pytest.FixtureRequest) -> LocalEmbedder:
    return LocalEmbedder(BackboneConfig("vgg16", "none", 32, resize=request.param))


def _reference(embedder: LocalEmbedder, contents: list[bytes | np.ndarray]) -> np.ndarray:
    settings = embedder.settings
    images = [decode_and_resize(c, settings.image_size, settings.resize) for c in contents]
    return embedder.model()(np.stack(images))


@pytest.mark.parametrize(
    "sizes",
    [
        [(20, 27)] * 4,  # one small size: a uint8 batch resized in the graph
        [(32, 32)] * 3,  # the model's size: cast in the graph, no resize
        [(20, 27), (32, 32), (41, 17), (90, 70)],  # mixed: some resized on the threads
    ],
    ids=["common-size", "model-size", "mixed"],
)
def test_batches_match_per_image_resizing(embedder, sizes):
    contents: list[bytes | np.ndarray] = [_png(i, size) for i, size in enumerate(sizes)]
    prepared = [embedder.prepare(c) for c in contents]
    features, reasons = embedder.embed(prepared)
    assert reasons == [None] * len(contents)
    np.testing.assert_allclose(features, _reference(embedder, contents), rtol=1e-4, atol=1e-4)


def test_small_images_stay_uint8_and_large_ones_are_resized_on_the_reader():
    embedder = LocalEmbedder(BackboneConfig("vgg16", "none", 32))
    small = embedder.prepare(_png(1, (20, 27)))
    large = embedder.prepare(_png(2, (90, 70)))  # over twice the model's pixels
    assert small.dtype == np.uint8 and small.shape == (27, 20, 3)
    assert large.dtype == np.float32 and large.shape == (32, 32, 3)


def test_float_arrays_keep_their_values():
    """An in-memory float image is never rounded to uint8 on the way."""
    embedder = LocalEmbedder(BackboneConfig("vgg16", "none", 32))
    array = np.random.default_rng(0).uniform(0, 255, (32, 32, 3)).astype(np.float64)
    prepared = embedder.prepare(array)
    assert prepared.dtype == np.float32
    features, _ = embedder.embed([prepared, embedder.prepare(_png(3, (32, 32)))])
    np.testing.assert_allclose(features[:1], _reference(embedder, [array]), rtol=1e-4, atol=1e-4)


def test_tensorflow_import_and_tracing_count_as_loading():
    embedder = LocalEmbedder(BackboneConfig("vgg16", "none", 32))
    embedder.embed([embedder.prepare(_png(4, (20, 27)))])
    assert embedder.build_seconds > 0
    assert embedder.load_seconds >= embedder.build_seconds + embedder.model().trace_seconds
    assert embedder.model().trace_seconds > 0  # the uint8 graph, traced on first use
