"""featcache: embed an image dataset once with a frozen backbone, train heads in seconds.

The public API is importable from here without loading TensorFlow: each name is imported
from its module on first use (type checkers and IDEs see the real signatures).

>>> import featcache  # doctest: +SKIP
>>> featcache.extract("data/", backbone="mobilenet", weights="mobilenet.weights.h5")
>>> featcache.train_head("cache/mobilenet.h5", head="logreg")
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .errors import (
    AccessDenied,
    CacheError,
    CacheLockedError,
    DatasetError,
    EngineError,
    ExtractionCancelled,
    FeatcacheError,
    InvalidOptionError,
    NotFound,
    RemoteError,
    SettingsMismatchError,
    UnknownBackboneError,
    WeightsError,
)

if TYPE_CHECKING:
    from .audit.audit import AuditReport, audit_cache, fix_splits
    from .audit.options import AuditOptions
    from .audit.output import write_audit_report
    from .audit.plot import PlotResult, plot_cache
    from .audit.plot_options import PlotOptions
    from .audit.search import SearchResult, search
    from .extractor.backbone import FeatureExtractor
    from .extractor.cache import CacheData, CacheReader, cache_info, read_cache
    from .extractor.export_features import ExportSummary, export_features
    from .extractor.extraction import extract
    from .extractor.hub import HubSpec, list_hub_backbones
    from .extractor.options import ExtractOptions, RayOptions
    from .extractor.recorder import ExtractProgress
    from .extractor.registry import BackboneSpec, get_backbone, list_backbones
    from .extractor.runner import ExtractSummary
    from .extractor.service.client import BadImagesError, Client
    from .extractor.service.options import ServeOptions
    from .extractor.service.server import Server
    from .extractor.settings import BackboneConfig, CacheSettings, FeatureSettings
    from .heads.compare import Leaderboard, compare
    from .heads.dense import DenseHead
    from .heads.endtoend import export, load_model
    from .heads.finetune import FineTuneResult, fine_tune
    from .heads.images import Prediction, predict_images
    from .heads.options import FineTuneOptions, HeadOptions
    from .heads.predict import predict_cache
    from .heads.train import TrainedHead, TrainResult, load_head, train_head
    from .serving import serve, start_server

try:
    from importlib.metadata import version as _version

    __version__ = _version("featcache")
except Exception:  # noqa: BLE001 - running from a source tree
    __version__ = "0.0.0"

_LAZY = {
    "audit_cache": "featcache.audit.audit",
    "AuditReport": "featcache.audit.audit",
    "fix_splits": "featcache.audit.audit",
    "AuditOptions": "featcache.audit.options",
    "write_audit_report": "featcache.audit.output",
    "search": "featcache.audit.search",
    "SearchResult": "featcache.audit.search",
    "plot_cache": "featcache.audit.plot",
    "PlotResult": "featcache.audit.plot",
    "PlotOptions": "featcache.audit.plot_options",
    "export_features": "featcache.extractor.export_features",
    "ExportSummary": "featcache.extractor.export_features",
    "extract": "featcache.extractor.extraction",
    "ExtractOptions": "featcache.extractor.options",
    "RayOptions": "featcache.extractor.options",
    "ExtractSummary": "featcache.extractor.runner",
    "ExtractProgress": "featcache.extractor.recorder",
    "BackboneConfig": "featcache.extractor.settings",
    "FeatureSettings": "featcache.extractor.settings",
    "CacheSettings": "featcache.extractor.settings",
    "FeatureExtractor": "featcache.extractor.backbone",
    "CacheReader": "featcache.extractor.cache",
    "CacheData": "featcache.extractor.cache",
    "read_cache": "featcache.extractor.cache",
    "cache_info": "featcache.extractor.cache",
    "BackboneSpec": "featcache.extractor.registry",
    "get_backbone": "featcache.extractor.registry",
    "list_backbones": "featcache.extractor.registry",
    "HubSpec": "featcache.extractor.hub",
    "list_hub_backbones": "featcache.extractor.hub",
    "Client": "featcache.extractor.service.client",
    "BadImagesError": "featcache.extractor.service.client",
    "ServeOptions": "featcache.extractor.service.options",
    "Server": "featcache.extractor.service.server",
    "serve": "featcache.serving",
    "start_server": "featcache.serving",
    "train_head": "featcache.heads.train",
    "load_head": "featcache.heads.train",
    "TrainResult": "featcache.heads.train",
    "TrainedHead": "featcache.heads.train",
    "HeadOptions": "featcache.heads.options",
    "FineTuneOptions": "featcache.heads.options",
    "compare": "featcache.heads.compare",
    "Leaderboard": "featcache.heads.compare",
    "DenseHead": "featcache.heads.dense",
    "fine_tune": "featcache.heads.finetune",
    "FineTuneResult": "featcache.heads.finetune",
    "export": "featcache.heads.endtoend",
    "load_model": "featcache.heads.endtoend",
    "predict_images": "featcache.heads.images",
    "Prediction": "featcache.heads.images",
    "predict_cache": "featcache.heads.predict",
}

__all__ = [
    "AccessDenied",
    "CacheError",
    "CacheLockedError",
    "DatasetError",
    "EngineError",
    "ExtractionCancelled",
    "FeatcacheError",
    "InvalidOptionError",
    "NotFound",
    "RemoteError",
    "SettingsMismatchError",
    "UnknownBackboneError",
    "WeightsError",
    "__version__",
    *_LAZY,
]


def lazy_attributes(package: str, moved: dict[str, str], namespace: dict[str, Any]) -> Any:
    """A module ``__getattr__`` loading ``name`` from the module ``moved[name]`` on first use
    (and keeping it, over a submodule of the same name)."""

    def __getattr__(name: str) -> Any:
        if name in moved:
            value = getattr(import_module(moved[name], package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


__getattr__ = lazy_attributes(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(__all__)
