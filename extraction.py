"""``extract``: the one entry point that knows every engine (local, remote, Ray)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .core.options import ExtractOptions
from .core.settings import BackboneConfig
from .errors import SettingsMismatchError
from .extractor.engines import Engine, LocalEmbedder, LocalEngine
from .extractor.naming import default_output, other_name_hint
from .extractor.recorder import ExtractProgress
from .extractor.runner import (
    ExtractSummary,
    run_extraction,
    with_cache_decode,
    with_cache_taps,
)
from .store.writer import cached_settings


def make_engine(options: ExtractOptions) -> Engine:
    """The engine ``options`` ask for: local, ``remote`` server, or Ray."""
    config = BackboneConfig.of(options)
    if options.engine == "ray":
        from .extractor.ray_engine import RayEngine

        return RayEngine(config, options.max_pixels, options.ray_options, options.tap_list)
    if options.remote is not None:
        from .service.remote import RemoteEmbedder

        return LocalEngine(RemoteEmbedder(options.remote, config, options.max_pixels))
    return LocalEngine(LocalEmbedder(config, options.max_pixels, options.tap_list))


def extract(
    data: str | os.PathLike[str],
    options: ExtractOptions | None = None,
    *,
    on_progress: Callable[[ExtractProgress], None] | None = None,
    cancel: threading.Event | None = None,
    **changes: Any,
) -> ExtractSummary:
    """Embed every image of ``data`` with a frozen backbone into an HDF5 cache.

    Settings come from ``options`` (:class:`~.options.ExtractOptions`), with any of its
    fields given as keywords on top. Re-running with the same settings embeds only new
    or changed files and drops rows of deleted ones; ``progress=None`` shows a bar only
    on a terminal.

    ``remote`` (``"host:port"`` or a :class:`featcache.Client`) sends the images to a
    ``featcache serve`` server to embed; the cache is still written here, and the weights
    file or saved model is a path on the server. ``engine="ray"`` embeds the new images
    on a Ray actor pool (``ray_options``: :class:`~.options.RayOptions`). ``on_progress`` is
    called a few times a second; setting ``cancel`` stops the run, keeping finished
    batches.

    Examples
    --------
    >>> summary = extract("examples/fashion-mnist", backbone="mobilenet",
    ...                   weights="examples/weights/mobilenet_1_0_224_imagenet_notop.weights.h5",
    ...                   image_size=96)  # doctest: +SKIP
    """
    started = time.monotonic()
    options = replace(options or ExtractOptions(), **changes)
    output = Path(options.output) if options.output is not None else default_output(options)
    options = with_cache_decode(options, output)  # a rerun keeps the cache's decode mode
    options = with_cache_taps(options, output)  # and its taps
    engine = make_engine(options)
    try:
        return run_extraction(
            data,
            engine,
            output,
            options,
            on_progress=on_progress,
            cancel=cancel,
            started=started,
        )
    except SettingsMismatchError as exc:
        if options.output is not None:
            raise
        hint = other_name_hint(output, data, cached_settings(output), options, engine.settings)
        raise SettingsMismatchError(f"{exc}; {hint}") from None
