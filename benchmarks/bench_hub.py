"""keras-hub backbones: images/s of featcache's feature extractor per family, random weights.

Usage (from the repository root, with ``pip install -e '.[hub]'``)::

    python benchmarks/bench_hub.py --images 256 --json benchmarks/results-hub.json

Each family runs in a fresh process that imports TensorFlow before any clock starts, builds
the architecture of a real preset (same layers and widths, random weights: the speed does
not depend on them, and no weights need downloading), saves it as a local preset folder and
times featcache's ``FeatureExtractor`` on decoded images already in memory at the preset's
native size, batches of 32 (as ``bench_extract.py``'s model-only row), next to two
keras.applications backbones (ResNet50, MobileNet, random weights, 224 px) run by the same
script. Building, weight initialisation and tracing are reported as load time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FAMILIES: dict[str, dict[str, Any]] = {
    # name: the preset whose architecture is built, its class and config (from keras-hub 0.32)
    "dinov2_small": {
        "class": "DINOV2Backbone",
        "size": 224,
        "config": dict(
            patch_size=14,
            num_layers=12,
            hidden_dim=384,
            num_heads=6,
            intermediate_dim=1536,
            position_embedding_shape=(518, 518, 3),
        ),
        "pooling": "cls+mean",
    },
    "dinov2_base": {
        "class": "DINOV2Backbone",
        "size": 224,
        "config": dict(
            patch_size=14,
            num_layers=12,
            hidden_dim=768,
            num_heads=12,
            intermediate_dim=3072,
            position_embedding_shape=(518, 518, 3),
        ),
        "pooling": "cls+mean",
    },
    "vit_base_patch16_224_imagenet": {
        "class": "ViTBackbone",
        "size": 224,
        "config": dict(patch_size=16, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072),
        "pooling": "cls",
    },
    "clip_vit_base_patch32": {
        "class": "CLIPVisionEncoder",
        "size": 224,
        "config": dict(
            patch_size=32, hidden_dim=768, num_layers=12, num_heads=12, intermediate_dim=3072
        ),
        "pooling": "cls",
    },
    "siglip_base_patch16_224": {
        "class": "SigLIPVisionEncoder",
        "size": 224,
        "config": dict(
            patch_size=16, hidden_dim=768, num_layers=12, num_heads=12, intermediate_dim=3072
        ),
        "pooling": "mean",
    },
    "resnet_50_imagenet": {
        "class": "ResNetBackbone",
        "size": 224,
        "config": dict(
            input_conv_filters=[64],
            input_conv_kernel_sizes=[7],
            stackwise_num_filters=[64, 128, 256, 512],
            stackwise_num_blocks=[3, 4, 6, 3],
            stackwise_num_strides=[1, 2, 2, 2],
            block_type="bottleneck_block",
        ),
        "pooling": "avg",
    },
}


APPLICATIONS = ("resnet50", "mobilenet")
"""keras.applications rows run by the same script, side by side (random weights, 224 px)."""


def _architecture(name: str, size: int) -> Any:
    import keras_hub

    family = FAMILIES[name]
    shape = (size, size, 3)
    config = dict(family["config"])
    if family["class"] == "CLIPVisionEncoder":  # the backbone around the vision tower
        vision = keras_hub.models.CLIPVisionEncoder(**config, image_shape=shape)
        text = keras_hub.models.CLIPTextEncoder(64, 32, 32, 1, 2, 64, max_sequence_length=8)
        return keras_hub.models.CLIPBackbone(vision, text, projection_dim=512)
    if family["class"] == "SigLIPVisionEncoder":
        vision = keras_hub.models.SigLIPVisionEncoder(**config, image_shape=shape)
        text = keras_hub.models.SigLIPTextEncoder(64, 32, 32, 1, 2, 64, max_sequence_length=8)
        return keras_hub.models.SigLIPBackbone(vision, text)
    return getattr(keras_hub.models, family["class"])(**config, image_shape=shape)


def run_one(name: str, images: int, batch: int, folder: Path) -> dict[str, Any]:
    """Time one family in this process (TensorFlow imported before the clock)."""
    import numpy as np
    import tensorflow  # noqa: F401 - imported before any clock, as in bench_extract.py

    began = time.monotonic()
    import keras_hub

    from featcache.backbones.backbone import BackboneConfig, FeatureExtractor, resolve_backbone

    if name in APPLICATIONS:  # the keras.applications reference rows
        size, config = 224, BackboneConfig(name, "none", 224)
    else:
        size = FAMILIES[name]["size"]
        _architecture(name, size).save_to_preset(str(folder))
        converter = keras_hub.layers.ImageConverter(
            image_size=(size, size), scale=1 / 127.5, offset=-1.0
        )
        converter.save_to_preset(str(folder))
        config = BackboneConfig(str(folder), "none", size, pooling=FAMILIES[name]["pooling"])
    extractor = FeatureExtractor(resolve_backbone(config))
    pixels = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype("float32")
    extractor(pixels)  # warm up
    load = time.monotonic() - began
    done = 0
    began = time.monotonic()
    while done < images:
        extractor(pixels)
        done += batch
    seconds = time.monotonic() - began
    return {
        "family": name,
        "size": size,
        "feature_dim": extractor.feature_dim,
        "images": done,
        "images_per_second": done / seconds,
        "load_seconds": load,
    }


def _fresh(name: str, images: int, batch: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable,
            __file__,
            "--one",
            name,
            "--images",
            str(images),
            "--batch-size",
            str(batch),
            "--folder",
            tmp,
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", default=",".join([*FAMILIES, *APPLICATIONS]))
    parser.add_argument("--images", type=int, default=256, help="Images timed per family.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", default=None)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.images, args.batch_size, Path(args.folder))))
        return
    rows = [_fresh(name, args.images, args.batch_size) for name in args.families.split(",")]
    print("| architecture (random weights) | source | size | dim | images/s | load s |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        source = "keras.applications" if row["family"] in APPLICATIONS else "keras-hub"
        print(
            f"| {row['family']} | {source} | {row['size']} | {row['feature_dim']} | "
            f"{row['images_per_second']:.1f} | {row['load_seconds']:.1f} |"
        )
    if args.json:
        payload = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "images": args.images,
            "batch_size": args.batch_size,
            "rows": rows,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
