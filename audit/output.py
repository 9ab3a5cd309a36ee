"""Writing an :class:`~.audit.AuditReport`: ``report.json``, one CSV per list, and a
self-contained ``report.html`` with base64 thumbnails read from the cached paths."""

from __future__ import annotations

import base64
import contextlib
import csv
import functools
import html
import io
import json
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..core.files import beside_cache, check_output_folder, fresh_file
from ..core.options import MAIN_TAP
from ..core.splits import SPLIT_NAMES
from ..errors import FeatcacheError
from ..store import CacheReader, open_cache
from ..store.format import first_line, fsync_dir
from .audit import AuditReport

THUMBNAIL = 64
"""Longest side of a thumbnail, in pixels."""
SHOWN = 50
"""Groups (or rows) shown per section of the HTML page; the CSVs list all."""


def report_json(report: AuditReport) -> dict[str, Any]:
    return {
        "summary": report.summary(),
        "options": {k: v for k, v in asdict(report.options).items() if k != "progress"},
        "duplicate_groups": report.duplicate_groups,
        "near_duplicates": [asdict(p) for p in report.near_pairs],
        "leakage": [asdict(p) for p in report.leakage],
        "outliers": [{"row": r, "score": s} for r, s in report.outliers],
        "label_issues": report.label_issues,
        "neighbors_index": report.neighbors_method,
        "seconds": report.seconds,
    }


def write_audit_report(report: AuditReport, out: str | os.PathLike[str]) -> list[Path]:
    """Write the report's files into folder ``out`` (new, empty or an earlier report's:
    :func:`check_report_folder`), all or none; returns their paths."""
    folder = Path(out)
    check_report_folder(folder)  # before anything is rendered
    reader = open_cache(report.cache)
    paths, split = reader.paths, reader.split
    labels = reader.label_names(np.arange(len(reader)))

    def row_fields(row: int, prefix: str = "") -> dict[str, Any]:
        return {
            f"{prefix}row": row,
            f"{prefix}path": paths[row],
            f"{prefix}class": labels[row],
            f"{prefix}split": SPLIT_NAMES[int(split[row])],
        }

    tables: dict[str, list[dict[str, Any]]] = {
        "duplicates.csv": [
            {"group": g, **row_fields(r), "sha256": reader.sha256[r]}
            for g, group in enumerate(report.duplicate_groups)
            for r in group
        ],
        "near_duplicates.csv": [
            {**row_fields(p.a, "a_"), **row_fields(p.b, "b_"), "similarity": p.similarity}
            for p in report.near_pairs
        ],
        "leakage.csv": [
            {
                "kind": p.kind,
                **row_fields(p.a, "a_"),
                **row_fields(p.b, "b_"),
                "similarity": p.similarity,
            }
            for p in report.leakage
        ],
        "outliers.csv": [{**row_fields(r), "score": s} for r, s in report.outliers],
        "label_issues.csv": [
            {**row_fields(i["row"]), **{k: v for k, v in i.items() if k != "row"}}
            for i in report.label_issues
        ],
    }
    texts: dict[str, Callable[[], str]] = {
        name: functools.partial(_csv_text, rows, _HEADERS[name]) for name, rows in tables.items()
    }
    texts["report.json"] = lambda: json.dumps(report_json(report), indent=2) + "\n"
    texts["report.html"] = lambda: render_html(report, reader)
    return _write_files(folder, texts)


REPORT_FILES = (
    "duplicates.csv",
    "near_duplicates.csv",
    "leakage.csv",
    "outliers.csv",
    "label_issues.csv",
    "report.json",
    "report.html",
)
"""What an audit report folder holds."""
_PART = ".audit-part-"
"""Prefix of a report file while it is written (a fresh random name each time)."""


def default_report_folder(cache: str | os.PathLike[str], tap: str | None = None) -> Path:
    """``CACHE.audit/`` next to the cache; a tap's (``tap``): ``CACHE@TAP.audit/``."""
    return beside_cache(cache, ".audit", tap)


def check_report_folder(folder: Path) -> None:
    """Refuse ``folder`` unless it is new, empty or an earlier report's (only the regular
    files :data:`REPORT_FILES` names): audit never replaces, removes or writes through
    anything else (another file, a folder, a symbolic link)."""
    check_output_folder(
        folder,
        lambda p: p.name in REPORT_FILES and not p.is_symlink() and p.is_file(),
        "audit writes into a new or empty folder or an earlier report's",
    )


def _write_files(folder: Path, texts: dict[str, Callable[[], str]]) -> list[Path]:
    """Write every file under a fresh temporary name, then rename them all into place: an
    error (a full disk) or Ctrl-C leaves the folder as it was, and is one line."""
    check_report_folder(folder)
    parts: dict[str, Path] = {}
    try:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for name, text in texts.items():
                part = parts[name] = fresh_file(folder, _PART, ".tmp")
                with open(part, "w", newline="", encoding="utf-8") as out:
                    out.write(text())
                    out.flush()
                    os.fsync(out.fileno())
        except OSError as exc:
            raise FeatcacheError(
                f"could not write the report into {folder} ({first_line(exc)}); "
                "its earlier files are kept"
            ) from None
    except BaseException:
        for made in parts.values():
            with contextlib.suppress(OSError):
                made.unlink()
        raise
    written = []
    for name in texts:  # renames: the link or file at the name is replaced, never followed
        os.replace(parts[name], folder / name)
        written.append(folder / name)
    fsync_dir(folder)
    return written


def _label_score(issue: dict[str, Any]) -> str:
    """``p=0.012`` (out-of-fold), with the zero-shot classifier's opinion when asked."""
    parts = []
    if issue.get("self_confidence") is not None:
        parts.append(f"p={issue['self_confidence']:.3f}")
    if "zero_shot" in issue:
        parts.append(f"zero-shot {issue['zero_shot']}, p(given)={issue['zero_shot_given']:.3f}")
    return "; ".join(parts)


def _csv_text(rows: list[dict[str, Any]], default_header: list[str]) -> str:
    buffer = io.StringIO(newline="")
    header = list(rows[0]) if rows else default_header
    writer = csv.DictWriter(buffer, fieldnames=header)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


_ROW = ["row", "path", "class", "split"]
_PAIR = [f"{s}_{c}" for s in "ab" for c in _ROW]
_HEADERS = {
    "duplicates.csv": ["group", *_ROW, "sha256"],
    "near_duplicates.csv": [*_PAIR, "similarity"],
    "leakage.csv": ["kind", *_PAIR, "similarity"],
    "outliers.csv": [*_ROW, "score"],
    "label_issues.csv": [*_ROW, "given", "suggested", "self_confidence"],
}


def thumbnail_loader(
    reader: CacheReader, size: int = THUMBNAIL, fmt: str = "PNG"
) -> Callable[[str], str | None]:
    """path -> ``data:image/png;base64,...`` of the cached image (None when it cannot be
    read: a missing file, a missing dataset); ``size`` (longest side) and ``fmt`` (PNG or
    JPEG) as asked."""
    from PIL import Image

    from ..errors import FeatcacheError
    from ..extractor.decode import decode_pixels
    from ..extractor.sources import item_from_path, open_source

    try:
        source = open_source(reader.settings.dataset_root)
    except FeatcacheError:
        source = None

    def load(path: str) -> str | None:
        if source is None:
            return None
        try:
            content, _ = source.read(item_from_path(path))
            if isinstance(content, np.ndarray):
                pixels = np.asarray(decode_pixels(content))
                image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            else:  # PIL, not the TensorFlow decoder: a thumbnail needs no exact pixels
                image = _open_small(content)
        except (OSError, ValueError, IndexError, SyntaxError, EOFError, FeatcacheError):
            return None
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        if fmt == "JPEG":
            image.convert("RGB").save(buffer, format="JPEG", quality=80)
        else:
            image.save(buffer, format="PNG")
        mime = "image/jpeg" if fmt == "JPEG" else "image/png"
        return f"data:{mime};base64," + base64.b64encode(buffer.getvalue()).decode()

    return load


def _open_small(data: bytes) -> Any:
    """Encoded bytes -> an RGB PIL thumbnail, refusing images over the pixel limit."""
    from PIL import Image, ImageOps

    from ..core.options import DEFAULT_MAX_PIXELS

    with Image.open(io.BytesIO(data)) as opened:
        if opened.size[0] * opened.size[1] > DEFAULT_MAX_PIXELS:
            raise ValueError("over the pixel limit")
        opened.draft("RGB", (THUMBNAIL, THUMBNAIL))
        image = ImageOps.exif_transpose(opened).convert("RGB")
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    return image


def render_html(report: AuditReport, reader: CacheReader) -> str:
    """One page, no external files: a section per finding with thumbnails."""
    load = thumbnail_loader(reader)
    labels = reader.label_names(np.arange(len(reader)))

    def tile(row: int, note: str = "") -> str:
        src = load(reader.paths[row])
        image = (
            f'<img src="{src}" alt="row {row}">' if src else '<div class="missing">missing</div>'
        )
        caption = html.escape(
            f"#{row} {reader.paths[row]} [{labels[row] or '-'}, "
            f"{SPLIT_NAMES[int(reader.split[row])]}] {note}".strip()
        )
        return f"<figure>{image}<figcaption>{caption}</figcaption></figure>"

    def section(title: str, groups: list[str], total: int) -> str:
        more = f" (first {SHOWN} of {total}; the CSV lists all)" if total > SHOWN else ""
        body = "".join(f'<div class="group">{g}</div>' for g in groups[:SHOWN]) or "<p>none</p>"
        return f"<h2>{html.escape(title)}: {total}{more}</h2>{body}"

    summary = report.summary()
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in summary.items()
        if k != "near_pairs_by_threshold"
    )
    thresholds = "".join(
        f"<tr><td>{t}</td><td>{n}</td></tr>" for t, n in report.threshold_table.items()
    )
    parts = [
        section(
            "Exact duplicates (groups)",
            ["".join(tile(r) for r in g[:8]) for g in report.duplicate_groups[:SHOWN]],
            len(report.duplicate_groups),
        ),
        section(
            "Near duplicates (pairs)",
            [tile(p.a) + tile(p.b, f"cos {p.similarity:.4f}") for p in report.near_pairs[:SHOWN]],
            len(report.near_pairs),
        ),
        section(
            "Leakage across splits (pairs)",
            [tile(p.a) + tile(p.b, f"{p.kind} {p.similarity:.4f}") for p in report.leakage[:SHOWN]],
            len(report.leakage),
        ),
        section(
            "Outliers (mean cosine distance to neighbours)",
            [tile(r, f"score {s:.4f}") for r, s in report.outliers[:SHOWN]],
            len(report.outliers),
        ),
        section(
            f"Likely label errors (self-confidence under {report.options.label_threshold:g})",
            [
                tile(
                    i["row"],
                    f"given {i['given']}, likely {i['suggested']} ({_label_score(i)})",
                )
                for i in report.label_issues[:SHOWN]
            ],
            len(report.label_issues),
        ),
    ]
    tapped = f" (tap {html.escape(report.tap)})" if report.tap != MAIN_TAP else ""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>featcache audit</title>
<style>
body{{font-family:sans-serif;margin:1em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:left}}
.group{{display:flex;flex-wrap:wrap;gap:6px;border-bottom:1px solid #ddd;padding:6px 0}}
figure{{margin:0;width:140px;font-size:11px;word-break:break-all}}
.missing{{width:64px;height:64px;background:#eee;color:#900;display:flex;
align-items:center;justify-content:center}}
</style></head><body>
<h1>featcache audit of {html.escape(report.cache)}{tapped}</h1>
<table>{rows}</table>
<h2>Near-duplicate pairs by threshold</h2>
<table><tr><th>cosine &ge;</th><th>pairs</th></tr>{thresholds}</table>
{"".join(parts)}
</body></html>
"""
