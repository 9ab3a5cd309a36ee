"""The default cache name carries the settings that are not their defaults
(``extractor/naming.py``), for local, remote and server extractions alike."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
from click.testing import CliRunner

from featcache import extract, read_cache
from featcache.cli import main
from featcache.core.options import BackboneConfig, ExtractOptions
from featcache.errors import SettingsMismatchError
from featcache.extractor.naming import cache_name, default_output
from helpers import TINY, make_class_folder

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fashion-mnist"
CLI_TINY = ["--backbone", "vgg16", "--weights", "none", "-q"]


@pytest.mark.parametrize(
    "settings, name",
    [
        ({}, "mobilenet"),
        ({"image_size": 224}, "mobilenet"),  # the backbone's own size
        ({"image_size": 96}, "mobilenet-96px"),
        ({"image_size": 96, "pooling": "max"}, "mobilenet-96px-max"),
        ({"image_size": "96,128", "resize": "pad"}, "mobilenet-96x128px-pad"),
        ({"backbone": "vgg16", "weights": "none", "image_size": 32}, "vgg16-32px-random"),
        ({"weights": "random", "seed": 7}, "mobilenet-random-seed7"),
        ({"seed": 7}, "mobilenet-seed7"),  # the split's seed
        ({"weights": "/w/mobilenet_1_0_224_imagenet_notop.weights.h5"}, "mobilenet"),
        ({"weights": "/w/My Finetuned.weights.h5"}, "mobilenet-w_my_finetuned"),
        ({"layer": "conv_pw_13_relu", "precision": "bfloat16"}, "mobilenet-conv_pw_13_relu-bf16"),
        ({"preprocessing": "none"}, "mobilenet-prep_none"),
        ({"dtype": "float16", "split": "0.8,0.1,0.1"}, "mobilenet-f16-split80_10_10"),
        ({"split": "0.7,0.3"}, "mobilenet-split70_30"),
        ({"backbone": "hub:dinov2_small", "pooling": "cls+mean", "blocks": 4},
         "dinov2_small-cls_mean-4blocks"),
        ({"backbone": "clip_vit_base_patch16", "projection": True}, "clip_vit_base_patch16-proj"),
        ({"backbone": "hf://org/My-Model"}, "my_model"),
        ({"backbone": "models/My Net.keras"}, "my_net"),
        ({"views": 2, "augment": "flip"}, "mobilenet"),  # a rerun extends the cache it finds
    ],
)  # fmt: skip
def test_the_default_name_carries_every_setting_not_at_its_default(settings, name):
    options = ExtractOptions(**settings)
    assert cache_name(options) == name
    assert default_output(options) == Path("cache") / f"{name}.h5"


def test_the_server_names_a_request_without_output_by_the_same_rule(tmp_path):
    from featcache.protos import extractor_pb2 as pb
    from featcache.service.convert import Roots, dataset_paths

    (tmp_path / "data" / "set").mkdir(parents=True)
    request = pb.ExtractDatasetRequest(data="set", dtype="float16", split="0.8,0.2")
    config = BackboneConfig(backbone="vgg16", weights="none", image_size=32)
    expected = cache_name(ExtractOptions(**asdict(config), dtype="float16", split="0.8,0.2"))
    assert expected == "vgg16-32px-random-f16-split80_20"
    roots = Roots(data=tmp_path / "data", cache=tmp_path / "cache")
    _, output, _, shown = dataset_paths(request, config, roots)
    assert output == tmp_path / "cache" / f"{expected}.h5" and shown == f"{expected}.h5"


def test_a_taken_default_name_suggests_another_and_the_old_caches_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_class_folder(tmp_path / "photos", classes=2, per_class=3)
    first = extract("photos", **TINY)
    assert first.output == "cache/vgg16-32px-random.h5"
    shutil.copytree(tmp_path / "photos", tmp_path / "more")
    with pytest.raises(SettingsMismatchError) as taken:  # another folder, same settings
        extract("more", **TINY)
    assert str(taken.value).endswith("; e.g. -o cache/vgg16-32px-random-more.h5")
    Path(first.output).rename("cache/vgg16-random.h5")  # as named before this rule
    result = CliRunner().invoke(main, ["extract", "photos", *CLI_TINY])  # 224 px: that name
    assert result.exit_code == 2 and len(result.output.splitlines()) == 1, result.output
    assert "image_size 32x32 (cache) vs 224x224 (now)" in result.output
    assert result.output.rstrip().endswith(
        "e.g. -o cache/vgg16-random-photos.h5 (or rename that cache to "
        "cache/vgg16-32px-random.h5, the default name of its settings)"
    )
    assert read_cache("cache/vgg16-random.h5").settings.image_size == (32, 32)  # untouched


@pytest.mark.pretrained
def test_two_image_sizes_of_the_sample_make_two_caches_and_two_heads(
    tmp_path, monkeypatch, mobilenet_weights
):
    """A newcomer's chain: extract the sample at 96 px, then at 128 px, without -o (the
    ImageNet weights passed by hand, as offline); each run says where its cache is; then
    train a head on each."""
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    caches = []
    for size in ("96", "128"):
        args = ["extract", str(SAMPLE), "-w", str(mobilenet_weights), "--image-size", size]
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output
        cache = f"cache/mobilenet-{size}px.h5"
        assert result.output.startswith(f"{cache}: 300 rows x 1024 (mobilenet)"), result.output
        caches.append(cache)
    assert sorted(str(p) for p in Path("cache").iterdir()) == sorted(caches)  # no .lock
    assert [read_cache(c).settings.image_size for c in caches] == [(96, 96), (128, 128)]
    for cache in caches:
        run = Path("runs") / Path(cache).stem
        trained = runner.invoke(main, ["train-head", cache, "--head", "logreg", "-o", str(run)])
        assert trained.exit_code == 0, trained.output
        report = json.loads((run / "report.json").read_text())
        assert report["cache"] == cache and report["test"]["accuracy"] > 0.4
