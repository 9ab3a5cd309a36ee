"""The HDF5 cache: :class:`CacheReader` to read one, :class:`CacheWriter` to write one.

Nothing outside this package opens HDF5 files.
"""

from ..core.settings import CacheSettings
from .format import FORMAT, FORMAT_VERSION
from .opening import cache_info, open_cache, read_cache
from .reader import CacheData, CacheReader
from .writer import CacheWriter

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CacheData",
    "CacheReader",
    "CacheSettings",
    "CacheWriter",
    "cache_info",
    "open_cache",
    "read_cache",
]
