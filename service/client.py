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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from ..core.options import (
    DEFAULT_BACKBONE,
    ExtractOptions,
)
from ..core.ranking import DEFAULT_TOP_K
from ..core.settings import BackboneConfig, FeatureSettings
from ..errors import FeatcacheError, RemoteError
from ..protos import extractor_pb2 as pb
from ..protos import extractor_pb2_grpc as pb_grpc
from .auth import read_token
from .convert import (
    config_values,
    image_message,
    is_loopback,
    settings_from_info,
    settings_message,
    to_wire,
    wire_name,
)

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
            token = read_token(token_file, "warn")
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
        errors: str = "raise",
        **settings: Any,
    ) -> np.ndarray:
        """Embeddings ``(N, D)`` float32 of ``images``, in order.

        ``settings``: the :class:`~featcache.core.options.BackboneConfig` options
        (``weights``, ``image_size``, ``pooling``, ``layer``, ``resize``, ``preprocessing``,
        ``seed``, ``precision``, ``blocks``, ``projection``), checked by the server.
        ``errors="raise"`` raises :class:`BadImagesError` when any image cannot be
        decoded; ``errors="nan"`` gives those rows NaN instead. Paths are read here.
        """
        if errors not in ("raise", "nan"):
            raise ValueError("errors must be 'raise' or 'nan'")
        request_settings = _settings(backbone, **settings)
        contents = [_load(image) for image in images]
        rows, dim = self.embed_contents(request_settings, contents)
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

    def embed_text(
        self,
        texts: Sequence[str],
        backbone: str,
        *,
        normalize: bool = True,
        **settings: Any,
    ) -> tuple[np.ndarray, float, float]:
        """``(embeddings (N, P) float32, logit scale, logit bias)`` of ``texts`` from the
        text tower of a CLIP or SigLIP preset on the server, in the space of the preset's
        image embeddings (``embed(..., projection=True)``); unit rows unless ``normalize``
        is False. ``settings`` as :meth:`embed`'s (``weights``, ``seed``, ...)."""
        request = pb.EmbedTextRequest(
            backbone=_settings(backbone, **settings), texts=list(texts), normalize=normalize
        )
        reply = self._call(self.stub.EmbedText, request)
        dim = reply.backbone.feature_dim
        rows = [np.asarray(e.values, np.float32) for e in reply.embeddings]
        out = np.stack(rows) if rows else np.zeros((0, dim), np.float32)
        return out, float(reply.logit_scale), float(reply.logit_bias)

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
        exact: bool = False,
        text: str | None = None,
        tap: str | None = None,
    ) -> list[dict[str, Any]]:
        """The ``k`` rows of a cache under the server's cache root most similar (cosine) to
        ``image``, to row ``row`` or to ``text`` (a CLIP or SigLIP cache), best first: rank,
        row, path, class, split, similarity (``featcache search`` on the server; ``exact``:
        scan every row even of a cache large enough for the approximate index; ``tap``:
        search the features of that tap of the cache, ``featcache search --tap``)."""
        if sum(x is not None for x in (image, row, text)) != 1:
            raise FeatcacheError("search needs an image or a row (one of them), or a text")
        request = pb.SearchRequest(cache=cache, k=k, exact=exact, tap=tap or "")
        if image is not None:
            request.image.CopyFrom(image_message(_load(image)))
        elif text is not None:
            request.text = text
        elif row is not None:
            request.row = row
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
        **options: Any,
    ) -> Iterator[DatasetProgress]:
        """Run ``extract`` on the server over ``data`` (relative to its ``--data-root``).

        ``options``: the :class:`~featcache.core.options.ExtractOptions` an
        ``ExtractDatasetRequest`` carries: the backbone's (``weights``, ``image_size``,
        ``pooling``, ...) and ``dtype``, ``split``, ``labels`` (relative to the data root),
        ``batch_size``, ``overwrite``, ``checkpoint_seconds``, ``views``, ``augment`` and
        ``augment_seed`` (None or not given: the server's ``extract`` defaults; views: as
        the cache, else 1). The server checks the values.

        Yields progress; the last item has ``finished=True`` and the summary. Closing
        the iterator early cancels the job, which keeps a resumable cache.
        """
        backbone_names = {each.name for each in fields(BackboneConfig)}
        run = {k: v for k, v in options.items() if k not in backbone_names}
        unknown = sorted(set(run) - set(_DATASET_OPTIONS))
        if unknown:
            raise TypeError(f"unexpected keyword argument {unknown[0]!r}")
        carried = to_wire(ExtractOptions, run, pb.ExtractDatasetRequest)
        settings = {k: v for k, v in options.items() if k in backbone_names}
        request = pb.ExtractDatasetRequest(
            data=data, output=output, backbone=_settings(backbone, **settings), **carried
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


_DATASET_OPTIONS = tuple(
    each.name
    for each in fields(ExtractOptions)
    if wire_name(each) in pb.ExtractDatasetRequest.DESCRIPTOR.fields_by_name
    and each.name not in {"output", "max_pixels"}
    and each.name not in {b.name for b in fields(BackboneConfig)}
)
"""The run options an ``ExtractDatasetRequest`` carries (the server sets ``max_pixels``)."""


def _settings(backbone: str, **settings: Any) -> Any:
    """The request's ``BackboneSettings`` from the client's keywords (the server checks
    them)."""
    values = config_values(backbone, settings)
    return pb.BackboneSettings(**to_wire(BackboneConfig, values, pb.BackboneSettings))


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
