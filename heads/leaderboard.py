"""A leaderboard across feature sources: flat rows, CSV, JSON, a text table and a bar chart
with the 95% intervals."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .metrics import METRICS
from .probe import ProbeRow

DETAIL_KEYS = ("sweep", "seeds")
"""Row keys kept in the JSON only (lists: the sweep, the few-shot seeds)."""


def probe_record(source: str, row: ProbeRow) -> dict[str, Any]:
    """One flat leaderboard row: source, protocol, chosen parameters (JSON), selection,
    each test metric with its interval (``_low``/``_high``) and seed spread (``_std``),
    rows and fit time; the sweep and seeds as lists (JSON only)."""
    record: dict[str, Any] = {
        "source": source,
        "protocol": row.protocol,
        "params": json.dumps(row.params),
        "selection": row.selection,
        "selection_accuracy": round(row.selection_accuracy, 4),
    }
    for name in METRICS:
        value = row.test.get(name)
        for suffix, key in (("", "value"), ("_low", "low"), ("_high", "high"), ("_std", "std")):
            number = None if value is None else value[key]
            record[f"test_{name}{suffix}"] = None if number is None else round(number, 4)
    record.update(
        {
            "fit_seconds": round(row.fit_seconds, 3),
            "train_rows": row.rows["train"],
            "val_rows": row.rows["val"],
            "test_rows": row.rows["test"],
            "sweep": row.sweep,
            "seeds": row.seeds,
        }
    )
    return record


def write_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """The rows as CSV (the detail lists left out; empty cells for missing values)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    for row in rows:
        names += [k for k in row if k not in DETAIL_KEYS and k not in names]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items() if k in names})
    return path


def write_json(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(rows), indent=2))
    return path


def _label(row: dict[str, Any]) -> str:
    kind = row.get("protocol") or row.get("head", "")
    return f"{row['source']}\n{kind}" if "source" in row else str(kind)


def write_plot(
    rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], title: str = ""
) -> Path:
    """A bar chart of test acc@1 (``compare``'s quick rows: test accuracy) per row with its
    95% interval."""
    from .report import _pyplot

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    values, lows, highs = [], [], []
    for row in rows:
        value = row.get("test_acc1", row.get("test_accuracy"))
        values.append(float(value or 0.0))
        low = row.get("test_acc1_low", row.get("test_accuracy_low"))
        high = row.get("test_acc1_high", row.get("test_accuracy_high"))
        lows.append(values[-1] - float(low) if low is not None else 0.0)
        highs.append(float(high) - values[-1] if high is not None else 0.0)
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(max(5.0, 1.1 * len(rows) + 2), 4.5))
    positions = range(len(rows))
    axis.bar(positions, values, yerr=[lows, highs], capsize=4, color="#4C72B0")
    for x, value in zip(positions, values):
        axis.text(x, value / 2, f"{value:.3f}", ha="center", va="center", color="white")
    axis.set_xticks(list(positions), labels=[_label(r) for r in rows], fontsize=8)
    axis.set_ylabel("test acc@1 (95% bootstrap interval)")
    axis.set_ylim(0, 1.05)
    axis.set_title(title or "leaderboard")
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _cell(row: dict[str, Any], name: str) -> str:
    value = row.get(f"test_{name}")
    if value is None:
        return "-"
    low, high = row.get(f"test_{name}_low"), row.get(f"test_{name}_high")
    std = row.get(f"test_{name}_std")
    text = f"{value:.4f}"
    if std:
        text += f"±{std:.4f}"
    if low is not None and high is not None:
        text += f" [{low:.3f},{high:.3f}]"
    return text


def table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The probe rows as text lines: source, protocol, selection accuracy, each metric
    with its interval (and seed spread), fit time and the chosen parameters."""
    width = max([len("source")] + [len(str(r["source"])) for r in rows])
    titles = {
        "acc1": "acc@1",
        "acc5": "acc@5",
        "balanced_accuracy": "balanced",
        "macro_f1": "macro-F1",
    }
    cells = [[_cell(r, m) for m in METRICS] for r in rows]
    widths = [max([len(titles[m])] + [len(c[i]) for c in cells]) for i, m in enumerate(METRICS)]
    heads = " ".join(f"{titles[m]:<{w}}" for m, w in zip(METRICS, widths))
    lines = [f"{'source':<{width}} {'protocol':<12} {'select':>6}  {heads} {'fit s':>7}  params"]
    for r, row_cells in zip(rows, cells):
        shown = " ".join(f"{c:<{w}}" for c, w in zip(row_cells, widths))
        lines.append(
            f"{r['source']:<{width}} {r['protocol']:<12} {r['selection_accuracy']:>6.3f}  "
            f"{shown} {r['fit_seconds']:>7.2f}  {r['params']}"
        )
    return lines
