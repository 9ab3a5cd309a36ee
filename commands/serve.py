"""The gRPC service: ``serve``."""

from __future__ import annotations

from typing import Any

import click

from ..service.options import ServeOptions
from ._shared import handle_errors, server_tls_options

_SERVE = ServeOptions()


@click.command("serve")
@click.option("--host", default=_SERVE.host, show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=int, default=_SERVE.port, show_default=True, help="0 picks a free port."
)
@click.option("--data-root", type=click.Path(), default=None, help="Folder ExtractDataset reads.")
@click.option("--cache-root", type=click.Path(), default=None, help="Folder caches go to.")
@click.option(
    "--weights-root",
    type=click.Path(),
    default=None,
    help="Folder of weights files and saved models that requests may name.",
)
@click.option(
    "--preload",
    default="",
    help="Models to load before SERVING: NAME[=WEIGHTS][@SIZE],... e.g. mobilenet=m.h5@224.",
)
@click.option(
    "--model",
    "models",
    multiple=True,
    metavar="NAME=PATH",
    help="Serve a model.keras from export or fine-tune to Classify (repeatable).",
)
@click.option(
    "--max-loaded",
    type=int,
    default=_SERVE.max_loaded,
    show_default=True,
    help="Models loaded at once (LRU; models in use are kept).",
)
@click.option(
    "--max-message-mb",
    type=int,
    default=_SERVE.max_message_mb,
    show_default=True,
    help="Largest request.",
)
@click.option(
    "--workers",
    type=int,
    default=_SERVE.workers,
    show_default=True,
    help="Concurrent calls; more get RESOURCE_EXHAUSTED.",
)
@click.option(
    "--max-batch-images",
    type=int,
    default=_SERVE.max_batch_images,
    show_default=True,
    help="Images in one Embed or Classify request.",
)
@click.option(
    "--max-inflight-mb",
    type=int,
    default=_SERVE.max_inflight_mb,
    show_default=True,
    help="Memory budget of decoded images and features in flight; also the largest reply.",
)
@click.option(
    "--max-jobs",
    type=int,
    default=_SERVE.max_jobs,
    show_default=True,
    help="ExtractDataset jobs at once.",
)
@click.option(
    "--max-wait",
    type=float,
    default=_SERVE.max_wait,
    show_default=True,
    help="Seconds a call waits for a model slot or memory.",
)
@click.option(
    "--allow-backbone",
    default="",
    metavar="NAME[,NAME]",
    help="Only these backbones (registry names, saved models under --weights-root).",
)
@click.option("--fixed-weights", is_flag=True, help="Only the --preload backbones and weights.")
@click.option(
    "--max-batch", type=int, default=_SERVE.max_batch, show_default=True, help="Images per call."
)
@click.option(
    "--max-delay-ms",
    type=float,
    default=_SERVE.max_delay_ms,
    show_default=True,
    help="How long a batch waits for more requests.",
)
@click.option("--no-batching", is_flag=True, help="Run each request on its own.")
@click.option("--max-pixels", type=int, default=_SERVE.max_pixels, show_default=True)
@click.option(
    "--max-image-size",
    type=int,
    default=_SERVE.max_image_size,
    show_default=True,
    help="Largest input side (--image-size) a request may ask for.",
)
@server_tls_options()
@click.option(
    "--insecure",
    is_flag=True,
    help="Serve a non-loopback --host without --token-file or TLS (refused otherwise).",
)
@click.option(
    "--grace", type=float, default=_SERVE.grace, show_default=True, help="Drain time on stop."
)
@handle_errors
def serve_command(
    preload: str, allow_backbone: str, no_batching: bool, models: tuple[str, ...], **options: Any
) -> None:
    """Run the gRPC extraction service (featcache.v1.Extractor) until SIGTERM."""
    from ..serving import serve

    entries = [entry.strip() for entry in preload.split(",") if entry.strip()]
    allowed = [name.strip() for name in allow_backbone.split(",") if name.strip()]
    serve(
        ServeOptions(
            preload=entries,
            models=list(models),
            allow_backbone=allowed,
            batching=not no_batching,
            **options,
        )
    )
