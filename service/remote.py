"""``extract --remote``: the local engine reads and hashes images here, a server embeds
them, and the cache is written here, exactly as a local run writes it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..core.options import NAMED_WEIGHTS
from ..core.settings import BackboneConfig, FeatureSettings
from ..errors import InvalidOptionError
from ..extractor.decode import array_to_rgb
from .client import Client
from .convert import settings_message


class RemoteEmbedder:
    """An :class:`~featcache.extractor.engines.Embedder` over a server.

    Encoded files travel as they are (the server decodes them with the same code as a
    local run); array rows travel as raw pixels.
    """

    def __init__(self, remote: str | Client, config: BackboneConfig, max_pixels: int = 0) -> None:
        _check_server_paths(config)
        self.client = remote if isinstance(remote, Client) else Client(remote)
        self.request = settings_message(config)
        self.max_pixels = max_pixels
        self.settings: FeatureSettings = self.client.resolve(config)
        if self.settings.precision != config.precision:  # a server from before precision
            raise InvalidOptionError(
                f"precision {config.precision!r}: the server at {self.client.address} computes "
                f"in {self.settings.precision}; upgrade it or use precision float32",
                "precision",
            )

    @property
    def feature_dim(self) -> int:
        return self.settings.feature_dim

    def prepare(self, content: bytes | np.ndarray) -> bytes | np.ndarray:
        return array_to_rgb(content) if isinstance(content, np.ndarray) else content

    def embed(self, prepared: list[Any]) -> tuple[np.ndarray, list[str | None]]:
        rows, dim = self.client.embed_contents(self.request, prepared, self.max_pixels)
        reasons = [row if isinstance(row, str) else None for row in rows]
        good = [row for row in rows if not isinstance(row, str)]
        width = dim or self.feature_dim
        features = np.stack(good) if good else np.zeros((0, width), np.float32)
        return features, reasons


def _check_server_paths(config: BackboneConfig) -> None:
    """Refuse here, naming the path as given, a weights file or saved model given as an
    absolute path: a server resolves them under its own ``--weights-root``."""
    for parameter, value in (("weights", config.weights), ("backbone", config.backbone)):
        text = value.strip()
        if text.lower() in NAMED_WEIGHTS or not (os.path.isabs(text) or text.startswith("~")):
            continue
        raise InvalidOptionError(
            f"{parameter} {value}: with remote, the server reads {parameter} files under its own "
            f"--weights-root; give the path relative to that folder (e.g. {Path(text).name} "
            "when the file lies directly in it)",
            parameter,
        )
