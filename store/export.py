"""Export a cache's features for other tools: ``export_features(cache, out, format=...)``.

- ``parquet``: one file, a row per cache row: ``path``, ``label`` (-1: unlabelled),
  ``class`` (null: unlabelled), ``split``, ``sha256`` and ``features``, a fixed-size list
  column (``fixed_size_list<float32, D>``); written in row groups, a chunk at a time.
- ``npy``: the layout clip-retrieval's ``clip_inference`` writes and embedding-reader
  (``file_format="parquet_npy"``) and autofaiss read: ``OUT/img_emb/img_emb_0.npy`` (N x D)
  and ``OUT/metadata/metadata_0.parquet`` with the same row order (``image_path``, then the
  columns above); the array is appended a chunk at a time after its header. As clip-retrieval
  does, the features are L2-normalised and ``image_path`` is absolute (``dataset_root/path``)
  unless asked otherwise (``normalize``, ``absolute_paths``).
- ``lance``: a Lance dataset (folder) with the parquet file's columns (``pylance``, the
  ``lance`` extra).

Rows are in cache order; only ``features`` (view 0) is exported. Every format is written
under a temporary name next to the output and renamed over it at the end, so a failure
never leaves a half-written output (nor touches an existing one); ``overwrite`` replaces
only what looks like an earlier export of the same format, never another file or folder.
pyarrow is imported only here (the ``export`` extra).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.options import check_choice, invalid
from ..core.progress import progress_bar
from ..core.splits import SPLIT_NAMES
from ..errors import CacheError, FeatcacheError, InvalidOptionError
from . import CacheReader
from .format import first_line, fsync_dir
from .opening import open_cache, with_tap

EXPORT_FEATURE_FORMATS = ("parquet", "npy", "lance")
EXPORT_DTYPES = ("float32", "float16")
CHUNK_BYTES = 64 << 20
"""Features read, converted and written at a time (also the Parquet row group size)."""
SCHEMA_KEY = b"featcache"
"""Key of the Parquet/Lance schema metadata: JSON of the cache's settings and class names."""
NPY_EMBEDDINGS = Path("img_emb") / "img_emb_0.npy"
NPY_METADATA = Path("metadata") / "metadata_0.parquet"


@dataclass
class ExportSummary:
    """What :func:`export_features` wrote."""

    format: str
    output: str
    rows: int
    feature_dim: int
    dtype: str
    files: list[str] = field(default_factory=list)
    """The files written, relative to ``output`` (``["."]`` for a single file)."""
    bytes: int = 0
    seconds: float = 0.0
    normalized: bool = False
    """Features scaled to unit L2 norm (``normalize``)."""
    absolute_paths: bool = False
    """The path column holds ``dataset_root/path`` rather than ``path``."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_output(cache: str | os.PathLike[str], format: str, tap: str | None = None) -> Path:
    """``CACHE.parquet``, ``CACHE-npy/`` or ``CACHE.lance`` next to the cache (with a tap:
    ``CACHE@TAP.parquet``, ...)."""
    path = Path(cache)
    suffix = {"parquet": ".parquet", "npy": "-npy", "lance": ".lance"}[format]
    return path.with_name(path.stem + (f"@{tap}" if tap else "") + suffix)


def export_features(
    cache: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    format: str = "parquet",
    dtype: str = "float32",
    overwrite: bool = False,
    progress: bool | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    on_progress: Callable[[int, int], Any] | None = None,
    normalize: bool | None = None,
    absolute_paths: bool | None = None,
    tap: str | None = None,
) -> ExportSummary:
    """Write the rows of ``cache`` as ``format`` (``parquet``, ``npy`` or ``lance``) to
    ``output`` (default: :func:`default_output`), features as ``dtype``.

    An existing ``output`` is refused unless ``overwrite``, and even then unless it looks
    like an earlier export of ``format`` (a Parquet file; a folder of only ``img_emb/*.npy``
    and ``metadata/*.parquet``; a Lance dataset): nothing else is ever removed. The cache,
    its dataset folder and the folders above them are never an output. An output is replaced
    only once the new one is whole. Memory stays at one chunk of ``chunk_bytes`` of features.
    ``on_progress`` is called with (rows written, rows) after each chunk.

    ``normalize`` scales each feature vector to unit L2 norm (a zero vector stays zero) and
    ``absolute_paths`` writes ``dataset_root/path`` in the path column; both default to on
    for ``npy`` (what clip-retrieval writes there: normalised embeddings, indexed by inner
    product, and paths clip-back can open) and off for ``parquet`` and ``lance``.

    ``tap`` writes the features of a tap of the cache (``extract --taps``; ``a+b``: side
    by side) instead of ``features``.

    >>> export_features("cache/mobilenet.h5", "emb.parquet").rows  # doctest: +SKIP
    """
    check_choice("format", format, EXPORT_FEATURE_FORMATS)
    check_choice("dtype", dtype, EXPORT_DTYPES)
    pa = _require("pyarrow", "export", format)
    if format == "lance":
        _require("lance", "lance", format, package="pylance")
    normalize = format == "npy" if normalize is None else normalize
    absolute_paths = format == "npy" if absolute_paths is None else absolute_paths
    before = _identity(Path(cache))
    reader = open_cache(cache)
    if tap:
        reader = with_tap(reader, tap)
    out = Path(output) if output is not None else default_output(cache, format, tap)
    _check_output(reader, out, format, overwrite)
    if reader.feature_dim == 0:
        raise InvalidOptionError(f"{reader.path}: the cache has no features to export")
    src = _Source(reader, _paths(reader, absolute_paths), normalize, absolute_paths)
    started = time.monotonic()
    writer = {"parquet": _write_parquet, "npy": _write_npy, "lance": _write_lance}[format]
    bar = progress_bar(len(reader), progress, "export")
    existed = out.exists()
    work: Path | None = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # a fresh private folder (random name, mode 0700) beside the output: nothing can be
        # planted at the temporary's name, and cleaning up removes only what was made here
        work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
        tmp = work / out.name
        done = 0

        def advance(rows: int) -> None:
            nonlocal done
            done += rows
            bar.update(rows)
            if on_progress is not None:
                on_progress(done, len(reader))

        chunks = _chunks(src, np.dtype(dtype), chunk_bytes, advance)
        writer(pa, src, tmp, chunks, np.dtype(dtype))
        if _identity(reader.path) != before:  # rows and features could come from two files
            raise CacheError(
                f"{reader.path} was rewritten while it was exported (an extract running?); "
                "nothing was written, export again"
            )
        _check_output(reader, out, format, overwrite)  # again: it could have changed since
        _replace(tmp, out)
    except OSError as exc:  # a full disk, a folder that cannot be made or written
        kept = "the existing output is unchanged" if existed else "nothing was written"
        raise FeatcacheError(f"could not write {out} ({first_line(exc)}); {kept}") from None
    finally:
        bar.close()
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    files = [str(p.relative_to(out)) for p in sorted(out.rglob("*")) if p.is_file()]
    size = sum((out / f).stat().st_size for f in files) if out.is_dir() else out.stat().st_size
    return ExportSummary(
        format=format,
        output=str(out),
        rows=len(reader),
        feature_dim=reader.feature_dim,
        dtype=dtype,
        files=files if out.is_dir() else ["."],
        bytes=size,
        seconds=round(time.monotonic() - started, 3),
        normalized=normalize,
        absolute_paths=absolute_paths,
    )


# -- checks ------------------------------------------------------------------------------


def _require(module: str, extra: str, format: str, package: str | None = None) -> Any:
    """Import ``module`` or fail in one line naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise InvalidOptionError(
            f"format {format!r} needs {package or module}: pip install 'featcache[{extra}]'",
            "format",
        ) from None


def _check_output(reader: CacheReader, out: Path, format: str, overwrite: bool) -> None:
    """Refuse an output that is the cache or holds it, that is the cache's dataset folder or
    holds it, that is a folder where a file goes, or that exists (unless ``overwrite``, and
    then only when it looks like an earlier export of ``format``: nothing else is ever
    replaced)."""
    if out.name in ("", ".", ".."):
        raise invalid("output", str(out), "names no file or folder; give one, e.g. out.parquet")
    target = out.resolve()
    if target == reader.path.resolve() or target in reader.path.resolve().parents:
        raise invalid("output", str(out), "is the cache or a folder holding it")
    root = _local_root(reader.settings.dataset_root)
    if root is not None and (target == root or target in root.parents):
        raise invalid("output", str(out), "is the cache's dataset folder or a folder holding it")
    if format == "parquet" and out.is_dir():
        raise invalid("output", str(out), "is a folder; parquet writes one file")
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise invalid("output", str(out), "exists; --overwrite replaces an earlier export")
    if out.is_symlink():
        return  # the link is replaced, never what it points to
    foreign = _foreign_entry(out, format)
    if foreign is not None:
        raise invalid(
            "output",
            str(out),
            f"is not an earlier {format} export ({foreign}); --overwrite replaces only "
            "those: remove it yourself or choose another output",
        )


_NPY_FILES = {
    "img_emb": re.compile(r"img_emb_\d+\.npy"),
    "metadata": re.compile(r"metadata_\d+\.parquet"),
}
"""The npy layout's folders and the names of the files they hold."""
_LANCE_ENTRIES = frozenset(
    {"_versions", "data", "_transactions", "_indices", "_deletions", "_refs", "_latest.manifest"}
)
"""What a Lance dataset folder holds."""
PARQUET_MAGIC = b"PAR1"


def _foreign_entry(out: Path, format: str) -> str | None:
    """Why ``out`` (which exists) is not an export of ``format``, or None when it is one."""
    if format == "parquet":
        return _foreign_parquet(out)
    if not out.is_dir():
        return "a file, not a folder"
    entries = sorted(out.iterdir())
    if format == "lance":
        for entry in entries:
            if entry.name not in _LANCE_ENTRIES:
                return f"it holds {entry.name!r}"
        if entries and not (out / "_versions").is_dir():
            return "no _versions folder"
        return None
    for entry in entries:
        pattern = _NPY_FILES.get(entry.name)
        if pattern is None or entry.is_symlink() or not entry.is_dir():
            return f"it holds {entry.name!r}"
        for item in entry.iterdir():
            if item.is_symlink() or not item.is_file() or not pattern.fullmatch(item.name):
                return f"it holds {entry.name + '/' + item.name!r}"
    return None


def _foreign_parquet(out: Path) -> str | None:
    """Why the file ``out`` is not an earlier Parquet export (one whose schema metadata has
    the ``featcache`` key), or None when it is one."""
    import pyarrow.parquet as pq

    try:
        with open(out, "rb") as handle:
            head = handle.read(4)
        if head == b"":
            return "an empty file, not an export"
        if head != PARQUET_MAGIC:
            return "not a Parquet file"
        metadata = pq.read_schema(out).metadata or {}
    except OSError as exc:  # pyarrow's ArrowInvalid is a ValueError
        return f"cannot be read: {first_line(exc)}"
    except ValueError:
        return "not a whole Parquet file"
    return None if SCHEMA_KEY in metadata else "a Parquet file featcache did not write"


def _local_root(dataset_root: str) -> Path | None:
    """The cache's dataset folder when it is a local path (not a URL), resolved."""
    if not dataset_root or "://" in dataset_root:
        return None
    return Path(dataset_root).expanduser().resolve()


# -- reading -----------------------------------------------------------------------------


@dataclass
class _Source:
    """The cache and what the export makes of it."""

    reader: CacheReader
    paths: list[str]
    """The path column: cache paths, or ``dataset_root/path`` (``absolute_paths``)."""
    normalized: bool
    absolute: bool


def _paths(reader: CacheReader, absolute: bool) -> list[str]:
    """The cache's paths, joined to its dataset folder when ``absolute``."""
    if not absolute:
        return list(reader.paths)
    root = reader.settings.dataset_root
    if not root:
        raise InvalidOptionError(
            f"{reader.path}: the cache records no dataset folder; export relative paths",
            "absolute_paths",
        )
    local = _local_root(root)
    prefix = str(local) + os.sep if local is not None else root.rstrip("/") + "/"
    return [prefix + path for path in reader.paths]


FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass
class _Chunk:
    rows: np.ndarray
    features: np.ndarray
    """``(len(rows), D)`` of the export dtype, C-contiguous."""


def _chunks(
    src: _Source, dtype: np.dtype, chunk_bytes: int, advance: Callable[[int], Any]
) -> Iterator[_Chunk]:
    """The cache's rows in order, a chunk of about ``chunk_bytes`` of float32 at a time,
    normalised when asked; a value float16 cannot hold is refused (it would become inf)."""
    rows = max(1, chunk_bytes // (4 * max(src.reader.feature_dim, 1)))
    for picked, features in src.reader.batches(batch_size=rows):
        if src.normalized:
            norms = np.linalg.norm(features, axis=1, keepdims=True)
            scale = np.where(norms > 0, norms, 1.0).astype(np.float32)
            if features.flags.writeable:  # in place: no second chunk in memory
                np.divide(features, scale, out=features)
            else:
                features = features / scale
        if dtype == np.float16 and len(features):
            largest = float(np.nanmax(np.abs(features), initial=0.0))
            if np.isfinite(largest) and largest > FLOAT16_MAX:
                raise InvalidOptionError(
                    f"dtype 'float16': a feature of {largest:.6g} is above float16's largest "
                    f"{FLOAT16_MAX:g} (it would become inf); export float32 or normalize",
                    "dtype",
                )
        yield _Chunk(picked, np.ascontiguousarray(features, dtype=dtype))
        advance(len(picked))


def _metadata(pa: Any, src: _Source, rows: np.ndarray, path_column: str) -> dict[str, Any]:
    """The metadata columns of ``rows`` as pyarrow arrays."""
    reader = src.reader
    labels = reader.labels[rows].astype(np.int32)
    names = reader.class_names
    classes = [names[v] if 0 <= v < len(names) else None for v in labels.tolist()]
    return {
        path_column: pa.array([src.paths[i] for i in rows.tolist()], pa.string()),
        "label": pa.array(labels, pa.int32()),
        "class": pa.array(classes, pa.string()),
        "split": pa.array([SPLIT_NAMES[s] for s in reader.split[rows].tolist()], pa.string()),
        "sha256": pa.array([reader.sha256[i] for i in rows.tolist()], pa.string()),
    }


def _schema(pa: Any, src: _Source, dtype: np.dtype, path_column: str, features: bool) -> Any:
    reader = src.reader
    value = pa.from_numpy_dtype(dtype)
    fields = [
        pa.field(path_column, pa.string(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),
        pa.field("class", pa.string()),
        pa.field("split", pa.string(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
    ]
    if features:
        fields.append(pa.field("features", pa.list_(value, reader.feature_dim), nullable=False))
    about = {
        "cache": str(reader.path),
        "class_names": reader.class_names,
        "feature_dim": reader.feature_dim,
        "dtype": str(dtype),
        "normalized": src.normalized,
        "paths": "absolute" if src.absolute else "relative to settings.dataset_root",
        "settings": {k: v for k, v in reader.attrs.items() if k != "class_names"},
    }
    return pa.schema(fields, metadata={SCHEMA_KEY: json.dumps(about, default=str).encode()})


def _batch(pa: Any, src: _Source, chunk: _Chunk, schema: Any) -> Any:
    columns = _metadata(pa, src, chunk.rows, "path")
    flat = pa.array(chunk.features.reshape(-1), pa.from_numpy_dtype(chunk.features.dtype))
    columns["features"] = pa.FixedSizeListArray.from_arrays(flat, src.reader.feature_dim)
    return pa.record_batch(list(columns.values()), schema=schema)


# -- writing -----------------------------------------------------------------------------


def _write_parquet(
    pa: Any, src: _Source, tmp: Path, chunks: Iterator[_Chunk], dtype: np.dtype
) -> None:
    import pyarrow.parquet as pq

    schema = _schema(pa, src, dtype, "path", features=True)
    # no dictionary pages for columns of unique values (features, path, sha256)
    with pq.ParquetWriter(tmp, schema, use_dictionary=["label", "class", "split"]) as writer:
        for chunk in chunks:
            writer.write_batch(_batch(pa, src, chunk, schema))
    _fsync(tmp)


def _write_npy(pa: Any, src: _Source, tmp: Path, chunks: Iterator[_Chunk], dtype: np.dtype) -> None:
    import pyarrow.parquet as pq

    tmp.mkdir()
    array_path, meta_path = tmp / NPY_EMBEDDINGS, tmp / NPY_METADATA
    array_path.parent.mkdir()
    meta_path.parent.mkdir()
    schema = _schema(pa, src, dtype, "image_path", features=False)
    header = {
        "descr": np.lib.format.dtype_to_descr(dtype),
        "fortran_order": False,
        "shape": (len(src.reader), src.reader.feature_dim),
    }
    # the header, then the rows in order, appended a chunk at a time (np.load reads it)
    with open(array_path, "wb") as array, pq.ParquetWriter(meta_path, schema) as meta:
        np.lib.format.write_array_header_1_0(array, header)
        for chunk in chunks:
            array.write(chunk.features.data)  # C-contiguous: its bytes in row order
            columns = _metadata(pa, src, chunk.rows, "image_path")
            meta.write_batch(pa.record_batch(list(columns.values()), schema=schema))
    _fsync(array_path)
    _fsync(meta_path)


def _write_lance(
    pa: Any, src: _Source, tmp: Path, chunks: Iterator[_Chunk], dtype: np.dtype
) -> None:
    import lance

    schema = _schema(pa, src, dtype, "path", features=True)
    batches = (_batch(pa, src, chunk, schema) for chunk in chunks)
    lance.write_dataset(pa.RecordBatchReader.from_batches(schema, batches), tmp, schema=schema)
    for path in sorted(tmp.rglob("*")):  # on disk before it is renamed into place
        if path.is_file():
            _fsync(path)
    for folder in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
        fsync_dir(folder)


# -- replacing ---------------------------------------------------------------------------


def _replace(tmp: Path, out: Path) -> None:
    """Put the finished ``tmp`` at ``out``; an old ``out`` goes only after that."""
    if not (out.exists() or out.is_symlink()):
        os.replace(tmp, out)
        return
    if tmp.is_file() and not out.is_dir():
        os.replace(tmp, out)  # atomic
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        os.replace(old, out)
        raise
    _remove(old)


def _remove(path: Path) -> None:
    """Remove a file or folder if there is one (a cleanup: never raises)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
        return
    try:
        path.unlink(missing_ok=True)
    except OSError:  # e.g. its folder is a file: there is nothing to remove
        pass


def _identity(path: Path) -> tuple[int, int, int] | None:
    """What changes when a writer replaces the cache (a checkpoint is a new file)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())
