"""``featcache serve`` options and their defaults (no gRPC import: the CLI reads them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..core.options import DEFAULT_MAX_PIXELS
from ..core.schema import Range, check_fields, option
from ..store.ann_plan import IndexChoice

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


_AT_LEAST_1 = Range(1, wording="must be at least 1")
_AT_LEAST_0 = Range(0, wording="must be 0 or more")


@dataclass
class ServeOptions(IndexChoice):
    """Everything ``featcache serve`` takes, checked when made (the ``Search`` RPC's index
    choice: :class:`~featcache.store.ann_plan.IndexChoice`)."""

    host: str = option("127.0.0.1", help="Address to listen on.")
    port: int = option(50051, range=Range(0, 65535), help="0 picks a free port.")
    data_root: str | None = option(None, path=True, help="Folder ExtractDataset reads.")
    cache_root: str | None = option(None, path=True, help="Folder caches go to.")
    weights_root: str | None = option(
        None, path=True, help="Folder of weights files and saved models that requests may name."
    )
    preload: list[str] = option(
        default_factory=list,
        kind=str,
        help="Models to load before SERVING: NAME[=WEIGHTS][@SIZE],... e.g. mobilenet=m.h5@224.",
    )
    """``NAME[=WEIGHTS][@SIZE]`` entries, weights relative to ``weights_root``."""
    models: list[str] = option(
        default_factory=list,
        flag="--model",
        metavar="NAME=PATH",
        kind=str,
        help="Serve a model.keras from export or fine-tune to Classify (repeatable).",
    )
    """``NAME=PATH`` entries: classifiers (``export``/``fine-tune`` models) for ``Classify``."""
    max_loaded: int = option(
        DEFAULT_MAX_LOADED,
        range=_AT_LEAST_1,
        help="Models loaded at once (LRU; models in use are kept).",
    )
    """Loaded models (loading ones included); requests that need another while all are in
    use wait up to ``max_wait``, then get RESOURCE_EXHAUSTED."""
    max_message_mb: int = option(64, range=_AT_LEAST_1, help="Largest request.")
    """Largest request (the gRPC receive limit)."""
    workers: int = option(
        DEFAULT_WORKERS,
        range=_AT_LEAST_1,
        help="Concurrent calls; more get RESOURCE_EXHAUSTED.",
    )
    """Concurrent Extractor calls; more are refused with RESOURCE_EXHAUSTED."""
    max_batch_images: int = option(
        DEFAULT_MAX_IMAGES, range=_AT_LEAST_1, help="Images in one Embed or Classify request."
    )
    """Images in one ``Embed``/``Classify`` request."""
    max_inflight_mb: int = option(
        DEFAULT_MAX_INFLIGHT_MB,
        range=_AT_LEAST_1,
        help="Memory budget of decoded images and features in flight; also the largest reply.",
    )
    """Memory budget, shared by every call: a request reserves ``images * (height * width *
    3 * 4 + feature_dim * 4)`` bytes (an ``ExtractDataset`` job its read-ahead and batch) before
    decoding anything; more than the whole budget is RESOURCE_EXHAUSTED at once, more than
    what is free waits up to ``max_wait``. Also the largest reply (capped at 2 GiB)."""
    max_jobs: int = option(DEFAULT_MAX_JOBS, range=_AT_LEAST_1, help="ExtractDataset jobs at once.")
    """``ExtractDataset`` jobs running at once; more get RESOURCE_EXHAUSTED."""
    max_wait: float = option(
        DEFAULT_MAX_WAIT,
        range=_AT_LEAST_0,
        help="Seconds a call waits for a model slot or memory.",
    )
    """Seconds a request waits for a free model slot or memory before RESOURCE_EXHAUSTED."""
    allow_backbone: list[str] = option(
        default_factory=list,
        metavar="NAME[,NAME]",
        kind=str,
        help="Only these backbones (registry names, saved models under --weights-root).",
    )
    """Registry names and saved models (relative to ``weights_root``) requests may use;
    empty allows all. Others get PERMISSION_DENIED."""
    fixed_weights: bool = option(False, help="Only the --preload backbones and weights.")
    """Requests may use only the backbones and weights of ``preload`` (other input sizes,
    poolings and layers of them stay allowed)."""
    max_batch: int = option(DEFAULT_MAX_BATCH, range=_AT_LEAST_1, help="Images per call.")
    max_delay_ms: float = option(
        DEFAULT_MAX_DELAY_MS, range=_AT_LEAST_0, help="How long a batch waits for more requests."
    )
    batching: bool = option(
        True, negatable=True, help="Batch requests together (--no-batching: each on its own)."
    )
    max_pixels: int = option(DEFAULT_MAX_PIXELS, range=_AT_LEAST_1)
    max_image_size: int = option(
        DEFAULT_MAX_IMAGE_SIZE,
        range=_AT_LEAST_1,
        help="Largest input side (--image-size) a request may ask for.",
    )
    """Largest input side a request may ask for (model memory grows with its square)."""
    token_file: str | None = option(None, path=True, help="Require this bearer token.")
    tls_cert: str | None = option(None, path=True, help="Server certificate (PEM).")
    tls_key: str | None = option(None, path=True, help="Server private key (PEM).")
    tls_client_ca: str | None = option(None, path=True, help="Require client certificates (mTLS).")
    insecure: bool = option(
        False,
        help="Serve a non-loopback --host without --token-file or TLS (refused otherwise).",
    )
    """Allow a non-loopback ``host`` without ``token_file`` or TLS."""
    grace: float = option(30.0, range=_AT_LEAST_0, help="Drain time on stop.")
    """Seconds SIGTERM waits for in-flight calls."""
    load_classifier: ClassifierLoader | None = field(default=None, repr=False)
    """Loads the ``models`` files; :func:`featcache.serve` passes
    :func:`featcache.load_model` (the service itself knows nothing of heads)."""

    def __post_init__(self) -> None:
        check_fields(self)
