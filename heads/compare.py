"""``compare``: every head kind with a small search, or the papers' probe protocols, as a
leaderboard over one cache, or over several caches and their concatenation."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedKFold

from ..core.files import check_run_folder
from ..core.options import invalid
from ..errors import DatasetError, FeatcacheError
from ..store.opening import open_cache, tap_names
from .baselines import GRIDS, fit_baseline, make_baseline
from .data import CachedSplits, Caches, JointCache, Split, cache_paths, load_splits
from .dense import DenseHead
from .fit_progress import Tracker, advance, step, tracking
from .leaderboard import probe_record, write_csv, write_json, write_plot
from .options import (
    COMPARE_CV_VALIDATION_FRACTION,
    DEFAULT_PROTOCOL,
    HEAD_KINDS,
    PROBE_VAL_FRACTION,
    HeadOptions,
    check_options,
    merge_options,
    parse_heads,
)
from .probe import PROTOCOL_KINDS, ProbeData, ProbeSettings, run_protocols
from .report import accuracy_interval
from .text_probe import TEXT_KINDS
from .train import DEFAULT_RUNS_DIR, TrainResult, train_head


@dataclass
class Leaderboard:
    """Rows best first, where they were saved, and the best head's run."""

    rows: list[dict[str, Any]]
    folder: Path
    best: TrainResult | None
    """The best quick row's head trained into ``best-<head>/`` (None for the probe
    protocols, whose rows are evaluations, not saved heads)."""
    skipped: list[str]
    """Grid points that could not be fitted on this cache, and why."""
    protocol: str = DEFAULT_PROTOCOL
    notes: list[str] = field(default_factory=list)
    """What was carved or dropped (rows not in every cache, classes that differ)."""
    files: list[Path] = field(default_factory=list)
    """Every file written: ``leaderboard.csv``/``.json`` and any ``csv``/``json``/``plot``."""


@dataclass
class _Source:
    """One feature source: a cache, or (``part`` None) every cache concatenated; with
    taps, a tap of one cache, or every tap asked concatenated."""

    name: str
    caches: list[Path]
    part: int | None
    tap: str | None = None


def _sources(paths: list[Path], taps: list[str] | None = None) -> list[_Source]:
    if taps:
        alone = [
            _Source(name, paths, i if len(taps) > 1 else None, name) for i, name in enumerate(taps)
        ]
        if len(taps) == 1:
            return alone
        joined = "+".join(taps) if len(taps) <= 2 else f"concat({len(taps)} taps)"
        return [*alone, _Source(joined, paths, None, "+".join(taps))]
    if len(paths) == 1:
        return [_Source(paths[0].stem, paths, None)]
    alone = [_Source(p.stem, [p], i) for i, p in enumerate(paths)]
    return [*alone, _Source("+".join(p.stem for p in paths), paths, None)]


def _features(splits: CachedSplits, split: Split, source: _Source) -> np.ndarray:
    if isinstance(splits.reader, JointCache):
        return splits.reader.features(split.rows, source.part)
    return splits.features(split)


def _estimator(kind: str, params: dict[str, Any], seed: int, epochs: int, cv: bool) -> Any:
    if kind == "dense":
        extra: dict[str, Any] = (
            {"validation_fraction": COMPARE_CV_VALIDATION_FRACTION} if cv else {}
        )
        return DenseHead(**params, epochs=epochs, seed=seed, **extra)
    return make_baseline(kind, seed=seed, **params)


def compare(
    cache: Caches,
    output: str | os.PathLike[str] | None = None,
    heads: tuple[str, ...] | str = HEAD_KINDS,
    cv: int | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    *,
    protocol: str = DEFAULT_PROTOCOL,
    probe: ProbeSettings | None = None,
    val_fraction: float | None = None,
    csv_path: str | os.PathLike[str] | None = None,
    json_path: str | os.PathLike[str] | None = None,
    plot: str | os.PathLike[str] | None = None,
    options: HeadOptions | None = None,
    progress: bool | None = None,
    overwrite: bool = False,
    taps: str | None = None,
) -> Leaderboard:
    """Fit every head kind over its grid, choose by val accuracy (or ``cv``-fold CV on
    train+val), report test accuracy of each kind's best, and keep the overall best run.

    ``heads`` are kinds (a tuple or ``"dense,logreg"``); ``epochs`` (of the dense head),
    ``seed`` and the val fraction come from ``options`` unless given.

    The dense head early-stops on the same val split that scores it, which favours it a
    little over the baselines; ``cv`` avoids that.

    ``protocol`` ``linear-probe``, ``knn`` or ``full`` runs the papers' protocols instead
    (:mod:`featcache.heads.probe`; ``probe`` holds their settings: C grid, ks, temperature,
    normalisation, few-shot ``shots`` and ``seeds``, bootstrap resamples; its ``seed`` and
    ``epochs`` are replaced by this call's): every row has
    acc@1, acc@5, balanced accuracy and macro F1 on test with bootstrap 95% intervals, and
    rows are ranked by test acc@1. A cache without val rows gets ``val_fraction`` of train
    carved (default: ``options.val_fraction`` when ``options`` is given or the protocol is
    quick, else 0.1).

    Several caches (``cache`` a sequence) are matched by content hash: each cache and their
    concatenation are evaluated on the images present in every cache (with one class), and
    :attr:`Leaderboard.notes` says how many rows were dropped.

    ``taps`` (one cache with taps, ``extract --taps``): ``all`` (``main``, the features,
    and every tap) or a comma list of tap names; each tap is a source of rows (its
    ``source`` column), and so is their concatenation, so the leaderboard ranks tap x
    head (or protocol, with the bootstrap intervals; ``shots`` gives each tap's few-shot
    row). The best quick head is trained on its tap.

    Besides ``leaderboard.csv`` and ``leaderboard.json`` in ``output``, ``csv_path``,
    ``json_path`` and ``plot`` (a PNG bar chart of test acc@1 with the intervals) are
    written when given.

    ``progress`` (None: on a terminal) shows one bar on stderr over every fit (grid points,
    cross-validation folds, each kind's refit, the best head's run; or each protocol and
    few-shot draw), naming the head being fitted, with the dense head's epoch.

    An ``output`` folder that already holds files is refused before any fit unless
    ``overwrite``.
    """
    chosen = merge_options(HeadOptions, options, epochs=epochs, seed=seed)
    check_run_folder(output, overwrite)
    kinds = parse_heads(heads)
    check_options({"cv": cv, "protocol": protocol, "val_fraction": val_fraction})
    if protocol != DEFAULT_PROTOCOL:
        if cv:
            raise invalid("cv", cv, "only with protocol quick (the probes select on val)")
        if kinds != HEAD_KINDS:
            raise invalid("heads", ",".join(kinds), "only with protocol quick")
    elif probe is not None:
        raise invalid(
            "protocol", protocol, "the probe settings need protocol linear-probe, knn or full"
        )
    epochs, seed = chosen.epochs, chosen.seed
    paths = cache_paths(cache)
    if val_fraction is None:
        quick = protocol == DEFAULT_PROTOCOL or options is not None
        val_fraction = chosen.val_fraction if quick else PROBE_VAL_FRACTION
    names = _tap_list(paths, taps)
    spec = "+".join(names) if names else None
    splits = load_splits(paths if len(paths) > 1 else paths[0], val_fraction, seed, spec)
    sources = _sources(paths, names)
    label = "+".join(p.stem for p in paths) + ("-taps" if names else "")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = Path(output) if output else DEFAULT_RUNS_DIR / f"{label}-compare-{stamp}"
    with tracking(_tracker(protocol, kinds, sources, splits, cv, probe, progress)):
        rows, best_run, skipped = _run(
            splits, sources, folder, kinds, cv, seed, epochs, protocol, probe, val_fraction
        )
    folder.mkdir(parents=True, exist_ok=True)
    files = [
        write_csv(rows, folder / "leaderboard.csv"),
        write_json(rows, folder / "leaderboard.json"),
    ]
    if csv_path is not None:
        files.append(write_csv(rows, csv_path))
    if json_path is not None:
        files.append(write_json(rows, json_path))
    if plot is not None:
        files.append(write_plot(rows, plot, f"{label}: compare --protocol {protocol}"))
    notes = [*splits.notes, *_tap_notes(sources)]
    return Leaderboard(rows, folder, best_run, skipped, protocol, notes, files)


def _tap_notes(sources: list[_Source]) -> list[str]:
    """How to train a head on a row of several taps (``train-head --tap``), when its name
    is shortened."""
    return [
        f"{s.name} is train-head --tap {s.tap} (export, predict and fine-tune read it)"
        for s in sources
        if s.tap and s.name != s.tap
    ]


def _run(
    splits: CachedSplits,
    sources: list[_Source],
    folder: Path,
    kinds: tuple[str, ...],
    cv: int | None,
    seed: int,
    epochs: int,
    protocol: str,
    probe: ProbeSettings | None,
    val_fraction: float,
) -> tuple[list[dict[str, Any]], TrainResult | None, list[str]]:
    """The leaderboard's rows (unsorted for the probes), the best quick head's run and the
    grid points skipped."""
    best_run = None
    skipped: list[str] = []
    if protocol == DEFAULT_PROTOCOL:
        rows = []
        for source in sources:
            found, missed = _quick_rows(splits, source, kinds, cv, seed, epochs)
            prefix = {"source": source.name} if len(sources) > 1 else {}
            rows += [{**prefix, **row} for row in found]
            skipped += [f"{source.name}: {m}" if prefix else m for m in missed]
        if not rows:
            raise DatasetError(f"{splits.path}: no head could be fitted: {'; '.join(skipped)}")
        rows.sort(key=lambda r: (-r["selection_accuracy"], r["fit_seconds"]))
        top = rows[0]
        params: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(top["params"]).items()
        }
        if top["head"] == "dense":
            params["epochs"] = epochs
        winner = next(s for s in sources if s.name == top.get("source", s.name))
        step(f"compare: {top['head']} (the best), its run")
        best_run = train_head(
            winner.caches if len(winner.caches) > 1 else winner.caches[0],
            top["head"],
            folder / f"best-{top['head']}",
            tap=winner.tap,
            seed=seed,
            val_fraction=val_fraction,
            stream=False,
            progress=False,  # compare's bar goes on
            **params,
        )
        advance()
    else:
        chosen = replace(probe or ProbeSettings(), seed=seed, epochs=epochs)
        curve = chosen.shots if isinstance(chosen.shots, tuple) else (chosen.shots,)
        carved = len(splits.reader.rows_of("val", labelled=True)) == 0
        kinds = PROTOCOL_KINDS[protocol]
        fitters = None
        if chosen.zero_shot:
            fitters = _text_fitters(splits, sources)
            kinds = (*kinds, *TEXT_KINDS)
        rows = []
        for source in sources:
            data = ProbeData(
                _features(splits, splits.train, source),
                splits.train.labels,
                _features(splits, splits.val, source),
                splits.val.labels,
                _features(splits, splits.test, source),
                splits.test.labels,
                splits.class_names,
                "carved val" if carved else "val",
            )
            for shots in curve:  # one K, or a few-shot curve
                settings = replace(chosen, shots=shots)
                for row in run_protocols(data, kinds, settings, fitters):
                    extra = {"shots": shots} if len(curve) > 1 else {}
                    rows.append({**probe_record(source.name, row), **extra})
        rows.sort(key=lambda r: -r["test_acc1"])
    return rows, best_run, skipped


def _tap_list(paths: list[Path], taps: str | None) -> list[str] | None:
    """The taps ``compare`` ranks (None: the features of each cache)."""
    if taps is None:
        return None
    if len(paths) != 1:
        raise invalid("taps", taps, "ranks the taps of one cache, not several")
    return tap_names(open_cache(paths[0]), taps)


def _text_fitters(splits: CachedSplits, sources: list[_Source]) -> dict[str, Any]:
    """``compare --zero-shot``'s fitters, on the one cache's zero-shot classifier."""
    from .text_probe import text_fitters
    from .zeroshot import zero_shot_classifier

    if len(sources) > 1 or isinstance(splits.reader, JointCache):
        raise invalid("zero_shot", True, "learning from text compares one cache")
    step("compare: encoding the class names")
    return text_fitters(zero_shot_classifier(splits.reader, progress=False))


def _tracker(
    protocol: str,
    kinds: tuple[str, ...],
    sources: list[_Source],
    splits: CachedSplits,
    cv: int | None,
    probe: ProbeSettings | None,
    progress: bool | None,
) -> Tracker | None:
    """One bar over every fit ``compare`` makes."""
    if progress is False:
        return None
    if protocol == DEFAULT_PROTOCOL:
        train = len(splits.train)
        points = sum(
            sum(1 for p in GRIDS[kind] if not (kind == "knn" and p["k"] > train)) * (cv or 1) + 1
            for kind in kinds
        )
        total = points * len(sources) + 1  # + the best head's run
    else:
        draws = (probe.seeds or 1) if probe is not None and probe.shots else 1
        if probe is not None and isinstance(probe.shots, tuple):
            draws *= len(probe.shots)  # a few-shot curve
        total = len(PROTOCOL_KINDS[protocol]) * draws * len(sources)
        if probe is not None and probe.zero_shot:
            total += 1 + draws  # the zero-shot row once, text-probe per draw
    return Tracker("compare", progress, total, unit="fit")


def _shown(params: dict[str, Any]) -> str:
    """``hidden=256 dropout=0.5``: a grid point, short."""

    def value(v: Any) -> str:
        if isinstance(v, tuple | list):
            return ",".join(map(str, v)) or "none"
        return str(v)

    return " ".join(f"{k}={value(v)}" for k, v in params.items())


def _quick_rows(
    splits: CachedSplits,
    source: _Source,
    kinds: tuple[str, ...],
    cv: int | None,
    seed: int,
    epochs: int,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Each kind's best over its grid (``compare``'s quick protocol) on one source."""
    x_train, y_train = _features(splits, splits.train, source), splits.train.labels
    early = splits.seen(splits.val)
    x_val, y_val = _features(splits, early, source), early.labels
    x_test, y_test = _features(splits, splits.test, source), splits.test.labels
    if cv:
        _, counts = np.unique(np.concatenate([y_train, y_val]), return_counts=True)
        if cv > counts.min():
            raise invalid("cv", cv, f"the smallest class has only {counts.min()} train+val rows")
    rows, skipped = [], []
    named = f"{source.name}: " if source.part is not None or len(source.caches) > 1 else ""
    for kind in kinds:
        best: dict[str, Any] | None = None
        for params in GRIDS[kind]:
            if kind == "knn" and params["k"] > len(y_train):
                continue
            step(f"compare: {named}{kind} {_shown(params)}")
            try:
                if cv:
                    x_all = np.concatenate([x_train, x_val])
                    y_all = np.concatenate([y_train, y_val])
                    score = _cv_score(kind, params, seed, epochs, cv, x_all, y_all)
                else:
                    model = _fit(kind, params, seed, epochs, x_train, y_train, x_val, y_val)
                    score = float(accuracy_score(y_val, model.predict(x_val)))
                    advance()
            except FeatcacheError as exc:
                skipped.append(f"{kind} {params}: {exc}")
                advance(cv or 1)  # its folds will not run
                continue
            if best is None or score > best["score"]:
                best = {"params": params, "score": score}
        if best is None:
            advance()  # no refit
            continue
        step(f"compare: {named}{kind} {_shown(best['params'])} (refit)")
        began = time.monotonic()
        model = _fit(kind, best["params"], seed, epochs, x_train, y_train, x_val, y_val)
        fit_seconds = time.monotonic() - began
        advance()
        predicted = model.predict(x_test)
        present = np.unique(y_test)
        low, high = accuracy_interval(y_test, predicted, seed=seed)
        rows.append(
            {
                "head": kind,
                "params": json.dumps(
                    {k: list(v) if isinstance(v, tuple) else v for k, v in best["params"].items()}
                ),
                "selection": f"{cv}-fold cv" if cv else "val",
                "selection_accuracy": round(best["score"], 4),
                "test_accuracy": round(float(accuracy_score(y_test, predicted)), 4),
                "test_accuracy_low": None if low is None else round(low, 4),
                "test_accuracy_high": None if high is None else round(high, 4),
                "test_rows": len(y_test),
                "test_macro_f1": round(
                    float(
                        f1_score(
                            y_test, predicted, labels=present, average="macro", zero_division=0
                        )
                    ),
                    4,
                ),
                "fit_seconds": round(fit_seconds, 3),
            }
        )
    return rows, skipped


def _fit(
    kind: str,
    params: dict[str, Any],
    seed: int,
    epochs: int,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
) -> Any:
    model = _estimator(kind, params, seed, epochs, False)
    if kind == "dense":
        return model.fit(x_train, y_train, validation_data=(x_val, y_val))
    return fit_baseline(kind, model, x_train, y_train)


def _cv_score(
    kind: str,
    params: dict[str, Any],
    seed: int,
    epochs: int,
    folds: int,
    x: np.ndarray,
    y: np.ndarray,
) -> float:
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = []
    for train_idx, val_idx in splitter.split(x, y):
        model = _estimator(kind, params, seed, epochs, True)
        if kind == "dense":
            model.fit(x[train_idx], y[train_idx])
        else:
            fit_baseline(kind, model, x[train_idx], y[train_idx])
        scores.append(accuracy_score(y[val_idx], model.predict(x[val_idx])))
        advance()
    return float(np.mean(scores))
