"""The ImageNet weights files ``keras.applications`` downloads, and where Keras keeps them.

``weights="imagenet"`` makes Keras fetch one file per backbone (``include_top=False``) with
``keras.utils.get_file`` into ``$KERAS_HOME/models`` (``~/.keras/models``). The names, URLs
and hashes below are those of ``keras/src/applications/*.py`` (``tests/test_weights.py``
checks them against the installed Keras). Offline, a file placed there under that name is
used as if it had been downloaded. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.files import fresh_file
from ..errors import WeightsError
from .hub import is_hub_backbone
from .registry import BackboneSpec, get_backbone, list_backbones

_GCS = "https://storage.googleapis.com/tensorflow/keras-applications/"
PROBE_SECONDS = 5.0
"""How long :func:`probe` waits for the weights server before calling the machine offline."""

_RESNET = {  # registry name -> keras's weights_name (resnet.py WEIGHTS_HASHES, notop hash)
    "resnet50": "4d473c1dd8becc155b73f8504c6f6626",
    "resnet101": "88cf7a10940856eca736dc7b7e228a21",
    "resnet152": "ee4c566cf9a93f14d82f913c2dc6dd0c",
    "resnet50v2": "fac2f116257151a9d068a22e544a4917",
    "resnet101v2": "c0ed64b8031c3730f411d2eb4eea35b5",
    "resnet152v2": "ed17cf2e0169df9d443503ef94b23b33",
}
_EFFICIENTNET = {  # efficientnet.py WEIGHTS_HASHES[...][1]
    "b0": "50bc09e76180e00e4465e1a485ddc09d",
    "b1": "74c4e6b3e1f6a1eea24c589628592432",
    "b2": "111f8e2ac8aa800a7a99e3239f7bfb39",
    "b3": "af6d107764bb5b1abb91932881670226",
    "b4": "ebc24e6d6c33eaebbd558eafbeedf1ba",
    "b5": "38879255a25d3c92d5e44e04ae6cec6f",
    "b6": "9ecce42647a20130c1f39a5d4cb75743",
    "b7": "cbcfe4450ddf6f3ad90b1b398090fe4a",
}
_EFFICIENTNET_V2 = {  # efficientnet_v2.py WEIGHTS_HASHES[...][1]
    "b0": "893217f2bb855e2983157299931e43ff",
    "b1": "0e80663031ca32d657f9caa404b6ec37",
    "b2": "1dfe2e7a5d45b6632553a8961ea609eb",
    "b3": "f6abf7b5849ac99a89b50dd3fd532856",
    "s": "af0682fb74e8c54910f2d4393339c070",
    "m": "1b8dc055df72dde80d614482840fe342",
    "l": "b0b66b5c863aef5b46e8608fe1711615",
}
_CONVNEXT = {  # convnext.py WEIGHTS_HASHES[...][1] (SHA-256)
    "tiny": "d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1",
    "small": "6fc8009faa2f00c1c1dfce59feea9b0745eb260a7dd11bee65c8e20843da6eab",
    "base": "40a20c5548a5e9202f69735ecc06c990e6b7c9d2de39f0361e27baeb24cb7c45",
    "large": "96f02b6f0753d4f543261bc9d09bed650f24dd6bc02ddde3066135b63d23a1cd",
    "xlarge": "de3f8a54174130e0cecdc71583354753d557fcf1f4487331558e2a16ba0cfe05",
}
_FIXED = {  # registry name -> (file name, URL folder, hash): names written out in Keras
    "vgg16": ("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "vgg16/",
              "6d6bbae143d832006294945121d1f1fc"),
    "vgg19": ("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5", "vgg19/",
              "253f8cb515780f3b799900260a226db6"),
    "inception_v3": ("inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
                     "inception_v3/", "bcbd6486424b2319ff4ef7d526e38f63"),
    "inception_resnet_v2": ("inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
                            "inception_resnet_v2/", "d19885ff4a710c122648d3b5c3b684e4"),
    "xception": ("xception_weights_tf_dim_ordering_tf_kernels_notop.h5", "xception/",
                 "b0042744bf5b25fce3cb969f33bebb97"),
    "densenet121": ("densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5", "densenet/",
                    "30ee3e1110167f948a6b9946edeeb738"),
    "densenet169": ("densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5", "densenet/",
                    "b8c4d4c20dd625c148057b9ff1c1176b"),
    "densenet201": ("densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5", "densenet/",
                    "c13680b51ded0fb44dff2d8f86ac8bb1"),
    "mobilenet_v3_small": ("weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
                           "mobilenet_v3/", "d3e8ec802a04aa4fc771ee12a9a9b836"),
    "mobilenet_v3_large": ("weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
                           "mobilenet_v3/", "07fb09a5933dd0c8eaafa16978110389"),
}  # fmt: skip
_NASNET = {  # nasnet.py: cached under another name than the URL's
    "nasnet_mobile": ("nasnet_mobile_no_top.h5", "NASNet-mobile-no-top.h5",
                      "1ed92395b5b598bdda52abe5c0dbfd63"),
    "nasnet_large": ("nasnet_large_no_top.h5", "NASNet-large-no-top.h5",
                     "d81d89dc07e6e56530c4e77faddd61b5"),
}  # fmt: skip
_MOBILENET_ROWS = (128, 160, 192, 224)
"""mobilenet.py: the sides MobileNet has ImageNet weights for (others load the 224 file)."""
_MOBILENET_V2_ROWS = (96, 128, 160, 192, 224)


@dataclass(frozen=True)
class WeightsFile:
    """One ``include_top=False`` ImageNet weights file of a registered backbone."""

    backbone: str
    name: str
    """The file name Keras caches it under (``keras.utils.get_file``'s ``fname``)."""
    url: str
    file_hash: str
    """MD5 (32 hex digits) or SHA-256 (64) Keras checks; empty when Keras checks none."""
    path: Path
    """Where Keras looks for it: ``keras_cache_dir() / name``."""

    @property
    def present(self) -> bool:
        return self.path.is_file()

    @property
    def size(self) -> int:
        """Bytes on disk, 0 when absent."""
        return self.path.stat().st_size if self.present else 0

    def status(self) -> str:
        """``present``, ``missing``, or ``differs`` (a file whose hash is not Keras's: Keras
        would download it again)."""
        if not self.present:
            return "missing"
        return "present" if hash_matches(self.path, self.file_hash) else "differs"


def keras_cache_dir() -> Path:
    """The folder ``keras.utils.get_file(..., cache_subdir="models")`` uses: ``$KERAS_HOME``
    or ``~/.keras`` (``/tmp/.keras`` where that is not writable), then ``models``."""
    if "KERAS_HOME" in os.environ:
        home = os.environ["KERAS_HOME"]
    else:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    base_dir = os.path.expanduser(home)
    if not os.access(base_dir, os.W_OK) and os.path.exists(base_dir):
        base_dir = os.path.join("/tmp", ".keras")
    return Path(base_dir) / "models"


def _rows(size: tuple[int, int] | None, known: tuple[int, ...]) -> int:
    """The side whose weights Keras loads for ``size`` (224 when it has none for it)."""
    if size is not None and size[0] == size[1] and size[0] in known:
        return size[0]
    return 224


def imagenet_file(
    backbone: str | BackboneSpec, image_size: tuple[int, int] | None = None
) -> WeightsFile:
    """The weights file ``keras.applications`` downloads for ``backbone`` with
    ``include_top=False``; MobileNet and MobileNetV2 have one per input side."""
    spec = backbone if isinstance(backbone, BackboneSpec) else get_backbone(backbone)
    name = spec.name
    folder = ""
    url_name = ""
    file_hash = ""
    if name in _FIXED:
        file_name, folder, file_hash = _FIXED[name]
    elif name in _NASNET:
        file_name, url_name, file_hash = _NASNET[name]
        folder = "nasnet/"
    elif name.startswith("resnet"):
        weights_name = name.replace("_", "")
        file_name = f"{weights_name}_weights_tf_dim_ordering_tf_kernels_notop.h5"
        folder, file_hash = "resnet/", _RESNET[weights_name]
    elif name == "mobilenet":
        file_name = f"mobilenet_1_0_{_rows(image_size, _MOBILENET_ROWS)}_tf_no_top.h5"
        folder = "mobilenet/"
    elif name == "mobilenet_v2":
        rows = _rows(image_size, _MOBILENET_V2_ROWS)
        file_name = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5"
        folder = "mobilenet_v2/"
    elif name.startswith("efficientnet_v2_"):
        variant = name.rsplit("_", 1)[1]
        file_name = f"efficientnetv2-{variant}_notop.h5"
        folder, file_hash = "efficientnet_v2/", _EFFICIENTNET_V2[variant]
    elif name.startswith("efficientnet_"):
        variant = name.rsplit("_", 1)[1]
        file_name = f"efficientnet{variant}_notop.h5"
        file_hash = _EFFICIENTNET[variant]
        url = f"https://storage.googleapis.com/keras-applications/{file_name}"
        return WeightsFile(name, file_name, url, file_hash, keras_cache_dir() / file_name)
    elif name.startswith("convnext_"):
        file_name = f"{name}_notop.h5"
        folder, file_hash = "convnext/", _CONVNEXT[name.split("_", 1)[1]]
    else:  # a new registry entry: add its file here (tests/test_weights.py fails first)
        raise WeightsError(f"no known ImageNet weights file for {name}")
    url = f"{_GCS}{folder}{url_name or file_name}"
    return WeightsFile(name, file_name, url, file_hash, keras_cache_dir() / file_name)


def imagenet_files(
    names: list[str] | None = None, image_size: tuple[int, int] | None = None
) -> list[WeightsFile]:
    """The files of ``names`` (every registered backbone when empty), in registry order."""
    specs = [get_backbone(name) for name in names] if names else list_backbones()
    return [imagenet_file(spec, image_size) for spec in specs]


_VERIFIED: dict[tuple[str, int, int, str], bool] = {}


def hash_matches(path: Path, file_hash: str) -> bool:
    """True when ``path`` has ``file_hash`` (SHA-256 when 64 digits, else MD5, as Keras's
    ``validate_file`` decides), or when there is no hash to check. Remembered per stat."""
    if not file_hash:
        return True
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, file_hash)
    if key not in _VERIFIED:
        digest = hashlib.sha256() if len(file_hash) == 64 else hashlib.md5()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _VERIFIED[key] = digest.hexdigest() == file_hash
    return _VERIFIED[key]


_REACHED: set[str] = set()
"""Hosts that answered once: the check before TensorFlow and the one before the model
is built ask once."""


def probe(url: str, timeout: float = PROBE_SECONDS) -> str | None:
    """``None`` when ``url``'s server answers within ``timeout`` seconds (through any proxy
    urllib would use), else why not, in words. Name lookups cannot time out by
    themselves, so the request runs on a daemon thread."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host in _REACHED:
        return None
    outcome: list[str | None] = []

    def ask() -> None:
        try:
            request = urllib.request.Request(url, method="HEAD")
            with urllib.request.urlopen(request, timeout=timeout):
                outcome.append(None)
        except urllib.error.HTTPError as exc:
            outcome.append(f"HTTP {exc.code}")
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            outcome.append(str(reason) or type(exc).__name__)

    thread = threading.Thread(target=ask, name="featcache-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        return f"no answer in {timeout:g} s"
    if outcome[0] is None:
        _REACHED.add(host)
    return outcome[0]


def offline_message(file: WeightsFile, reason: str) -> str:
    """One line: which file is missing, where it goes, and the two ways out."""
    host = urllib.parse.urlsplit(file.url).hostname
    state = "is not" if not file.present else "differs from Keras's copy"
    return (
        f"{file.backbone}'s ImageNet weights file {file.name} {state} in Keras's cache "
        f"({file.path.parent}) and {host} cannot be reached ({reason}): place the file there, "
        "give a weights file (--weights FILE), or run `featcache weights --fetch "
        f"{file.backbone}` where the internet is reachable"
    )


def check_imagenet(
    spec: BackboneSpec, image_size: tuple[int, int] | None, timeout: float = PROBE_SECONDS
) -> None:
    """Fail fast when Keras would have to download ``spec``'s ImageNet weights and cannot:
    the file is not in its cache (or differs) and the server does not answer. Online, or
    with the file in place, this returns and Keras proceeds as usual."""
    file = imagenet_file(spec, image_size)
    if file.present and hash_matches(file.path, file.file_hash):
        return
    reason = probe(file.url, timeout)
    if reason is not None:
        raise WeightsError(offline_message(file, reason))


def fetch(
    file: WeightsFile,
    timeout: float = 60.0,
    on_bytes: Callable[[int, int], None] | None = None,
) -> Path:
    """Download ``file`` into Keras's cache (checked against Keras's hash, written under a
    temporary name and renamed into place). ``on_bytes(done, total)`` follows the transfer.
    Raises :class:`WeightsError` in one line when the download fails."""
    folder = file.path.parent
    folder.mkdir(parents=True, exist_ok=True)
    part = fresh_file(folder, f".{file.name}.", ".part")
    try:
        with urllib.request.urlopen(file.url, timeout=timeout) as reply:
            total = int(reply.headers.get("Content-Length") or 0)
            done = 0
            with open(part, "wb") as out:
                for block in iter(lambda: reply.read(1 << 20), b""):
                    out.write(block)
                    done += len(block)
                    if on_bytes is not None:
                        on_bytes(done, total)
        if not hash_matches(part, file.file_hash):
            raise WeightsError(f"{file.url}: the download does not have Keras's hash")
        os.replace(part, file.path)
    except (urllib.error.URLError, OSError) as exc:
        part.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise WeightsError(f"could not download {file.url}: {reason}") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return file.path


HUB_NOTE = (
    "keras-hub presets are downloaded by keras-hub (kagglehub's cache: $KAGGLEHUB_CACHE or "
    "~/.cache/kagglehub); offline, give a preset folder made with save_to_preset"
)


def weights_rows(
    names: list[str] | None = None, image_size: tuple[int, int] | None = None
) -> list[dict[str, object]]:
    """One row per backbone (every registered ``keras.applications`` one when ``names`` is
    empty): its file, URL, Keras's cache path, status and size. keras-hub names get a row
    saying keras-hub downloads them."""
    rows: list[dict[str, object]] = []
    for name in names or [spec.name for spec in list_backbones()]:
        if is_hub_backbone(name):
            rows.append({"backbone": name, "status": "preset", "note": HUB_NOTE})
            continue
        file = imagenet_file(name, image_size)
        status = file.status()
        rows.append(
            {
                "backbone": file.backbone,
                "file": file.name,
                "url": file.url,
                "path": str(file.path),
                "hash": file.file_hash,
                "status": status,
                "size": file.size if status != "missing" else None,
            }
        )
    return rows


def fetch_missing(
    names: list[str] | None = None,
    image_size: tuple[int, int] | None = None,
    progress: bool | None = None,
) -> list[Path]:
    """Download the files of ``names`` (every registered backbone when empty) that Keras's
    cache lacks, or holds with another hash; a byte bar on a terminal unless ``progress``
    is False. Returns the paths written; the first failure raises :class:`WeightsError`."""
    from tqdm import tqdm

    wanted = names or [spec.name for spec in list_backbones()]
    files = [imagenet_file(n, image_size) for n in wanted if not is_hub_backbone(n)]
    written = []
    for file in files:
        if file.status() == "present":
            continue
        reason = probe(file.url)
        if reason is not None:
            raise WeightsError(f"could not download {file.url}: {reason}")
        enabled = sys.stderr.isatty() if progress is None else progress
        with tqdm(
            unit="B", unit_scale=True, desc=file.name, disable=not enabled, leave=False
        ) as bar:

            def moved(done: int, total: int, bar: Any = bar) -> None:
                bar.total = total or None
                bar.update(done - bar.n)

            written.append(fetch(file, on_bytes=moved))
    return written
