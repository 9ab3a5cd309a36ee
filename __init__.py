"""featcache: embed an image dataset once with a frozen backbone, train heads in seconds.

The public API is importable from here without loading TensorFlow; it is imported
on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .errors import FeatcacheError

try:
    from importlib.metadata import version as _version

    __version__ = _version("featcache")
except Exception:  # noqa: BLE001 - running from a source tree
    __version__ = "0.0.0"

_LAZY = {
    "extract": "featcache.extractor.pipeline",
    "ExtractSummary": "featcache.extractor.pipeline",
    "RayOptions": "featcache.extractor.ray_engine",
    "read_cache": "featcache.extractor.cache",
    "cache_info": "featcache.extractor.cache",
    "CacheData": "featcache.extractor.cache",
    "list_backbones": "featcache.extractor.registry",
    "get_backbone": "featcache.extractor.registry",
    "BackboneSpec": "featcache.extractor.registry",
    "train_head": "featcache.heads.train",
    "load_head": "featcache.heads.train",
    "compare": "featcache.heads.compare",
    "predict_cache": "featcache.heads.predict",
    "DenseHead": "featcache.heads.dense",
    "Client": "featcache.extractor.service.client",
    "ServeOptions": "featcache.extractor.service.server",
    "start_server": "featcache.extractor.service.server",
}

__all__ = ["FeatcacheError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'featcache' has no attribute {name!r}")
