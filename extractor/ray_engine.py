"""``extract --engine ray``: embed the new images on a Ray Data actor pool.

The driver (this process) lists and hashes the files, skips rows already cached,
and writes the cache, exactly as the local engine does. Only the images that need
embedding go to Ray: ``map_batches`` over a pool of :class:`EmbedBatches` actors,
each of which builds the backbone once, reads its images by path (so they must be
visible to every node), decodes them with the local engine's code and embeds them.
Each finished batch comes back as a shard that the driver's single writer appends,
so a killed job loses at most the shards since the last checkpoint.

Ray is optional (``pip install 'featcache[ray]'``) and only imported here.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..backbones.backbone import FeatureExtractor, check_taps, resolve_backbone
from ..core.options import DEFAULT_MAX_PIXELS, ExtractOptions, RayOptions, check_address
from ..core.settings import BackboneConfig, FeatureSettings
from ..core.tf_quiet import ENV
from ..core.tf_quiet import install as install_quiet_tensorflow
from ..errors import EngineError, FeatcacheError, InvalidOptionError
from .decode import decode_and_resize
from .reader import Known, Prepared, read_items, read_one
from .recorder import Recorder
from .sources import Dataset, item_from_path, open_source
from .views import embed_views
from .weights_check import check_weights

INSTALL_HINT = "pip install 'featcache[ray]'"
LOCAL_OBJECT_STORE_BYTES = 512 << 20
"""Object store of a local Ray instance: shards are small (paths in, features out)."""
ACTOR_START_SECONDS = 600
"""How long the pool may take to start (an autoscaler adding nodes) before the run fails;
Ray's ``RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S`` overrides it."""
ACTOR_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "KERAS_BACKEND": "tensorflow",
    **({ENV: os.environ[ENV]} if ENV in os.environ else {}),  # FEATCACHE_TF_LOGS
}
"""Set per actor (merged into a ``ray job submit`` runtime env rather than clashing with it)."""
_ONE_RUN = threading.Lock()


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or a one-line error saying how to install it."""
    try:
        import ray
        import ray.data  # Ray Data needs the [data] extra (pyarrow, pandas)
    except ImportError as exc:
        raise EngineError(
            f"engine 'ray' needs Ray Data, which is not installed ({exc.name or exc}): "
            f"{INSTALL_HINT}"
        ) from None
    return ray


class RayEngine:
    """The :class:`~featcache.extractor.engines.Engine` over a Ray actor pool."""

    def __init__(
        self,
        config: BackboneConfig,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        options: RayOptions | None = None,
        taps: tuple[str, ...] = (),
    ) -> None:
        import_ray()  # fail before any file is read
        _gpu_memory_growth()  # the driver decodes and may build a model on a GPU node
        self.options = options or RayOptions()
        if self.options.address is None and "RAY_ADDRESS" in os.environ:
            check_address(os.environ["RAY_ADDRESS"], None)
        self.max_pixels = max_pixels
        self._feature_dim = 0
        self.settings: FeatureSettings = resolve_backbone(config)
        check_taps(self.settings, taps)
        self.taps = taps
        """Layers the actors embed beside the features (``extract --taps``)."""
        if self.settings.spec is None:  # a saved model: its input size is read from the file
            model = FeatureExtractor(self.settings)
            self.settings, self._feature_dim = model.resolved, model.feature_dim
        resolved = self.settings
        self.config = replace(  # absolute paths: Ray workers run in other folders
            config,
            backbone=resolved.backbone,
            weights=resolved.weights if resolved.weights_sha256 else config.weights,
            image_size=resolved.image_size,
        )
        self.load_seconds = 0.0
        self.pool = ""
        """The last run's actor pool, in words."""

    @property
    def feature_dim(self) -> int:
        if not self._feature_dim:  # no image reached the actors: build the model here
            self._feature_dim = FeatureExtractor(self.settings).feature_dim
        return self._feature_dim

    def run(
        self, dataset: Dataset, known: Known, recorder: Recorder, options: ExtractOptions
    ) -> None:
        """Hash here (the files whose stat changed), embed the new images on Ray, hand
        every shard to the recorder."""
        with closing(read_items(dataset, known, options.threads, options.window)) as reads:
            pending = list(recorder.triage(reads))
        pending = self._still_bad(dataset, pending, recorder)
        if not pending:
            return  # nothing new: Ray is not even started
        check_weights(self.settings)  # one line here rather than an error on every actor
        recorder.check_cancel()
        ray = import_ray()
        with _ONE_RUN:  # Ray Data's settings are per process: one run at a time changes them
            self._run_on_ray(ray, dataset, pending, recorder, options)

    def _run_on_ray(
        self,
        ray: Any,
        dataset: Dataset,
        pending: list[Prepared],
        recorder: Recorder,
        options: ExtractOptions,
    ) -> None:
        started_here = not ray.is_initialized()
        try:
            local = _connect(ray, self.options)
            with _data_context(ray):
                shards = iter(self._shards(ray, dataset, pending, options, local))
                seen: set[int] = set()
                try:
                    for shard in shards:
                        self._record(shard, pending, recorder, seen)
                        recorder.check_cancel()
                finally:
                    close = getattr(shards, "close", None)
                    if close is not None:
                        close()
            if len(seen) < len(pending):
                raise EngineError(
                    f"the Ray job returned no result for {len(pending) - len(seen)} of "
                    f"{len(pending)} images; rerun to embed them"
                )
        except FeatcacheError:
            raise
        except Exception as exc:
            if not _from_ray(exc):
                raise
            raise EngineError(_ray_failure(ray, exc, self.pool)) from None
        finally:
            if started_here and ray.is_initialized():
                ray.shutdown()

    def _still_bad(
        self, dataset: Dataset, pending: list[Prepared], recorder: Recorder
    ) -> list[Prepared]:
        """Decode here the files that were bad last run; keep those that are fixed.

        Starting Ray only to hear that a file is still broken would dominate a re-run.
        """
        decode = partial(
            decode_and_resize,
            size=self.settings.image_size,
            resize=self.settings.resize,
            max_pixels=self.max_pixels,
            decode=self.settings.decode,
        )
        keep = []
        for prepared in pending:
            reason = None
            if prepared.item.path in recorder.known_bad:
                reason = read_one(dataset, prepared.item, None, decode).reason
            if reason is None:
                keep.append(prepared)
            else:
                recorder.bad(prepared.item, reason)
        return keep

    def _shards(
        self,
        ray: Any,
        dataset: Dataset,
        pending: list[Prepared],
        options: ExtractOptions,
        local: bool,
    ) -> Any:
        batch_size = options.batch_size
        actors, cpus, gpus = _pool_size(ray, self.options, local)
        rows = [{"row": i, "path": p.item.path} for i, p in enumerate(pending)]
        blocks = math.ceil(len(rows) / batch_size)
        actors = min(actors, blocks)  # an actor with no batch would only load the model
        self.pool = _pool_text(actors, cpus, gpus)
        embedded = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            EmbedBatches,
            fn_constructor_kwargs={
                "config": self.config,
                "expect": replace(self.settings, spec=None),
                "max_pixels": self.max_pixels,
                "root": str(dataset.root),
                "layout": dataset.layout,
                "confine": str(dataset.confine) if dataset.confine is not None else None,
                "threads": max(1, math.ceil(cpus)),
                "gpus": gpus,
                "probe": pending[0].item.path,
                "views": (options.view_count, options.view_augment, options.view_seed),
                "taps": self.taps,
            },
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=cpus,
            num_gpus=gpus or None,
            runtime_env={"env_vars": ACTOR_ENV},
        )
        return embedded.iter_batches(batch_size=None, batch_format="numpy")

    def _record(
        self,
        shard: dict[str, np.ndarray],
        pending: list[Prepared],
        recorder: Recorder,
        seen: set[int],
    ) -> None:
        """Hand one shard to the recorder; rows seen before (a retried batch) are skipped."""
        fatal = str(shard["fatal"][0]) if len(shard["fatal"]) else ""
        if fatal:
            raise EngineError(fatal)
        self.load_seconds = max(self.load_seconds, float(np.max(shard["load_seconds"])))
        features = shard["features"]
        taps: dict[str, np.ndarray] | None = None
        if "tap_layout" in shard:  # the taps' columns follow the features' (one pass)
            layout = json.loads(str(shard["tap_layout"][0]))
            width = features.shape[1] - sum(dim for _, dim in layout)
            taps, start = {}, width
            for layer, dim in layout:
                taps[layer] = features[:, start : start + dim]
                start += dim
            features = features[:, :width]
        self._feature_dim = features.shape[1]
        good: list[int] = []
        for k, (row, reason) in enumerate(zip(shard["row"].tolist(), shard["reason"].tolist())):
            if row in seen:
                continue
            seen.add(row)
            if reason:
                recorder.bad(pending[row].item, str(reason))
            else:
                good.append(k)
        recorder.embedded(
            [pending[row].item for row in shard["row"][good].tolist()],
            [str(sha) for sha in shard["sha256"][good]],
            features[good],
            shard["views"][good] if "views" in shard else None,
            {layer: values[good] for layer, values in taps.items()} if taps else None,
        )


class EmbedBatches:
    """A Ray Data actor: builds the backbone once, then embeds batches of image paths.

    Errors that would fail every batch (a missing or different weights file on this
    node, a bad ``--layer``) are sent back in a ``fatal`` column, so the driver shows
    one line rather than Ray's actor-death traceback.
    """

    def __init__(
        self,
        config: BackboneConfig,
        expect: FeatureSettings,
        max_pixels: int,
        root: str,
        layout: str,
        confine: str | None,
        threads: int,
        gpus: float = 0.0,
        probe: str = "",
        views: tuple[int, tuple[str, ...], int] = (1, (), 0),
        taps: tuple[str, ...] = (),
    ) -> None:
        self.fatal = ""
        self.width = 0
        """Columns of the model's rows: the features, then each tap's."""
        self.tap_layout = "[]"
        self.views = views
        """(views, augmentations, seed) of :mod:`.views`: views 1+ are embedded here too."""
        self.load_seconds = 0.0
        self.feature_dim = 0
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="featcache-decode")
        began = time.monotonic()
        install_quiet_tensorflow()  # this worker's TensorFlow start-up, as the CLI's
        try:
            _configure_tensorflow(threads, gpus)
            npy = layout == "npy"
            # An unmounted share is often an empty folder: look for a file the driver saw.
            if not (Path(root).is_file() if npy else (Path(root) / probe).is_file()):
                where = f"the data file {root}" if npy else f"{probe} in the data folder {root}"
                raise FeatcacheError(
                    f"{where} is not there; every node must see the images at the same path "
                    "(shared storage)"
                )
            self.dataset = open_source(root)
            self.dataset.confine = Path(confine) if confine else None
            resolved = resolve_backbone(config)
            expect.check(
                replace(resolved, feature_dim=expect.feature_dim),
                what="the backbone differs from the driver's (every node must see the same "
                "weights or saved model file at the same path)",
                ours="driver",
                theirs="this node",
            )
            self.prepare = partial(
                decode_and_resize,
                size=resolved.image_size,
                resize=resolved.resize,
                max_pixels=max_pixels,
                decode=resolved.decode,
            )
            self.model = FeatureExtractor(resolved, taps)
            self.feature_dim = self.model.feature_dim
            tapped = self.model.tap_layout
            self.width = self.feature_dim + sum(dim for _, dim in tapped)
            self.tap_layout = json.dumps([list(each) for each in tapped]) if tapped else ""
        except Exception as exc:  # noqa: BLE001 - reported to the driver as one line
            self.fatal = f"on Ray node {_node()}: {_first_line(exc)}"
        self.load_seconds = time.monotonic() - began

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = np.asarray(batch["row"], dtype=np.int64)
        n = len(rows)
        if self.fatal:
            return {"row": rows, "fatal": np.full(n, self.fatal, dtype=object)}
        items = [item_from_path(str(path)) for path in batch["path"]]
        loaded = list(
            self.pool.map(lambda item: read_one(self.dataset, item, None, self.prepare), items)
        )
        good = [k for k, each in enumerate(loaded) if each.reason is None]
        features = np.zeros((n, self.width), np.float32)
        if good:
            features[good] = self.model(np.stack([loaded[k].payload for k in good]))
        load_seconds, self.load_seconds = self.load_seconds, 0.0  # reported once
        extra = self._views(loaded, good, n)
        return {
            **({"views": extra} if extra is not None else {}),
            **(
                {"tap_layout": np.full(n, self.tap_layout, dtype=object)} if self.tap_layout else {}
            ),
            "row": rows,
            "fatal": np.full(n, "", dtype=object),
            "sha256": np.asarray([each.sha256 for each in loaded], dtype=object),
            "reason": np.asarray([each.reason or "" for each in loaded], dtype=object),
            "features": features,
            "load_seconds": np.full(n, load_seconds),
        }

    def _views(self, loaded: list[Prepared], good: list[int], n: int) -> np.ndarray | None:
        """``(n, views - 1, D)`` embeddings of the augmented views (zeros for bad rows);
        None without views."""
        count, augment, seed = self.views
        if count <= 1:
            return None
        out = np.zeros((n, count - 1, self.feature_dim), np.float32)
        if good:
            images = np.stack([loaded[k].payload for k in good])
            shas = [loaded[k].sha256 for k in good]
            width = self.feature_dim

            def embed(x: np.ndarray) -> np.ndarray:
                return self.model(x)[:, :width]  # views of the features only

            out[good] = embed_views(embed, images, shas, count, augment, seed, len(good))
        return out


def _connect(ray: Any, options: RayOptions) -> bool:
    """Join the cluster or start a local instance; True for a local instance started here."""
    if ray.is_initialized():
        return False
    address = options.address or os.environ.get("RAY_ADDRESS") or "local"
    local = address == "local"
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.ERROR if local else logging.WARNING,
    }
    if local:
        kwargs["object_store_memory"] = LOCAL_OBJECT_STORE_BYTES
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise EngineError(f"could not start or join Ray at {address}: {_first_line(exc)}") from None
    return local


@contextmanager
def _data_context(ray: Any) -> Iterator[None]:
    """Ray Data settings for one run, restored afterwards (the caller may use Ray Data too).

    Shards come back in dataset order, so the cache never needs a final rewrite to sort
    it; the pool gets :data:`ACTOR_START_SECONDS` to start; Ray's progress bars are off,
    and Ray Data's log records go to its log file only (featcache shows its own bar and
    one-line errors, which point to that file).
    """
    context = ray.data.DataContext.get_current()
    settings: dict[str, Any] = {
        "enable_progress_bars": False,
        "print_on_execution_start": False,
        "wait_for_min_actors_s": _start_seconds(),
    }
    before = {name: getattr(context, name) for name in settings}
    before["preserve_order"] = context.execution_options.preserve_order
    for name, value in settings.items():
        setattr(context, name, value)
    context.execution_options.preserve_order = True
    consoles = [
        handler
        for handler in logging.getLogger("ray.data").handlers
        if isinstance(handler, logging.StreamHandler)
        and not isinstance(handler, logging.FileHandler)
    ]
    for handler in consoles:
        handler.addFilter(_off)
    try:
        yield
    finally:
        for handler in consoles:
            handler.removeFilter(_off)
        context.execution_options.preserve_order = before.pop("preserve_order")
        for name, value in before.items():
            setattr(context, name, value)


def _off(record: logging.LogRecord) -> bool:
    return False


def _pool_size(ray: Any, options: RayOptions, local: bool) -> tuple[int, float, float]:
    """Actors, CPUs and GPUs per actor; refuses a pool a local instance can never hold."""
    resources = ray.cluster_resources()
    cpus, gpus = options.cpus_per_actor, options.gpus_per_actor
    have_cpus, have_gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    fits = int(have_cpus // cpus)
    if gpus:
        fits = min(fits, int(have_gpus // gpus))
    actors = options.actors or max(1, fits)
    if actors > fits:
        message = (
            f"{_pool_text(actors, cpus, gpus)} do not fit the Ray cluster's "
            f"{have_cpus:g} CPUs and {have_gpus:g} GPUs"
        )
        if local:
            raise InvalidOptionError(message)  # a local instance never grows
        wait = _start_seconds()
        logging.getLogger(__name__).warning(
            "%s; waiting for the autoscaler%s", message, f" (up to {wait} s)" if wait > 0 else ""
        )
    return actors, cpus, gpus


def _node() -> str:
    try:
        import ray

        return str(ray.util.get_node_ip_address())
    except Exception:  # noqa: BLE001 - only used in a message
        return "?"


def _configure_tensorflow(threads: int, gpus: float) -> None:
    """Give TensorFlow only this actor's CPUs and GPUs (before it initialises).

    An actor without GPUs must not touch the node's GPUs (TensorFlow would reserve
    their memory); one with GPUs grows its memory as needed, as fractional GPUs share one.
    """
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
        if gpus:
            _gpu_memory_growth()
        else:
            tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow already initialised in this worker process
        pass


def _gpu_memory_growth() -> None:
    """Let TensorFlow take GPU memory as needed rather than all of it at start."""
    import tensorflow as tf

    try:
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:  # already initialised: too late to change
        pass


def _start_seconds() -> int:
    value = os.environ.get("RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S", "")
    return int(value) if value.lstrip("-").isdigit() else ACTOR_START_SECONDS


def _from_ray(exc: BaseException) -> bool:
    """``exc`` is, or was caused by, an error of Ray's."""
    return any(type(each).__module__.split(".")[0] == "ray" for each in _causes(exc))


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it, outermost first (Ray keeps a task's error in ``cause``)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        inner = getattr(current, "cause", None)
        current = inner if isinstance(inner, BaseException) else current.__cause__
    return chain


def _pool_text(actors: int, cpus: float, gpus: float) -> str:
    each = f"{cpus:g} CPUs" + (f" x {gpus:g} GPUs" if gpus else "")
    return f"{actors} actor{'s' if actors != 1 else ''} x {each}"


def _ray_failure(ray: Any, exc: BaseException, pool: str) -> str:
    if any(type(e).__name__ == "GetTimeoutError" for e in _causes(exc)):
        return (
            f"the Ray actor pool ({pool}) did not start in {_start_seconds()} s: the cluster "
            "lacks the resources, or the actors could not load the model in time "
            "(RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S sets the wait)"
        )
    try:
        from ray.data._internal.logging import get_log_directory

        logs = f" (Ray Data's log: {get_log_directory()})" if ray.is_initialized() else ""
    except ImportError:  # a private helper; the message is complete without it
        logs = ""
    return f"the Ray job failed: {_first_line(exc)}{logs}"


def _first_line(exc: BaseException) -> str:
    """The first line of the innermost error that says something (Ray wraps task errors)."""
    for each in reversed(_causes(exc)):
        text = str(each).strip()
        if text:
            return text.splitlines()[0]
    return type(exc).__name__
