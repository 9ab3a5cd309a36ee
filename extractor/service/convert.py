"""Between protocol messages and the Python API: settings, images, infos, status codes.

Nothing here imports TensorFlow, so that the client side stays light.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import (
    CacheLockedError,
    DatasetError,
    ExtractionCancelled,
    FeatcacheError,
    InvalidOptionError,
    SettingsMismatchError,
    UnknownBackboneError,
    WeightsError,
)
from ...protos import extractor_pb2 as pb
from ..backbone import BackboneConfig, ResolvedBackbone, is_model_file
from ..decode import RESIZE_MODES
from ..sources import is_within

DEFAULT_SEED = 20
"""Seed of random weights (and of the split) when a request leaves it unset, as ``extract``."""

_NAMED_WEIGHTS = ("imagenet", "none", "random")
_TENSOR_DTYPES: dict[str, np.dtype[Any]] = {
    "": np.dtype(np.uint8),
    "uint8": np.dtype(np.uint8),
    "float32": np.dtype("<f4"),
}


class AccessDenied(FeatcacheError):
    """A request names a path outside the folders the server exposes."""


class NotFound(FeatcacheError):
    """A request names a dataset that does not exist under the data root."""


def settings_message(config: BackboneConfig, resize: str) -> pb.BackboneSettings:
    """The request form of a backbone configuration."""
    size = config.image_size
    if isinstance(size, str):
        from ..backbone import parse_image_size

        size = parse_image_size(size)
    sizes = [] if size is None else ([size, size] if isinstance(size, int) else list(size))
    return pb.BackboneSettings(
        name=config.backbone,
        weights=config.weights,
        image_size=sizes,
        pooling=config.pooling,
        layer=config.layer,
        resize=resize,
        preprocessing=config.preprocessing,
        seed=config.seed,
    )


def config_from_message(
    settings: pb.BackboneSettings, weights_root: Path | None, max_side: int = 1024
) -> tuple[BackboneConfig, str]:
    """A request's settings as a :class:`BackboneConfig` and a resize mode.

    Weights files and saved models must lie under ``weights_root``; input sides are
    limited to ``max_side`` pixels (memory grows with their square).
    """
    name = settings.name.strip()
    if not name:
        raise InvalidOptionError("backbone.name is required")
    if is_model_file(name):
        name = str(confine(weights_root, name, "saved model"))
    weights = settings.weights.strip() or "imagenet"
    if weights.lower() not in _NAMED_WEIGHTS:
        weights = str(confine(weights_root, weights, "weights file"))
    resize = settings.resize or "stretch"
    if resize not in RESIZE_MODES:
        raise InvalidOptionError(f"resize {resize!r}: expected one of {', '.join(RESIZE_MODES)}")
    sizes = list(settings.image_size)
    if len(sizes) > 2:
        raise InvalidOptionError(f"image_size {sizes}: expected [], [N] or [height, width]")
    size: tuple[int, int] | None = None
    if sizes:
        size = (sizes[0], sizes[-1])
        if min(size) < 1 or max(size) > max_side:
            raise InvalidOptionError(
                f"image_size {sizes}: sides must be within 1..{max_side} on this server"
            )
    seed = settings.seed if settings.HasField("seed") else DEFAULT_SEED
    if not 0 <= seed < 2**32:
        raise InvalidOptionError(f"seed {seed}: expected 0 to 2**32 - 1")
    config = BackboneConfig(
        name,
        weights,
        size,
        settings.pooling or "avg",
        settings.layer,
        settings.preprocessing or "auto",
        seed,
    )
    return config, resize


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


def info_message(resolved: ResolvedBackbone, resize: str, feature_dim: int, seed: int) -> Any:
    """The settings a backbone resolved to, as a ``BackboneInfo``."""
    return pb.BackboneInfo(
        name=resolved.backbone,
        backbone_sha256=resolved.backbone_sha256,
        weights=resolved.weights,
        weights_sha256=resolved.weights_sha256,
        image_height=resolved.image_size[0],
        image_width=resolved.image_size[1],
        pooling=resolved.pooling,
        layer=resolved.layer,
        preprocessing=resolved.preprocessing,
        resize=resize,
        feature_dim=feature_dim,
        seed=seed,
    )


def resolved_from_info(info: Any) -> ResolvedBackbone:
    """A ``BackboneInfo`` back as the :class:`ResolvedBackbone` a cache records."""
    return ResolvedBackbone(
        info.name,
        info.backbone_sha256,
        info.weights,
        info.weights_sha256,
        (info.image_height, info.image_width),
        info.pooling,
        info.layer,
        info.preprocessing,
        None,
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
    if isinstance(exc, MemoryError):
        return "RESOURCE_EXHAUSTED"
    if isinstance(exc, TimeoutError):
        return "DEADLINE_EXCEEDED"
    return "INTERNAL"
