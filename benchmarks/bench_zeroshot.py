"""The cost of zero-shot classification on cached embeddings (issue 31).

Usage (from the repository root)::

    python benchmarks/bench_zeroshot.py --rows 1000000 --classes 1000 \\
        --json benchmarks/results-zeroshot.json

No real weights can be downloaded here, so no accuracy: a CLIP preset with random weights
whose *text tower* has ViT-B/32's shape (vocabulary 49,408, width 512, 12 layers, 8 heads,
77 tokens, projection 512) is saved with ``save_to_preset`` (its vision tower is tiny: it
does not take part in text encoding or in classifying cached rows; ``--preset`` takes a real
preset folder instead). Its tokenizer is a synthetic byte-pair vocabulary of that size
(every prompt is padded to 77 tokens, so the encoder's work does not depend on it).

Each stage runs in its own subprocess, so that its peak memory (``VmHWM``) is that stage's:

- ``text``: load the text tower, encode ``--classes`` prompts (``a photo of a class N.``),
  twice (the first call traces the graph); seconds and peak memory.
- ``classify``: a real cache of ``--rows`` rows of ``--dim`` float16 features and
  ``--classes`` classes (``CacheWriter``), classified by the saved zero-shot head
  (``head.npz``, no TensorFlow): rows per second and peak memory.
- ``zero-shot``: ``featcache.zero_shot`` end to end on that cache (text tower, classifier,
  metrics with bootstrap intervals on val, test and every row, the run folder).

``uptime``'s load average is recorded: the 2-core machine is shared.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()


def make_preset(folder: Path) -> None:
    """A CLIP preset: ViT-B/32's text tower, a tiny vision tower, random weights."""
    import keras
    import keras_hub

    kh = keras_hub.models
    keras.utils.set_random_seed(0)
    letters = "abcdefghijklmnopqrstuvwxyz0123456789.,"
    vocab: dict[str, int] = {}
    for ch in letters:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    rng = np.random.default_rng(0)
    merges = ["p h", "ph o", "t o</w>", "pho to</w>"]
    for token in ("ph", "pho", "to</w>", "photo</w>"):
        vocab[token] = len(vocab)
    while len(vocab) < 49406:  # filler words: the vocabulary has CLIP's size
        word = "".join(rng.choice(list(letters[:26]), size=int(rng.integers(3, 9))))
        vocab.setdefault(word + "</w>", len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = kh.CLIPTokenizer(vocabulary=vocab, merges=merges)
    vision = kh.CLIPVisionEncoder(32, 64, 2, 2, 128, image_shape=(224, 224, 3))
    text = kh.CLIPTextEncoder(len(vocab), 512, 512, 12, 8, 2048, max_sequence_length=77)
    backbone = kh.CLIPBackbone(vision, text, projection_dim=512)
    converter = keras_hub.layers.ImageConverter(image_size=(224, 224), scale=1 / 255.0)
    preprocessor = kh.CLIPPreprocessor(tokenizer, converter, sequence_length=77)
    backbone.save_to_preset(str(folder))
    preprocessor.save_to_preset(str(folder))


def settings_of(preset: Path, weights: str) -> dict:
    from featcache.backbones.backbone import resolve_backbone
    from featcache.core.settings import BackboneConfig

    resolved = resolve_backbone(BackboneConfig(str(preset), weights=weights, projection=True))
    return resolved.to_dict()


def write_cache(path: Path, preset: Path, weights: str, rows: int, dim: int, classes: int) -> None:
    from featcache.core.settings import CacheSettings, FeatureSettings
    from featcache.store import CacheWriter

    features = FeatureSettings.from_mapping({**settings_of(preset, weights), "feature_dim": dim})
    cache = CacheSettings.of(
        features, dtype="float16", split_ratios=(0.8, 0.1, 0.1), split_source="hash",
        dataset_root=str(path.parent),
    )  # fmt: skip
    names = [f"class {i}" for i in range(classes)]
    paths = [f"img_{i:08d}.png" for i in range(rows)]
    writer = CacheWriter(path, cache, names, {n: i for i, n in enumerate(paths)},
                         checkpoint_seconds=1e9, max_pending_bytes=1 << 62)  # fmt: skip
    rng = np.random.default_rng(0)
    step = 65536
    for start in range(0, rows, step):
        chunk = paths[start : start + step]
        labels = rng.integers(0, classes, len(chunk))
        writer.add(
            chunk,
            [hashlib.sha256(n.encode()).hexdigest() for n in chunk],
            [names[k] for k in labels],
            rng.choice([0, 1, 2], size=len(chunk), p=[0.8, 0.1, 0.1]).tolist(),
            rng.normal(size=(len(chunk), dim)).astype(np.float32),
        )
    writer.commit(final=True)


def peak_mib() -> float:
    """This process's peak resident memory: ``VmHWM`` (``ru_maxrss`` survives ``execve``,
    so a stage's subprocess would report the parent's peak when that was higher)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stage_text(preset: str, weights: str, classes: int) -> dict:
    from featcache.backbones.text_tower import TextTower
    from featcache.core.settings import FeatureSettings

    settings = FeatureSettings.from_mapping(settings_of(Path(preset), weights))
    began = time.perf_counter()
    tower = TextTower.load(settings)
    load = time.perf_counter() - began
    prompts = [f"a photo of a class {i}." for i in range(classes)]
    times = []
    for _ in range(2):
        began = time.perf_counter()
        out = tower.encode(prompts)
        times.append(time.perf_counter() - began)
    return {
        "load_s": round(load, 2),
        "prompts": len(prompts),
        "encode_first_s": round(times[0], 2),
        "encode_s": round(times[1], 2),
        "prompts_per_s": round(len(prompts) / times[1], 1),
        "width": int(out.shape[1]),
        "peak_mib": round(peak_mib()),
    }


def stage_classify(cache: str, run: str) -> dict:
    """The saved head alone (NumPy and h5py: no TensorFlow in this process)."""
    from featcache.backbones.zero_shot import ZeroShotClassifier
    from featcache.store import open_cache

    meta = json.loads((Path(run) / "head.json").read_text())
    head = ZeroShotClassifier.load(Path(run) / meta["file"], meta["family"], meta["class_names"])
    reader = open_cache(cache)
    before = peak_mib()
    began = time.perf_counter()
    counts = np.zeros(len(head.class_names), np.int64)
    for _, features in reader.batches(batch_size=16384):
        counts += np.bincount(head.predict(features), minlength=len(counts))
    seconds = time.perf_counter() - began
    return {
        "rows": len(reader),
        "classes": len(head.class_names),
        "seconds": round(seconds, 2),
        "rows_per_s": round(len(reader) / seconds),
        "tensorflow_loaded": "tensorflow" in sys.modules,
        "peak_mib_before": round(before),
        "peak_mib": round(peak_mib()),
    }


def stage_zero_shot(cache: str, run: str) -> dict:
    from featcache import zero_shot

    began = time.perf_counter()
    result = zero_shot(cache, run, progress=False)
    seconds = time.perf_counter() - began
    return {
        "seconds": round(seconds, 2),
        "text_seconds": result.report["fit_seconds"],
        "rows": result.report["rows"],
        "peak_mib": round(peak_mib()),
    }


def run_stage(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, str(HERE), "--stage", *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()
    except OSError:
        return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--preset", default=None, help="A real CLIP preset folder.")
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--stages", default="text,zero-shot,classify", help="Which stages to run (comma list)."
    )
    parser.add_argument("--stage", nargs="+", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        name, *rest = args.stage
        stages = {"text": stage_text, "classify": stage_classify, "zero-shot": stage_zero_shot}
        rest_args = [int(v) if v.isdigit() else v for v in rest]
        print(json.dumps(stages[name](*rest_args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        preset, weights = Path(args.preset or root / "preset"), "preset"
        if args.preset is None:
            began = time.perf_counter()
            make_preset(preset)
            print(f"preset written in {time.perf_counter() - began:.1f} s", file=sys.stderr)
        results: dict = {
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "preset": args.preset or "CLIP ViT-B/32-shaped text tower, random weights",
        }
        results["load_before"] = load_average()
        stages = args.stages.split(",")
        if "text" in stages:
            results["text"] = run_stage("text", str(preset), weights, str(args.classes))
            print(f"text: {results['text']}", file=sys.stderr)
        cache = root / "cache.h5"
        began = time.perf_counter()
        write_cache(cache, preset, weights, args.rows, args.dim, args.classes)
        results["cache"] = {
            "rows": args.rows, "dim": args.dim, "dtype": "float16", "classes": args.classes,
            "bytes": cache.stat().st_size, "write_s": round(time.perf_counter() - began, 1),
        }  # fmt: skip
        print(f"cache: {results['cache']}", file=sys.stderr)
        run = root / "run"
        results["zero_shot"] = run_stage("zero-shot", str(cache), str(run))
        print(f"zero-shot: {results['zero_shot']}", file=sys.stderr)
        if "classify" in stages:
            results["classify"] = run_stage("classify", str(cache), str(run))
            print(f"classify: {results['classify']}", file=sys.stderr)
        results["load_after"] = load_average()
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
