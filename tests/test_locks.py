"""Cache locks (``core/locking.py``): the ``.lock`` file goes with the run that made it, and
removing it never lets two holders in."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest
from click.testing import CliRunner

from featcache import extract, read_cache
from featcache.cli import main
from featcache.core.locking import PathLock, lock_path
from featcache.errors import CacheLockedError
from helpers import COMMIT_EVERY_BATCH, TINY, RowWatch, make_class_folder

CLI_TINY = ["--backbone", "vgg16", "--weights", "none", "--image-size", "32", "-q"]

_CONTENDER = textwrap.dedent(
    """
    import os, sys
    from featcache.core.locking import PathLock

    lock_file, inside, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    for _ in range(rounds):
        with PathLock(lock_file):
            # O_EXCL: fails if another holder is inside at the same time
            os.close(os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            os.sched_yield()
            os.unlink(inside)
    """
)


def test_holders_never_overlap_while_the_file_comes_and_goes(tmp_path):
    """Four processes take and release one lock 300 times each; every release removes the
    lock file, so waiters keep meeting a removed file and must retry on the new one."""
    lock_file, inside = tmp_path / "c.h5.lock", tmp_path / "inside"
    contenders = [
        subprocess.Popen(
            [sys.executable, "-c", _CONTENDER, str(lock_file), str(inside), "300"],
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for process in contenders:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
    assert not lock_file.exists() and not inside.exists()


def test_a_lock_is_exclusive_between_threads_and_leaves_nothing(tmp_path):
    held = PathLock(tmp_path / "x.lock")
    assert held.acquire(blocking=False) and (tmp_path / "x.lock").is_file()
    other = PathLock(tmp_path / "x.lock")
    assert not other.acquire(blocking=False)  # a second open file: refused, even here
    held.release()
    assert not (tmp_path / "x.lock").exists()
    assert other.acquire(blocking=False)
    other.release()
    assert list(tmp_path.iterdir()) == []


def test_a_stale_lock_file_of_a_killed_run_is_taken_over_and_removed(tmp_path):
    (tmp_path / "c.h5.lock").write_bytes(b"")  # left by kill -9: nobody holds it
    data = make_class_folder(tmp_path / "data", classes=2, per_class=3)
    extract(data, output=tmp_path / "c.h5", **TINY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5", "data"]


def test_a_second_writer_is_refused_and_no_lock_stays(tmp_path):
    data = make_class_folder(tmp_path / "data", classes=2, per_class=3)
    out = tmp_path / "c.h5"
    with PathLock(lock_path(out)):
        with pytest.raises(CacheLockedError, match="another extract process"):
            extract(data, output=out, **TINY)
        result = CliRunner().invoke(main, ["extract", str(data), "-o", str(out), *CLI_TINY])
        assert result.exit_code == 2 and "another extract process" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


_PACED = COMMIT_EVERY_BATCH + textwrap.dedent(
    """
    import faulthandler, signal, sys, threading, time
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test's dump on a hang
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    from featcache.cli import main
    from featcache.extractor import recorder
    from featcache.store import CacheReader, writer

    embedded = recorder.Recorder.embedded
    commit = writer.CacheWriter.commit
    visible = threading.Event()
    held = []

    def noted(self, final=False):
        done = commit(self, final)
        if done and not final and len(CacheReader(self.path)) >= 10:
            visible.set()
        return done

    def paced(self, *args):
        embedded(self, *args)
        time.sleep(0.2)
        if visible.is_set() and not held:  # 10 rows on disk mid-run, lock held: wait
            # here (once, at most 120 s) for Ctrl-C (it sets the run's cancel event), so
            # that the run cannot end first
            held.append(True)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not self.cancel.is_set():
                time.sleep(0.05)

    writer.CacheWriter.commit = noted
    recorder.Recorder.embedded = paced
    sys.argv = ["featcache", *sys.argv[1:]]
    main()
    """
)


def test_no_lock_file_after_a_run_a_refused_run_or_ctrl_c(tmp_path):
    """A user's chain: extract, extract again with other settings (refused, exit 2),
    extract a growing folder and press Ctrl-C (exit 130), rerun to finish, train a head:
    after each step the cache folder holds the cache and nothing else."""
    data = make_class_folder(tmp_path / "data", classes=2, per_class=3)
    folder = tmp_path / "cache"
    out = folder / "c.h5"
    args = ["extract", str(data), "-o", str(out), *CLI_TINY, "--batch-size", "1"]
    runner = CliRunner()
    assert runner.invoke(main, args).exit_code == 0
    assert sorted(p.name for p in folder.iterdir()) == ["c.h5"]

    refused = runner.invoke(main, [*args, "--pooling", "max"])
    assert refused.exit_code == 2 and "other settings" in refused.output
    assert sorted(p.name for p in folder.iterdir()) == ["c.h5"]

    make_class_folder(tmp_path / "data", classes=2, per_class=40, seed=1)  # more images
    process = subprocess.Popen(
        [sys.executable, "-c", _PACED, *args, "--checkpoint-seconds", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 180
    rows_now = RowWatch(out)
    while rows_now() < 10:  # a few new rows committed: mid-run, holding the lock
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        assert time.monotonic() < deadline, "no new rows"
        time.sleep(0.01)
    assert lock_path(out).exists()
    process.send_signal(signal.SIGINT)
    try:
        _, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGUSR1)  # every thread's stack, then stop it
        time.sleep(2)
        process.kill()
        _, err = process.communicate()
        pytest.fail(f"no exit 120 s after Ctrl-C; its threads:\n{err[-6000:]}")
    assert process.returncode == 130, err[-2000:]
    assert "stopping after the current batch" in err and "interrupted" in err
    assert sorted(p.name for p in folder.iterdir()) == ["c.h5"]
    saved = len(read_cache(out).paths)
    assert 10 <= saved < 80

    resumed = runner.invoke(main, [*args[:-2], "--json"])
    assert resumed.exit_code == 0, resumed.output
    assert len(read_cache(out).paths) == 80
    assert sorted(p.name for p in folder.iterdir()) == ["c.h5"]
    trained = runner.invoke(
        main, ["train-head", str(out), "--head", "logreg", "-o", str(tmp_path / "run")]
    )
    assert trained.exit_code == 0, trained.output
    assert sorted(p.name for p in folder.iterdir()) == ["c.h5"]


def test_the_search_index_lock_goes_too(tmp_path):
    from featcache import search

    data = make_class_folder(tmp_path / "data", classes=2, per_class=3)
    out = tmp_path / "c.h5"
    extract(data, output=out, **TINY)
    hits = search(out, row=0, k=3).hits
    assert len(hits) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "c.h5",
        "c.h5.search.json",
        "c.h5.search.npy",
        "data",
    ]


_TWO_PRESSES = textwrap.dedent(
    """
    import os, signal, threading, time
    from featcache.core.interrupt import StopRequest, armed, ctrl_c_sets

    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    stop = threading.Event()
    with ctrl_c_sets(stop, "stopping soon"):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(200):  # the handler runs between bytecodes
            if stop.is_set():
                break
            time.sleep(0.01)
        print("first press: flag", stop.is_set(), flush=True)
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
            print("second press: ignored", flush=True)
        except KeyboardInterrupt:
            print("second press: KeyboardInterrupt", flush=True)
    print("handler restored", signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    request = StopRequest()  # a fine-tune's: the flag only while armed, else at once
    with ctrl_c_sets(request, "stopping soon"):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            print("not armed: KeyboardInterrupt, flag", request.is_set(), flush=True)
        with armed(request):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(200):
                if request.is_set():
                    break
                time.sleep(0.01)
        print("armed: flag", request.is_set(), flush=True)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a job started with Ctrl-C ignored
    with ctrl_c_sets(threading.Event(), "stopping soon") as ignored:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
        print("ignored: flag", ignored.is_set(), flush=True)
    """
)


def test_first_ctrl_c_sets_the_flag_and_a_second_stops_at_once():
    done = subprocess.run(
        [sys.executable, "-c", _TWO_PRESSES], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [
        "first press: flag True",
        "second press: KeyboardInterrupt",
        "handler restored True",
        "not armed: KeyboardInterrupt, flag False",
        "armed: flag True",
        "ignored: flag False",
    ]
    assert "stopping soon" in done.stderr
