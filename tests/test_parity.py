"""Features equal the Keras tutorial pipeline, with the real pretrained MobileNet weights."""

import numpy as np
import pytest

from featcache import extract, read_cache
from helpers import make_class_folder

pytestmark = pytest.mark.pretrained


def _keras_reference(folder, weights, size):
    import keras

    dataset = keras.utils.image_dataset_from_directory(
        folder,
        image_size=size,
        shuffle=False,
        interpolation="bilinear",
        batch_size=8,
        verbose=False,
    )
    model = keras.applications.MobileNet(
        include_top=False, weights=str(weights), pooling="avg", input_shape=(*size, 3)
    )
    images = np.concatenate([x.numpy() for x, _ in dataset])
    features = model.predict(keras.applications.mobilenet.preprocess_input(images), verbose=0)
    return [str(p) for p in dataset.file_paths], features


@pytest.mark.parametrize("size", [(224, 224), (96, 128)])
def test_features_match_image_dataset_from_directory(tmp_path, mobilenet_weights, size):
    folder = make_class_folder(tmp_path / "data", classes=2, per_class=5)  # PNG and JPEG
    out = tmp_path / "c.h5"
    extract(
        folder,
        backbone="mobilenet",
        weights=str(mobilenet_weights),
        output=out,
        image_size=f"{size[0]},{size[1]}",
        progress=False,
        batch_size=4,
    )
    data = read_cache(out)
    paths, expected = _keras_reference(folder, mobilenet_weights, size)
    order = [data.paths.index(str(p)[len(str(folder)) + 1 :]) for p in paths]
    assert data.settings.weights_sha256 and len(order) == 10
    np.testing.assert_allclose(data.features[order], expected, atol=1e-4, rtol=0)
    assert np.abs(expected).mean() > 0.01  # real features, not vanishing ones


def test_pretrained_features_separate_classes_better_than_random(tmp_path, mobilenet_weights):
    """Sanity check that the file really is pretrained: class structure shows in features."""
    from PIL import Image

    folder = tmp_path / "shapes"
    rng = np.random.default_rng(0)
    for i in range(8):
        for name, draw in (("stripes", 0), ("dots", 1)):
            canvas = np.full((64, 64, 3), 255, np.uint8)
            if draw == 0:
                canvas[:, (np.arange(64) // (3 + i % 3)) % 2 == 0] = rng.integers(0, 120, 3)
            else:
                for _ in range(20):
                    y, x = rng.integers(4, 60, 2)
                    canvas[y - 2 : y + 2, x - 2 : x + 2] = rng.integers(0, 120, 3)
            (folder / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(canvas).save(folder / name / f"{i}.png")
    scores = {}
    for weights in (str(mobilenet_weights), "none"):
        out = tmp_path / f"{weights == 'none'}.h5"
        extract(
            folder, backbone="mobilenet", weights=weights, output=out, image_size=96, progress=False
        )
        data = read_cache(out)
        x = data.features / (np.linalg.norm(data.features, axis=1, keepdims=True) + 1e-12)
        sim = x @ x.T
        same = data.labels[:, None] == data.labels[None, :]
        np.fill_diagonal(same, False)
        other = data.labels[:, None] != data.labels[None, :]
        scores[weights] = sim[same].mean() - sim[other].mean()
    assert scores[str(mobilenet_weights)] > max(0.05, scores["none"])


def test_vgg16_weights_file_loads_through_weights_path(tmp_path, weights_dir, class_folder):
    """The other shared file (VGG16, edge-tuned) loads with --weights PATH unchanged."""
    path = weights_dir / "vgg16_hed_bsds500_notop.weights.h5"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    extract(
        class_folder,
        backbone="vgg16",
        weights=str(path),
        image_size=32,
        output=tmp_path / "pre.h5",
        progress=False,
    )
    extract(
        class_folder,
        backbone="vgg16",
        weights="none",
        image_size=32,
        output=tmp_path / "rand.h5",
        progress=False,
    )
    pretrained, random = read_cache(tmp_path / "pre.h5"), read_cache(tmp_path / "rand.h5")
    assert len(pretrained.settings.weights_sha256) == 64
    assert pretrained.settings.weights.endswith("vgg16_hed_bsds500_notop.weights.h5")
    assert not np.allclose(pretrained.features, random.features, rtol=0.1)


def test_wrong_weights_file_is_a_clear_error(tmp_path, mobilenet_weights, class_folder):
    from featcache.errors import WeightsError

    with pytest.raises(WeightsError, match="does not fit vgg16: it seems to be mobilenet"):
        extract(
            class_folder,
            backbone="vgg16",
            weights=str(mobilenet_weights),
            image_size=32,
            output=tmp_path / "x.h5",
            progress=False,
        )
    assert not (tmp_path / "x.h5").exists()
