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

import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EngineError, FeatcacheError, InvalidOptionError
from .backbone import BackboneConfig, FeatureExtractor, ResolvedBackbone, resolve_backbone
from .decode import DEFAULT_MAX_PIXELS
from .embedders import decode_and_resize, prepare_safely, unreadable_reason
from .pipeline import Known, Prepared, Recorder, RunOptions, read_items
from .sources import Dataset, Item

INSTALL_HINT = "pip install 'featcache[ray]'"
LOCAL_OBJECT_STORE_BYTES = 512 << 20
"""Object store of a local Ray instance: shards are small (paths in, features out)."""


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray engine runs."""

    address: str | None = None
    """Ray cluster to join (``auto``, ``HEAD:6379``); None starts a local instance unless
    ``RAY_ADDRESS`` is set (as it is inside ``ray job submit``)."""
    actors: int | None = None
    """Actor pool size; None sizes it to the cluster's CPUs (or GPUs) at start."""
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0

    def __post_init__(self) -> None:
        if self.actors is not None and self.actors < 1:
            raise InvalidOptionError(f"--actors {self.actors}: must be at least 1")
        if not self.cpus_per_actor > 0:
            raise InvalidOptionError(f"--cpus-per-actor {self.cpus_per_actor}: must be above 0")
        if not self.gpus_per_actor >= 0:
            raise InvalidOptionError(f"--gpus-per-actor {self.gpus_per_actor}: must be 0 or more")
        if self.address is not None:
            _check_address(self.address)


def _check_address(address: str) -> None:
    if address.startswith("ray://"):
        raise InvalidOptionError(
            f"--ray-address {address}: Ray Data does not run over Ray Client (ray://); run the "
            "command on a cluster node (--ray-address auto) or submit it with `ray job submit`"
        )


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or a one-line error saying how to install it."""
    try:
        import ray
        import ray.data  # Ray Data needs the [data] extra (pyarrow, pandas)
    except ImportError as exc:
        raise EngineError(
            f"--engine ray needs Ray Data, which is not installed ({exc.name or exc}): "
            f"{INSTALL_HINT}"
        ) from None
    return ray


class RayEngine:
    """The pipeline's :class:`~featcache.extractor.pipeline.Engine` over a Ray actor pool."""

    def __init__(
        self,
        config: BackboneConfig,
        resize: str,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        options: RayOptions | None = None,
    ) -> None:
        import_ray()  # fail before any file is read
        self.options = options or RayOptions()
        self.resize = resize
        self.max_pixels = max_pixels
        self.resolved: ResolvedBackbone = resolve_backbone(config)
        if self.resolved.spec is None:  # a saved model: its input size is read from the file
            self.resolved = FeatureExtractor(self.resolved, config.seed).resolved
        resolved = self.resolved
        self.config = replace(  # absolute paths: Ray workers run in other folders
            config,
            backbone=resolved.backbone,
            weights=resolved.weights if resolved.weights_sha256 else config.weights,
            image_size=resolved.image_size,
        )
        self.load_seconds = 0.0
        self._feature_dim = 0

    @property
    def feature_dim(self) -> int:
        if not self._feature_dim:  # no image reached the actors: build the model here
            self._feature_dim = FeatureExtractor(self.resolved, self.config.seed).feature_dim
        return self._feature_dim

    def run(self, dataset: Dataset, known: Known, recorder: Recorder, options: RunOptions) -> None:
        """Hash here, embed the new images on Ray, hand every shard to the recorder."""
        pending = list(recorder.triage(read_items(dataset, known, options)))
        pending = self._still_bad(dataset, pending, recorder)
        if not pending:
            return  # nothing new: Ray is not even started
        ray = import_ray()
        started_here, local = _connect(ray, self.options)
        try:
            shards = self._shards(ray, dataset, pending, options.batch_size, local)
            try:
                for shard in shards:
                    recorder.check_cancel()
                    self._record(shard, pending, recorder)
            finally:
                close = getattr(shards, "close", None)
                if close is not None:
                    close()
        except FeatcacheError:
            raise
        except Exception as exc:
            if not type(exc).__module__.startswith("ray."):
                raise
            raise EngineError(f"the Ray job failed: {_first_line(exc)}") from None
        finally:
            if started_here:
                ray.shutdown()

    def _still_bad(
        self, dataset: Dataset, pending: list[Prepared], recorder: Recorder
    ) -> list[Prepared]:
        """Decode here the files that were bad last run; keep those that are fixed.

        Starting Ray only to hear that a file is still broken would dominate a re-run.
        """
        decode = partial(
            decode_and_resize,
            size=self.resolved.image_size,
            resize=self.resize,
            max_pixels=self.max_pixels,
        )
        keep = []
        for prepared in pending:
            reason = None
            if prepared.item.path in recorder.known_bad:
                try:
                    content, _ = dataset.read(prepared.item)
                    reason = prepare_safely(decode, content)[1]
                except OSError as exc:
                    reason = unreadable_reason(exc)
            if reason is None:
                keep.append(prepared)
            else:
                recorder.bad(prepared.item, reason)
        return keep

    def _shards(
        self, ray: Any, dataset: Dataset, pending: list[Prepared], batch_size: int, local: bool
    ) -> Any:
        actors, cpus, gpus = _pool_size(ray, self.options, local)
        rows = [
            {"row": i, "path": p.item.path, "index": p.item.index} for i, p in enumerate(pending)
        ]
        blocks = math.ceil(len(rows) / batch_size)
        actors = min(actors, blocks)  # an actor with no batch would only load the model
        embedded = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            EmbedBatches,
            fn_constructor_kwargs={
                "config": self.config,
                "expect": (self.resolved.backbone_sha256, self.resolved.weights_sha256),
                "resize": self.resize,
                "max_pixels": self.max_pixels,
                "root": str(dataset.root),
                "layout": dataset.layout,
                "confine": str(dataset.confine) if dataset.confine is not None else None,
                "threads": max(1, math.ceil(cpus)),
            },
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=cpus,
            num_gpus=gpus or None,
        )
        return embedded.iter_batches(batch_size=None, batch_format="numpy")

    def _record(
        self, shard: dict[str, np.ndarray], pending: list[Prepared], recorder: Recorder
    ) -> None:
        fatal = str(shard["fatal"][0]) if len(shard["fatal"]) else ""
        if fatal:
            raise EngineError(fatal)
        self.load_seconds = max(self.load_seconds, float(np.max(shard["load_seconds"])))
        features = shard["features"]
        self._feature_dim = features.shape[1]
        good: list[int] = []
        for k, (row, reason) in enumerate(zip(shard["row"].tolist(), shard["reason"].tolist())):
            if reason:
                recorder.bad(pending[row].item, str(reason))
            else:
                good.append(k)
        recorder.embedded(
            [pending[row].item for row in shard["row"][good].tolist()],
            [str(sha) for sha in shard["sha256"][good]],
            features[good],
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
        expect: tuple[str, str],
        resize: str,
        max_pixels: int,
        root: str,
        layout: str,
        confine: str | None,
        threads: int,
    ) -> None:
        self.fatal = ""
        self.load_seconds = 0.0
        self.feature_dim = 0
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="featcache-decode")
        began = time.monotonic()
        try:
            _limit_threads(threads)
            array = np.load(root, mmap_mode="r", allow_pickle=False) if layout == "npy" else None
            self.dataset = Dataset(
                Path(root), layout, [], [], 0, array, Path(confine) if confine else None
            )
            resolved = resolve_backbone(config)
            if (resolved.backbone_sha256, resolved.weights_sha256) != expect:
                raise FeatcacheError(
                    "the weights (or saved model) file differs from the driver's; every node "
                    "must see the same file at the same path"
                )
            self.prepare = partial(
                decode_and_resize, size=resolved.image_size, resize=resize, max_pixels=max_pixels
            )
            self.model = FeatureExtractor(resolved, config.seed)
            self.feature_dim = self.model.feature_dim
        except Exception as exc:  # noqa: BLE001 - reported to the driver as one line
            self.fatal = f"on Ray node {_node()}: {_first_line(exc)}"
        self.load_seconds = time.monotonic() - began

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = np.asarray(batch["row"], dtype=np.int64)
        n = len(rows)
        if self.fatal:
            return {"row": rows, "fatal": np.full(n, self.fatal, dtype=object)}
        items = [
            Item(str(path), None, None, int(index))
            for path, index in zip(batch["path"], batch["index"])
        ]
        loaded = list(self.pool.map(self._load, items))
        good = [k for k, (_, pixels, _) in enumerate(loaded) if pixels is not None]
        features = np.zeros((n, self.feature_dim), np.float32)
        if good:
            features[good] = self.model(np.stack([loaded[k][1] for k in good]))
        load_seconds, self.load_seconds = self.load_seconds, 0.0  # reported once
        return {
            "row": rows,
            "fatal": np.full(n, "", dtype=object),
            "sha256": np.asarray([sha for sha, _, _ in loaded], dtype=object),
            "reason": np.asarray([reason or "" for _, _, reason in loaded], dtype=object),
            "features": features,
            "load_seconds": np.full(n, load_seconds),
        }

    def _load(self, item: Item) -> tuple[str, Any, str | None]:
        try:
            content, sha = self.dataset.read(item)
        except OSError as exc:
            return "", None, unreadable_reason(exc)
        pixels, reason = prepare_safely(self.prepare, content)
        return sha, pixels, reason


def _connect(ray: Any, options: RayOptions) -> tuple[bool, bool]:
    """Join the cluster or start a local instance.

    Returns (this call started Ray, Ray is a local instance started by featcache).
    """
    if ray.is_initialized():
        return False, False
    # Ray's own logs go to its session folder; the driver shows featcache's bar only.
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    address = options.address or os.environ.get("RAY_ADDRESS") or "local"
    _check_address(address)
    local = address == "local"
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.ERROR if local else logging.WARNING,
        "runtime_env": {"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"}},
    }
    if local:
        kwargs["object_store_memory"] = LOCAL_OBJECT_STORE_BYTES
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise EngineError(f"could not start or join Ray at {address}: {_first_line(exc)}") from None
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    return True, local


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
            f"{actors} actors x {cpus:g} CPUs"
            + (f" x {gpus:g} GPUs" if gpus else "")
            + f" do not fit the Ray cluster's {have_cpus:g} CPUs and {have_gpus:g} GPUs"
        )
        if local:
            raise InvalidOptionError(message)  # a local instance never grows
        logging.getLogger(__name__).warning("%s; waiting for the autoscaler", message)
    return actors, cpus, gpus


def _node() -> str:
    try:
        import ray

        return str(ray.util.get_node_ip_address())
    except Exception:  # noqa: BLE001 - only used in a message
        return "?"


def _limit_threads(threads: int) -> None:
    """Give TensorFlow only this actor's CPUs (before it starts its thread pools)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
    except RuntimeError:  # TensorFlow already initialised in this worker process
        pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
