"""Feature extraction: dataset reader, backbone registry, embedder and HDF5 cache."""

from .cache import CacheData, CacheSettings, cache_info, read_cache
from .pipeline import ExtractSummary, extract
from .registry import REGISTRY, BackboneSpec, get_backbone, list_backbones

__all__ = [
    "REGISTRY",
    "BackboneSpec",
    "CacheData",
    "CacheSettings",
    "ExtractSummary",
    "cache_info",
    "extract",
    "get_backbone",
    "list_backbones",
    "read_cache",
]
