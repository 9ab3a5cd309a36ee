"""Progress on a terminal, quiet in pipes (issue 26 item 6), run the way a user meets it: the
real commands, with stderr on a pseudo-terminal (what a user's shell gives them) or on a
pipe, and stdout always on a pipe, as a script reading the output has it.

Bars are read back from what reached the terminal: tqdm redraws a line with carriage
returns, so the frames are the pieces between them, in the order they were drawn.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from featcache.cli import main
from helpers import make_class_folder

EXTRACT = ["-b", "vgg16", "-w", "none", "--image-size", "32", "--batch-size", "4"]
BAR = re.compile(r"(\d+)%\|.*\| *(\d+)/(\d+) ")
"""A bar frame: percent, done, total."""


def _terminal() -> tuple[int, int]:
    """A pseudo-terminal (master, slave) 120 columns wide (a new pty has 0, and tqdm draws
    nothing on a terminal without columns)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    return master, slave


@contextlib.contextmanager
def _reading(master: int) -> Iterator[list[bytes]]:
    """Everything written to the terminal, collected until the block ends."""
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the slave side closed
                return
            if not data:
                return
            chunks.append(data)

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    yield chunks
    thread.join(timeout=10)


def frames(text: str) -> list[str]:
    """The lines and redrawn bar frames, in order, without escape sequences."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
    return [part.strip() for part in re.split(r"[\r\n]+", text) if part.strip()]


def run(args: list[str], terminal: bool) -> tuple[str, list[str]]:
    """Run ``featcache ARGS`` in this process: stdout to a pipe-like buffer, stderr to a
    pseudo-terminal (``terminal``) or a pipe-like buffer. Returns stdout and stderr's
    frames (:func:`frames`)."""
    out = io.StringIO()
    if not terminal:
        err = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main.main(args=args, prog_name="featcache", standalone_mode=False)
        return out.getvalue(), frames(err.getvalue())
    master, slave = _terminal()
    stream = os.fdopen(slave, "w", buffering=1, encoding="utf-8")
    try:
        with _reading(master) as chunks:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(stream):
                main.main(args=args, prog_name="featcache", standalone_mode=False)
            stream.close()
    finally:
        os.close(master)
    return out.getvalue(), frames(b"".join(chunks).decode("utf-8", "replace"))


def bars(shown: list[str], desc: str) -> list[tuple[int, int]]:
    """(done, total) of every frame of the bar whose description starts with ``desc``."""
    found = []
    for frame in shown:
        if frame.startswith(desc) and (match := BAR.search(frame)):
            found.append((int(match.group(2)), int(match.group(3))))
    return found


def first(shown: list[str], text: str) -> int:
    """Index of the first frame containing ``text``."""
    return next(i for i, frame in enumerate(shown) if text in frame)


def test_journey_shows_progress_on_a_terminal_and_nothing_in_pipes(tmp_path):
    """extract -> train-head -> predict -> compare -> plot: each names its step on the
    terminal, with a bar; the extract bar opens only once the first batch is embedded (its
    rate and ETA leave the model's load out); piped, stderr stays empty and stdout is what
    it was."""
    data = make_class_folder(tmp_path / "data", classes=3, per_class=8)
    cache = tmp_path / "c.h5"

    stdout, shown = run(["extract", str(data), "-o", str(cache), *EXTRACT], terminal=True)
    assert "24 rows" in stdout and "%|" not in stdout
    loading = first(shown, "extract: loading vgg16 (TensorFlow)…")
    extract_bars = bars(shown, "extract:")
    assert extract_bars, shown
    assert first(shown, "img/s") > loading  # no bar frame before the model has loaded
    # the bar opens with the first batch (4 images) already in, as its initial count: the
    # load and that batch's tracing are not in its rate; it ends at every image
    assert extract_bars[0] == (4, 24), extract_bars
    assert extract_bars[-1] == (24, 24)

    _, again = run(["extract", str(data), "-o", str(cache), *EXTRACT], terminal=True)
    assert not any("loading" in frame for frame in again)  # every image cached: no model
    assert bars(again, "extract:")[-1] == (24, 24)

    run_dir = tmp_path / "dense"
    head = ["train-head", str(cache), "--head", "dense", "--epochs", "3", "-o", str(run_dir)]
    stdout, shown = run(head, terminal=True)
    assert stdout.startswith("dense head on") and "%|" not in stdout
    dense = bars(shown, "train-head: dense head")
    assert dense and dense[-1][0] == dense[-1][1]  # ends full (an early stop shrinks it)
    assert any("epoch 3/3, val acc" in frame for frame in shown), shown

    predict = ["predict", str(run_dir), str(data), "-o", str(tmp_path / "p.csv")]
    stdout, shown = run(predict, terminal=True)
    assert "%|" not in stdout
    assert first(shown, "predict: loading dense (TensorFlow)…") < first(shown, "img/s")
    assert bars(shown, "predict")[-1] == (24, 24)

    _, shown = run(["train-head", str(cache), "--head", "logreg", "-o", str(tmp_path / "lr")], True)
    assert any(f.startswith("train-head: fitting the logreg head… [") for f in shown), shown

    compare = ["compare", str(cache), "--heads", "dense,logreg", "--epochs", "2"]
    stdout, shown = run([*compare, "-o", str(tmp_path / "cmp")], terminal=True)
    assert "leaderboard:" in stdout and "%|" not in stdout
    fits = bars(shown, "compare:")
    # 3 dense and 3 logreg grid points, each kind's refit, the best head's run
    assert fits[-1] == (9, 9), fits
    steps = ("compare: dense hidden=256 dropout=0.5", "compare: dense hidden=none",
             "compare: logreg C=10.0", "(refit)", "(the best), its run")  # fmt: skip
    for step in steps:
        assert any(step in frame for frame in shown), (step, shown)
    assert any(f.startswith("compare: dense") and "epoch 2/2" in f for f in shown)

    stdout, shown = run(["plot", str(cache), "--method", "tsne", "-o", str(tmp_path / "map")], True)
    assert "[t-SNE]" not in stdout  # scikit-learn's verbose lines only drive the bar
    iterations = bars(shown, "plot: t-SNE of 24 points")
    assert any("optimising" in frame for frame in shown), shown
    assert len({done for done, _ in iterations}) > 3  # it moves as t-SNE iterates
    assert iterations[-1][0] == iterations[-1][1]  # and ends where the optimisation did

    # quiet: --json on a terminal, and every command in a pipe
    json_run = [*head[:-1], str(tmp_path / "dense-json"), "--plot", "pca", "--json"]
    _, shown = run(json_run, terminal=True)
    assert shown == []
    piped_runs = [
        ["extract", str(data), "-o", str(tmp_path / "p.h5"), *EXTRACT],
        [*head[:-1], str(tmp_path / "dense-piped")],
        [*predict[:-1], str(tmp_path / "p-piped.csv")],
        ["compare", str(cache), "--heads", "logreg", "-o", str(tmp_path / "cmp-piped")],
        ["plot", str(cache), "--method", "tsne", "-o", str(tmp_path / "map-piped")],
    ]
    for args in piped_runs:
        stdout, shown = run(args, terminal=False)
        assert shown == [], (args, shown)
        assert "%|" not in stdout and "…" not in stdout


def test_tsne_progress_leaves_the_map_as_it_was(tmp_path):
    """The t-SNE bar reads scikit-learn's verbose output: the map is the one a run without
    progress makes, point for point."""
    from featcache.audit.plot import plot_cache
    from featcache.extraction import extract

    data = make_class_folder(tmp_path / "data", classes=3, per_class=5)
    cache = tmp_path / "c.h5"
    extract(data, output=cache, backbone="vgg16", weights="none", image_size=32, progress=False)
    quiet = plot_cache(cache, tmp_path / "quiet", method="tsne", html=False, progress=False)
    master, slave = _terminal()
    stream = os.fdopen(slave, "w", buffering=1)
    with _reading(master), contextlib.redirect_stderr(stream):
        shown = plot_cache(cache, tmp_path / "shown", method="tsne", html=False, progress=True)
        stream.close()
    os.close(master)
    a = np.loadtxt(quiet.files["csv"], delimiter=",", skiprows=1, usecols=(1, 2), dtype=str)
    b = np.loadtxt(shown.files["csv"], delimiter=",", skiprows=1, usecols=(1, 2), dtype=str)
    assert a.shape[0] == 15 and (a == b).all()
    assert Path(quiet.files["csv"]).read_text() == Path(shown.files["csv"]).read_text()


def _subprocess_on_terminal(args: list[str], cwd: Path) -> tuple[int, str, list[str]]:
    """``featcache ARGS`` in a new process: stdout on a pipe, stderr on a terminal."""
    master, slave = _terminal()
    with _reading(master) as chunks:
        done = subprocess.run(
            [sys.executable, "-m", "featcache.cli", *args],
            stdout=subprocess.PIPE,
            stderr=slave,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            check=False,
        )
        os.close(slave)
    os.close(master)
    text = b"".join(chunks).decode("utf-8", "replace")
    return done.returncode, done.stdout.decode(), frames(text)


@pytest.mark.slow
def test_first_line_names_the_tensorflow_load(tmp_path):
    """A new process that needs TensorFlow says so first ("loading TensorFlow…", before the
    bar), on the terminal only: stdout is the report alone."""
    from featcache.extraction import extract

    data = make_class_folder(tmp_path / "data", classes=2, per_class=8)
    extract(data, output=tmp_path / "c.h5", backbone="vgg16", weights="none", image_size=32,
            split="0.5,0.25,0.25", progress=False)  # fmt: skip
    code, stdout, shown = _subprocess_on_terminal(
        ["train-head", "c.h5", "--epochs", "2", "-o", "run"], tmp_path
    )
    assert code == 0, shown
    assert stdout.startswith("dense head on c.h5")
    ours = [f for f in shown if f.startswith(("loading TensorFlow", "train-head:"))]
    assert ours[0] == "loading TensorFlow…", shown
    assert bars(shown, "train-head: dense head")


@pytest.mark.slow
def test_fine_tune_names_its_phases(tmp_path):
    """fine-tune on a terminal: loading, the augmentation test, phase 0 (the head on val
    images), the step timing and the range test before the plan (nothing runs unnamed),
    each phase by name with its epoch, then the evaluation; --json keeps the terminal
    quiet."""
    data = make_class_folder(tmp_path / "data", classes=2, per_class=10)
    cache = tmp_path / "c.h5"
    run(["extract", str(data), "-o", str(cache), *EXTRACT, "--split", "0.5,0.25,0.25"], False)
    run(["train-head", str(cache), "--epochs", "2", "-o", str(tmp_path / "head")], False)
    tune = ["fine-tune", str(cache), "--head", str(tmp_path / "head"), "--epochs", "2"]
    stdout, shown = run([*tune, "-o", str(tmp_path / "ft")], terminal=True)
    assert "%|" not in stdout
    order = [
        "fine-tune: loading TensorFlow and the backbone…",
        "fine-tune: checking the images",
        "fine-tune: measuring the augmentation on",
        "fine-tune phase 0 head-only: scoring the head on val images",
        "fine-tune: timing the val images' reading",
        "fine-tune: timing a train step of each phase (top, deeper)",
        "fine-tune: learning-rate range test (top layers)",
        "fine-tune plan: top 1 epoch",  # the estimate, before any phase trains
        "fine-tune phase 1/2 top: unfreeze top",
        "fine-tune phase 2/2 deeper: unfreeze top",
        "fine-tune: evaluating model.keras on test images",
    ]
    positions = [first(shown, step) for step in order]
    assert positions == sorted(positions), shown
    assert any(f.startswith("fine-tune phase 2/2") and "epoch 1/1" in f for f in shown)
    assert any(f.startswith("fine-tune phase 1/2") and "left)" in f for f in shown)  # run ETA
    assert bars(shown, "fine-tune: learning-rate range test")[-1][1] == 40  # steps, with ETA
    # --json: not a line on the terminal (one epoch: every kind of bar all the same)
    quiet_run = [*tune[:-1], "1", "-o", str(tmp_path / "ft-json"), "--json"]
    _, quiet = run(quiet_run, terminal=True)
    assert quiet == []
