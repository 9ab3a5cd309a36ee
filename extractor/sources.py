"""Reading a dataset: class folders, flat folders, split folders or ``.npy`` arrays.

:func:`scan_dataset` lists the images (cheap: no decoding); :meth:`Dataset.read`
returns one item's raw content and its SHA-256.

Hostile entries never stop a run: a name that is not valid UTF-8 (the cache stores UTF-8
paths) is listed under a printable escaped path and reported bad; only regular files are
read (a FIFO, socket or device named like an image is reported bad, never opened
blocking); ``.npy`` images over ``max_pixels`` and labels out of range are refused up front.

:meth:`Dataset.stat` is what a rerun looks at instead of reading a cached file again.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..core.options import DEFAULT_MAX_PIXELS, MAX_CLASSES
from ..core.splits import SPLIT_FOLDERS
from ..errors import DatasetError
from ..store.known import FileStat
from .decode import IMAGE_EXTENSIONS, UnusableFileError


@dataclass(frozen=True)
class Item:
    """One image of a dataset."""

    path: str
    """Path relative to the dataset root with ``/`` separators (``file.npy#i`` for arrays)."""
    class_name: str | None
    """Class folder (or label) name; None when unlabelled."""
    split: int | None
    """Split fixed by the layout (``train/``, ``val/``, ``test/``), else None."""
    index: int = -1
    """Row of the ``.npy`` array, -1 for files."""


@dataclass
class Dataset:
    """The images of one dataset, in a stable (sorted) order."""

    root: Path
    """Folder, or ``.npy`` file for array datasets."""
    layout: str
    """``classes``, ``flat``, ``splits`` or ``npy``."""
    items: list[Item]
    class_names: list[str]
    ignored: int = 0
    """Files skipped because their name does not end like an image."""
    _array: np.ndarray | None = field(default=None, repr=False)
    confine: Path | None = None
    """When set, files whose real path (symlinks followed) leaves it are refused."""
    unusable: dict[str, str] = field(default_factory=dict)
    """Listed paths that are never read, with their bad-file reason (names that are not
    valid UTF-8, listed under :func:`printable_path`)."""
    array_stat: FileStat | None = None
    """The ``.npy`` file's stat, taken before it was opened (the stat of every row)."""

    def stat(self, item: Item) -> FileStat | None:
        """The stat of the file :meth:`read` would read (the ``.npy`` file for array rows),
        without reading it; None when :meth:`read` would refuse it or it cannot be
        stat'ed (reading it then says why)."""
        if self._array is not None:
            return self.array_stat
        if item.path in self.unusable:
            return None
        path = self.root / item.path
        if self.confine is not None and not is_within(path, self.confine):
            return None
        try:
            result = os.stat(path)
        except (OSError, ValueError):
            return None
        return FileStat.of(result) if stat.S_ISREG(result.st_mode) else None

    def read(self, item: Item) -> tuple[bytes | np.ndarray, str]:
        """Raw content (file bytes, or the array row) and its SHA-256 hex digest.

        Raises OSError when a file cannot be read (:class:`UnusableFileError`, whose message
        is the reason, for entries that are never read: see :func:`read_regular_file`).
        """
        if self._array is not None:
            row = np.asarray(self._array[item.index])
            header = f"{row.dtype.str}{row.shape}".encode()
            return row, hashlib.sha256(header + row.tobytes()).hexdigest()
        reason = self.unusable.get(item.path)
        if reason is not None:
            raise UnusableFileError(reason)
        path = self.root / item.path
        if self.confine is not None and not is_within(path, self.confine):
            raise PermissionError(errno.EACCES, "links outside the data root")
        data = read_regular_file(path)
        return data, hashlib.sha256(data).hexdigest()


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
"""Non-blocking, so that a FIFO swapped in after the check cannot block the open."""


def read_regular_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of ``path`` (symlinks followed) when it is a regular file.

    Anything else (FIFO, socket, device, folder) raises :class:`UnusableFileError` with
    ``not a regular file (FIFO)`` as the reason, without being opened; the file is opened
    non-blocking and checked again once open, so a swap after the check cannot block.
    """
    _check_regular(os.stat(path).st_mode)
    fd = os.open(path, _OPEN_FLAGS)
    try:
        _check_regular(os.fstat(fd).st_mode)
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        return handle.read()


def _check_regular(mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISFIFO(mode):
        kind = "FIFO"
    elif stat.S_ISSOCK(mode):
        kind = "socket"
    elif stat.S_ISCHR(mode):
        kind = "character device"
    elif stat.S_ISBLK(mode):
        kind = "block device"
    elif stat.S_ISDIR(mode):
        kind = "folder"
    else:
        kind = "special file"
    raise UnusableFileError(f"not a regular file ({kind})")


def printable_path(path: str) -> str:
    """``path`` as valid UTF-8: bytes of its name that are not UTF-8 (which Python keeps as
    surrogate escapes) become ``\\xff``; valid names are returned unchanged."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _name_problem(path: str) -> str | None:
    """The bad-file reason of a root-relative path with a name that is not UTF-8."""
    if _is_utf8(path):
        return None
    for folder in path.split("/")[:-1]:
        if not _is_utf8(folder):
            return f"folder name '{printable_path(folder)}' is not valid UTF-8; rename it"
    return "file name is not valid UTF-8; rename it"


def _printable_rows(
    rows: list[tuple[str, str | None, int | None]],
) -> tuple[list[tuple[str, str | None, int | None]], dict[str, str], int]:
    """``rows`` with every path valid UTF-8, the unusable ones, and how many were dropped.

    A path that is not UTF-8 is kept under its printable form, without a class, and
    recorded as unusable; one whose printable form is already taken (by a real file of
    that name, or another such path) is left out and counted as ignored.
    """
    taken = {path for path, _, _ in rows if _is_utf8(path)}
    kept: list[tuple[str, str | None, int | None]] = []
    unusable: dict[str, str] = {}
    dropped = 0
    for path, cls, split in rows:
        reason = _name_problem(path)
        if reason is None:
            kept.append((path, cls, split))
            continue
        shown = printable_path(path)
        if shown in taken or shown in unusable:
            dropped += 1
            continue
        unusable[shown] = reason
        kept.append((shown, None, split))
    return kept, unusable, dropped


def is_within(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """True when ``path``, with every symlink followed, lies inside ``root``."""
    real = os.path.realpath(path)
    base = os.path.realpath(root)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _walk_files(folder: Path, root: Path) -> tuple[list[str], int]:
    """Image files below ``folder`` as sorted root-relative paths, and the ignored count."""
    found: list[str] = []
    ignored = 0
    for current, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if _visible(d))
        for name in files:
            if not _visible(name):
                continue
            if _is_image(name):
                found.append((Path(current) / name).relative_to(root).as_posix())
            else:
                ignored += 1
    return sorted(found), ignored


def _subdirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and _visible(e.name))


def _scan_folder(
    folder: Path, root: Path, split: int | None
) -> tuple[list[tuple[str, str | None, int | None]], set[str], int]:
    """(path, class, split) rows of one folder: classes if it has sub-folders, else flat."""
    classes = _subdirs(folder)
    rows: list[tuple[str, str | None, int | None]] = []
    ignored = 0
    if classes:
        for name in classes:
            files, skipped = _walk_files(folder / name, root)
            rows.extend((path, name, split) for path in files)
            ignored += skipped
        ignored += sum(1 for e in os.scandir(folder) if e.is_file() and _visible(e.name))
    else:
        files, ignored = _walk_files(folder, root)
        rows.extend((path, None, split) for path in files)
    return rows, set(classes), ignored


def scan_dataset(
    data: str | os.PathLike[str],
    labels: str | None = None,
    confine: Path | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Dataset:
    """List the images of a dataset without decoding them.

    ``data`` is a folder of class sub-folders (labels are the sorted folder names, as
    ``image_dataset_from_directory``), a flat folder (unlabelled), a folder whose
    top level is ``train/``, ``val/`` or ``validation/``, ``test/``, or an ``.npy``
    array of images with optional ``labels`` (an ``.npy`` of integers).

    With ``confine``, files (and labels) whose real path leaves that folder are left out
    and counted as ignored, and are refused if they change into links later. An ``.npy``
    array whose images have more than ``max_pixels`` pixels is refused.
    """
    root = Path(data).expanduser()
    shown = printable_path(os.fspath(data))
    if not root.exists():
        raise DatasetError(f"{shown}: no such file or folder")
    root = root.resolve()
    if not _is_utf8(str(root)):  # the cache records the dataset root as UTF-8
        raise DatasetError(
            f"{printable_path(str(root))}: the data path is not valid UTF-8; rename it"
        )
    if root.is_file():
        if root.suffix.lower() != ".npy":
            raise DatasetError(f"{shown}: expected a folder of images or an .npy array")
        dataset = _scan_npy(root, labels, confine, max_pixels)
        dataset.confine = confine
        return dataset
    if labels is not None:
        raise DatasetError("labels apply to .npy datasets only; folders label by sub-folder")
    top = _subdirs(root)
    if top and all(name.lower() in SPLIT_FOLDERS for name in top):
        layout = "splits"
        rows: list[tuple[str, str | None, int | None]] = []
        classes: set[str] = set()
        ignored = 0
        for name in top:
            part, part_classes, skipped = _scan_folder(
                root / name, root, SPLIT_FOLDERS[name.lower()]
            )
            rows.extend(part)
            classes |= part_classes
            ignored += skipped
    else:
        rows, classes, ignored = _scan_folder(root, root, None)
        layout = "classes" if classes else "flat"
    if confine is not None:
        kept = [row for row in rows if is_within(root / row[0], confine)]
        ignored += len(rows) - len(kept)
        rows = kept
        classes = {cls for _, cls, _ in rows if cls is not None}
    if not rows:
        raise DatasetError(f"{shown}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found")
    rows, unusable, dropped = _printable_rows(rows)
    classes = {cls for cls in classes if _is_utf8(cls)}  # its files are unusable
    items = [Item(path, cls, split) for path, cls, split in sorted(rows)]
    return Dataset(
        root, layout, items, sorted(classes), ignored + dropped, confine=confine, unusable=unusable
    )


def _sibling_labels(images: Path) -> Path | None:
    """``y_train.npy`` for ``x_train.npy``, ``labels.npy`` for ``images.npy`` and the like."""
    stem = images.stem
    candidates = [stem.replace("images", "labels"), stem + "_labels"]
    if stem.lower().startswith("x"):
        candidates.append("y" + stem[1:])
    for candidate in candidates:
        path = images.with_name(candidate + ".npy")
        if candidate != stem and path.is_file():
            return path
    return None


def _scan_npy(path: Path, labels: str | None, confine: Path | None, max_pixels: int) -> Dataset:
    try:
        # before opening: a change after this stat shows in the next run's stat
        array_stat = FileStat.of(os.stat(path))
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DatasetError(f"{path}: not a readable .npy array ({exc})") from None
    if array.ndim not in (3, 4) or (array.ndim == 4 and array.shape[3] not in (1, 3, 4)):
        raise DatasetError(
            f"{path}: image array must be (N, H, W) or (N, H, W, 1|3|4), got {array.shape}"
        )
    if array.dtype.kind not in "uif":
        raise DatasetError(f"{path}: image array has unsupported dtype {array.dtype}")
    height, width = array.shape[1:3]
    if height * width > max_pixels:  # every row would be bad: one line, before reading any
        raise DatasetError(
            f"{path}: images of {height}x{width} pixels are over the max_pixels limit of "
            f"{max_pixels}"
        )
    label_path = Path(labels) if labels is not None else _sibling_labels(path)
    if label_path is not None and confine is not None and not is_within(label_path, confine):
        raise DatasetError(f"{label_path.name}: the labels file leads out of the data root")
    names: list[str] = []
    label_values: np.ndarray | None = None
    if label_path is not None:
        try:
            label_values = np.load(label_path, allow_pickle=False).reshape(-1)
        except (ValueError, OSError) as exc:
            raise DatasetError(f"{label_path}: not a readable .npy array ({exc})") from None
        if label_values.dtype.kind not in "iu" or len(label_values) != len(array):
            raise DatasetError(
                f"{label_path}: expected {len(array)} integer labels, got "
                f"{len(label_values)} of dtype {label_values.dtype}"
            )
        _check_labels(label_path, label_values)
        top = int(label_values.max()) if len(label_values) else -1
        names = [str(i) for i in range(top + 1)]
    if len(array) == 0:
        raise DatasetError(f"{path}: the array holds no images")
    items = []
    for i in range(len(array)):
        label = -1 if label_values is None else int(label_values[i])
        items.append(
            Item(array_row_path(path.name, i), names[label] if label >= 0 else None, None, i)
        )
    return Dataset(path, "npy", items, names, 0, array, array_stat=array_stat)


def _check_labels(path: Path, values: np.ndarray) -> None:
    """Refuse labels of ``MAX_CLASSES`` or more: a stray huge value would otherwise build a
    class list that long. Negative labels mean unlabelled rows, as they always did."""
    if not len(values):
        return
    high = values.max()  # compared as a NumPy integer: uint64 is exact
    if high >= MAX_CLASSES:
        raise DatasetError(
            f"{path}: label {int(high)} is out of range; labels must be below {MAX_CLASSES} "
            f"(at most {MAX_CLASSES} classes; a negative label marks an unlabelled row)"
        )


_ROW_MARK = "#"


def array_row_path(name: str, index: int) -> str:
    """The path a cache records for row ``index`` of the array file ``name``: ``x.npy#3``."""
    return f"{name}{_ROW_MARK}{index}"


def item_from_path(path: str) -> Item:
    """The :class:`Item` a cache row's path names (an array row for ``x.npy#3``), without
    class or split; enough for :meth:`Dataset.read`."""
    name, _, index = path.rpartition(_ROW_MARK)
    if name and index.isdigit():
        return Item(path, None, None, int(index))
    return Item(path, None, None)


def open_source(root: str | os.PathLike[str]) -> Dataset:
    """A cache's dataset (its ``dataset_root``), for reading items by the paths the cache
    records (:func:`item_from_path`); nothing is listed."""
    path = Path(root)
    if path.is_file():
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DatasetError(f"{path}: not a readable .npy array ({exc})") from None
        return Dataset(path, "npy", [], [], 0, array)
    if path.is_dir():
        return Dataset(path, "classes", [], [])
    raise DatasetError(f"the cache's dataset {path} is missing")


def shard_of(path: str, count: int) -> int:
    """The shard (0 to ``count - 1``) of a dataset path: the first 8 bytes of the SHA-256
    of its UTF-8 form, mod ``count``; the same on every machine and every run."""
    digest = hashlib.sha256(path.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % count


def take_shard(dataset: Dataset, shard: tuple[int, int] | None) -> Dataset:
    """``dataset`` with only the items of shard ``(index, count)`` (:func:`shard_of`); the
    class names stay the whole dataset's, so every shard's cache has the same."""
    if shard is None:
        return dataset
    index, count = shard
    items = [item for item in dataset.items if shard_of(item.path, count) == index]
    unusable = {p: r for p, r in dataset.unusable.items() if shard_of(p, count) == index}
    return replace(dataset, items=items, unusable=unusable)
