"""ImageNet weights files (offline), weights of another architecture, and quiet TensorFlow.

"Offline" is made real by pointing every HTTPS request at a closed local port through the
proxy variables urllib (and so Keras) honours: no request leaves the machine, online or not.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from featcache.backbones.registry import get_backbone, list_backbones
from featcache.backbones.weights_files import imagenet_file, imagenet_files, keras_cache_dir
from featcache.backbones.weights_fit import FINGERPRINTS, misfit
from featcache.core.tf_quiet import NOISE, is_noise
from featcache.store.weights_file import weight_shapes

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "fashion-mnist"
KERAS_APPS = Path(importlib.util.find_spec("keras").origin).parent / "src" / "applications"
OFFLINE = {"HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
"""Every HTTPS request goes to the discard port, which nothing serves: refused at once."""
TF_NOISE = ("absl::InitializeLog", "cuInit", "Could not find cuda drivers", "oneDNN custom")


def featcache(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Any:
    command = [sys.executable, "-m", "featcache.cli", *args]
    merged = {**os.environ, **(env or {})}
    merged.pop("NO_PROXY", None)
    merged.pop("no_proxy", None)
    return subprocess.run(command, capture_output=True, text=True, env=merged, cwd=cwd)


def few_images(root: Path, per_class: int = 4) -> Path:
    """A few of the sample's images in three of its class folders."""
    for name in ("bag", "sneaker", "trouser"):
        (root / name).mkdir(parents=True)
        for image in sorted((SAMPLE / name).glob("*.png"))[:per_class]:
            (root / name / image.name).write_bytes(image.read_bytes())
    return root


# -- the files Keras downloads ---------------------------------------------------------------


def test_every_registered_backbone_has_the_file_and_hash_written_in_keras_source():
    source = "".join(path.read_text() for path in KERAS_APPS.glob("*.py"))
    for file in imagenet_files():
        assert file.file_hash in source, file.backbone
        assert file.url.startswith("https://storage.googleapis.com/"), file.backbone
    assert len({file.name for file in imagenet_files()}) == len(list_backbones())


@pytest.mark.parametrize(
    ("backbone", "side"),
    [
        ("vgg16", 32),
        ("resnet50_v2", 32),
        ("inception_v3", 75),
        ("inception_resnet_v2", 75),
        ("xception", 71),
        ("mobilenet", 96),
        ("mobilenet", 128),
        ("mobilenet_v2", 96),
        ("mobilenet_v3_small", 32),
        ("densenet121", 32),
        ("nasnet_mobile", 32),
        ("efficientnet_b0", 32),
        ("efficientnet_v2_b0", 32),
        ("convnext_tiny", 32),
    ],
)
def test_the_file_is_the_one_keras_asks_get_file_for(backbone, side, monkeypatch):
    """Each way keras.applications names its file, asked of Keras itself: the constructor's
    call to get_file is caught (and stopped) once the model is built."""
    from keras.src.utils import file_utils

    asked = {}

    class Asked(Exception):
        pass

    def get_file(fname=None, origin=None, **kwargs):
        asked.update(fname=fname, origin=origin, file_hash=kwargs.get("file_hash") or "")
        raise Asked

    monkeypatch.setattr(file_utils, "get_file", get_file)
    spec = get_backbone(backbone)
    with pytest.raises(Asked):
        spec.constructor()(include_top=False, weights="imagenet", input_shape=(side, side, 3))
    file = imagenet_file(spec, (side, side))
    assert (file.name, file.url, file.file_hash) == (
        asked["fname"],
        asked["origin"],
        asked["file_hash"],
    )


def test_keras_cache_dir_follows_keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    assert keras_cache_dir() == tmp_path / "kh" / "models"
    assert imagenet_file("resnet50").path.parent == tmp_path / "kh" / "models"


def test_offline_extract_fails_before_tensorflow_is_imported(tmp_path):
    code = (
        "import sys, featcache\n"
        "try:\n"
        "    featcache.extract(sys.argv[1], image_size=96, output=sys.argv[2], progress=False)\n"
        "except featcache.WeightsError as exc:\n"
        "    print(exc)\n"
        "print('tensorflow' in sys.modules)\n"
    )
    data = few_images(tmp_path / "data", per_class=1)
    env = {**os.environ, **OFFLINE, "KERAS_HOME": str(tmp_path / "kh")}
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    run = subprocess.run(
        [sys.executable, "-c", code, str(data), str(tmp_path / "c.h5")],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    message, imported = run.stdout.strip().splitlines()
    assert message.startswith("mobilenet's ImageNet weights file mobilenet_1_0_224_tf_no_top.h5")
    assert imported == "False"


def test_weights_command_lists_statuses_and_names_a_files_backbone(tmp_path, monkeypatch):
    """Missing, present (MobileNet: Keras checks no hash) and differs (another file under
    ResNet50's name, whose hash Keras checks); a weights file given is identified."""
    import json

    from click.testing import CliRunner

    from featcache.cli import main

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    models = tmp_path / "models"
    models.mkdir()
    sample = ROOT / "examples" / "weights" / "mobilenet_1_0_224_imagenet_notop.weights.h5"
    (models / "mobilenet_1_0_224_tf_no_top.h5").write_bytes(sample.read_bytes())
    (models / imagenet_file("resnet50").name).write_bytes(b"not the file")
    result = CliRunner().invoke(main, ["weights", "mobilenet", "resnet50", "vgg16", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert listed["folder"] == str(models)
    assert [(f["backbone"], f["status"]) for f in listed["files"]] == [
        ("mobilenet", "present"),
        ("resnet50", "differs"),
        ("vgg16", "missing"),
    ]
    assert listed["files"][0]["size"] == sample.stat().st_size
    result = CliRunner().invoke(main, ["weights", str(sample)])
    assert result.output.strip() == f"{sample}: mobilenet: use --backbone mobilenet"


# -- a weights file of another architecture --------------------------------------------------


def test_fingerprints_cover_the_registry_and_tell_resnet_v1_from_v2():
    assert set(FINGERPRINTS) == {spec.name for spec in list_backbones()}
    assert FINGERPRINTS["resnet50"][0] != FINGERPRINTS["resnet50_v2"][0]


@pytest.mark.parametrize("backbone", ["mobilenet", "resnet50_v2", "efficientnet_b0"])
def test_a_saved_backbone_is_recognised_from_its_file_in_both_layouts(backbone, tmp_path):
    """Keras 3 ``.weights.h5`` and the legacy ``.h5`` that keras.applications downloads."""
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    model = get_backbone(backbone).constructor()(
        include_top=False, weights=None, input_shape=(32, 32, 3)
    )
    modern = tmp_path / "m.weights.h5"
    model.save_weights(modern)
    legacy = tmp_path / "legacy.h5"
    with h5py.File(legacy, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)
    keras.backend.clear_session()
    for path in (modern, legacy):
        shapes = weight_shapes(path)
        assert misfit(shapes, backbone, str(path)) is None
        other = "vgg16" if backbone != "vgg16" else "mobilenet"
        message = misfit(shapes, other, str(path))
        assert message is not None
        assert f"does not fit {other}" in message and backbone in message


# -- quiet TensorFlow ------------------------------------------------------------------------


def test_noise_patterns_drop_tensorflows_start_up_lines_only():
    noise = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796283754.712462   25788 port.cc:153] oneDNN custom operations are on.",
        "I0000 00:00:1796283754.712856   25788 cudart_stub.cc:31] Could not find cuda drivers",
        "E0000 00:00:1796283759.042607   25788 cuda_platform.cc:52] failed call to cuInit: "
        "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    ]
    kept = [
        "Traceback (most recent call last):",
        "E0000 00:00:1796283759.042607   25788 gpu_device.cc:2] out of memory",
        "error: weights file x.h5 does not fit resnet50",
    ]
    assert all(is_noise(line) for line in noise)
    assert not any(is_noise(line) for line in kept)
    assert NOISE


def test_the_tf_logs_switch_passes_tensorflows_messages_through():
    """The same import with and without the switch: quiet by default, as TensorFlow alone
    with FEATCACHE_TF_LOGS=1."""
    code = "import featcache.cli, tensorflow as tf; tf.config.list_physical_devices()"
    plain = "import tensorflow as tf; tf.config.list_physical_devices()"

    def noise(source: str, **env: str) -> list[str]:
        run = subprocess.run(
            [sys.executable, "-c", source],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            check=True,
        )
        return [line for line in run.stderr.splitlines() if any(n in line for n in TF_NOISE)]

    assert noise(code) == []
    alone = noise(plain)
    assert len(noise(code, FEATCACHE_TF_LOGS="1")) == len(alone)


# -- the journey -----------------------------------------------------------------------------


@pytest.mark.slow
def test_offline_newcomer_journey(tmp_path, mobilenet_weights):
    """Offline, the first extract fails fast in one line naming the file; `featcache weights`
    lists it missing; extract with --weights FILE works with no TensorFlow noise; a file of
    another architecture is refused in one line; the file placed in Keras's cache under
    Keras's name makes the default (imagenet) run work offline, with the same features;
    train-head runs on the cache."""
    data = few_images(tmp_path / "data")
    home = tmp_path / "keras-home"
    env = {**OFFLINE, "KERAS_HOME": str(home)}
    first = featcache(
        "extract", str(data), "--image-size", "96", "-o", "a.h5", env=env, cwd=tmp_path
    )
    assert first.returncode == 2
    lines = first.stderr.strip().splitlines()
    assert len(lines) == 1, first.stderr
    assert "mobilenet_1_0_224_tf_no_top.h5" in lines[0] and str(home / "models") in lines[0]
    assert "--weights FILE" in lines[0] and "featcache weights --fetch" in lines[0]
    assert not (tmp_path / "a.h5").exists()

    listed = featcache("weights", "mobilenet", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert '"status": "missing"' in listed.stdout

    own = featcache(
        "extract", str(data), "--image-size", "96", "-w", str(mobilenet_weights), "-o",
        str(tmp_path / "own.h5"), "-q", env=env,
    )  # fmt: skip
    assert own.returncode == 0, own.stderr
    assert not [line for line in own.stderr.splitlines() if any(n in line for n in TF_NOISE)]
    assert own.stderr.strip() == ""

    wrong = featcache(
        "extract", str(data), "-b", "resnet50", "-w", str(mobilenet_weights), "--image-size",
        "64", "-o", str(tmp_path / "wrong.h5"), env=env,
    )  # fmt: skip
    assert wrong.returncode == 2
    assert wrong.stderr.strip().splitlines() == [
        f"error: weights file {os.path.realpath(mobilenet_weights)} does not fit resnet50: "
        "it seems to be "
        "mobilenet: try --backbone mobilenet"
    ]

    place_in_keras_cache(mobilenet_weights, home / "models" / "mobilenet_1_0_224_tf_no_top.h5")
    listed = featcache("weights", "mobilenet", env=env)
    assert " present " in listed.stdout, listed.stdout
    cached = featcache(
        "extract", str(data), "--image-size", "96", "-o", str(tmp_path / "imagenet.h5"), "-q",
        env=env,
    )  # fmt: skip
    assert cached.returncode == 0, cached.stderr
    with h5py.File(tmp_path / "own.h5") as a, h5py.File(tmp_path / "imagenet.h5") as b:
        np.testing.assert_allclose(a["features"][:], b["features"][:], atol=1e-5)

    head = featcache("train-head", str(tmp_path / "imagenet.h5"), "-o", str(tmp_path / "run"))
    assert head.returncode == 0, head.stderr
    assert not [line for line in head.stderr.splitlines() if any(n in line for n in TF_NOISE)]


def place_in_keras_cache(weights: Path, target: Path) -> None:
    """The weights file rewritten in the legacy layout keras.applications downloads, under
    the name Keras looks for (as a user who downloaded it elsewhere would place it)."""
    code = (
        "import sys, h5py, keras\n"
        "from keras.src.legacy.saving import legacy_h5_format\n"
        "m = keras.applications.MobileNet(include_top=False, weights=None)\n"
        "m.load_weights(sys.argv[1])\n"
        "with h5py.File(sys.argv[2], 'w') as f:\n"
        "    legacy_h5_format.save_weights_to_hdf5_group(f, m)\n"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", code, str(weights), str(target)], check=True)
