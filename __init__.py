"""featcache: embed an image dataset once with a frozen backbone, train heads in seconds.

The public API is importable from here without loading TensorFlow: each name is imported
from its module on first use (type checkers and IDEs see the real signatures).

>>> import featcache  # doctest: +SKIP
>>> featcache.extract("data/", backbone="mobilenet", weights="mobilenet.weights.h5")
>>> featcache.train_head("cache/mobilenet.h5", head="logreg")
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .core.lazy import lazy_attributes
from .errors import (
    AccessDenied,
    CacheChangedError,
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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before any submodule imports TensorFlow

if TYPE_CHECKING:
    from .audit.audit import AuditReport, audit_cache, fix_splits
    from .audit.options import AuditOptions
    from .audit.output import write_audit_report
    from .audit.plot import PlotResult, plot_cache
    from .audit.plot_options import PlotOptions
    from .audit.search import SearchResult, search
    from .audit.text_query import embed_text
    from .backbones.backbone import FeatureExtractor
    from .backbones.hub import HubSpec, list_hub_backbones
    from .backbones.registry import BackboneSpec, get_backbone, list_backbones
    from .core.options import ExtractOptions, RayOptions
    from .core.settings import BackboneConfig, CacheSettings, FeatureSettings
    from .extraction import extract
    from .extractor.recorder import ExtractProgress
    from .extractor.runner import ExtractSummary
    from .extractor.verify import VerifyResult, verify_cache
    from .heads.compare import Leaderboard, compare
    from .heads.dense import DenseHead
    from .heads.endtoend import export, load_model
    from .heads.finetune import FineTuneResult, fine_tune
    from .heads.images import Prediction, predict_images
    from .heads.options import FineTuneOptions, HeadOptions, ZeroShotOptions
    from .heads.predict import predict_cache
    from .heads.train import TrainedHead, TrainResult, load_head, train_head
    from .heads.zeroshot import zero_shot
    from .service.client import BadImagesError, Client
    from .service.options import ServeOptions
    from .service.server import Server
    from .serving import serve, start_server
    from .store import CacheData, CacheReader, cache_info, open_cache, read_cache
    from .store.export import ExportSummary, export_features
    from .store.opening import create_manifest

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
    "embed_text": "featcache.audit.text_query",
    "plot_cache": "featcache.audit.plot",
    "PlotResult": "featcache.audit.plot",
    "PlotOptions": "featcache.audit.plot_options",
    "export_features": "featcache.store.export",
    "ExportSummary": "featcache.store.export",
    "extract": "featcache.extraction",
    "ExtractOptions": "featcache.core.options",
    "RayOptions": "featcache.core.options",
    "ExtractSummary": "featcache.extractor.runner",
    "verify_cache": "featcache.extractor.verify",
    "VerifyResult": "featcache.extractor.verify",
    "ExtractProgress": "featcache.extractor.recorder",
    "BackboneConfig": "featcache.core.settings",
    "FeatureSettings": "featcache.core.settings",
    "CacheSettings": "featcache.core.settings",
    "FeatureExtractor": "featcache.backbones.backbone",
    "CacheReader": "featcache.store",
    "CacheData": "featcache.store",
    "read_cache": "featcache.store",
    "cache_info": "featcache.store",
    "open_cache": "featcache.store",
    "create_manifest": "featcache.store.opening",
    "BackboneSpec": "featcache.backbones.registry",
    "get_backbone": "featcache.backbones.registry",
    "list_backbones": "featcache.backbones.registry",
    "HubSpec": "featcache.backbones.hub",
    "list_hub_backbones": "featcache.backbones.hub",
    "Client": "featcache.service.client",
    "BadImagesError": "featcache.service.client",
    "ServeOptions": "featcache.service.options",
    "Server": "featcache.service.server",
    "serve": "featcache.serving",
    "start_server": "featcache.serving",
    "train_head": "featcache.heads.train",
    "load_head": "featcache.heads.train",
    "TrainResult": "featcache.heads.train",
    "TrainedHead": "featcache.heads.train",
    "HeadOptions": "featcache.heads.options",
    "FineTuneOptions": "featcache.heads.options",
    "ZeroShotOptions": "featcache.heads.options",
    "zero_shot": "featcache.heads.zeroshot",
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
    "CacheChangedError",
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


__getattr__ = lazy_attributes(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(__all__)
