"""The click CLI: exit codes, one-line errors, JSON output, and no TensorFlow for --help."""

import json
import subprocess
import sys

from click.testing import CliRunner

from featcache.cli import extract_command, main
from helpers import TINY

ARGS = ["--backbone", "vgg16", "--weights", "none", "--image-size", "32", "-q"]


def test_help_does_not_import_tensorflow():
    code = (
        "import sys\n"
        "from featcache.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = ('tensorflow', 'keras', 'keras_hub', 'tensorflow_text')\n"
        "main_mods = [m for m in sys.modules if m.split('.')[0] in heavy]\n"
        "print('HEAVY', main_mods)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout
    for command in ("extract", "inspect", "backbones"):
        assert command in out.stdout


def test_backbones_lists_the_registry():
    result = CliRunner().invoke(main, ["backbones", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.output)
    assert {"name": "vgg16", "feature_dim": 512, "default_size": 224}.items() <= rows[0].items()
    sources = [row["source"] for row in rows]
    assert sources.count("keras.applications") == 40 and sources.count("keras-hub") >= 20


def test_extract_json_then_inspect(class_folder, tmp_path):
    out = tmp_path / "c.h5"
    runner = CliRunner()
    result = runner.invoke(main, ["extract", str(class_folder), "-o", str(out), "--json", *ARGS])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["new"] == 12 and summary["rows"] == 12 and summary["feature_dim"] == 512
    text = runner.invoke(main, ["inspect", str(out)])
    assert text.exit_code == 0
    assert "12 rows x 512" in text.output and "class_2" in text.output
    info = json.loads(runner.invoke(main, ["inspect", str(out), "--json"]).output)
    assert info["rows"] == 12 and sum(info["splits"].values()) == 12
    assert [c["total"] for c in info["classes"]] == [4, 4, 4]


def test_shortcut_command_prints_a_summary(class_folder, tmp_path):
    out = tmp_path / "c.h5"
    result = CliRunner().invoke(extract_command, [str(class_folder), "-o", str(out), *ARGS[:-1]])
    assert result.exit_code == 0, result.output
    assert "12 rows x 512" in result.output and "new 12, reused 0" in result.output


def test_input_errors_exit_2_with_one_line(class_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # extract's default output is cache/ under the working folder
    runner = CliRunner()
    cases = [
        (["extract", str(tmp_path / "missing")], "no such file or folder"),
        (["extract", str(class_folder), "--backbone", "resnet5"], "did you mean"),
        (["extract", str(class_folder), "--weights", str(tmp_path / "w.h5")], "--weights"),
        (["extract", str(class_folder), "--split", "0.5,0.1"], "add up to"),
        (["inspect", str(tmp_path / "nope.h5")], "no such cache file"),
    ]
    for args, message in cases:
        result = runner.invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "cache").exists()  # nothing was created for a failed extract


def test_settings_mismatch_exits_2_and_keeps_the_cache(class_folder, tmp_path):
    from featcache import extract, read_cache

    out = tmp_path / "c.h5"
    extract(class_folder, output=out, **TINY)
    result = CliRunner().invoke(
        main, ["extract", str(class_folder), "-o", str(out), *ARGS, "--dtype", "float16"]
    )
    assert result.exit_code == 2
    assert "dtype 'float32' (cache) vs 'float16' (now)" in result.output
    assert read_cache(out).features.dtype.name == "float32"


def test_not_a_cache_file_exits_2(tmp_path):
    import h5py

    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = [1, 2, 3]
    (tmp_path / "text.h5").write_text("nope")
    for name in ("other.h5", "text.h5"):
        result = CliRunner().invoke(main, ["inspect", str(tmp_path / name)])
        assert result.exit_code == 2 and "error:" in result.output


def test_newer_format_version_is_refused(class_folder, tmp_path):
    import h5py

    from featcache import extract
    from featcache.store import FORMAT_VERSION

    out = tmp_path / "c.h5"
    extract(class_folder, output=out, **TINY)
    with h5py.File(out, "r+") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    result = CliRunner().invoke(main, ["inspect", str(out)])
    assert result.exit_code == 2 and "newer than this featcache reads" in result.output
