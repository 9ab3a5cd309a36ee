"""Extraction's resize equals the ``ResizeImages`` layer of exported models."""

from __future__ import annotations

import numpy as np
import pytest

from featcache.core.options import RESIZE_MODES
from featcache.errors import InvalidOptionError
from featcache.extractor.decode import resize_image

# (image height, width), (target height, width): odd sizes, both aspect directions,
# upscaling and a same-size case; then two that tf.image.resize_with_pad refuses (its
# fitted width rounds to 0 columns), one whose float32 box it rounds a column short,
# and a pad and a crop whose float32 boxes changed in a graph with constant sizes (the
# old export layer's, after Grappler's rewrite of the divisions)
TF_PAD_CASES = [
    ((37, 53), (29, 41)),
    ((13, 7), (32, 32)),
    ((2, 2), (5, 9)),
    ((23, 31), (23, 31)),
]
CASES = [
    *TF_PAD_CASES,
    ((101, 3), (17, 17)),
    ((3, 200), (8, 8)),
    ((6, 31), (29, 29)),
    ((45, 4), (29, 41)),
    ((95, 30), (69, 115)),
]


def _pixels(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A ``.keras`` model of every target size and mode, loaded back (eager and as a graph),
    and its TF SavedModel export."""
    import keras
    import tensorflow as tf

    from featcache.heads.layers import ResizeImages

    inputs = keras.Input((None, None, 3), dtype="float32")
    outputs = {
        f"{size[0]}x{size[1]}_{mode}": ResizeImages(*size, mode)(inputs)
        for size in sorted({size for _, size in CASES})
        for mode in RESIZE_MODES
    }
    folder = tmp_path_factory.mktemp("export")
    keras.Model(inputs, outputs).save(folder / "resize.keras")
    model = keras.models.load_model(folder / "resize.keras")
    graph = tf.function(model, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    model.export(str(folder / "savedmodel"), format="tf_saved_model", verbose=False)
    return model, graph, tf.saved_model.load(str(folder / "savedmodel")).serve


@pytest.mark.parametrize(("shape", "size"), CASES)
def test_extraction_equals_the_exported_layer(exported, shape, size):
    model, graph, served = exported
    pixels = _pixels(shape)
    batch = pixels[None].astype(np.float32)
    in_graph, eager, saved = graph(batch), model(batch), served(batch)
    for mode in RESIZE_MODES:
        key = f"{size[0]}x{size[1]}_{mode}"
        extracted = resize_image(pixels, size, mode)
        assert extracted.shape == (*size, 3) and extracted.dtype == np.float32
        np.testing.assert_allclose(extracted, in_graph[key].numpy()[0], rtol=0, atol=1e-5)
        np.testing.assert_allclose(extracted, np.asarray(eager[key])[0], rtol=0, atol=1e-5)
        np.testing.assert_allclose(extracted, saved[key].numpy()[0], rtol=0, atol=1e-5)
        # float input (in-memory arrays) gives the same as the uint8 it holds
        np.testing.assert_allclose(
            resize_image(pixels.astype(np.float64), size, mode), extracted, rtol=0, atol=1e-5
        )


@pytest.mark.parametrize(("shape", "size"), CASES)
def test_crop_is_keras_smart_resize(shape, size):
    from keras.preprocessing.image import smart_resize

    pixels = _pixels(shape, 1)
    reference = smart_resize(pixels.astype(np.float32), size, interpolation="bilinear")
    np.testing.assert_allclose(resize_image(pixels, size, "crop"), reference, rtol=0, atol=1e-4)


@pytest.mark.parametrize(("shape", "size"), TF_PAD_CASES)
def test_pad_is_tf_resize_with_pad(shape, size):
    import tensorflow as tf

    pixels = _pixels(shape, 2)
    reference = tf.image.resize_with_pad(pixels.astype(np.float32), *size, method="bilinear")
    np.testing.assert_allclose(resize_image(pixels, size, "pad"), reference, rtol=0, atol=1e-5)


def test_pad_box_is_exact_where_tf_rounds_short():
    import tensorflow as tf

    pixels = np.full((6, 31, 3), 200, np.uint8)
    ours = resize_image(pixels, (29, 29), "pad")
    tfs = tf.image.resize_with_pad(pixels, 29, 29, method="bilinear").numpy()
    rows = ours[:, :, 0].max(axis=1) > 0
    assert rows.sum() == 29 * 6 // 31  # centred band of floor(6 * 29 / 31) rows
    assert np.all(ours[rows] == 200)  # the full width, no black column
    assert np.all(tfs[rows][:, -1] == 0)  # TF's float32 box loses the last column


def test_unknown_mode_lists_the_modes():
    from featcache.heads.layers import ResizeImages

    for size in ((5, 7), (4, 4)):  # the same-size shortcut checks the mode too
        with pytest.raises(InvalidOptionError, match="stretch, pad, crop"):
            resize_image(_pixels((4, 4)), size, "zoom")
    with pytest.raises(InvalidOptionError, match="stretch, pad, crop"):
        ResizeImages(5, 7, "zoom")
