"""Python client of a ``featcache serve`` server. Needs grpcio and numpy, not TensorFlow.

>>> with Client("127.0.0.1:50051") as client:  # doctest: +SKIP
...     rows = client.embed(["cat.jpg", "dog.png"], backbone="mobilenet")
...     for step in client.extract_dataset("photos", backbone="mobilenet"):
...         print(step.done, step.total)
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from ..core.options import (
    DEFAULT_BACKBONE,
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHECKPOINT_SECONDS,
    DEFAULT_DTYPE,
    DEFAULT_POOLING,
    DEFAULT_PRECISION,
    DEFAULT_PREPROCESSING,
    DEFAULT_RESIZE,
    DEFAULT_SEED,
    DEFAULT_SPLIT,
    DEFAULT_WEIGHTS,
)
from ..core.ranking import DEFAULT_TOP_K
from ..core.settings import BackboneConfig, FeatureSettings
from ..errors import FeatcacheError, RemoteError
from ..protos import extractor_pb2 as pb
from ..protos import extractor_pb2_grpc as pb_grpc
from .auth import read_token
from .convert import image_message, is_loopback, settings_from_info, settings_message

ImageInput = bytes | str | os.PathLike[str] | np.ndarray
"""File bytes, a path to an image file, or an (H, W[, C]) array of 0-255 values."""

CHUNK_BYTES = 3 << 20
"""Requests are split to stay under this size (the default gRPC limit is 4 MiB)."""
CHUNK_IMAGES = 64


class BadImagesError(FeatcacheError, ValueError):
    """Some images could not be decoded; ``errors`` maps their index to the reason."""

    def __init__(self, errors: dict[int, str], total: int) -> None:
        first = next(iter(errors.items()))
        super().__init__(f"{len(errors)} of {total} images unusable; image {first[0]}: {first[1]}")
        self.errors = errors


@dataclass(frozen=True)
class DatasetProgress:
    """One progress message of :meth:`Client.extract_dataset`; the last has ``finished``."""

    done: int
    total: int
    embedded: int
    reused: int
    bad: int
    images_per_second: float
    seconds: float
    finished: bool = False
    output: str = ""
    rows: int = 0
    feature_dim: int = 0
    removed: int = 0
    bad_files: list[tuple[str, str]] = field(default_factory=list)


def _remote_error(exc: grpc.RpcError) -> RemoteError:
    code = exc.code() if hasattr(exc, "code") else None
    name = code.name if code is not None else "UNKNOWN"
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return RemoteError(f"server said {name}: {details}", name)


class Client:
    """A connection to a featcache server (plain, TLS or mutual TLS; optional token)."""

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
        tls_ca: str | os.PathLike[str] | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        timeout: float | None = None,
        max_request_mb: float = CHUNK_BYTES / (1 << 20),
    ) -> None:
        """``max_request_mb`` keeps requests under the server's ``--max-message-mb``."""
        if token_file is not None:
            token = read_token(token_file)
        self.address = address
        self.timeout = timeout
        self.max_request_bytes = int(max_request_mb * (1 << 20))
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        if token and tls_ca is None and tls_cert is None and not is_loopback(address):
            warnings.warn(
                f"sending a bearer token to {address} without TLS: anyone on the network "
                "path can read it; pass tls_ca (--tls-ca) to encrypt the connection",
                stacklevel=2,
            )
        if tls_ca is not None or tls_cert is not None:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(tls_ca),
                private_key=_read(tls_key),
                certificate_chain=_read(tls_cert),
            )
            self.channel = grpc.secure_channel(address, credentials, options)
        else:
            self.channel = grpc.insecure_channel(address, options)
        self.stub = pb_grpc.ExtractorStub(self.channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def list_backbones(self) -> dict[str, Any]:
        """``{"backbones": [{name, default_size, feature_dim, loaded, family, source}],
        "loaded": [...]}``."""
        from google.protobuf.json_format import MessageToDict

        reply = self._call(self.stub.ListBackbones, pb.ListBackbonesRequest())
        return MessageToDict(
            reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )

    def info(self, backbone: str = DEFAULT_BACKBONE, **settings: Any) -> Any:
        """Load the backbone on the server and return its resolved ``BackboneInfo``."""
        request = pb.EmbedRequest(backbone=_settings(backbone, **settings))
        return self._call(self.stub.Embed, request).backbone

    def resolve(self, config: BackboneConfig) -> FeatureSettings:
        """Load ``config``'s backbone on the server; the settings its features will have."""
        request = pb.EmbedRequest(backbone=settings_message(config))
        return settings_from_info(self._call(self.stub.Embed, request).backbone)

    def embed(
        self,
        images: Sequence[ImageInput],
        backbone: str = DEFAULT_BACKBONE,
        *,
        weights: str = DEFAULT_WEIGHTS,
        image_size: int | tuple[int, int] | None = None,
        pooling: str = DEFAULT_POOLING,
        layer: str = "",
        resize: str = DEFAULT_RESIZE,
        preprocessing: str = DEFAULT_PREPROCESSING,
        seed: int = DEFAULT_SEED,
        precision: str = DEFAULT_PRECISION,
        blocks: int = 1,
        projection: bool = False,
        errors: str = "raise",
    ) -> np.ndarray:
        """Embeddings ``(N, D)`` float32 of ``images``, in order.

        ``errors="raise"`` raises :class:`BadImagesError` when any image cannot be
        decoded; ``errors="nan"`` gives those rows NaN instead. Paths are read here.
        """
        if errors not in ("raise", "nan"):
            raise ValueError("errors must be 'raise' or 'nan'")
        settings = _settings(
            backbone,
            weights=weights,
            image_size=image_size,
            pooling=pooling,
            layer=layer,
            resize=resize,
            preprocessing=preprocessing,
            seed=seed,
            precision=precision,
            blocks=blocks,
            projection=projection,
        )
        contents = [_load(image) for image in images]
        rows, dim = self.embed_contents(settings, contents)
        out = np.full((len(rows), dim), np.nan, np.float32)
        bad: dict[int, str] = {}
        for i, row in enumerate(rows):
            if isinstance(row, str):
                bad[i] = row
            else:
                out[i] = row
        if bad and errors == "raise":
            raise BadImagesError(bad, len(rows))
        return out

    def embed_contents(
        self, settings: Any, contents: Sequence[bytes | np.ndarray], max_pixels: int = 0
    ) -> tuple[list[np.ndarray | str], int]:
        """Rows (an array, or the reason the image was refused) and the feature width.

        One ``Embed`` call when the images fit in one request, else one ``EmbedStream``.
        """
        requests = list(_chunks(settings, contents, self.max_request_bytes, max_pixels))
        if len(requests) == 1:
            replies: Iterable[Any] = [self._call(self.stub.Embed, requests[0])]
        else:
            replies = self._stream(iter(requests))
        rows: list[np.ndarray | str] = []
        dim = 0
        for reply in replies:
            dim = reply.backbone.feature_dim or dim
            for embedding in reply.embeddings:
                if embedding.error:
                    rows.append(embedding.error)
                else:
                    rows.append(np.asarray(embedding.values, np.float32))
        if len(rows) != len(contents):
            raise RemoteError(f"server returned {len(rows)} rows for {len(contents)} images")
        return rows, dim

    def classify(
        self, images: Sequence[ImageInput], model: str, *, top_k: int = DEFAULT_TOP_K
    ) -> list[dict[str, Any]]:
        """Classify images with a server model (``serve --model NAME=PATH``).

        One dict per image: ``top`` [(class, probability)], ``probabilities`` (one per class,
        in the order of ``class_names``), ``class_names``, or ``error``.
        """
        contents = [_load(image) for image in images]
        request = pb.ClassifyRequest(
            model=model, images=[image_message(c) for c in contents], top_k=top_k
        )
        reply = self._call(self.stub.Classify, request)
        names = list(reply.class_names)
        out: list[dict[str, Any]] = []
        for result in reply.results:
            if result.error:
                out.append({"error": result.error})
            else:
                out.append(
                    {
                        "top": [(s.name, s.probability) for s in result.top],
                        "probabilities": np.asarray(result.probabilities, np.float32),
                        "class_names": names,
                    }
                )
        return out

    def search(
        self,
        cache: str,
        image: ImageInput | None = None,
        *,
        row: int | None = None,
        k: int = 10,
    ) -> list[dict[str, Any]]:
        """The ``k`` rows of a cache under the server's cache root most similar (cosine) to
        ``image`` or to row ``row``, best first: rank, row, path, class, split, similarity
        (``featcache search`` on the server)."""
        if (image is None) == (row is None):
            raise FeatcacheError("search needs an image or a row (one of them)")
        if image is not None:
            request = pb.SearchRequest(cache=cache, image=image_message(_load(image)), k=k)
        else:
            request = pb.SearchRequest(cache=cache, row=row, k=k)
        reply = self._call(self.stub.Search, request)
        return [
            {
                "rank": h.rank,
                "row": h.row,
                "path": h.path,
                "class": h.class_name,
                "split": h.split,
                "similarity": h.similarity,
            }
            for h in reply.hits
        ]

    def extract_dataset(
        self,
        data: str,
        backbone: str = DEFAULT_BACKBONE,
        *,
        output: str = "",
        weights: str = DEFAULT_WEIGHTS,
        image_size: int | tuple[int, int] | None = None,
        pooling: str = DEFAULT_POOLING,
        layer: str = "",
        resize: str = DEFAULT_RESIZE,
        preprocessing: str = DEFAULT_PREPROCESSING,
        seed: int = DEFAULT_SEED,
        precision: str = DEFAULT_PRECISION,
        blocks: int = 1,
        projection: bool = False,
        dtype: str = DEFAULT_DTYPE,
        split: str = DEFAULT_SPLIT,
        labels: str = "",
        batch_size: int = DEFAULT_BATCH_SIZE,
        overwrite: bool = False,
        checkpoint_seconds: float = DEFAULT_CHECKPOINT_SECONDS,
        views: int | None = None,
        augment: str | None = None,
        augment_seed: int | None = None,
    ) -> Iterator[DatasetProgress]:
        """Run ``extract`` on the server over ``data`` (relative to its ``--data-root``).

        Yields progress; the last item has ``finished=True`` and the summary. Closing
        the iterator early cancels the job, which keeps a resumable cache. ``views``,
        ``augment`` and ``augment_seed``: cached augmented views, as ``extract``'s (None: as
        the cache, else 1 view).
        """
        request = pb.ExtractDatasetRequest(
            data=data,
            output=output,
            backbone=_settings(
                backbone,
                weights=weights,
                image_size=image_size,
                pooling=pooling,
                layer=layer,
                resize=resize,
                preprocessing=preprocessing,
                seed=seed,
                precision=precision,
                blocks=blocks,
                projection=projection,
            ),
            dtype=dtype,
            split=split,
            labels=labels,
            batch_size=batch_size,
            overwrite=overwrite,
            checkpoint_seconds=checkpoint_seconds,
            views=views,  # None: unset (0, "", no augment_seed), the server's "as the cache"
            augment=augment,
            augment_seed=augment_seed,
        )
        call = self.stub.ExtractDataset(request, timeout=self.timeout, metadata=self._metadata)
        try:
            for message in call:
                yield DatasetProgress(
                    message.done,
                    message.total,
                    message.embedded,
                    message.reused,
                    message.bad,
                    message.images_per_second,
                    message.seconds,
                    message.finished,
                    message.output,
                    message.rows,
                    message.feature_dim,
                    message.removed,
                    [(b.path, b.reason) for b in message.bad_files],
                )
        except grpc.RpcError as exc:
            raise _remote_error(exc) from None
        finally:
            call.cancel()

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _remote_error(exc) from None

    def _stream(self, requests: Iterator[Any]) -> Iterator[Any]:
        try:
            yield from self.stub.EmbedStream(
                requests, timeout=self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise _remote_error(exc) from None


def _settings(backbone: str, **settings: Any) -> Any:
    settings["layer"] = settings.get("layer") or ""
    return settings_message(BackboneConfig(backbone, **settings))


def _chunks(
    settings: Any, contents: Sequence[bytes | np.ndarray], max_bytes: int, max_pixels: int
) -> Iterator[Any]:
    """Requests of at most CHUNK_IMAGES images and (but for single big ones) ``max_bytes``."""
    images: list[Any] = []
    size = 0
    first = True
    for content in contents:
        message = image_message(content)
        nbytes = message.ByteSize()
        if images and (len(images) >= CHUNK_IMAGES or size + nbytes > max_bytes):
            yield _request(settings if first else None, images, max_pixels)
            images, size, first = [], 0, False
        images.append(message)
        size += nbytes
    if images or first:
        yield _request(settings if first else None, images, max_pixels)


def _request(settings: Any, images: list[Any], max_pixels: int) -> Any:
    return pb.EmbedRequest(backbone=settings, images=images, max_pixels=max_pixels)


def _load(image: ImageInput) -> bytes | np.ndarray:
    if isinstance(image, np.ndarray):
        return image
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    return Path(image).read_bytes()


def _read(path: str | os.PathLike[str] | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()
