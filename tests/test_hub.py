"""keras-hub backbones: tiny random presets saved with ``save_to_preset`` and the whole chain.

No preset weights can be downloaded here: each family (DINOv2 with registers, ViT, CLIP,
SigLIP, ResNet) is built at a tiny size with random weights, saved as a local preset folder
with its image converter, and used by name like a downloaded one.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from featcache.backbones.backbone import BackboneConfig, FeatureExtractor, resolve_backbone
from featcache.errors import InvalidOptionError
from helpers import make_class_folder

keras_hub = pytest.importorskip("keras_hub", reason="keras-hub not installed (featcache[hub])")

SIZE = 32
SCALE, OFFSET = [0.02, 0.021, 0.019], [-2.0, -1.9, -1.7]


def _tiny(family: str):
    kh = keras_hub.models
    if family == "dinov2":
        return kh.DINOV2Backbone(
            patch_size=8,
            num_layers=2,
            hidden_dim=32,
            num_heads=2,
            intermediate_dim=64,
            num_register_tokens=2,
            image_shape=(SIZE, SIZE, 3),
            position_embedding_shape=(SIZE, SIZE, 3),
        )
    if family == "dinov3":
        return kh.DINOV3Backbone(
            patch_size=8,
            num_layers=2,
            hidden_dim=32,
            num_heads=2,
            intermediate_dim=64,
            num_register_tokens=4,
            image_shape=(SIZE, SIZE, 3),
        )
    if family == "vit":
        return kh.ViTBackbone(
            image_shape=(SIZE, SIZE, 3),
            patch_size=8,
            num_layers=2,
            num_heads=2,
            hidden_dim=32,
            mlp_dim=64,
        )
    if family == "clip":
        vision = kh.CLIPVisionEncoder(8, 32, 2, 2, 64, image_shape=(SIZE, SIZE, 3))
        text = kh.CLIPTextEncoder(50, 16, 16, 1, 2, 32, max_sequence_length=8)
        return kh.CLIPBackbone(vision, text, projection_dim=24)
    if family == "siglip":
        vision = kh.SigLIPVisionEncoder(8, 32, 2, 2, 64, image_shape=(SIZE, SIZE, 3))
        text = kh.SigLIPTextEncoder(50, 32, 32, 1, 2, 64, max_sequence_length=8)
        return kh.SigLIPBackbone(vision, text)
    return kh.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 16],  # keras-hub requires 64 first
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="basic_block",
    )


FAMILIES = ("dinov2", "dinov3", "vit", "clip", "siglip", "resnet")


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    """A local preset folder per family (random weights, a converter with scale and offset)."""
    import keras

    keras.utils.set_random_seed(3)
    out = {}
    for family in FAMILIES:
        folder = tmp_path_factory.mktemp(family)
        _tiny(family).save_to_preset(str(folder))
        converter = keras_hub.layers.ImageConverter(
            image_size=(SIZE, SIZE), scale=SCALE, offset=OFFSET
        )
        converter.save_to_preset(str(folder))
        out[family] = folder
    return out


def _images(n: int = 3) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (n, SIZE, SIZE, 3)).astype(np.float32)


def _extractor(preset, **settings) -> FeatureExtractor:
    settings.setdefault("weights", "preset")
    return FeatureExtractor(resolve_backbone(BackboneConfig(str(preset), **settings)))


def _forward(model, x):
    return model({next(iter(model.input)): x}) if isinstance(model.input, dict) else model(x)


def _reference(family: str, preset, images: np.ndarray, pooling: str) -> np.ndarray:
    """A direct keras-hub forward pass, then the pooling written out in NumPy."""
    backbone = keras_hub.models.Backbone.from_preset(str(preset))
    converter = keras_hub.layers.ImageConverter.from_preset(str(preset))
    x = np.asarray(converter(images))
    if family == "resnet":
        return np.asarray(_forward(backbone, x)).mean(axis=(1, 2))
    if family in ("clip", "siglip"):
        tokens = np.asarray(backbone.vision_encoder({"images": x}))
        if family == "siglip":
            return tokens
    else:
        tokens = np.asarray(_forward(backbone, x))
    skip = 1 + {"dinov2": 2, "dinov3": 4}.get(family, 0)  # class and register tokens
    cls, mean = tokens[:, 0], tokens[:, skip:].mean(axis=1)
    return {"cls": cls, "mean": mean, "cls+mean": np.concatenate([cls, mean], -1)}[pooling]


@pytest.mark.parametrize(
    ("family", "pooling", "projection"),
    [
        ("dinov2", "cls+mean", False),
        ("dinov3", "mean", False),
        ("vit", "cls", False),
        ("clip", "mean", False),
        ("siglip", "avg", True),
        ("resnet", "avg", False),
    ],
)
def test_features_equal_a_direct_keras_hub_forward_pass(presets, family, pooling, projection):
    extractor = _extractor(presets[family], pooling=pooling, projection=projection)
    images = _images()
    expected = _reference(family, presets[family], images, pooling)
    got = extractor(images)
    assert got.shape == expected.shape and extractor.feature_dim == expected.shape[1]
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert np.abs(expected).mean() > 1e-3
    converter = json.loads((presets[family] / "image_converter.json").read_text())["config"]
    assert extractor.resolved.preprocessing.startswith("hub:scale=0.02,")
    assert converter["scale"] == SCALE


def test_blocks_concatenate_the_last_blocks_with_the_final_norm(presets):
    import keras

    extractor = _extractor(presets["dinov2"], pooling="cls", blocks=2)
    images = _images()
    backbone = keras_hub.models.Backbone.from_preset(str(presets["dinov2"]))
    stages = keras.Model(backbone.inputs, [backbone.pyramid_outputs[f"stage{i}"] for i in (1, 2)])
    x = images * np.asarray(SCALE, np.float32) + np.asarray(OFFSET, np.float32)
    expected = np.concatenate([np.asarray(backbone.layernorm(t))[:, 0] for t in stages(x)], axis=-1)
    np.testing.assert_allclose(extractor(images), expected, atol=1e-5, rtol=0)
    assert extractor.resolved.identity()["blocks"] == 2
    assert _extractor(presets["dinov3"], pooling="cls+mean", blocks=2).feature_dim == 4 * 32
    with pytest.raises(InvalidOptionError, match="blocks 2") as refused:
        _extractor(presets["vit"], pooling="cls", blocks=2)
    assert refused.value.parameter == "blocks"


def test_clip_projection_gives_the_image_embedding(presets):
    extractor = _extractor(presets["clip"], projection=True)
    backbone = keras_hub.models.Backbone.from_preset(str(presets["clip"]))
    images = _images()
    x = images * np.asarray(SCALE, np.float32) + np.asarray(OFFSET, np.float32)
    expected = np.asarray(backbone.get_vision_embeddings(x))
    np.testing.assert_allclose(extractor(images), expected, atol=1e-5, rtol=0)
    assert extractor.feature_dim == 24 and extractor.resolved.pooling == "cls"


@pytest.mark.parametrize("family", FAMILIES)
def test_random_weights_are_seeded_and_fingerprinted(presets, family):
    a = _extractor(presets[family], weights="none", seed=1)
    b = _extractor(presets[family], weights="none", seed=1)
    c = _extractor(presets[family], weights="none", seed=2)
    images = _images(2)
    np.testing.assert_array_equal(a(images), b(images))
    assert not np.allclose(a(images), c(images))
    assert a.resolved.identity()["seed"] == 1 and "blocks" not in a.resolved.identity()


def test_a_weights_file_and_the_preset_hash(presets, tmp_path):
    preset = presets["vit"]
    first = resolve_backbone(BackboneConfig(str(preset)))
    assert first.weights == "preset" and len(first.weights_sha256) == 64
    assert first.backbone_sha256 and first.identity()["backbone"] == "file"
    path = tmp_path / "w.weights.h5"
    keras_hub.models.Backbone.from_preset(str(preset)).save_weights(str(path))
    from_file = _extractor(preset, weights=str(path))
    np.testing.assert_allclose(from_file(_images()), _extractor(preset)(_images()), atol=1e-6)


def test_options_are_checked_naming_the_parameter(presets):
    cases = [
        (BackboneConfig("vgg16", "none", 32, pooling="cls"), "pooling"),
        (BackboneConfig("vgg16", "none", 32, blocks=2), "blocks"),
        (BackboneConfig(str(presets["dinov2"]), projection=True), "projection"),
        (BackboneConfig(str(presets["siglip"]), pooling="cls"), "pooling"),
        (BackboneConfig(str(presets["resnet"]), pooling="mean"), "pooling"),
        (BackboneConfig(str(presets["vit"]), image_size=64), "image_size"),
        (BackboneConfig(str(presets["vit"]), pooling="max"), "pooling"),
    ]
    for config, parameter in cases:
        with pytest.raises(InvalidOptionError) as refused:
            FeatureExtractor(resolve_backbone(config))
        assert refused.value.parameter == parameter, config


def test_backbones_lists_keras_hub_presets_without_keras_hub_imports():
    from click.testing import CliRunner

    from featcache.cli import main

    rows = json.loads(CliRunner().invoke(main, ["backbones", "--json"]).output)
    by_name = {row["name"]: row for row in rows}
    assert by_name["dinov2_small"]["feature_dim"] == 384
    assert by_name["dinov2_small"]["source"] == "keras-hub"
    assert {"clip_vit_base_patch16", "siglip2_base_patch16_224"} <= set(by_name)
    code = (
        "import sys\n"
        "from featcache.cli import main\n"
        "try:\n    main(['backbones'])\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', [m for m in sys.modules if m.split('.')[0] in ('keras_hub', 'keras')])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout and "dinov2_with_registers_base" in out.stdout


def test_without_keras_hub_the_error_names_the_extra(presets):
    code = (
        "import sys; sys.modules['keras_hub'] = None\n"
        "from featcache.cli import main\n"
        f"main(['extract', '{presets['vit']}', '-b', 'hub:vit_base_patch16_224_imagenet'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert "pip install 'featcache[hub]'" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_extract_train_predict_export_and_fine_tune(presets, tmp_path):
    from featcache import compare, extract, read_cache
    from featcache.extractor.decode import decode_image
    from featcache.heads.endtoend import export, load_model
    from featcache.heads.finetune import fine_tune
    from featcache.heads.predict import predict_cache
    from featcache.heads.train import load_head, train_head

    data = make_class_folder(tmp_path / "data", classes=2, per_class=6)
    cache = tmp_path / "c.h5"
    extract(
        data,
        backbone=str(presets["dinov2"]),
        weights="preset",
        output=cache,
        pooling="cls+mean",
        blocks=2,
        resize="crop",
        split="0.5,0.25,0.25",
        progress=False,
    )
    cached = read_cache(cache)
    assert cached.features.shape == (12, 128) and cached.settings.blocks == 2
    run = tmp_path / "head"
    train_head(cache, head="dense", hidden=(8,), epochs=3, output=run)
    assert predict_cache(run, cache).is_file()
    assert compare(cache, tmp_path / "compare", heads="logreg,knn").best
    exported = export(run, tmp_path / "m.keras")
    model, names, _ = load_model(exported)
    expected = load_head(run).predict_proba(cached.features)
    for path, row in zip(cached.paths, expected):
        pixels = decode_image((data / path).read_bytes()).astype(np.float32)
        np.testing.assert_allclose(np.asarray(model(pixels[None]))[0], row, atol=1e-4)
    assert names == ["class_0", "class_1"]
    _classify_matches_predict(exported, data)
    tuned = fine_tune(cache, run, output=tmp_path / "ft", unfreeze=2, epochs=1, batch_size=4)
    unfrozen = tuned.report["unfrozen_layers"]
    assert unfrozen and all("norm" not in name for name in unfrozen)


def _classify_matches_predict(exported, data) -> None:
    """The served classifier (Classify) gives ``predict_images``' probabilities."""
    from featcache import ServeOptions, start_server
    from featcache.heads.images import predict_images
    from featcache.service.client import Client

    files = sorted(str(f) for f in data.rglob("*.png"))[:3]
    local = predict_images(exported, files, None, top_k=2)
    srv = start_server(ServeOptions(port=0, models=[f"hub={exported}"]))
    try:
        with Client(f"127.0.0.1:{srv.port}") as client:
            for remote, here in zip(client.classify(files, "hub", top_k=2), local):
                np.testing.assert_allclose(
                    [p for _, p in remote["top"]], [p for _, p in here.top], atol=1e-5
                )
    finally:
        srv.stop(0)


def test_grpc_embeds_with_a_preset_folder_and_refuses_remote_handles(presets, tmp_path):
    import shutil

    from featcache import ServeOptions, read_cache, start_server
    from featcache.service.client import Client, RemoteError

    weights = tmp_path / "weights"
    shutil.copytree(presets["dinov2"], weights / "dinov2")
    make_class_folder(tmp_path / "data" / "set", classes=2, per_class=2)
    (tmp_path / "cache").mkdir()
    roots = {"data_root": str(tmp_path / "data"), "cache_root": str(tmp_path / "cache")}
    srv = start_server(ServeOptions(port=0, weights_root=str(weights), **roots))
    try:
        with Client(f"127.0.0.1:{srv.port}") as client:
            listed = {b["name"]: b for b in client.list_backbones()["backbones"]}
            assert listed["siglip2_base_patch16_224"]["family"] == "siglip"
            images = _images(2).astype(np.uint8)
            got = client.embed(list(images), "dinov2", weights="preset", pooling="cls", blocks=2)
            local = _extractor(presets["dinov2"], pooling="cls", blocks=2)
            np.testing.assert_allclose(got, local(images.astype(np.float32)), atol=1e-5)
            loaded = client.list_backbones()["loaded"][0]
            assert loaded["blocks"] == 2 and loaded["pooling"] == "cls"
            job = client.extract_dataset(
                "set", "dinov2", output="s.h5", weights="preset", pooling="cls", blocks=2
            )
            assert list(job)[-1].feature_dim == 64
            cached = read_cache(tmp_path / "cache" / "s.h5")
            assert cached.settings.blocks == 2 and cached.features.shape == (4, 64)
            for name in ("hub:dinov2_small", "hf://org/model", "kaggle://a/b/keras/c"):
                with pytest.raises(RemoteError) as refused:
                    client.embed(list(images), name, weights="none")
                assert refused.value.code == "PERMISSION_DENIED", name
    finally:
        srv.stop(0)


def test_cli_flags_reach_the_cache_and_errors_name_the_flag(presets, tmp_path):
    from click.testing import CliRunner

    from featcache.cli import main

    data = make_class_folder(tmp_path / "data", classes=2, per_class=2)
    out = tmp_path / "c.h5"
    args = ["extract", str(data), "-b", str(presets["dinov2"]), "-o", str(out), "-q"]
    result = CliRunner().invoke(main, [*args, "--pooling", "cls", "--blocks", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["feature_dim"] == 64
    shown = CliRunner().invoke(main, ["inspect", str(out)]).output
    assert "blocks         2" in shown and "hub:scale=0.02," in shown
    for extra, message in (
        (["--blocks", "0"], "--blocks 0: expected 1 to 64"),
        (["-b", "vgg16", "--projection"], "--projection True: only for keras-hub transformers"),
    ):
        refused = CliRunner().invoke(main, [*args, *extra])
        assert refused.exit_code == 2 and message in refused.output, refused.output


def test_older_fingerprints_are_unchanged_and_bfloat16_builds(presets):
    from featcache.core.settings import CacheSettings

    old = resolve_backbone(BackboneConfig("vgg16", "none", 32, decode="exact"))  # as before
    assert set(old.identity()) == {
        "backbone", "backbone_sha256", "weights", "weights_sha256", "image_size", "resize",
        "pooling", "layer", "preprocessing", "seed",
    }  # fmt: skip
    storage = {"dtype": "float32", "split_source": "hash", "dataset_root": "/d"}
    cache = CacheSettings.of(old, split_ratios=(0.7, 0.2, 0.1), **storage)
    assert "blocks" not in cache.to_attrs() and "projection" not in cache.to_attrs()
    full = _extractor(presets["dinov2"], pooling="cls")
    half = _extractor(presets["dinov2"], pooling="cls", precision="bfloat16")
    images = _images(2)
    assert half(images).dtype == np.float32 and half.resolved.identity()["precision"] == "bfloat16"
    np.testing.assert_allclose(half(images), full(images), atol=0.1)


@pytest.mark.parametrize(
    ("family", "settings"),
    [("clip", {"projection": True}), ("siglip", {"pooling": "mean"}), ("resnet", {})],
)
def test_export_parity_for_other_families(presets, tmp_path, family, settings):
    from featcache import extract, read_cache
    from featcache.extractor.decode import decode_image
    from featcache.heads.endtoend import export, load_model
    from featcache.heads.train import load_head, train_head

    data = make_class_folder(tmp_path / "data", classes=2, per_class=6)
    cache = tmp_path / "c.h5"
    backbone = str(presets[family])
    extract(
        data, backbone=backbone, output=cache, split="0.5,0.25,0.25", progress=False, **settings
    )
    train_head(cache, head="dense", hidden=(4,), epochs=1, output=tmp_path / "head")
    model, _, _ = load_model(export(tmp_path / "head", tmp_path / "m.keras"))
    cached = read_cache(cache)
    expected = load_head(tmp_path / "head").predict_proba(cached.features)
    for path, row in zip(cached.paths, expected):
        pixels = decode_image((data / path).read_bytes()).astype(np.float32)
        np.testing.assert_allclose(np.asarray(model(pixels[None]))[0], row, atol=1e-4)


@pytest.mark.parametrize(
    "shard", ["/etc/hostname", "../../outside.bin", "sub/../../outside.bin", "~/x", "link.bin"]
)
def test_a_presets_sharded_index_cannot_name_files_outside_it(tmp_path, shard):
    """Issue 25 item 6: shard names leaving the preset folder (paths or links) are refused,
    never read or hashed."""
    import json
    from types import SimpleNamespace

    from featcache.backbones.hub import _weight_files
    from featcache.errors import InvalidOptionError

    preset = tmp_path / "preset"
    preset.mkdir()
    (tmp_path / "outside.bin").write_bytes(b"secret")
    (preset / "link.bin").symlink_to(tmp_path / "outside.bin")
    (preset / "model_00000.weights.h5").write_bytes(b"ok")
    index = {"weight_map": {"a": "model_00000.weights.h5", "b": shard}}
    (preset / "model.weights.json").write_text(json.dumps(index))
    with pytest.raises(InvalidOptionError, match="preset folder"):
        _weight_files(SimpleNamespace(preset=str(preset)))
    index["weight_map"]["b"] = "model_00000.weights.h5"
    (preset / "model.weights.json").write_text(json.dumps(index))
    found = _weight_files(SimpleNamespace(preset=str(preset)))
    assert [p.name for p in found] == ["model.weights.json", "model_00000.weights.h5"]
