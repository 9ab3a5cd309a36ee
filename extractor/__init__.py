"""Feature extraction: dataset reader, backbone registry, engines and the HDF5 cache.

Stages, one module each: :mod:`.sources` lists a dataset, :mod:`.reader` reads and decodes
it, :mod:`.engines` embeds (locally, on a server, or on Ray via :mod:`.ray_engine`),
:mod:`.recorder` turns results into cache rows written by :mod:`.cache`; :mod:`.runner`
wires them and :mod:`.extraction` (``extract``) is the only module that knows every engine.
The names this package exported before are still importable from it, loaded on first use.
"""

import os

from .. import lazy_attributes

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before anything here imports TensorFlow

_MOVED = {
    "extract": ".extraction",
    "ExtractSummary": ".runner",
    "CacheData": ".cache",
    "CacheSettings": ".settings",
    "cache_info": ".cache",
    "read_cache": ".cache",
    "REGISTRY": ".registry",
    "BackboneSpec": ".registry",
    "get_backbone": ".registry",
    "list_backbones": ".registry",
}


__getattr__ = lazy_attributes(__name__, _MOVED, globals())
