"""``extract --remote``: the pipeline reads and hashes images here, a server embeds them,
and the cache is written here, exactly as a local run writes it."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backbone import BackboneConfig
from ..decode import array_to_rgb
from .client import Client
from .convert import resolved_from_info, settings_message


class RemoteEmbedder:
    """The pipeline's :class:`~featcache.extractor.embedders.Embedder` over a server.

    Encoded files travel as they are (the server decodes them with the same code as a
    local run); array rows travel as raw pixels.
    """

    def __init__(
        self, remote: str | Client, config: BackboneConfig, resize: str, max_pixels: int = 0
    ) -> None:
        self.client = remote if isinstance(remote, Client) else Client(remote)
        self.settings = settings_message(config, resize)
        self.max_pixels = max_pixels
        info = self.client._call(self.client.stub.Embed, _empty(self.settings)).backbone
        self.resolved = resolved_from_info(info)
        self.resize = info.resize or resize
        self._feature_dim = int(info.feature_dim)

    @property
    def feature_dim(self) -> int:
        return self._feature_dim

    def prepare(self, content: bytes | np.ndarray) -> bytes | np.ndarray:
        return array_to_rgb(content) if isinstance(content, np.ndarray) else content

    def embed(self, prepared: list[Any]) -> tuple[np.ndarray, list[str | None]]:
        rows, dim = self.client.embed_contents(self.settings, prepared, self.max_pixels)
        reasons = [row if isinstance(row, str) else None for row in rows]
        good = [row for row in rows if not isinstance(row, str)]
        features = np.stack(good) if good else np.zeros((0, dim or self._feature_dim), np.float32)
        return features, reasons


def _empty(settings: Any) -> Any:
    from ...protos import extractor_pb2 as pb

    return pb.EmbedRequest(backbone=settings)
