"""export-features: a cache as Parquet (fixed-size list features), as clip-retrieval's npy +
parquet layout, as Lance; equal rows in cache order, chunked writes, the CLI's errors, and an
output that is replaced only when the new one is whole."""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from test_audit import CLASSES, SPLITS, _settings

from featcache import extract
from featcache.cli import export_features_command, main
from featcache.core.splits import SPLIT_NAMES
from featcache.errors import CacheError, InvalidOptionError
from featcache.store import CacheReader, CacheWriter
from featcache.store.export import (
    EXPORT_DTYPES,
    EXPORT_FEATURE_FORMATS,
    NPY_EMBEDDINGS,
    NPY_METADATA,
    SCHEMA_KEY,
    _require,
    default_output,
    export_features,
)
from helpers import TINY, make_class_folder

pa = pytest.importorskip("pyarrow", reason="pyarrow (the export extra)")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """A real extracted cache: 2 classes x 3 images, random VGG16 at 32 px (512 features)."""
    root = tmp_path_factory.mktemp("export")
    data = make_class_folder(root / "data", classes=2, per_class=3)
    out = root / "c.h5"
    extract(data, output=out, **TINY)
    return out


def _mixed_cache(path):
    """Rows with and without a class, every split, written through CacheWriter."""
    rows = [
        (f"x/{i}.png", CLASSES[i % 3] if i % 4 else None, list(SPLITS)[i % 3]) for i in range(9)
    ]
    writer = CacheWriter(
        path, _settings(str(path.parent)), CLASSES, {r[0]: i for i, r in enumerate(rows)}
    )
    features = np.random.default_rng(0).normal(size=(9, 5)).astype(np.float32)
    writer.add(
        [r[0] for r in rows],
        [f"{i:064x}" for i in range(9)],
        [r[1] for r in rows],
        [SPLITS[r[2]] for r in rows],
        features,
    )
    writer.commit(final=True)
    return path


def _expected(cache: CacheReader) -> dict[str, list]:
    names = cache.class_names
    return {
        "label": cache.labels.tolist(),
        "class": [names[v] if v >= 0 else None for v in cache.labels.tolist()],
        "split": [SPLIT_NAMES[s] for s in cache.split.tolist()],
        "sha256": cache.sha256,
    }


def test_parquet_has_every_row_in_order_in_row_groups(extracted, tmp_path):
    out = tmp_path / "e.parquet"
    summary = export_features(extracted, out, progress=False, chunk_bytes=4 * 512 * 4)
    cache = CacheReader(extracted)
    assert (summary.rows, summary.feature_dim, summary.files) == (6, 512, ["."])
    assert summary.bytes == out.stat().st_size
    table = pq.read_table(out)
    assert table.schema.field("features").type == pa.list_(pa.float32(), 512)
    np.testing.assert_array_equal(
        np.stack(table.column("features").to_numpy(zero_copy_only=False)), cache.features()
    )
    assert table.column("path").to_pylist() == cache.paths
    for name, values in _expected(cache).items():
        assert table.column(name).to_pylist() == values, name
    assert pq.ParquetFile(out).num_row_groups == 2  # 4 rows a chunk
    about = json.loads(table.schema.metadata[SCHEMA_KEY])
    assert about["class_names"] == cache.class_names
    assert about["settings"]["fingerprint"] == cache.fingerprint
    assert not list(tmp_path.glob(".*tmp-*"))


def test_unlabelled_rows_and_float16(tmp_path):
    cache_path = _mixed_cache(tmp_path / "m.h5")
    cache = CacheReader(cache_path)
    out = export_features(cache_path, format="parquet", dtype="float16", progress=False)
    assert out.output == str(default_output(cache_path, "parquet")) == str(tmp_path / "m.parquet")
    table = pq.read_table(out.output)
    assert table.schema.field("features").type == pa.list_(pa.float16(), 5)
    assert table.column("class").to_pylist() == _expected(cache)["class"]
    assert table.column("label").to_pylist()[0] == -1 and table.column("class")[0].as_py() is None
    features = np.stack(table.column("features").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(features, cache.features().astype(np.float16))


def _embedding_reader_header(path):
    """What embedding-reader's ``read_numpy_header`` takes from an .npy file: the first line
    of its first 300 bytes, two regular expressions, and the data offset after that line."""
    with open(path, "rb") as f:
        first_line = f.read(min(path.stat().st_size, 300)).split(b"\n")[0]
    shape = re.search(r"'shape': \(([0-9]+), ([0-9]+)\)", str(first_line))
    descr = re.search(r"'descr': '([<f0-9]+)'", str(first_line))
    assert shape is not None and descr is not None, first_line
    return int(shape.group(1)), int(shape.group(2)), descr.group(1), len(first_line) + 1


def test_npy_layout_is_what_clip_retrieval_writes(extracted, tmp_path):
    out = tmp_path / "emb"
    summary = export_features(extracted, out, format="npy", progress=False, chunk_bytes=5000)
    assert sorted(summary.files) == sorted([str(NPY_EMBEDDINGS), str(NPY_METADATA)])
    assert summary.normalized and summary.absolute_paths  # clip-retrieval's values by default
    cache = CacheReader(extracted)
    raw = cache.features()
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    array = np.load(out / NPY_EMBEDDINGS, mmap_mode="r")
    assert array.dtype == np.float32 and array.shape == (6, 512)
    np.testing.assert_allclose(array, unit, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(array, axis=1), 1.0, rtol=1e-5)
    # embedding-reader does not call np.load: it parses the header and reads raw rows
    rows, dim, descr, offset = _embedding_reader_header(out / NPY_EMBEDDINGS)
    assert (rows, dim, descr) == (6, 512, "<f4")
    with open(out / NPY_EMBEDDINGS, "rb") as f:
        f.seek(offset + 2 * dim * 4)  # rows 2..4, as one of its pieces
        piece = np.frombuffer(f.read(3 * dim * 4), dtype=descr).reshape(3, dim)
    np.testing.assert_array_equal(piece, array[2:5])
    meta = pq.read_table(out / NPY_METADATA)
    assert meta.column_names == ["image_path", "label", "class", "split", "sha256"]
    root = cache.settings.dataset_root
    paths = meta.column("image_path").to_pylist()
    assert paths == [str(Path(root) / p) for p in cache.paths]  # same row order
    assert all(Path(p).is_file() for p in paths)  # clip-back can open them
    for name, values in _expected(cache).items():
        assert meta.column(name).to_pylist() == values, name
    about = json.loads(meta.schema.metadata[SCHEMA_KEY])
    assert about["normalized"] is True and about["paths"] == "absolute"
    raw_out = tmp_path / "raw"
    args = ["--format", "npy", "--no-normalize", "--relative-paths", "--dtype", "float16"]
    result = CliRunner().invoke(
        main, ["export-features", str(extracted), "-o", str(raw_out), *args, "--json", "-q"]
    )
    assert result.exit_code == 0, result.output
    half = json.loads(result.output)
    assert (half["dtype"], half["normalized"], half["absolute_paths"]) == ("float16", False, False)
    assert _embedding_reader_header(raw_out / NPY_EMBEDDINGS)[:3] == (6, 512, "<f2")
    np.testing.assert_array_equal(np.load(raw_out / NPY_EMBEDDINGS), raw.astype(np.float16))
    assert pq.read_table(raw_out / NPY_METADATA).column("image_path").to_pylist() == cache.paths


def test_normalize_and_absolute_paths_for_parquet(extracted, tmp_path):
    cache = CacheReader(extracted)
    plain = export_features(extracted, tmp_path / "p.parquet")
    assert not plain.normalized and not plain.absolute_paths
    assert pq.read_table(plain.output).column("path").to_pylist() == cache.paths
    out = export_features(
        extracted, tmp_path / "n.parquet", normalize=True, absolute_paths=True, dtype="float16"
    )
    table = pq.read_table(out.output)
    features = np.stack(table.column("features").to_numpy(zero_copy_only=False))
    raw = cache.features()
    expected = (raw / np.linalg.norm(raw, axis=1, keepdims=True)).astype(np.float16)
    np.testing.assert_array_equal(features, expected)
    root = Path(cache.settings.dataset_root)
    assert table.column("path").to_pylist() == [str(root / p) for p in cache.paths]
    args = ["export-features", str(extracted), "-o", str(tmp_path / "c.parquet"), "-q"]
    text = CliRunner().invoke(main, [*args, "--normalize"]).output
    assert text.startswith("6 rows x 512 float32 -> ") and "(parquet, L2-normalised, " in text


def test_float16_refuses_values_it_cannot_hold(tmp_path):
    cache_path = _mixed_cache(tmp_path / "m.h5")
    with h5py.File(cache_path, "r+") as f:
        f["features"][3, 1] = 70000.0  # above float16's largest, 65504
    out = tmp_path / "e.parquet"
    with pytest.raises(InvalidOptionError, match=r"dtype 'float16': a feature of 70000 is above"):
        export_features(cache_path, out, dtype="float16")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    table = pq.read_table(export_features(cache_path, out, dtype="float32").output)
    assert table.column("features")[3].as_py()[1] == 70000.0
    normalized = export_features(cache_path, tmp_path / "n-npy", format="npy", dtype="float16")
    assert np.isfinite(np.load(tmp_path / "n-npy" / NPY_EMBEDDINGS)).all()
    assert normalized.rows == 9


def test_lance(extracted, tmp_path):
    lance = pytest.importorskip("lance", reason="pylance (the lance extra)")
    out = tmp_path / "e.lance"
    summary = export_features(extracted, out, format="lance", progress=False, chunk_bytes=8192)
    cache = CacheReader(extracted)
    table = lance.dataset(str(out)).to_table()
    assert summary.rows == table.num_rows == 6
    np.testing.assert_array_equal(
        np.stack(table.column("features").to_numpy(zero_copy_only=False)), cache.features()
    )
    assert table.column("path").to_pylist() == cache.paths
    assert table.column("split").to_pylist() == _expected(cache)["split"]
    # an earlier Lance export is replaced whole; its files are on disk before the rename
    again = export_features(extracted, out, format="lance", overwrite=True, normalize=True)
    assert again.normalized and lance.dataset(str(out)).count_rows() == 6
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_an_interrupted_export_leaves_nothing_and_the_old_output(extracted, tmp_path):
    out = tmp_path / "e-npy"
    export_features(extracted, out, format="npy")
    before = _tree(out)

    def interrupt(done, total):  # Ctrl-C after the first chunk
        raise KeyboardInterrupt

    for output in (out, tmp_path / "new-npy"):
        with pytest.raises(KeyboardInterrupt):
            export_features(
                extracted, output, "npy", overwrite=True, chunk_bytes=4096, on_progress=interrupt
            )
    assert _tree(out) == before and not (tmp_path / "new-npy").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_an_existing_output_is_refused_or_replaced_whole(extracted, tmp_path):
    out = tmp_path / "e.parquet"
    export_features(extracted, out, dtype="float16")
    before = out.read_bytes()
    result = CliRunner().invoke(main, ["export-features", str(extracted), "-o", str(out)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: --output {str(out)!r}: exists; --overwrite replaces an earlier export"
    ]
    assert out.read_bytes() == before
    args = ["export-features", str(extracted), "-o", str(out), "--overwrite", "--json", "-q"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["rows"] == pq.read_metadata(out).num_rows == 6
    assert pq.read_schema(out).field("features").type == pa.list_(pa.float32(), 512)
    # a folder output (npy) replaced by another export of the same name
    folder = tmp_path / "npy"
    export_features(extracted, folder, format="npy")
    (folder / "img_emb" / "img_emb_1.npy").write_bytes(b"")  # clip-retrieval's next part
    export_features(extracted, folder, format="npy", overwrite=True, dtype="float16")
    assert sorted(p.name for p in folder.rglob("*.*")) == ["img_emb_0.npy", "metadata_0.parquet"]
    assert np.load(folder / NPY_EMBEDDINGS).dtype == np.float16


def _tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("fmt", ["npy", "lance"])
def test_overwrite_never_removes_a_folder_that_is_not_an_earlier_export(extracted, tmp_path, fmt):
    if fmt == "lance":
        pytest.importorskip("lance", reason="pylance (the lance extra)")
    precious = tmp_path / "precious"
    (precious / "sub").mkdir(parents=True)
    (precious / "sub" / "important.txt").write_text("only copy")
    embeddings = tmp_path / "embeddings"  # clip-retrieval's output: image and text embeddings
    for part in ("img_emb/img_emb_0.npy", "text_emb/text_emb_0.npy", "metadata/metadata_0.parquet"):
        (embeddings / part).parent.mkdir(parents=True, exist_ok=True)
        (embeddings / part).write_bytes(b"x")
    mixed = tmp_path / "mixed"  # an earlier npy export with a file of the user's put in it
    export_features(extracted, mixed, format="npy")
    (mixed / "img_emb" / "notes.txt").write_text("mine")
    for folder in (precious, embeddings, mixed):
        before = _tree(folder)
        args = ["export-features", str(extracted), "-o", str(folder), "--format", fmt]
        result = CliRunner().invoke(main, [*args, "--overwrite"])
        assert result.exit_code == 2, result.output
        line = result.output.strip()
        assert "\n" not in line and f"is not an earlier {fmt} export (it holds " in line, line
        assert _tree(folder) == before
    assert (precious / "sub" / "important.txt").read_text() == "only copy"
    with pytest.raises(InvalidOptionError, match="not a Parquet file"):
        export_features(extracted, precious / "sub" / "important.txt", overwrite=True)
    assert (precious / "sub" / "important.txt").read_text() == "only copy"
    theirs = tmp_path / "theirs.parquet"  # a Parquet file export-features did not write
    pq.write_table(pa.table({"x": [1, 2]}), theirs)
    before = theirs.read_bytes()
    with pytest.raises(InvalidOptionError, match="a Parquet file featcache did not write"):
        export_features(extracted, theirs, overwrite=True)
    assert theirs.read_bytes() == before
    empty = tmp_path / "empty.parquet"  # an empty file is nobody's export (issue 25 item 5)
    empty.touch()
    with pytest.raises(InvalidOptionError, match="an empty file, not an export"):
        export_features(extracted, empty, overwrite=True)
    assert empty.exists() and empty.stat().st_size == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("output", [".", "..", "sub/.."])
def test_an_output_naming_no_file_is_refused_in_one_line(extracted, tmp_path, output, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    for fmt in ("parquet", "npy"):
        result = CliRunner().invoke(
            main, ["export-features", str(extracted), "-o", output, "--format", fmt, "--overwrite"]
        )
        assert result.exit_code == 2, result.output
        assert result.output.strip() == (
            f"error: --output {output!r}: names no file or folder; give one, e.g. out.parquet"
        )


def test_the_dataset_folder_and_its_parents_are_never_the_output(tmp_path):
    data = make_class_folder(tmp_path / "nested" / "data", classes=2, per_class=2)
    cache = tmp_path / "c.h5"
    extract(data, output=cache, **TINY)
    before = _tree(tmp_path / "nested")
    for output in (data, data.parent):
        with pytest.raises(InvalidOptionError, match="the cache's dataset folder or a folder"):
            export_features(cache, output, format="npy", overwrite=True)
    assert _tree(tmp_path / "nested") == before
    inside = export_features(cache, data / "emb-npy", format="npy")  # inside it is allowed
    assert inside.rows == 4


def test_the_cache_itself_is_never_the_output(extracted, tmp_path):
    for output in (extracted, extracted.parent):
        for fmt in ("parquet", "npy"):
            with pytest.raises(InvalidOptionError, match="is the cache or a folder holding it"):
                export_features(extracted, output, format=fmt, overwrite=True)
    assert len(CacheReader(extracted)) == 6
    (tmp_path / "dir.parquet").mkdir()
    with pytest.raises(InvalidOptionError, match="is a folder; parquet writes one file"):
        export_features(extracted, tmp_path / "dir.parquet", overwrite=True)


def test_bad_input_is_one_line_with_exit_2(tmp_path, extracted):
    runner = CliRunner()
    missing = runner.invoke(main, ["export-features", str(tmp_path / "none.h5")])
    assert missing.exit_code == 2 and missing.output.count("\n") == 1
    assert "no such cache file" in missing.output
    assert not (tmp_path / "none.parquet").exists()
    (tmp_path / "notes.h5").write_text("not a cache")
    other = runner.invoke(main, ["export-features", str(tmp_path / "notes.h5")])
    assert other.exit_code == 2 and other.output.count("\n") == 1
    assert "not a readable HDF5 file" in other.output  # no --overwrite of its own to offer
    assert other.output.rstrip().endswith("featcache extract --overwrite rebuilds it")
    unknown = runner.invoke(main, ["export-features", str(extracted), "--format", "csv"])
    assert unknown.exit_code == 2
    with pytest.raises(InvalidOptionError, match="format 'csv': expected one of parquet"):
        export_features(extracted, format="csv")
    with pytest.raises(InvalidOptionError, match="dtype 'int8'"):
        export_features(extracted, tmp_path / "x.parquet", dtype="int8")
    # the CLI offers what the API takes
    options = {p.name: p for p in export_features_command.params}
    assert tuple(options["format_"].type.choices) == EXPORT_FEATURE_FORMATS
    assert tuple(options["dtype"].type.choices) == EXPORT_DTYPES


def test_a_missing_optional_package_names_its_extra():
    with pytest.raises(InvalidOptionError) as caught:
        _require("featcache_no_such_module", "lance", "lance", package="pylance")
    assert str(caught.value) == "format 'lance' needs pylance: pip install 'featcache[lance]'"


def test_a_failed_export_leaves_no_file_and_the_old_output(extracted, tmp_path):
    damaged = tmp_path / "d.h5"
    damaged.write_bytes(extracted.read_bytes())
    with h5py.File(damaged, "r") as f:  # flip a byte of the features' only chunk
        offset = f["features"].id.get_chunk_info(0).byte_offset
    with open(damaged, "r+b") as handle:
        handle.seek(offset + 100)
        byte = handle.read(1)
        handle.seek(offset + 100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    for fmt, out in (("parquet", tmp_path / "e.parquet"), ("npy", tmp_path / "e-npy")):
        export_features(extracted, out, format=fmt)
        before = sorted(p.stat().st_mtime_ns for p in [out, *out.rglob("*")])
        with pytest.raises(CacheError, match="damaged"):
            export_features(damaged, out, format=fmt, overwrite=True, chunk_bytes=4096)
        assert sorted(p.stat().st_mtime_ns for p in [out, *out.rglob("*")]) == before
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
        with pytest.raises(CacheError, match="damaged"):
            export_features(damaged, tmp_path / f"new-{fmt}", format=fmt)
        assert not (tmp_path / f"new-{fmt}").exists()


def test_a_cache_of_bad_files_only_exports_no_rows(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.png").write_bytes(b"")
    cache = tmp_path / "c.h5"
    extract(tmp_path / "d", output=cache, **TINY)
    parquet = export_features(cache, format="parquet")
    assert parquet.rows == pq.read_metadata(parquet.output).num_rows == 0
    assert pq.read_schema(parquet.output).field("features").type == pa.list_(pa.float32(), 512)
    export_features(cache, format="npy")
    assert np.load(tmp_path / "c-npy" / NPY_EMBEDDINGS).shape == (0, 512)


def test_an_output_that_cannot_be_written_is_one_line(extracted, tmp_path):
    (tmp_path / "file").write_text("x")
    for fmt in ("parquet", "npy"):
        out = tmp_path / "file" / f"e.{fmt}"  # its folder is a file
        result = CliRunner().invoke(
            main, ["export-features", str(extracted), "-o", str(out), "--format", fmt]
        )
        assert result.exit_code == 2
        line = result.output.strip()
        assert line.startswith(f"error: could not write {out} (") and "\n" not in line
        assert line.endswith("; nothing was written")
    assert (tmp_path / "file").read_text() == "x"


def test_a_cache_rewritten_during_the_export_is_refused(tmp_path):
    cache_path = _mixed_cache(tmp_path / "m.h5")
    out = tmp_path / "e.parquet"
    seen = []

    def rewrite_once(done, total):  # a checkpoint of another writer lands mid-export
        seen.append((done, total))
        if len(seen) == 1:
            reader = CacheReader(cache_path)
            order = {p: i for i, p in enumerate(reader.paths)}
            writer = CacheWriter(cache_path, reader.settings, reader.class_names, order)
            writer.set_bad("x/new-bad.png", "not an image")
            assert writer.commit(final=True)

    with pytest.raises(CacheError, match="rewritten while it was exported"):
        export_features(cache_path, out, chunk_bytes=2 * 5 * 4, on_progress=rewrite_once)
    assert seen[0] == (2, 9) and seen[-1] == (9, 9)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert export_features(cache_path, out).rows == 9  # once it is quiet again
