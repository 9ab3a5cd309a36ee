"""``featcache serve`` options and their defaults (no gRPC import: the CLI reads them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..options import DEFAULT_MAX_PIXELS

DEFAULT_MAX_LOADED = 4
"""Loaded models kept; the least recently used idle one is unloaded."""
DEFAULT_MAX_IMAGE_SIZE = 1024
"""Largest input side a request may ask for (model memory grows with its square)."""
DEFAULT_MAX_IMAGES = 4096
"""Images in one request."""
DEFAULT_MAX_BATCH = 32
"""Images per model call of the server's dynamic batching."""
DEFAULT_MAX_DELAY_MS = 5.0
"""How long a batch waits for more requests."""

ClassifierLoader = Callable[[str], tuple[Any, list[str], list[int]]]
"""Loads an ``export``/``fine-tune`` model file: (Keras model, class names, label indices)."""


@dataclass
class ServeOptions:
    """Everything ``featcache serve`` takes."""

    host: str = "127.0.0.1"
    port: int = 50051
    data_root: str | None = None
    cache_root: str | None = None
    weights_root: str | None = None
    preload: list[str] = field(default_factory=list)
    """``NAME[=WEIGHTS][@SIZE]`` entries, weights relative to ``weights_root``."""
    models: list[str] = field(default_factory=list)
    """``NAME=PATH`` entries: classifiers (``export``/``fine-tune`` models) for ``Classify``."""
    max_loaded: int = DEFAULT_MAX_LOADED
    max_message_mb: int = 64
    workers: int = 32
    max_batch: int = DEFAULT_MAX_BATCH
    max_delay_ms: float = DEFAULT_MAX_DELAY_MS
    batching: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_image_size: int = DEFAULT_MAX_IMAGE_SIZE
    """Largest input side a request may ask for (model memory grows with its square)."""
    token_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    grace: float = 30.0
    """Seconds SIGTERM waits for in-flight calls."""
    load_classifier: ClassifierLoader | None = field(default=None, repr=False)
    """Loads the ``models`` files; :func:`featcache.serve` passes
    :func:`featcache.load_model` (the service itself knows nothing of heads)."""
