"""``extract``: read -> decode -> embed -> write, each stage overlapping the next.

Reader threads read, hash, decode and resize images (in dataset order); the calling
thread batches them through the frozen backbone; a writer thread appends the rows
and checkpoints the cache. Memory is bounded by the read-ahead window and the
writer's pending rows, not by the dataset size.

An :class:`Engine` decides where images are embedded: the local engine runs an
:class:`~featcache.extractor.embedders.Embedder` (in this process or on a server)
inside the loop above; the Ray engine (:mod:`featcache.extractor.ray_engine`) hands
the new images to an actor pool. Both report each image to one :class:`Recorder`,
so skipping, bad files, splits and checkpoints behave the same.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import numpy as np

from ..errors import CacheLockedError, ExtractionCancelled, InvalidOptionError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from .backbone import BackboneConfig, ResolvedBackbone, is_model_file
from .cache import DTYPES, CacheSettings, CacheWriter
from .decode import DEFAULT_MAX_PIXELS, RESIZE_MODES
from .embedders import Embedder, LocalEmbedder, prepare_safely, unreadable_reason
from .sources import Dataset, Item, scan_dataset
from .splits import assign_split, parse_split

if TYPE_CHECKING:
    from .ray_engine import RayOptions

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_CACHE_DIR = Path("cache")
ENGINES = ("local", "ray")
MAX_BATCH_SIZE = 4096
"""Largest ``--batch-size`` (the read-ahead window is twice the batch)."""


@dataclass
class ExtractSummary:
    """What one ``extract`` run did."""

    output: str
    backbone: str
    rows: int
    feature_dim: int
    new: int
    reused: int
    removed: int
    bad: int
    ignored: int
    seconds: float
    images_per_second: float
    """New images embedded per second of the whole run."""
    load_seconds: float = 0.0
    """Time spent building the backbone and loading its weights (0 when not needed)."""
    classes: list[str] = field(default_factory=list)
    bad_files: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form of the summary."""
        out = asdict(self)
        out["bad_files"] = [{"path": p, "reason": r} for p, r in self.bad_files]
        return out


@dataclass(frozen=True)
class ExtractProgress:
    """Where a running ``extract`` stands (passed to ``on_progress``)."""

    done: int
    """Images looked at so far (embedded, reused or bad)."""
    total: int
    embedded: int
    reused: int
    bad: int
    seconds: float
    images_per_second: float
    """New images embedded per second so far."""


@dataclass
class Prepared:
    """One image after reading (and, for the local engine, decoding)."""

    item: Item
    sha256: str = ""
    payload: Any = None
    reason: str | None = None
    """Why the image cannot be used (unreadable, undecodable); None when fine."""
    reused: bool = False
    """Its row is already in the cache with the same content and class."""


Known = dict[str, tuple[str, str | None]]
"""Path -> (SHA-256, class name) of the rows already cached."""


def default_output(backbone: str) -> Path:
    """``cache/<backbone>.h5`` (the model file's stem for saved-model backbones)."""
    name = Path(backbone).stem if is_model_file(backbone) else backbone
    return DEFAULT_CACHE_DIR / f"{name.lower().replace('-', '_')}.h5"


def extract(
    data: str | os.PathLike[str],
    *,
    backbone: str = "mobilenet",
    weights: str = "imagenet",
    output: str | os.PathLike[str] | None = None,
    pooling: str = "avg",
    layer: str | None = None,
    image_size: str | int | tuple[int, int] | None = None,
    resize: str = "stretch",
    preprocessing: str = "auto",
    dtype: str = "float32",
    split: str | tuple[float, ...] = "0.7,0.2,0.1",
    seed: int = 20,
    labels: str | None = None,
    batch_size: int = 32,
    overwrite: bool = False,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    checkpoint_seconds: float = 60.0,
    progress: bool | None = None,
    remote: Any = None,
    engine: str = "local",
    ray_options: RayOptions | None = None,
    on_progress: Callable[[ExtractProgress], None] | None = None,
    cancel: threading.Event | None = None,
) -> ExtractSummary:
    """Embed every image of ``data`` with a frozen backbone into an HDF5 cache.

    Re-running with the same settings embeds only new or changed files and drops
    rows of deleted ones. ``progress=None`` shows a bar only on a terminal.

    ``remote`` (``"host:port"`` or a :class:`featcache.Client`) sends the images to a
    ``featcache serve`` server to embed; the cache is still written here, and the
    weights file or saved model is a path on the server. ``on_progress`` is called
    a few times a second; setting ``cancel`` stops the run, keeping finished batches.

    ``engine="ray"`` embeds the new images on a Ray actor pool (a local Ray instance,
    or the cluster in ``ray_options.address``); files are still listed, hashed and
    written here, so resuming and the cache are the same as with the local engine.

    Examples
    --------
    >>> summary = extract("examples/fashion-mnist", backbone="mobilenet",
    ...                   weights="examples/weights/mobilenet_1_0_224_imagenet_notop.weights.h5",
    ...                   image_size=96)  # doctest: +SKIP
    """
    started = time.monotonic()
    if resize not in RESIZE_MODES:
        raise InvalidOptionError(f"--resize {resize!r}: expected one of {', '.join(RESIZE_MODES)}")
    _check_options(dtype, batch_size, workers, checkpoint_seconds)
    ratios = parse_split(split)
    config = BackboneConfig(
        backbone, weights, image_size, pooling, layer or "", preprocessing, seed
    )
    if engine not in ENGINES:
        raise InvalidOptionError(f"--engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if engine != "ray" and ray_options is not None:
        raise InvalidOptionError("--ray-address, --actors and --*-per-actor need --engine ray")
    embedder: Embedder | Engine
    if engine == "ray":
        if remote is not None:
            raise InvalidOptionError("--remote and --engine ray cannot be combined")
        from .ray_engine import RayEngine

        embedder = RayEngine(config, resize, max_pixels, ray_options)
    elif remote is not None:
        from .service.remote import RemoteEmbedder

        embedder = RemoteEmbedder(remote, config, resize, max_pixels)
    else:
        embedder = LocalEmbedder(config, resize, max_pixels)
    out_path = Path(output) if output is not None else default_output(backbone)
    return run_extraction(
        data,
        embedder,
        out_path,
        dtype=dtype,
        ratios=ratios,
        seed=seed,
        labels=labels,
        batch_size=batch_size,
        overwrite=overwrite,
        workers=workers,
        checkpoint_seconds=checkpoint_seconds,
        progress=progress,
        on_progress=on_progress,
        cancel=cancel,
        started=started,
    )


def run_extraction(
    data: str | os.PathLike[str],
    embedder: Embedder | Engine,
    output: Path,
    *,
    dtype: str = "float32",
    ratios: tuple[float, float, float] = (0.7, 0.2, 0.1),
    seed: int = 20,
    labels: str | None = None,
    batch_size: int = 32,
    overwrite: bool = False,
    workers: int | None = None,
    checkpoint_seconds: float = 60.0,
    progress: bool | None = None,
    on_progress: Callable[[ExtractProgress], None] | None = None,
    cancel: threading.Event | None = None,
    confine: Path | None = None,
    started: float | None = None,
) -> ExtractSummary:
    """:func:`extract` with a ready :class:`Embedder` (local, remote or a server's model)
    or :class:`Engine` (Ray).

    ``confine`` refuses (as bad files) images whose real path leaves that folder.
    """
    started = time.monotonic() if started is None else started
    _check_options(dtype, batch_size, workers, checkpoint_seconds)
    dataset = scan_dataset(data, labels, confine)  # bad input fails before any file is made
    output.parent.mkdir(parents=True, exist_ok=True)
    lock = _lock(output)
    try:
        settings = _settings(embedder.resolved, embedder.resize, dtype, ratios, seed, dataset)
        options = RunOptions(overwrite, batch_size, workers, checkpoint_seconds, progress)
        engine = _engine_of(embedder)
        return _run(dataset, engine, settings, output, options, on_progress, cancel, started)
    finally:
        lock.release()


def _engine_of(source: Embedder | Engine) -> Engine:
    # Not isinstance(source, Engine): on a runtime protocol it reads (and so computes)
    # every property, feature_dim included, which builds the model.
    if callable(getattr(type(source), "run", None)):
        return cast(Engine, source)
    return LocalEngine(cast(Embedder, source))


def _check_options(
    dtype: str, batch_size: int, workers: int | None, checkpoint_seconds: float
) -> None:
    if dtype not in DTYPES:
        raise InvalidOptionError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise InvalidOptionError(f"--batch-size {batch_size}: expected 1 to {MAX_BATCH_SIZE}")
    if workers is not None and workers < 1:
        raise InvalidOptionError(f"--workers {workers}: must be at least 1")
    if not checkpoint_seconds >= 0:
        raise InvalidOptionError(f"--checkpoint-seconds {checkpoint_seconds}: must be 0 or more")


@dataclass(frozen=True)
class RunOptions:
    """The run options an engine sees."""

    overwrite: bool
    batch_size: int
    workers: int | None
    checkpoint_seconds: float
    progress: bool | None

    @property
    def threads(self) -> int:
        """Reader threads (``--workers``)."""
        return self.workers or min(4, (os.cpu_count() or 1) + 1)

    @property
    def window(self) -> int:
        """Images read ahead of the batch being embedded."""
        return max(2 * self.batch_size, 16)


def _settings(
    resolved: ResolvedBackbone,
    resize: str,
    dtype: str,
    ratios: tuple[float, float, float],
    seed: int,
    dataset: Dataset,
) -> CacheSettings:
    return CacheSettings(
        backbone=resolved.backbone,
        backbone_sha256=resolved.backbone_sha256,
        weights=resolved.weights,
        weights_sha256=resolved.weights_sha256,
        image_size=resolved.image_size,
        resize=resize,
        pooling=resolved.pooling,
        layer=resolved.layer,
        preprocessing=resolved.preprocessing,
        dtype=dtype,
        split_ratios=ratios,
        split_source="folders" if dataset.layout == "splits" else "hash",
        seed=seed,
        dataset_root=str(dataset.root),
    )


def _lock(path: Path) -> Any:
    from filelock import FileLock, Timeout

    lock = FileLock(str(path) + ".lock", timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise CacheLockedError(
            f"{path} is being written by another extract process; wait for it to finish"
        ) from None
    return lock


class Engine(Protocol):
    """Where a run's new images are embedded; it reports every image to the recorder."""

    @property
    def resolved(self) -> ResolvedBackbone:
        """The backbone settings the features come from (stored in the cache)."""
        ...

    @property
    def resize(self) -> str:
        """How images are resized to the backbone's input."""
        ...

    @property
    def feature_dim(self) -> int:
        """Embedding width (may load the model)."""
        ...

    def run(self, dataset: Dataset, known: Known, recorder: Recorder, options: RunOptions) -> None:
        """Look at every item of ``dataset``: reused, bad or embedded, each reported once."""
        ...


class Recorder:
    """Turns what an engine reports about each image into cache rows, counts and progress.

    Calls come from one thread; the cache writes run on the writer thread.
    """

    def __init__(
        self,
        writer: CacheWriter,
        known: Known,
        total: int,
        progress: bool | None,
        on_progress: Callable[[ExtractProgress], None] | None,
        cancel: threading.Event | None,
        started: float,
    ) -> None:
        self.writer = writer
        self.known = known
        self.total = total
        self.on_progress = on_progress
        self.cancel = cancel
        self.started = started
        self.counts = {"new": 0, "reused": 0, "bad": 0, "done": 0}
        self.bad_files: list[tuple[str, str]] = []
        self.known_bad = frozenset(writer.bad)
        """Paths the cache recorded as bad before this run."""
        self.background = _Background()
        self.bar = _progress_bar(total, progress)
        self._last_report = 0.0

    def check_cancel(self) -> None:
        """Raise :class:`ExtractionCancelled` once ``cancel`` is set."""
        if self.cancel is not None and self.cancel.is_set():
            raise ExtractionCancelled(
                f"{self.writer.path}: extraction cancelled; finished batches were saved, "
                "rerun to resume"
            )

    def triage(self, prepared: Iterable[Prepared]) -> Iterator[Prepared]:
        """Record the reused and bad images; yield the ones to embed."""
        for each in prepared:
            self.check_cancel()
            if each.reason is not None:
                self.bad(each.item, each.reason)
            elif each.reused:
                self.reused(each.item)
            else:
                yield each
            self.report()

    def reused(self, item: Item) -> None:
        """The cached row of ``item`` stays."""
        self.counts["reused"] += 1
        self.background.submit(self.writer.set_bad, item.path, None)
        self._done(1)

    def bad(self, item: Item, reason: str) -> None:
        """``item`` cannot be used; a cached row of it goes."""
        self.counts["bad"] += 1
        self.bad_files.append((item.path, reason))
        self.background.submit(self.writer.set_bad, item.path, reason)
        if item.path in self.known:  # a cached file that went bad loses its old row
            self.background.submit(self.writer.drop, [item.path])
        self._done(1)

    def embedded(self, items: list[Item], sha256: list[str], features: np.ndarray) -> None:
        """New rows for ``items`` (replacing older rows of the same paths)."""
        if not items:  # a batch of bad files: still a batch finished
            self.report(force=True)
            return
        for item in items:
            self.background.submit(self.writer.set_bad, item.path, None)
            if item.path in self.known:
                self.background.submit(self.writer.drop, [item.path])
        self.counts["new"] += len(items)
        self.background.submit(
            self.writer.add,
            [item.path for item in items],
            sha256,
            [item.class_name for item in items],
            [_split_of(item, sha, self.writer.settings) for item, sha in zip(items, sha256)],
            features,
        )
        self._done(len(items), force=True)

    def _done(self, n: int, force: bool = False) -> None:
        self.counts["done"] += n
        self.bar.update(n)
        self.report(force)

    def report(self, force: bool = False) -> None:
        """Call ``on_progress`` (at most 4 times a second unless ``force``)."""
        now = time.monotonic()
        if self.on_progress is None or (not force and now - self._last_report < 0.25):
            return
        self._last_report = now
        seconds = now - self.started
        new = self.counts["new"]
        self.on_progress(
            ExtractProgress(
                self.counts["done"],
                self.total,
                new,
                self.counts["reused"],
                self.counts["bad"],
                round(seconds, 3),
                round(new / seconds, 2) if seconds > 0 else 0.0,
            )
        )


def read_items(
    dataset: Dataset,
    known: Known,
    options: RunOptions,
    prepare: Callable[[bytes | np.ndarray], Any] | None = None,
) -> Iterator[Prepared]:
    """Read and hash every item on reader threads, in dataset order.

    Items whose row is cached unchanged come back ``reused``; ``prepare`` (when
    given) decodes the others there, its failures becoming ``reason``.
    """

    def read(item: Item) -> Prepared:
        try:
            content, sha = dataset.read(item)
        except OSError as exc:
            return Prepared(item, reason=unreadable_reason(exc))
        if known.get(item.path) == (sha, item.class_name):
            return Prepared(item, sha, reused=True)
        if prepare is None:
            return Prepared(item, sha)
        payload, reason = prepare_safely(prepare, content)
        return Prepared(item, sha, payload, reason)

    with ThreadPoolExecutor(options.threads, thread_name_prefix="featcache-read") as pool:
        yield from _ordered_map(pool, read, dataset.items, options.window)


class LocalEngine:
    """The local engine: batches of decoded images through an :class:`Embedder`."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder

    @property
    def resolved(self) -> ResolvedBackbone:
        return self.embedder.resolved

    @property
    def resize(self) -> str:
        return self.embedder.resize

    @property
    def feature_dim(self) -> int:
        return self.embedder.feature_dim

    @property
    def load_seconds(self) -> float:
        return float(getattr(self.embedder, "load_seconds", 0.0))

    def run(self, dataset: Dataset, known: Known, recorder: Recorder, options: RunOptions) -> None:
        batch: list[Prepared] = []

        def flush() -> None:
            if not batch:
                return
            features, reasons = self.embedder.embed([p.payload for p in batch])
            good = [p for p, reason in zip(batch, reasons) if reason is None]
            for prepared, reason in zip(batch, reasons):
                if reason is not None:
                    recorder.bad(prepared.item, reason)
            recorder.embedded([p.item for p in good], [p.sha256 for p in good], features)
            batch.clear()

        for prepared in recorder.triage(read_items(dataset, known, options, self.embedder.prepare)):
            batch.append(prepared)
            if len(batch) >= options.batch_size:
                flush()
        flush()


def _run(
    dataset: Dataset,
    engine: Engine,
    settings: CacheSettings,
    out_path: Path,
    options: RunOptions,
    on_progress: Callable[[ExtractProgress], None] | None,
    cancel: threading.Event | None,
    started: float,
) -> ExtractSummary:
    order = {item.path: i for i, item in enumerate(dataset.items)}
    writer = CacheWriter(
        out_path,
        settings,
        dataset.class_names,
        order,
        options.overwrite,
        options.checkpoint_seconds,
    )
    known = writer.index()
    removed = [p for p in known if p not in order]
    writer.drop(removed)
    writer.forget_bad(order)

    recorder = Recorder(
        writer, known, len(dataset.items), options.progress, on_progress, cancel, started
    )
    background = recorder.background
    finished = False
    try:
        engine.run(dataset, known, recorder, options)
        if recorder.counts["new"] == 0 and writer.feature_dim == 0:  # bad files only
            background.submit(setattr, writer, "feature_dim", engine.feature_dim)
        background.submit(writer.commit, True)
        finished = True
    finally:
        recorder.bar.close()
        if not finished:  # interrupted: keep the batches already embedded
            background.submit_last(writer.commit)
        background.close(raise_error=finished)
    recorder.report(force=True)
    counts = recorder.counts
    seconds = time.monotonic() - started
    return ExtractSummary(
        output=str(out_path),
        backbone=settings.backbone,
        rows=len(writer.base_paths),
        feature_dim=writer.feature_dim,
        new=counts["new"],
        reused=counts["reused"],
        removed=len(removed),
        bad=counts["bad"],
        ignored=dataset.ignored,
        seconds=round(seconds, 3),
        images_per_second=round(counts["new"] / seconds, 2) if seconds > 0 else 0.0,
        load_seconds=round(getattr(engine, "load_seconds", 0.0), 3),
        classes=dataset.class_names,
        bad_files=recorder.bad_files,
    )


def _split_of(item: Item, sha256: str, settings: CacheSettings) -> int:
    if item.split is not None:
        return item.split
    return assign_split(sha256, settings.split_ratios, settings.seed)


def _ordered_map(
    pool: ThreadPoolExecutor, fn: Callable[[T], R], items: list[T], window: int
) -> Iterator[R]:
    """``map`` over a thread pool, in order, with at most ``window`` items in flight."""
    pending: deque[Future[R]] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class _Background:
    """One writer thread running submitted calls in order; re-raises its errors."""

    def __init__(self, depth: int = 8) -> None:
        self._queue: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = queue.Queue(
            depth
        )
        self._error: BaseException | None = None
        self._failed = False
        self._thread = threading.Thread(target=self._loop, name="featcache-write", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (job := self._queue.get()) is not None:
            if not self._failed:
                try:
                    job[0](*job[1])
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    self._error = exc
                    self._failed = True

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)``; raises the writer's error if one happened."""
        self._raise()
        self._queue.put((fn, args))

    def submit_last(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue a final call even after an error (it runs only if none happened)."""
        self._queue.put((fn, args))

    def close(self, raise_error: bool = True) -> None:
        """Wait for every queued call, then raise the first error, if any."""
        self._queue.put(None)
        self._thread.join()
        if raise_error:
            self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _progress_bar(total: int, enabled: bool | None) -> Any:
    from tqdm import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, unit="img", desc="extract", disable=not enabled, smoothing=0.1)
