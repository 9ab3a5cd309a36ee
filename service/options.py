"""``featcache serve`` options and their defaults (no gRPC import: the CLI reads them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..core.options import DEFAULT_MAX_PIXELS

DEFAULT_MAX_LOADED = 4
"""Loaded models kept; the least recently used idle one is unloaded."""
DEFAULT_MAX_IMAGE_SIZE = 1024
"""Largest input side a request may ask for (model memory grows with its square)."""
DEFAULT_MAX_IMAGES = 4096
"""Images in one ``Embed``/``Classify`` request (``max_batch_images``)."""
DEFAULT_MAX_INFLIGHT_MB = 4096
"""Memory budget (MiB) of decoded images and features in flight, estimated before decoding."""
DEFAULT_MAX_JOBS = 2
"""Concurrent ExtractDataset jobs; below ``max_loaded``, so that jobs (which hold their model
for their whole run) never take every model slot from Embed calls."""
"""``ExtractDataset`` jobs running at once."""
DEFAULT_WORKERS = 32
"""Concurrent ``featcache.v1.Extractor`` calls (RPC threads); more get RESOURCE_EXHAUSTED."""
HEALTH_THREADS = 4
"""RPC threads kept beyond ``workers`` for health checks and reflection, so a server whose
every worker is busy still answers them (and refuses extra calls at once)."""
DEFAULT_MAX_WAIT = 30.0
"""Seconds a request waits for a model slot or memory before RESOURCE_EXHAUSTED."""
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
    """Loaded models (loading ones included); requests that need another while all are in
    use wait up to ``max_wait``, then get RESOURCE_EXHAUSTED."""
    max_message_mb: int = 64
    """Largest request (the gRPC receive limit)."""
    workers: int = DEFAULT_WORKERS
    """Concurrent Extractor calls; more are refused with RESOURCE_EXHAUSTED."""
    max_batch_images: int = DEFAULT_MAX_IMAGES
    """Images in one ``Embed``/``Classify`` request."""
    max_inflight_mb: int = DEFAULT_MAX_INFLIGHT_MB
    """Memory budget, shared by every call: a request reserves ``images * (height * width *
    3 * 4 + feature_dim * 4)`` bytes (an ``ExtractDataset`` job its read-ahead and batch) before
    decoding anything; more than the whole budget is RESOURCE_EXHAUSTED at once, more than
    what is free waits up to ``max_wait``. Also the largest reply (capped at 2 GiB)."""
    max_jobs: int = DEFAULT_MAX_JOBS
    """``ExtractDataset`` jobs running at once; more get RESOURCE_EXHAUSTED."""
    max_wait: float = DEFAULT_MAX_WAIT
    """Seconds a request waits for a free model slot or memory before RESOURCE_EXHAUSTED."""
    allow_backbone: list[str] = field(default_factory=list)
    """Registry names and saved models (relative to ``weights_root``) requests may use;
    empty allows all. Others get PERMISSION_DENIED."""
    fixed_weights: bool = False
    """Requests may use only the backbones and weights of ``preload`` (other input sizes,
    poolings and layers of them stay allowed)."""
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
    insecure: bool = False
    """Allow a non-loopback ``host`` without ``token_file`` or TLS."""
    grace: float = 30.0
    """Seconds SIGTERM waits for in-flight calls."""
    load_classifier: ClassifierLoader | None = field(default=None, repr=False)
    """Loads the ``models`` files; :func:`featcache.serve` passes
    :func:`featcache.load_model` (the service itself knows nothing of heads)."""
