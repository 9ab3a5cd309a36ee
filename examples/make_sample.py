"""Build a small labelled PNG sample of Fashion-MNIST.

Reads the idx files shipped by Debian's ``dataset-fashion-mnist`` package (plain or
gzipped) with numpy only, and writes the first N images of each class, in file order, to
``<out>/<class_name>/<split>_<index:05d>.png`` where ``index`` is the image's position in
the source file. The output is deterministic: the same input gives the same bytes.

Usage::

    python examples/make_sample.py --set test --per-class 30
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_OUT = Path(__file__).resolve().parent / "fashion-mnist"

#: Fashion-MNIST class names, indexed by label, as directory-safe lower-case names.
CLASS_NAMES: list[str] = [
    "t-shirt-top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
]

# idx element type codes (third header byte) -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}

# File-name stems of each split, as in the original distribution.
_SPLIT_STEMS: dict[str, str] = {"train": "train", "test": "t10k"}


def _read_bytes(path: Path) -> bytes:
    """Return the file's contents, decompressing it if it is gzipped."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    return data


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one idx file (optionally gzipped) into an array of its stated shape."""
    data = _read_bytes(Path(path))
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an idx file (bad magic)")
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown idx type code 0x{type_code:02x}")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(f"{path}: truncated idx header")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - header_len != count * dtype.itemsize:
        raise ValueError(f"{path}: payload size does not match header shape {shape}")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header_len)
    return array.reshape(shape).astype(dtype.newbyteorder("="))


def load_idx(images_path: str | Path, labels_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Load an images/labels idx pair: (N, 28, 28) uint8 images and (N,) uint8 labels."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1:
        raise ValueError(f"unexpected shapes: images {images.shape}, labels {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    return images.astype(np.uint8), labels.astype(np.uint8)


def find_split(source: str | Path, split: str) -> tuple[Path, Path]:
    """Return the (images, labels) idx paths of ``split`` in ``source``, gzipped or not."""
    stem = _SPLIT_STEMS[split]
    paths = []
    for kind in ("images-idx3", "labels-idx1"):
        base = Path(source) / f"{stem}-{kind}-ubyte"
        for candidate in (base, base.with_name(base.name + ".gz")):
            if candidate.is_file():
                paths.append(candidate)
                break
        else:
            raise FileNotFoundError(f"no {base.name}[.gz] in {source}")
    return paths[0], paths[1]


def write_sample(
    images: np.ndarray,
    labels: np.ndarray,
    out_dir: str | Path,
    per_class: int,
    prefix: str,
) -> int:
    """Write the first ``per_class`` images of each class as PNGs; return how many.

    Files are ``<out_dir>/<class_name>/<prefix>_<index:05d>.png``. Older
    ``<prefix>_*.png`` files in those class folders are removed first, so that the
    folder holds exactly this sample.
    """
    out = Path(out_dir)
    written = 0
    for label, name in enumerate(CLASS_NAMES):
        class_dir = out / name
        class_dir.mkdir(parents=True, exist_ok=True)
        for stale in class_dir.glob(f"{prefix}_*.png"):
            stale.unlink()
        for index in np.flatnonzero(labels == label)[:per_class]:
            image = Image.fromarray(np.ascontiguousarray(images[index]))
            image.save(class_dir / f"{prefix}_{int(index):05d}.png", optimize=True)
            written += 1
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="idx files folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--per-class", type=int, default=30, help="images per class")
    parser.add_argument("--set", dest="split", choices=("train", "test"), default="test")
    args = parser.parse_args(argv)
    if args.per_class < 0:
        parser.error("--per-class must be >= 0")

    images_path, labels_path = find_split(args.source, args.split)
    images, labels = load_idx(images_path, labels_path)
    count = write_sample(images, labels, args.out, args.per_class, args.split)
    print(f"wrote {count} PNGs from {images_path.name} to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
