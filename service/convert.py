"""Between protocol messages and the Python API: settings, images, infos, status codes.

Nothing here imports TensorFlow, so that the client side stays light.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..backbones.backbone import is_model_file
from ..backbones.hub import HUB_REGISTRY, is_remote_preset
from ..core.options import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_BLOCKS,
    DEFAULT_CHECKPOINT_SECONDS,
    DEFAULT_DTYPE,
    DEFAULT_POOLING,
    DEFAULT_PRECISION,
    DEFAULT_PREPROCESSING,
    DEFAULT_RESIZE,
    DEFAULT_SEED,
    DEFAULT_SPLIT,
    DEFAULT_WEIGHTS,
    NAMED_WEIGHTS,
    PRECISIONS,
    RESIZE_MODES,
    ExtractOptions,
    check_blocks,
    check_choice,
    check_seed,
    parse_image_size,
)
from ..core.settings import BackboneConfig, FeatureSettings
from ..errors import (
    AccessDenied,
    CacheLockedError,
    DatasetError,
    ExtractionCancelled,
    FeatcacheError,
    InvalidOptionError,
    NotFound,
    SettingsMismatchError,
    UnknownBackboneError,
    WeightsError,
)
from ..extractor.runner import default_output
from ..extractor.sources import is_within
from ..protos import extractor_pb2 as pb
from .options import DEFAULT_MAX_IMAGE_SIZE


class ResourceExhausted(FeatcacheError):
    """A request over one of the server's limits (images, memory, models, jobs, calls)."""


def mib(nbytes: int) -> str:
    """``nbytes`` in MiB for messages (``0.4 MiB``, ``12 MiB``)."""
    value = nbytes / (1 << 20)
    return f"{value:.1f} MiB" if value < 10 else f"{value:,.0f} MiB"


@dataclass(frozen=True)
class Roots:
    """The folders requests may name paths in."""

    data: Path | None = None
    cache: Path | None = None
    weights: Path | None = None


_TENSOR_DTYPES: dict[str, np.dtype[Any]] = {
    "": np.dtype(np.uint8),
    "uint8": np.dtype(np.uint8),
    "float32": np.dtype("<f4"),
}


def settings_message(config: BackboneConfig) -> pb.BackboneSettings:
    """The request form of a backbone configuration."""
    size = parse_image_size(config.image_size)
    return pb.BackboneSettings(
        name=config.backbone,
        weights=config.weights,
        image_size=[] if size is None else list(size),
        pooling=config.pooling,
        layer=config.layer,
        resize=config.resize,
        preprocessing=config.preprocessing,
        seed=config.seed,
        precision=config.precision,
        blocks=config.blocks,
        projection=config.projection,
    )


def config_from_message(
    settings: pb.BackboneSettings,
    weights_root: Path | None,
    max_side: int = DEFAULT_MAX_IMAGE_SIZE,
) -> BackboneConfig:
    """A request's settings as a :class:`BackboneConfig`.

    Weights files and saved models must lie under ``weights_root``; input sides are
    limited to ``max_side`` pixels (memory grows with their square).
    """
    name = settings.name.strip()
    if not name:
        raise InvalidOptionError("backbone.name is required", "backbone.name")
    if is_remote_preset(name):
        raise AccessDenied(
            f"backbone.name {name!r}: this server loads registered names and preset folders "
            "under its --weights-root only"
        )
    if is_model_file(name):
        name = str(confine(weights_root, name, "saved model"))
    elif _is_preset_folder(name, weights_root):
        name = str(confine(weights_root, name, "preset folder"))
    weights = settings.weights.strip() or DEFAULT_WEIGHTS
    if weights.lower() not in (*NAMED_WEIGHTS, "preset"):
        weights = str(confine(weights_root, weights, "weights file"))
    resize = check_choice("resize", settings.resize or DEFAULT_RESIZE, RESIZE_MODES)
    precision = check_choice("precision", settings.precision or DEFAULT_PRECISION, PRECISIONS)
    sizes = list(settings.image_size)
    if len(sizes) > 2:
        raise InvalidOptionError(
            f"image_size {sizes}: expected [], [N] or [height, width]", "image_size"
        )
    size: tuple[int, int] | None = None
    if sizes:
        size = (sizes[0], sizes[-1])
        if min(size) < 1 or max(size) > max_side:
            raise InvalidOptionError(
                f"image_size {sizes}: sides must be within 1..{max_side} on this server",
                "image_size",
            )
    seed = check_seed(settings.seed if settings.HasField("seed") else DEFAULT_SEED)
    return BackboneConfig(
        name,
        weights,
        size,
        settings.pooling or DEFAULT_POOLING,
        settings.layer,
        settings.preprocessing or DEFAULT_PREPROCESSING,
        seed,
        resize,
        precision,
        check_blocks(settings.blocks or DEFAULT_BLOCKS, "blocks"),
        settings.projection,
    )


def _is_preset_folder(name: str, weights_root: Path | None) -> bool:
    """True for a keras-hub preset folder name (a path, or a folder under ``weights_root``),
    not a registry name."""
    from ..backbones.registry import get_backbone

    if name.strip().lower() in HUB_REGISTRY:
        return False
    try:
        get_backbone(name)
        return False
    except UnknownBackboneError:
        pass
    if "/" in name or name.startswith("."):
        return True
    return weights_root is not None and (weights_root / name / "config.json").is_file()


def dataset_paths(
    request: pb.ExtractDatasetRequest, config: BackboneConfig, roots: Roots
) -> tuple[Path, Path, Path | None, str]:
    """An ``ExtractDataset`` request's data, output and labels paths, confined to the
    server's roots, and the output as the client names it."""
    data = confine(roots.data, request.data, "data")
    if not data.exists():
        raise NotFound(f"data {request.data!r}: no such folder or file under the data root")
    name = request.output or default_output(config.backbone).name
    if any(c in name for c in "*?[]"):
        raise InvalidOptionError(f"output {name!r}: no wildcards in file names", "output")
    output = confine(roots.cache, name, "output")
    if output.is_dir():
        raise FeatcacheError(f"output {request.output!r} is a folder")
    labels = confine(roots.data, request.labels, "labels") if request.labels else None
    shown = output.relative_to(roots.cache) if roots.cache else output
    return data, output, labels, str(shown)


def extract_options(
    request: pb.ExtractDatasetRequest, config: BackboneConfig, labels: Path | None, max_pixels: int
) -> ExtractOptions:
    """An ``ExtractDataset`` request's options (unset fields take ``extract``'s defaults)."""
    return ExtractOptions(
        **asdict(config),
        dtype=request.dtype or DEFAULT_DTYPE,
        split=request.split or DEFAULT_SPLIT,
        labels=str(labels) if labels else None,
        batch_size=request.batch_size or DEFAULT_BATCH_SIZE,
        overwrite=request.overwrite,
        checkpoint_seconds=request.checkpoint_seconds or DEFAULT_CHECKPOINT_SECONDS,
        max_pixels=max_pixels,
        progress=False,
        views=request.views or None,  # 0 (unset): as the cache, else 1
        augment=request.augment or None,
        augment_seed=request.augment_seed if request.HasField("augment_seed") else None,
    )


def is_loopback(host: str) -> bool:
    """True for addresses only this machine reaches: ``localhost``, 127.0.0.0/8, ``::1``,
    Unix sockets (``host`` may be ``HOST:PORT``, ``[IPV6]:PORT`` or a gRPC target such as
    ``unix:/path`` or ``dns:///localhost:50051``)."""
    name = host.lower()
    if name.startswith(("unix:", "unix-abstract:")):
        return True
    if name.startswith("dns:"):
        name = name[4:].lstrip("/")
    if name.startswith("["):
        name = name[1:].split("]")[0]
    elif name.count(":") == 1:
        name = name.split(":")[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def relative_to_roots(text: str, roots: Roots) -> str:
    """``text`` with the server's root folders cut from the paths in it (clients name
    files relative to the roots, and need not learn where they are)."""
    # longest first, so a root inside another is cut whole; a root ends at a path boundary
    for root in sorted((r for r in (roots.data, roots.cache, roots.weights) if r), key=str)[::-1]:
        text = re.sub(re.escape(str(root)) + r"(?:/|(?![\w.\-]))", _cut, text)
    return text


def _cut(match: re.Match[str]) -> str:
    return "" if match.group(0).endswith("/") else "."


def shown_settings(settings: FeatureSettings, roots: Roots) -> FeatureSettings:
    """``settings`` with weights and saved-model paths relative to the weights root."""
    return replace(
        settings,
        weights=relative_to_roots(settings.weights, Roots(weights=roots.weights)),
        backbone=relative_to_roots(settings.backbone, Roots(weights=roots.weights)),
    )


def confine(root: Path | None, relative: str, what: str) -> Path:
    """``root / relative``, refusing absolute paths, ``..`` and symlinks leaving ``root``."""
    if root is None:
        raise AccessDenied(f"{what} {relative!r}: this server exposes no folder for it")
    if not relative or os.path.isabs(relative) or relative.startswith("~"):
        raise AccessDenied(f"{what} {relative!r}: give a path relative to the server's folder")
    if ".." in Path(relative).parts:
        raise AccessDenied(f"{what} {relative!r}: '..' is not allowed")
    path = root / relative
    if not is_within(path, root):
        raise AccessDenied(f"{what} {relative!r}: leaves the server's folder")
    return path


def info_message(settings: FeatureSettings) -> Any:
    """The settings a backbone resolved to, as a ``BackboneInfo``."""
    return pb.BackboneInfo(
        name=settings.backbone,
        backbone_sha256=settings.backbone_sha256,
        weights=settings.weights,
        weights_sha256=settings.weights_sha256,
        image_height=settings.image_size[0],
        image_width=settings.image_size[1],
        pooling=settings.pooling,
        layer=settings.layer,
        preprocessing=settings.preprocessing,
        resize=settings.resize,
        feature_dim=settings.feature_dim,
        seed=settings.seed,
        precision=settings.precision,
        blocks=settings.blocks,
        projection=settings.projection,
    )


def settings_from_info(info: Any) -> FeatureSettings:
    """A ``BackboneInfo`` back as the :class:`FeatureSettings` a cache records."""
    return FeatureSettings(
        info.name,
        info.backbone_sha256,
        info.weights,
        info.weights_sha256,
        (info.image_height, info.image_width),
        info.resize or DEFAULT_RESIZE,
        info.pooling,
        info.layer,
        info.preprocessing,
        info.seed,
        feature_dim=info.feature_dim,
        precision=info.precision or DEFAULT_PRECISION,
        blocks=info.blocks or DEFAULT_BLOCKS,
        projection=info.projection,
    )


def image_message(content: bytes | np.ndarray) -> Any:
    """One image (file bytes, or an array of 0-255 values) as an ``Image`` message."""
    if isinstance(content, (bytes, bytearray, memoryview)):
        return pb.Image(encoded=bytes(content))
    array = np.asarray(content)
    if array.dtype != np.uint8:
        array = array.astype("<f4")
    tensor = pb.Tensor(
        data=np.ascontiguousarray(array).tobytes(),
        shape=list(array.shape),
        dtype="uint8" if array.dtype == np.uint8 else "float32",
    )
    return pb.Image(pixels=tensor)


def image_content(image: Any, index: int, max_pixels: int) -> bytes | np.ndarray:
    """An ``Image`` message as file bytes or an array; malformed tensors are refused."""
    kind = image.WhichOneof("content")
    if kind == "encoded":
        return bytes(image.encoded)
    if kind is None:
        raise InvalidOptionError(f"image {index}: neither encoded bytes nor pixels")
    tensor = image.pixels
    dtype = _TENSOR_DTYPES.get(tensor.dtype)
    if dtype is None:
        raise InvalidOptionError(
            f"image {index}: dtype {tensor.dtype!r}: expected uint8 or float32"
        )
    shape = tuple(tensor.shape)
    if (
        len(shape) not in (2, 3)
        or min(shape) < 1
        or (len(shape) == 3 and shape[2] not in (1, 3, 4))
    ):
        raise InvalidOptionError(
            f"image {index}: shape {list(shape)} is not (H, W) or (H, W, 1|3|4)"
        )
    if shape[0] * shape[1] > max_pixels:
        raise InvalidOptionError(
            f"image {index}: {shape[0]}x{shape[1]} pixels is over the limit of {max_pixels}"
        )
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(tensor.data) != expected:
        raise InvalidOptionError(
            f"image {index}: shape {list(shape)} needs {expected} bytes of {dtype.name}, "
            f"got {len(tensor.data)}"
        )
    return np.frombuffer(tensor.data, dtype=dtype).reshape(shape)


def status_name(exc: BaseException) -> str:
    """The gRPC status code (name) for a library error; never UNKNOWN."""
    if isinstance(exc, (ResourceExhausted, MemoryError)):
        return "RESOURCE_EXHAUSTED"
    if isinstance(exc, AccessDenied):
        return "PERMISSION_DENIED"
    if isinstance(exc, NotFound):
        return "NOT_FOUND"
    if isinstance(exc, (UnknownBackboneError, InvalidOptionError, DatasetError)):
        return "INVALID_ARGUMENT"
    if isinstance(exc, CacheLockedError):
        return "ABORTED"
    if isinstance(exc, ExtractionCancelled):
        return "CANCELLED"
    if isinstance(exc, (SettingsMismatchError, WeightsError, FeatcacheError)):
        return "FAILED_PRECONDITION"
    if isinstance(exc, TimeoutError):
        return "DEADLINE_EXCEEDED"
    return "INTERNAL"
