"""Mixed-precision extraction (``precision``): real Keras models with random weights, tiny
images; features stay float32 and close to float32 ones, caches and heads record the
precision, the gRPC path carries it."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from featcache import ExtractOptions, ServeOptions, extract, read_cache, start_server
from featcache.backbones.backbone import FeatureExtractor, resolve_backbone
from featcache.cli import main
from featcache.core.settings import BackboneConfig, CacheSettings, FeatureSettings
from featcache.errors import InvalidOptionError, RemoteError, SettingsMismatchError
from featcache.service.client import Client
from featcache.store import CacheReader
from helpers import TINY, make_class_folder


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def extractor(backbone: str, size: int, precision: str) -> FeatureExtractor:
    return FeatureExtractor(
        resolve_backbone(BackboneConfig(backbone, "none", size, precision=precision))
    )


def test_bfloat16_features_are_float32_and_close_to_float32_ones():
    import keras

    images = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype(np.float32)
    full = extractor("mobilenet", 64, "float32")
    half = extractor("mobilenet", 64, "bfloat16")
    assert keras.config.dtype_policy().name == "float32"  # the build restored the policy
    policies = {layer.dtype_policy.name for layer in half.model.layers}
    assert "mixed_bfloat16" in policies and half.model.output.dtype == "float32"
    assert {layer.dtype_policy.name for layer in full.model.layers} == {"float32"}
    features = half(images)
    assert features.dtype == np.float32 and features.shape == (4, 1024)
    assert cosine(full(images), features).min() > 0.99
    assert half.resolved.precision == "bfloat16" and full.resolved.precision == "float32"


def test_float16_and_a_saved_model_backbone(tmp_path):
    import keras

    images = np.random.default_rng(1).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    features = extractor("vgg16", 32, "float16")(images)
    assert features.dtype == np.float32 and np.isfinite(features).all()
    assert cosine(extractor("vgg16", 32, "float32")(images), features).min() > 0.99
    inputs = keras.Input((24, 24, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    keras.Model(inputs, keras.layers.Conv2D(16, 3, name="top")(x)).save(tmp_path / "net.keras")
    pixels = images[:, :24, :24]
    saved = {
        p: FeatureExtractor(
            resolve_backbone(BackboneConfig(str(tmp_path / "net.keras"), precision=p))
        )
        for p in ("float32", "bfloat16")
    }
    assert saved["bfloat16"].model.get_layer("top").dtype_policy.name == "mixed_bfloat16"
    assert cosine(saved["float32"](pixels), saved["bfloat16"](pixels)).min() > 0.99


def test_a_bad_precision_is_refused_naming_the_parameter():
    with pytest.raises(InvalidOptionError, match=r"^precision 'fp8': expected one of") as refused:
        ExtractOptions(precision="fp8")
    assert refused.value.parameter == "precision"
    with pytest.raises(InvalidOptionError, match=r"^precision 'half'"):
        resolve_backbone(BackboneConfig("vgg16", "none", 32, precision="half"))


def test_settings_key_fingerprint_and_round_trip():
    full = resolve_backbone(BackboneConfig("vgg16", "none", 32))
    half = resolve_backbone(BackboneConfig("vgg16", "none", 32, precision="bfloat16"))
    assert "precision" not in full.identity() and half.identity()["precision"] == "bfloat16"
    assert full.model_key() != half.model_key()  # the server never shares the two models
    assert full.differences(half) == ["precision 'float32' (cache) vs 'bfloat16' (now)"]
    assert FeatureSettings.from_mapping(half.to_dict()) == half
    legacy = {k: v for k, v in full.to_dict().items() if k != "precision"}  # an older head
    assert FeatureSettings.from_mapping(legacy).precision == "float32"


def test_the_cache_records_the_precision_and_refuses_another(class_folder, tmp_path):
    out = tmp_path / "c.h5"
    summary = extract(class_folder, output=out, precision="bfloat16", **TINY)
    assert summary.new == 12
    cached = read_cache(out)
    assert cached.attrs["precision"] == "bfloat16" and cached.settings.precision == "bfloat16"
    assert cached.features.dtype == np.float32
    full = tmp_path / "full.h5"
    extract(class_folder, output=full, **TINY)
    assert cosine(read_cache(full).features, cached.features).min() > 0.99
    assert read_cache(full).attrs["fingerprint"] != cached.attrs["fingerprint"]
    with pytest.raises(SettingsMismatchError, match=r"precision 'bfloat16' \(cache\) vs 'float32'"):
        extract(class_folder, output=out, **TINY)
    with pytest.raises(SettingsMismatchError, match=r"precision 'float32' \(cache\) vs 'float16'"):
        extract(class_folder, output=full, precision="float16", **TINY)
    assert extract(class_folder, output=out, precision="bfloat16", **TINY).reused == 12
    again = extract(class_folder, output=out, overwrite=True, **TINY)
    assert again.new == 12 and read_cache(out).attrs["precision"] == "float32"


def test_an_old_cache_without_the_attribute_reads_as_float32(class_folder, tmp_path):
    out = tmp_path / "old.h5"
    extract(class_folder, output=out, **TINY)
    fingerprint = read_cache(out).attrs["fingerprint"]
    with h5py.File(out, "r+") as f:  # a cache written before precision was recorded
        del f.attrs["precision"]
    reader = CacheReader(out)
    assert reader.settings.precision == "float32"
    assert reader.settings.fingerprint == fingerprint == reader.fingerprint
    attrs = dict(h5py.File(out, "r").attrs)
    assert CacheSettings.from_attrs(attrs).fingerprint == fingerprint
    assert extract(class_folder, output=out, **TINY).reused == 12
    with pytest.raises(SettingsMismatchError, match="precision"):
        extract(class_folder, output=out, precision="bfloat16", **TINY)


def test_cli_flag_inspect_and_a_one_line_error(class_folder, tmp_path):
    out = tmp_path / "c.h5"
    args = ["--backbone", "vgg16", "--weights", "none", "--image-size", "32"]
    runner = CliRunner()
    result = runner.invoke(
        main,
        ["extract", str(class_folder), "-o", str(out), *args, "--precision", "bfloat16", "--json"],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["rows"] == 12
    assert read_cache(out).attrs["precision"] == "bfloat16"
    shown = runner.invoke(main, ["inspect", str(out)])
    assert "precision      bfloat16" in shown.output
    bad = runner.invoke(
        main, ["extract", str(class_folder), "-o", str(tmp_path / "x.h5"), "--precision", "fp8"]
    )
    assert bad.exit_code == 2
    assert (
        bad.output.strip() == "error: --precision 'fp8': expected one of float32, bfloat16, float16"
    )
    assert not (tmp_path / "x.h5").exists()
    assert "--precision" in runner.invoke(main, ["extract", "--help"]).output


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("serve")
    make_class_folder(base / "data" / "set")
    (base / "cache").mkdir()
    srv = start_server(
        ServeOptions(
            port=0,
            data_root=str(base / "data"),
            cache_root=str(base / "cache"),
            max_delay_ms=20,
        )
    )
    yield srv, base
    srv.stop(0)


def test_the_remote_path_carries_the_precision(server, class_folder, tmp_path):
    srv, base = server
    address = f"127.0.0.1:{srv.port}"
    images = [np.full((32, 32, 3), 40 * i, np.uint8) for i in range(1, 4)]
    model = {"weights": "none", "image_size": 32}
    with Client(address) as client:
        half = client.embed(images, "vgg16", precision="bfloat16", **model)
        full = client.embed(images, "vgg16", **model)
        assert half.dtype == np.float32 and cosine(full, half).min() > 0.99
        assert client.info("vgg16", precision="bfloat16", **model).precision == "bfloat16"
        loaded = client.list_backbones()["loaded"]
        assert sorted(entry["precision"] for entry in loaded) == ["bfloat16", "float32"]
        with pytest.raises(RemoteError, match="INVALID_ARGUMENT: precision 'fp8'"):
            client.embed(images, "vgg16", precision="fp8", **model)
        steps = list(
            client.extract_dataset("set", "vgg16", output="half.h5", precision="bfloat16", **model)
        )
        assert steps[-1].finished and steps[-1].rows == 12
    assert read_cache(base / "cache" / "half.h5").attrs["precision"] == "bfloat16"
    remote = extract(
        class_folder, output=tmp_path / "r.h5", remote=address, precision="bfloat16", **TINY
    )
    local = extract(class_folder, output=tmp_path / "l.h5", precision="bfloat16", **TINY)
    assert remote.rows == local.rows == 12
    there, here = read_cache(tmp_path / "r.h5"), read_cache(tmp_path / "l.h5")
    assert (
        there.attrs["precision"] == "bfloat16"
        and there.attrs["fingerprint"] == here.attrs["fingerprint"]
    )
    order = [there.paths.index(p) for p in here.paths]
    assert cosine(there.features[order], here.features).min() > 0.999


def test_export_and_predict_rebuild_the_backbone_in_the_caches_precision(tmp_path):
    from featcache.heads.endtoend import build, export, load_model
    from featcache.heads.predict import predict_cache
    from featcache.heads.train import load_head, train_head

    data = make_class_folder(tmp_path / "data", classes=2, per_class=5)
    cache = tmp_path / "half.h5"
    extract(data, output=cache, precision="bfloat16", split="0.6,0.2,0.2", **TINY)
    train_head(cache, head="dense", hidden=(8,), epochs=2, output=tmp_path / "head")
    assert load_head(tmp_path / "head").settings.precision == "bfloat16"
    built = build(tmp_path / "head")
    assert built.backbone.get_layer("block1_conv1").dtype_policy.name == "mixed_bfloat16"
    model, _, _ = load_model(export(tmp_path / "head", tmp_path / "m.keras"))
    cached = read_cache(cache)
    expected = load_head(tmp_path / "head").predict_proba(cached.features)
    from featcache.extractor.decode import decode_image

    for path, row in zip(cached.paths, expected):
        pixels = decode_image((data / path).read_bytes()).astype(np.float32)
        np.testing.assert_allclose(np.asarray(model(pixels[None]))[0], row, atol=0.02)
    full = tmp_path / "full.h5"
    extract(data, output=full, split="0.6,0.2,0.2", **TINY)
    with pytest.raises(SettingsMismatchError, match="precision 'bfloat16'"):
        predict_cache(tmp_path / "head", full, tmp_path / "p.csv")
