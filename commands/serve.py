"""The gRPC service: ``serve``."""

from __future__ import annotations

from typing import Any

import click

from ..service.options import ServeOptions
from ._options import flags
from ._shared import CONTEXT, handle_errors


@click.command("serve", context_settings=CONTEXT)
@flags(
    ServeOptions,  # the lists are given as NAME,NAME (--model: repeated)
    preload={"default": ""},
    models={"default": (), "multiple": True},
    allow_backbone={"default": ""},
)
@handle_errors
def serve_command(
    preload: str, allow_backbone: str, models: tuple[str, ...], **options: Any
) -> None:
    """Run the gRPC extraction service (featcache.v1.Extractor) until SIGTERM."""
    from ..serving import serve

    entries = [entry.strip() for entry in preload.split(",") if entry.strip()]
    allowed = [name.strip() for name in allow_backbone.split(",") if name.strip()]
    serve(ServeOptions(preload=entries, models=list(models), allow_backbone=allowed, **options))
