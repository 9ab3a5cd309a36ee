"""Everything the commands print: JSON, summaries and tables.

Each function takes the plain data the library returns (dicts, dataclasses, result objects)
and returns the text, without its final newline; the command prints it with
``click.echo``. Nothing here reads files, runs a model or imports click.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..core.options import MAIN_TAP

_INSPECT_SETTINGS = (
    "backbone",
    "weights",
    "image_size",
    "resize",
    "decode",
    "pooling",
    "layer",
    "preprocessing",
    "precision",
    "blocks",
    "projection",
    "views",
    "augment",
    "augment_seed",
    "augment_version",
    "split_source",
    "split_method",
    "split_ratios",
    "seed",
    "dataset_root",
    "fingerprint",
    "created",
    "updated",
)
"""The settings ``inspect`` lists, in order."""
_OLD_DEFAULTS = {"precision": "float32", "split_method": "hash", "decode": "exact"}
"""What caches from before a setting was recorded hold."""


def render_json(payload: Any) -> str:
    """``--json`` output: indented, anything JSON does not know as ``str``."""
    return json.dumps(payload, indent=2, default=str)


def render_wrote(path: Any) -> str:
    return f"wrote {path}"


# -- extract, inspect, backbones ---------------------------------------------------------------


def render_extract_summary(summary: Any) -> str:
    """``extract``'s summary of an :class:`~featcache.extractor.ExtractSummary`."""
    views = f" x {summary.views} views" if summary.views > 1 else ""
    if summary.taps:
        views += f" + {len(summary.taps)} taps"
    lines = [
        f"{summary.output}: {summary.rows} rows x {summary.feature_dim}{views} "
        f"({summary.backbone})",
        f"  new {summary.new}, reused {summary.reused}, removed {summary.removed}, "
        f"bad {summary.bad}, ignored {summary.ignored} non-image files",
    ]
    line = f"  {summary.seconds:.1f} s, {summary.images_per_second:.1f} new images/s"
    embedding = summary.seconds - summary.load_seconds
    if summary.load_seconds > 0 and summary.new and embedding > 0:
        line += (
            f" ({summary.load_seconds:.1f} s loading TensorFlow and the model, then "
            f"{summary.new / embedding:.1f} images/s)"
        )
    lines.append(line)
    if summary.classes:
        names = ", ".join(summary.classes[:12]) + (" ..." if len(summary.classes) > 12 else "")
        lines.append(f"  {len(summary.classes)} classes: {names}")
    for path, reason in summary.bad_files[:10]:
        lines.append(f"  bad: {path}: {reason}")
    if summary.bad > 10:
        lines.append(f"  ... {summary.bad - 10} more bad files (featcache inspect lists them)")
    return "\n".join(lines)


def render_cache_info(info: Mapping[str, Any]) -> str:
    """``inspect``: the settings, the class x split table and the bad files of ``cache_info``."""
    settings = info["settings"]
    lines = [
        f"{info['path']}: {info['rows']} rows x {info['feature_dim']} {settings.get('dtype', '')}"
    ]
    for key in _INSPECT_SETTINGS:
        if key in ("blocks", "projection") and key not in settings:
            continue  # written only when set (keras-hub transformers)
        if key.startswith("augment") and "views" not in settings:
            continue  # views caches only (extract --views)
        if key == "views" and key not in settings:
            lines.append(f"  {key:<14} 1")  # one embedding per image
            continue
        shown = settings.get(key, _OLD_DEFAULTS.get(key, ""))  # older caches
        lines.append(f"  {key:<14} {shown}")
    if info.get("taps"):  # extract --taps: each its own row dataset taps/LAYER
        asked = settings.get("taps", "")
        lines.append(f"  {'taps':<14} {', '.join(json.loads(asked)) if asked else ''}")
        for tap in info["taps"]:
            lines.append(f"    {tap['name']:<28} {tap['dim']:>6} ({tap['pooling']} pooled)")
    splits = info["splits"]
    lines.append(f"  {'class':<24} {'train':>7} {'val':>7} {'test':>7} {'total':>7}")
    for row in info["classes"]:
        lines.append(
            f"  {row['class'][:24]:<24} {row['train']:>7} {row['val']:>7} "
            f"{row['test']:>7} {row['total']:>7}"
        )
    lines.append(
        f"  {'all':<24} {splits['train']:>7} {splits['val']:>7} {splits['test']:>7} "
        f"{info['rows']:>7}"
    )
    lines.append(f"  bad files: {len(info['bad'])}")
    lines += [f"    {bad['path']}: {bad['reason']}" for bad in info["bad"]]
    return "\n".join(lines + _manifest_lines(info))


def _manifest_lines(info: Mapping[str, Any]) -> list[str]:
    """A manifest's members under ``inspect``'s table: each shard's rows and splits, or
    each joined cache's rows and width; then the manifest's notes."""
    if "manifest" not in info:
        return []
    lines = []
    if "shards" in info:
        lines.append(f"  shards: {len(info['shards'])}")
        lines.append(f"    {'rows':>7} {'train':>7} {'val':>7} {'test':>7} {'bad':>5}  cache")
        for shard in info["shards"]:
            splits = shard["splits"]
            lines.append(
                f"    {shard['rows']:>7} {splits['train']:>7} {splits['val']:>7} "
                f"{splits['test']:>7} {shard['bad']:>5}  {shard['path']}"
            )
    else:
        lines.append(f"  joined caches: {len(info['caches'])}")
        lines += [
            f"    {c['rows']:>7} rows x {c['feature_dim']:<5} {c['path']}" for c in info["caches"]
        ]
    lines += [f"  note: {note}" for note in info["manifest"]["notes"]]
    return lines


def render_backbones(rows: Sequence[Mapping[str, Any]]) -> str:
    """``backbones``: one line per registry row."""
    lines = [f"{'name':<34} {'family':<19} {'size':>5} {'dim':>5}  source"]
    for row in rows:
        lines.append(
            f"{row['name']:<34} {row['family']:<19} {row['default_size']:>5} "
            f"{row['feature_dim']:>5}  {row['source']}"
        )
    lines.append("keras-hub: any other preset as hub:NAME, a preset folder, hf:// or kaggle://")
    return "\n".join(lines)


# -- heads -----------------------------------------------------------------------------------


def render_accuracy(value: float, low: float | None, high: float | None, rows: int | None) -> str:
    """``0.873 (95% CI 0.830-0.910, n=30)``: an accuracy with its bootstrap interval and the
    rows it was measured on (reports from before the intervals: the value and n only)."""
    n = f"n={rows}" if rows is not None else ""
    if low is None or high is None:
        return f"{value:.3f}" + (f" ({n})" if n else "")
    return f"{value:.3f} (95% CI {low:.3f}-{high:.3f}{', ' + n if n else ''})"


def _metric_accuracy(m: Mapping[str, Any]) -> str:
    return render_accuracy(
        m["accuracy"], m.get("accuracy_low"), m.get("accuracy_high"), m.get("rows")
    )


def render_train_report(kind: str, cache: str, report: Mapping[str, Any], run_dir: Path) -> str:
    """``train-head``: rows, notes, val and test metrics, fit time and the run folder."""
    rows = report["rows"]
    lines = [
        f"{kind} head on {cache}: {rows['train']} train, {rows['val']} val, "
        f"{rows['test']} test rows, {len(report['class_names'])} classes"
    ]
    lines += [f"  note: {note}" for note in report["notes"]]
    for split in ("val", "test"):
        m = report[split]
        lines.append(
            f"  {split:<4} accuracy {_metric_accuracy(m)}, balanced "
            f"{m['balanced_accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f}"
        )
    epochs = (
        f", best epoch {report['best_epoch']} of {report['epochs_run']}"
        if "best_epoch" in report
        else ""
    )
    lines.append(f"  fit {report['fit_seconds']:.2f} s{epochs}; run folder {run_dir}")
    shown = report.get("map")
    if shown and "error" in shown:
        lines.append(f"  map: not written ({shown['error']})")
    elif shown:
        lines.append(f"  map: {run_dir / shown['png']} ({shown['method']})")
    return "\n".join(lines)


def render_zero_shot_report(cache: str, report: Mapping[str, Any], run_dir: Path) -> str:
    """``zero-shot``: classes, templates, val/test/all metrics and the run folder."""
    templates = report["params"]["templates"]
    lines = [
        f"zero-shot ({report['family']}) on {cache}: {len(report['class_names'])} classes, "
        f"{len(templates)} template(s), no labelled image used"
    ]
    lines += [f"  note: {note}" for note in report["notes"]]
    for split in ("val", "test", "all"):
        m = report.get(split)
        if m:
            lines.append(
                f"  {split:<4} accuracy {_metric_accuracy(m)}, balanced "
                f"{m['balanced_accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f}"
            )
    lines.append(f"  texts encoded in {report['fit_seconds']:.2f} s; run folder {run_dir}")
    return "\n".join(lines)


def render_compare_json(board: Any, protocol: str, probed: bool) -> str:
    """``compare --json``: the leaderboard rows, its folder, the best run and what was skipped
    (with a probe protocol also the protocol and the notes)."""
    return render_json(
        {
            "rows": board.rows,
            "folder": str(board.folder),
            "best_run": str(board.best.run_dir) if board.best else None,
            "skipped": board.skipped,
            **({"protocol": protocol, "notes": board.notes} if probed else {}),
        }
    )


def render_compare(
    board: Any, probed: bool, several: bool, cv: int | None, plot: str | None
) -> str:
    """``compare``'s leaderboard: the probe table (``probed``) or the quick search's; notes
    are shown for a probe or several caches (quick on one cache prints as it always did)."""
    lines = [f"note: {note}" for note in board.notes] if probed or several else []
    if probed:
        from ..heads.leaderboard import table

        lines += table(board.rows)
        lines.append("acc@1 etc. on test: value[±spread over seeds] [95% bootstrap interval]")
        lines.append(f"leaderboard: {', '.join(str(f) for f in board.files)}")
        return "\n".join(lines)
    selected = "cv accuracy" if cv else "val accuracy"
    source = max([len("source")] + [len(r.get("source", "")) for r in board.rows])
    prefix = f"{'source':<{source}} " if "source" in board.rows[0] else ""
    lines.append(
        f"{prefix}{'head':<14} {selected:>12}  {'test acc (95% CI)':<20} {'test F1':>7} "
        f"{'fit s':>7}  params"
    )
    for row in board.rows:
        first = f"{row['source']:<{source}} " if prefix else ""
        low, high = row.get("test_accuracy_low"), row.get("test_accuracy_high")
        shown = f"{row['test_accuracy']:.3f}"
        if low is not None and high is not None:
            shown += f" ({low:.3f}-{high:.3f})"
        lines.append(
            f"{first}{row['head']:<14} {row['selection_accuracy']:>12.3f}  {shown:<20} "
            f"{row['test_macro_f1']:>7.3f} {row['fit_seconds']:>7.2f}  {row['params']}"
        )
    rows = {row.get("test_rows") for row in board.rows} - {None}
    if rows:
        counted = "/".join(str(n) for n in sorted(rows))
        lines.append(f"test acc: 95% bootstrap interval over n={counted} test rows")
    lines += [f"skipped: {note}" for note in board.skipped]
    best = board.best.run_dir if board.best else None
    lines.append(f"leaderboard: {board.folder}/leaderboard.csv; best run: {best}")
    if plot:
        lines.append(f"plot: {plot}")
    return "\n".join(lines)


def render_predictions(results: Sequence[Any], out: Path, listed: bool) -> str:
    """``predict``: with ``listed`` the first 50 images' top class (or why they are bad),
    then the count of classified and bad images written to ``out``."""
    lines = []
    if listed:
        for r in results[:50]:
            shown = (r.error and f"bad: {r.error}") or f"{r.top[0][0]} {r.top[0][1]:.3f}"
            lines.append(f"{r.path}  {shown}")
        if len(results) > 50:
            lines.append(f"... {len(results) - 50} more in {out}")
    bad = sum(1 for r in results if r.error)
    lines.append(f"wrote {out}: {len(results) - bad} images classified, {bad} bad")
    return "\n".join(lines)


def _phase_time(phase: Mapping[str, Any]) -> str:
    """``; 21 s (estimated 18 s)``: what a fine-tune phase took beside the plan's estimate
    (empty for reports written before phases were timed)."""
    if phase.get("seconds") is None:
        return ""
    estimate = phase.get("estimated_seconds")
    planned = "" if estimate is None else f" (estimated {estimate:.0f} s)"
    return f"; {phase['seconds']:.0f} s{planned}"


def render_fine_tune_report(report: Mapping[str, Any], run_dir: Path, skipped: Any) -> str:
    """``fine-tune``: the plan, the phases (val accuracy and balanced accuracy per epoch), the
    kept epoch, any trade against the head, test accuracy and balanced accuracy against the
    head alone, the minority classes' recall and the images skipped."""
    lines = [f"{run_dir}: model.keras, report.json, history.csv/png, confusion.png"]
    plan = report.get("plan")
    if plan:
        lines.append(f"  plan: {plan['summary']}")
        lines += [f"  {note}" for note in plan.get("notes", [])]
    balance = report.get("balance")
    if balance:
        lines.append(f"  balance: {balance['used']} (asked {balance['asked']})")
    for name, choice in (report.get("recipe") or {}).items():
        lines.append(f"  recipe {name}: {choice['summary']}")
    views = report.get("test_views")
    if views:
        lines.append(f"  test views: {views['summary']}")
    for phase in report.get("phases", []):
        if "best_epoch" in phase:  # the head re-fit on frozen features: its start and best
            at, seen = phase["best_epoch"], phase["val_accuracy"]
            lines.append(
                f"  phase {phase['name']:<9} {phase['layers']:>3} layers  re-fit on frozen "
                f"features: val {seen[0]:.3f} -> {seen[at]:.3f} (balanced "
                f"{phase['val_balanced_accuracy'][0]:.3f} -> "
                f"{phase['val_balanced_accuracy'][at]:.3f}), epoch {at} of {len(seen) - 1}"
                + _phase_time(phase)
            )
            continue
        shown = " ".join(f"{v:.3f}" for v in phase["val_accuracy"]) or "-"
        balanced = " ".join(f"{v:.3f}" for v in phase.get("val_balanced_accuracy", []))
        lines.append(
            f"  phase {phase['name']:<9} {phase['layers']:>3} layers  val {shown}"
            + (f"  (balanced {balanced})" if balanced else "")
            + _phase_time(phase)
        )
    if "best" in report:
        best = report["best"]
        balanced = best.get("val_balanced_accuracy")
        lines.append(
            f"  kept: {best['phase']} epoch {best['epoch']} by {best['selected_by']}, val "
            f"{best['val_accuracy']:.3f}"
            + ("" if balanced is None else f" (balanced {balanced:.3f})")
            + f"; model.keras is the {_exported(report)}"
        )
    trade = report.get("trade")
    if trade:
        lines.append(
            f"  TRADE (allow_trade): against the head, val accuracy "
            f"{trade['val_accuracy']:+.3f}, val balanced accuracy "
            f"{trade['val_balanced_accuracy']:+.3f}"
        )
    if report.get("note"):
        lines.append(f"  {report['note']}")
    head = report["head_only"]
    kept = "head-only (fallback)" if report.get("exported") == "head-only" else "fine-tuned"
    if _refit_kept(report):
        kept = "re-fit head"
    lines.append(
        f"  test accuracy {_metric_accuracy(report['test'])}, balanced "
        f"{report['test']['balanced_accuracy']:.3f} ({kept}, model.keras as predict runs it) vs "
        f"{_maybe(head['test'])}, balanced {_maybe(head.get('test_balanced_accuracy'))} "
        "head only"
    )
    lines.append(
        f"  {len(report.get('kept_layers', report['unfrozen_layers']))} layers trained, "
        f"{report['epochs_run']} epochs, {report['fit_seconds']:.0f} s"
        + (
            f" (estimated {plan.get('estimated_fit_seconds', plan['estimated_seconds']):.0f} s)"
            if plan
            else ""
        )
    )
    for minority in report.get("minority_classes", []):
        lines.append(
            f"  minority class {minority['class']} ({minority['train_rows']} train rows): "
            f"test recall {minority['test_recall']:.3f}"
        )
    if report.get("cache_precision", "float32") != "float32":
        lines.append(
            f"  trained in float32, model.keras computes in "
            f"{report.get('model_precision', 'float32')} "
            f"(the cache's features are {report['cache_precision']})"
        )
    lines += [f"  skipped: {path}: {reason}" for path, reason in skipped[:10]]
    return "\n".join(lines)


def _maybe(value: float | None) -> str:
    return "-" if value is None else format(value, ".3f")


# -- dataset tools ---------------------------------------------------------------------------


def render_audit_summary(summary: Mapping[str, Any]) -> str:
    """``audit``: one ``key value`` line per summary entry, then near pairs by threshold."""
    lines = [
        f"{key:<24} {value}"
        for key, value in summary.items()
        if key != "near_pairs_by_threshold" and not (key == "tap" and value == MAIN_TAP)
    ]
    lines.append(
        "near-duplicate pairs by threshold: "
        + ", ".join(f">={t}: {n}" for t, n in summary["near_pairs_by_threshold"].items())
    )
    if "label_threshold" in summary:
        lines.append(render_label_check(summary))
    return "\n".join(lines)


def render_label_check(summary: Mapping[str, Any]) -> str:
    """What the label issues mean and how many of them to look at."""
    flagged, checked = summary["label_issues"], summary["labels_checked"]
    text = (
        f"label issues: {flagged} of {checked} labels get under "
        f"{summary['label_threshold']:g} probability from a classifier trained without "
        "their row (label_issues.csv, lowest first)"
    )
    estimated = summary.get("label_errors_estimated")
    if estimated is None:
        return text + "; too few rows to estimate how many are wrong"
    text += f"; about {estimated:.0f} labels in all look wrong"
    precision, recall = (
        summary.get("label_issues_precision"),
        summary.get("label_issues_recall"),
    )
    if precision is not None:
        text += f"; expect about {precision:.0%} of the flagged to be wrong"
    if recall is not None:
        text += f"; the threshold catches about {recall:.0%} of wrong labels"
    text += " (estimates that take wrong labels as random)"
    if estimated >= flagged + 2:
        text += "; a higher --label-threshold lists more of them"
    return text


def render_search(result: Any) -> str:
    """``search``: the query, then one line per hit."""
    tapped = f"tap {result.tap}; " if result.tap != MAIN_TAP else ""
    lines = [f"query: {result.query}  ({tapped}index: {result.index}, {result.index_status})"]
    for hit in result.hits:
        lines.append(
            f"{hit['rank']:>4} {hit['similarity']:.4f} #{hit['row']:<7} {hit['split']:<5} "
            f"{hit['class'] or '-':<16} {hit['path']}"
        )
    return "\n".join(lines)


def render_plot(result: Any) -> str:
    """``plot``: the method, points and colouring, notes, thumbnails and the files written."""
    tapped = f" of tap {result.tap}" if result.tap != MAIN_TAP else ""
    lines = [
        f"{result.method} map{tapped} of {result.points} of {result.rows} rows "
        f"({result.seconds:.1f} s), coloured by {result.color}"
    ]
    lines += [f"  note: {note}" for note in result.notes]
    if "html" in result.files:
        lines.append(
            f"  thumbnails: {result.thumbnails} embedded, {result.missing_thumbnails} missing"
        )
    lines += [f"  {kind:<5} {path}" for kind, path in result.files.items()]
    return "\n".join(lines)


def render_export_features(summary: Any) -> str:
    """``export-features``: rows, dimension and type, the output, its format and size."""
    return (
        f"{summary.rows} rows x {summary.feature_dim} {summary.dtype} -> {summary.output} "
        f"({summary.format}{', L2-normalised' if summary.normalized else ''}, "
        f"{summary.bytes} bytes, {summary.seconds:.1f} s)"
    )


def render_verify(result: Any) -> str:
    """``inspect --verify``: counts, then each changed or unreadable row and the fix."""
    lines = [
        f"verified {result.checked} of {result.rows} rows ({result.seconds:.1f} s): "
        f"{result.unchanged} unchanged, {len(result.changed)} changed, "
        f"{len(result.unreadable)} unreadable"
    ]
    lines += [f"  changed     {path}" for path in result.changed]
    lines += [f"  unreadable  {path}: {reason}" for path, reason in result.unreadable]
    if result.changed:
        lines.append("extract --rehash on the same data re-embeds the changed files")
    return "\n".join(lines)


# -- weights ---------------------------------------------------------------------------------


def render_weights(rows: Sequence[Mapping[str, Any]], folder: str) -> str:
    """``weights``: Keras's cache folder, then one line per backbone's file."""
    lines = [f"Keras's cache: {folder}", f"{'backbone':<22} {'status':<8} {'MB':>7}  file"]
    notes = []
    for row in rows:
        if row["status"] == "preset":
            lines.append(f"{row['backbone']:<22} {'preset':<8} {'-':>7}  (downloaded by keras-hub)")
            notes = [str(row["note"])]
            continue
        size = f"{row['size'] / 1e6:.1f}" if row["size"] else "-"
        lines.append(f"{row['backbone']:<22} {row['status']:<8} {size:>7}  {row['file']}")
        if len(rows) <= 5 and row["status"] != "present":
            lines.append(f"{'':<40}{row['url']}")
    files = [row for row in rows if row["status"] != "preset"]
    present = sum(row["status"] == "present" for row in files)
    if files:
        lines.append(
            f"{present} of {len(files)} present. Offline: copy a file into {folder} under that "
            "name (URLs: --json), or give extract --weights FILE; online: --fetch."
        )
    if any(row["status"] == "differs" for row in files):
        lines.append("differs: not the file Keras expects (another hash); Keras fetches it again")
    return "\n".join(lines + notes)


def _refit_kept(report: Mapping[str, Any]) -> bool:
    """Whether the kept weights are the head re-fit on frozen features (no layer trained)."""
    best = report.get("best") or {}
    return (
        report.get("exported") == "fine-tuned"
        and best.get("phase") == "head"
        and any(p["name"] == "head" and "best_epoch" in p for p in report.get("phases", []))
    )


def _exported(report: Mapping[str, Any]) -> str:
    """What model.keras is, for the kept line."""
    if _refit_kept(report):
        side = report["image_size"][0]
        return f"re-fit head at {side} px (the backbone as it came)"
    return f"{report['exported']} model"
