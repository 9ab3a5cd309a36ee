"""Decode modes on camera-size photos: decode+resize cost per core, and ``extract`` against
the model alone.

Usage (from the repository root)::

    python benchmarks/bench_decode.py \
        --weights examples/weights/mobilenet_1_0_224_imagenet_notop.weights.h5 \
        --photos /usr/share/backgrounds --images 96 --repeats 3 --json results-decode.json

(1) Per core: one real photograph (the most detailed under ``--photos``; Debian's wallpaper
    packages ``ukui-wallpapers lomiri-wallpapers-20.04 mate-backgrounds`` hold some) cropped
    to 4:3 and resized (Lanczos) to 1, 3, 12 and 24 MP, saved as JPEG (quality 90) and PNG;
    ``decode_and_resize`` to 224x224 (stretch) for each decode mode, in a fresh process
    pinned to one core with TensorFlow on one thread; the median of ``--decode-repeats``.
    The same for ``smooth`` sources: a Fashion-MNIST image upscaled (bicubic), whose JPEGs
    are a tenth the size (JPEG decoding time grows with the compressed bits).
(2) ``extract`` vs the model alone, fresh processes, both cores: ``--images`` distinct
    12 MP JPEGs (crops of the photographs, 4032x3024, quality 90), as many upscaled
    Fashion-MNIST 12 MP JPEGs and as many 224 px PNGs (Fashion-MNIST upscaled); (a) the
    model alone on decoded 224 px tensors in memory, batches of 32, (b) ``extract --decode
    MODE`` to a new cache (load time excluded), runs interleaved, the median of
    ``--repeats``; the ratio is b / a.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import write_jpeg_folder

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

MODES = ("exact", "fast", "antialias")
MEGAPIXELS = {1: (1152, 864), 3: (2000, 1500), 12: (4032, 3024), 24: (5664, 4248)}


def _photos(folder: Path) -> list[Path]:
    """Real photographs of 8 MP or more under ``folder``, the most detailed (most JPEG
    bits per pixel) first: a smooth illustration decodes faster than a camera photo."""
    found = []
    for path in folder.rglob("*"):
        if path.suffix.lower() in (".jpg", ".jpeg"):
            with Image.open(path) as image:
                pixels = image.size[0] * image.size[1]
            if pixels >= 8_000_000:
                found.append((path.stat().st_size * 8 / pixels, path))
    if not found:
        raise SystemExit(f"no JPEG photographs of 8 MP or more under {folder} (see the usage)")
    return [p for _, p in sorted(found, reverse=True)]


def _camera(path: Path, size: tuple[int, int], shift: int = 0, flip: bool = False) -> Image.Image:
    """``path`` cropped to the aspect of ``size`` (offset by ``shift`` %) and resized."""
    with Image.open(path) as image:
        image = image.convert("RGB")
    width, height = image.size
    aspect = size[0] / size[1]
    crop_w, crop_h = (
        (int(height * aspect), height) if width / height > aspect else (width, int(width / aspect))
    )
    left = (width - crop_w) * shift // 100
    top = (height - crop_h) // 2
    image = image.crop((left, top, left + crop_w, top + crop_h)).resize(size, Image.LANCZOS)
    return image.transpose(Image.FLIP_LEFT_RIGHT) if flip else image


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, quality=90)
    return buffer.getvalue()


def _upscaled(index: int, size: tuple[int, int]) -> Image.Image:
    """Fashion-MNIST image ``index`` upscaled (bicubic) to ``size``: smooth, so its JPEG
    is small (the kind of file issue 27's first figures were measured on)."""
    from datasets import load_fashion_mnist

    images, _, _ = load_fashion_mnist("train")
    return Image.fromarray(images[index]).resize(size, Image.BICUBIC).convert("RGB")


def make_sources(photos: list[Path], data: Path) -> dict[str, Path]:
    """One file per (kind, megapixels, format): ``{"photo 12MP.jpg": path, ...}``; kind
    ``photo`` (the most detailed photograph) or ``smooth`` (upscaled Fashion-MNIST)."""
    data.mkdir(parents=True, exist_ok=True)
    out = {}
    for kind in ("photo", "smooth"):
        for mp, size in MEGAPIXELS.items():
            image = None
            for fmt, ext in (("JPEG", "jpg"), ("PNG", "png")):
                path = data / f"{kind}-{mp}MP.{ext}"
                if not path.exists():
                    if image is None:
                        image = _camera(photos[0], size) if kind == "photo" else _upscaled(0, size)
                    path.write_bytes(_encoded(image, fmt))
                out[f"{kind} {mp}MP.{ext}"] = path
    return out


def smooth_folder(data: Path, count: int) -> Path:
    """``count`` Fashion-MNIST images upscaled to 4032x3024 JPEGs (quality 90)."""
    folder = data / f"smooth12-{count}"
    marker = folder / ".complete"
    if marker.exists():
        return folder
    for i in range(count):
        target = folder / f"class_{i % 2}" / f"img_{i:04d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_encoded(_upscaled(i, MEGAPIXELS[12]), "JPEG"))
    marker.touch()
    return folder


def camera_folder(photos: list[Path], data: Path, count: int) -> Path:
    """``count`` distinct 12 MP JPEGs (crops and mirrors of the photographs), 2 classes."""
    folder = data / f"camera12-{count}"
    marker = folder / ".complete"
    if marker.exists():
        return folder
    for i in range(count):
        photo = photos[i % len(photos)]
        image = _camera(
            photo, MEGAPIXELS[12], shift=(i * 37) % 101, flip=bool(i // len(photos) % 2)
        )
        target = folder / f"class_{i % 2}" / f"img_{i:04d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_encoded(image, "JPEG"))
    marker.touch()
    return folder


def decode_costs(sources: dict[str, Path], repeats: int) -> dict:
    """(In a child pinned to one core.) Median ms of ``decode_and_resize`` per mode."""
    from featcache.extractor.decode import decode_and_resize

    out: dict = {}
    for name, path in sources.items():
        data = path.read_bytes()
        row = {"bytes": len(data)}
        for mode in MODES:
            decode_and_resize(data, (224, 224), "stretch", decode=mode)  # warm up the ops
            times = []
            for _ in range(repeats):
                began = time.perf_counter()
                decode_and_resize(data, (224, 224), "stretch", decode=mode)
                times.append(time.perf_counter() - began)
            row[mode] = round(1000 * float(np.median(times)), 1)
        row["exact/fast"] = round(row["exact"] / row["fast"], 2)
        out[name] = row
        print(name, row, file=sys.stderr, flush=True)
    return out


def thread_scaling(path: Path, count: int = 16) -> dict:
    """Images per second of ``decode_and_resize`` on 1 thread and on every core's thread
    (do decoding threads run in parallel, the GIL released?)."""
    from concurrent.futures import ThreadPoolExecutor

    from featcache.extractor.decode import decode_and_resize

    data = path.read_bytes()
    cores = len(os.sched_getaffinity(0))
    out: dict = {"cores": cores}
    for mode in MODES:
        decode_and_resize(data, (224, 224), "stretch", decode=mode)
        rates = {}
        for threads in sorted({1, cores}):
            with ThreadPoolExecutor(threads) as pool:
                began = time.perf_counter()
                list(
                    pool.map(
                        lambda _, m=mode: decode_and_resize(data, (224, 224), "stretch", decode=m),
                        range(count),
                    )
                )
                rates[threads] = count / (time.perf_counter() - began)
        out[mode] = {
            "images_per_second": {k: round(v, 1) for k, v in rates.items()},
            "speedup": round(rates[cores] / rates[1], 2),
        }
    return out


def model_only(weights: str, folder: Path, batch: int) -> dict:
    from featcache.backbones.backbone import BackboneConfig, FeatureExtractor, resolve_backbone
    from featcache.extractor.decode import decode_and_resize

    files = sorted(p for p in folder.rglob("*") if p.suffix in (".jpg", ".png"))
    images = np.stack(
        [decode_and_resize(p.read_bytes(), (224, 224), "stretch", decode="fast") for p in files]
    )
    extractor = FeatureExtractor(resolve_backbone(BackboneConfig("mobilenet", weights, 224)))
    extractor(images[:batch])  # trace and warm up
    began = time.monotonic()
    for start in range(0, len(images), batch):
        extractor(images[start : start + batch])
    seconds = time.monotonic() - began
    return {"images_per_second": len(images) / seconds}


def end_to_end(weights: str, folder: Path, batch: int, decode: str) -> dict:
    import tensorflow  # noqa: F401 - imported first, as the model-only row has it

    from featcache import extract

    with tempfile.TemporaryDirectory() as tmp:
        summary = extract(
            folder,
            backbone="mobilenet",
            weights=weights,
            image_size=224,
            decode=decode,
            output=Path(tmp) / "bench.h5",
            batch_size=batch,
            progress=False,
        )
    seconds = summary.seconds - summary.load_seconds
    return {"images_per_second": summary.new / seconds}


def _child(args: list[str]) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        raise SystemExit(f"{args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    model = next(
        (ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), ""
    )
    flags = next(
        (ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []
    )
    wanted = [f for f in flags if f.startswith(("avx512", "amx", "avx2", "avx_vnni"))]
    return f"{model}; {' '.join(sorted(wanted))}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default="none")
    parser.add_argument("--photos", default="/usr/share/backgrounds")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-repeats", type=int, default=7)
    parser.add_argument("--skip", default="", help="comma-separated: costs, extract")
    parser.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "featcache-decode"))
    parser.add_argument("--json", dest="json_out")
    parser.add_argument("--prepare-only", action="store_true", help="write the images, stop")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    data = Path(args.data)
    if args.one:  # a fresh child process
        kind, _, rest = args.one.partition(":")
        if kind == "costs":
            os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
            sources = json.loads(rest)
            row = decode_costs({k: Path(v) for k, v in sources.items()}, args.decode_repeats)
        elif kind == "threads":
            row = thread_scaling(Path(rest))
        elif kind == "model":
            row = model_only(args.weights, Path(rest), args.batch_size)
        else:
            mode, _, folder = rest.partition(":")
            row = end_to_end(args.weights, Path(folder), args.batch_size, mode)
        print(json.dumps(row))
        return
    skip = set(args.skip.split(","))
    photos = _photos(Path(args.photos))
    results: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores; {_cpu_flags()}",
        "load_average_at_start": os.getloadavg(),
        "photo": str(photos[0]),
    }
    if "costs" not in skip and not args.prepare_only:
        sources = make_sources(photos, data)
        payload = json.dumps({k: str(v) for k, v in sources.items()})
        results["decode_ms_per_image_one_core"] = _child(["--one", f"costs:{payload}"])
        print(json.dumps(results["decode_ms_per_image_one_core"]), flush=True)
        results["decode_threads"] = _child(["--one", f"threads:{sources['photo 12MP.jpg']}"])
        print(json.dumps(results["decode_threads"]), flush=True)
    folders = {
        "photos 12MP.jpg": camera_folder(photos, data, args.images),
        "smooth 12MP.jpg": smooth_folder(data, args.images),
        "fashion-mnist 224px.png": write_jpeg_folder(
            data / f"png224-{args.images}", args.images, 224, fmt="PNG"
        ),
    }
    for name, folder in folders.items():
        files = [p for p in folder.rglob("*") if p.suffix in (".jpg", ".png")]
        size = sum(p.stat().st_size for p in files) / len(files)
        results.setdefault("folders", {})[name] = {"files": len(files), "mean_bytes": int(size)}
    if args.prepare_only:
        make_sources(photos, data)
        print(json.dumps(results["folders"]))
        return
    if "extract" not in skip:
        table: dict = {}
        for name, folder in folders.items():
            runs: dict = {"model": [], **{m: [] for m in MODES}}
            for _ in range(args.repeats):
                common = ["--weights", args.weights, "--batch-size", str(args.batch_size)]
                runs["model"].append(_child([*common, "--one", f"model:{folder}"]))
                for mode in MODES:
                    runs[mode].append(_child([*common, "--one", f"extract:{mode}:{folder}"]))
            rates = {k: sorted(r["images_per_second"] for r in v) for k, v in runs.items()}
            median = {k: v[len(v) // 2] for k, v in rates.items()}
            table[name] = {
                "images_per_second": {k: round(v, 1) for k, v in median.items()},
                "all_rates": {k: [round(x, 1) for x in v] for k, v in rates.items()},
                "ratio_to_model": {m: round(median[m] / median["model"], 2) for m in MODES},
            }
            print(name, json.dumps(table[name]), flush=True)
        results["extract_vs_model"] = table
    results["load_average_at_end"] = os.getloadavg()
    text = json.dumps(results, indent=1)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")


if __name__ == "__main__":
    main()
