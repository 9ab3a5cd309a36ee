"""Between protocol messages and the Python API: settings, images, infos, status codes.

Nothing here imports TensorFlow, so that the client side stays light.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, Field, asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..backbones.backbone import is_model_file
from ..backbones.hub import HUB_REGISTRY, is_remote_preset
from ..core.options import (
    DEFAULT_RESIZE,
    DEFAULT_WEIGHTS,
    NAMED_WEIGHTS,
    ExtractOptions,
)
from ..core.schema import options_of, spec_of
from ..core.settings import BackboneConfig, FeatureSettings
from ..errors import (
    AccessDenied,
    CacheChangedError,
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
from ..extractor.naming import default_output
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


def wire_name(each: Field[Any]) -> str:
    """The message field carrying an option: its declared ``wire`` name, else its own."""
    spec = spec_of(each)
    return spec.wire if spec is not None and spec.wire else each.name


def to_wire(
    cls: Any, values: Mapping[str, Any], message_type: Any, exclude: Sequence[str] = ()
) -> dict[str, Any]:
    """``values`` (fields of the dataclass ``cls``) that ``message_type`` carries, keyed by
    their wire names, as message field values: normalising parsers applied
    (``image_size=96`` -> ``[96, 96]``), tuples as lists, None left unset."""
    carried = message_type.DESCRIPTOR.fields_by_name
    out: dict[str, Any] = {}
    for each in fields(cls):
        name = wire_name(each)
        value = values.get(each.name)
        if each.name in exclude or name not in carried or value is None:
            continue
        spec = spec_of(each)
        if spec is not None and spec.normalise and spec.parse is not None:
            value = spec.parse(value, each.name)
        out[name] = list(value) if isinstance(value, tuple) else value
    return {k: v for k, v in out.items() if v is not None}


def config_values(backbone: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """A backbone and :class:`BackboneConfig` options given as keywords (the client's), not
    yet checked; an unknown keyword is a TypeError, as for any function."""
    known = {each.name for each in fields(BackboneConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r}")
    return {**settings, "backbone": backbone}


def from_wire(message: Any, cls: Any, exclude: Sequence[str] = ()) -> dict[str, Any]:
    """The options of ``cls`` a message sets (by their wire names); unset fields (absent,
    or proto3's zero value for fields without presence) are left out, so that the
    dataclass's declared defaults apply."""
    carried = message.DESCRIPTOR.fields_by_name
    out: dict[str, Any] = {}
    for each, _ in options_of(cls):
        name = wire_name(each)
        if each.name in exclude or name not in carried:
            continue
        if carried[name].has_presence and not carried[name].message_type:
            if message.HasField(name):
                out[each.name] = getattr(message, name)
            continue
        value = getattr(message, name)
        if value:
            out[each.name] = (
                tuple(value) if not isinstance(value, str | bytes | int | float) else value
            )
    return out


def settings_message(config: BackboneConfig) -> pb.BackboneSettings:
    """The request form of a backbone configuration."""
    return pb.BackboneSettings(**to_wire(BackboneConfig, asdict(config), pb.BackboneSettings))


def config_from_message(
    settings: pb.BackboneSettings,
    weights_root: Path | None,
    max_side: int = DEFAULT_MAX_IMAGE_SIZE,
) -> BackboneConfig:
    """A request's settings as a :class:`BackboneConfig` (checked as the library checks it).

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
    given = from_wire(settings, BackboneConfig, exclude=("backbone", "weights", "image_size"))
    return BackboneConfig(backbone=name, weights=weights, image_size=size, **given)


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
    name = request.output or default_output(config, request.dtype, request.split).name
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
    """An ``ExtractDataset`` request's options (unset fields take ``extract``'s defaults;
    the server's ``max_pixels`` applies)."""
    given = from_wire(request, ExtractOptions, exclude=_NOT_FROM_REQUEST)
    return ExtractOptions(
        **asdict(config),
        **given,
        labels=str(labels) if labels else None,
        max_pixels=max_pixels,
        progress=False,
    )


_NOT_FROM_REQUEST = (
    *(each.name for each in fields(BackboneConfig)),
    "output",
    "labels",
    "max_pixels",
)
"""Options of an ``ExtractDataset`` request read apart: the backbone's (its own message),
the paths (confined to the server's roots) and ``max_pixels`` (the server's limit)."""


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


_ROOT_FLAGS = {
    "weights file": "--weights-root",
    "saved model": "--weights-root",
    "preset folder": "--weights-root",
    "allow_backbone": "--weights-root",
    "data": "--data-root",
    "labels": "--data-root",
    "cache": "--cache-root",
    "output": "--cache-root",
}
"""The ``serve`` flag of the folder each kind of path is resolved under."""


def _under_hint(root: Path, path: str) -> str:
    """`` (here: 'b/c.h5')`` when an absolute ``path`` lies under ``root`` (the client's
    reply shows it relative, as every path under a root)."""
    try:
        inside = Path(os.path.expanduser(path)).resolve().relative_to(root.resolve())
    except (ValueError, OSError):
        return ""
    return f" (here: {str(inside)!r})" if str(inside) != "." else ""


def confine(root: Path | None, relative: str, what: str) -> Path:
    """``root / relative``, refusing absolute paths, ``..`` and symlinks leaving ``root``."""
    if root is None:
        raise AccessDenied(f"{what} {relative!r}: this server exposes no folder for it")
    if not relative or os.path.isabs(relative) or relative.startswith("~"):
        flag = _ROOT_FLAGS.get(what, "root folder")
        raise AccessDenied(
            f"{what} {relative!r}: the server resolves it under its own {flag}; give a path "
            f"relative to that folder{_under_hint(root, relative)}"
        )
    if ".." in Path(relative).parts:
        raise AccessDenied(f"{what} {relative!r}: '..' is not allowed")
    path = root / relative
    if not is_within(path, root):
        raise AccessDenied(f"{what} {relative!r}: leaves the server's folder")
    return path


_INFO_APART = ("backbone", "image_size")
""":class:`FeatureSettings` fields a ``BackboneInfo`` carries under other names."""


def info_message(settings: FeatureSettings) -> Any:
    """The settings a backbone resolved to, as a ``BackboneInfo``."""
    return pb.BackboneInfo(
        name=settings.backbone,
        image_height=settings.image_size[0],
        image_width=settings.image_size[1],
        **to_wire(FeatureSettings, vars(settings), pb.BackboneInfo, exclude=_INFO_APART),
    )


def settings_from_info(info: Any) -> FeatureSettings:
    """A ``BackboneInfo`` back as the :class:`FeatureSettings` a cache records (fields a
    server left unset take their defaults)."""
    carried = info.DESCRIPTOR.fields_by_name
    values = {
        each.name: getattr(info, each.name)
        for each in fields(FeatureSettings)
        if each.name in carried and each.name not in _INFO_APART
    }
    for each in fields(FeatureSettings):  # unset (zero) values: the recorded defaults
        if each.name in values and not values[each.name] and each.default not in (MISSING, None):
            values[each.name] = each.default
    values["resize"] = values["resize"] or DEFAULT_RESIZE
    return FeatureSettings(
        backbone=info.name, image_size=(info.image_height, info.image_width), **values
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
    if isinstance(exc, (CacheLockedError, CacheChangedError)):
        return "ABORTED"
    if isinstance(exc, ExtractionCancelled):
        return "CANCELLED"
    if isinstance(exc, (SettingsMismatchError, WeightsError, FeatcacheError)):
        return "FAILED_PRECONDITION"
    if isinstance(exc, TimeoutError):
        return "DEADLINE_EXCEEDED"
    return "INTERNAL"
