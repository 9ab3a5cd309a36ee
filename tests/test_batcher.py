"""Dynamic batching: merging, splitting, cancellation and draining, on a numpy model."""

import threading
import time
from concurrent.futures import CancelledError

import numpy as np
import pytest

from featcache.service.batcher import Batcher, BatcherClosed


class Recorder:
    """A 'model' that records its batch sizes and returns row sums."""

    def __init__(self, delay: float = 0.0) -> None:
        self.sizes: list[int] = []
        self.delay = delay

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.sizes.append(len(images))
        time.sleep(self.delay)
        return images.reshape(len(images), -1).sum(axis=1, keepdims=True)


def images(n: int, start: int = 0) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.float32).reshape(n, 1, 1, 1)


def test_concurrent_requests_are_merged_and_rows_go_back_to_their_caller():
    model = Recorder(delay=0.02)
    batcher = Batcher(model, max_batch=8, max_delay=0.05)
    results: dict[int, np.ndarray] = {}
    barrier = threading.Barrier(12)

    def call(i: int) -> None:
        barrier.wait()
        results[i] = batcher.run(images(1, i))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {i: float(r[0, 0]) for i, r in results.items()} == {i: float(i) for i in range(12)}
    assert max(model.sizes) <= 8
    assert len(model.sizes) < 12  # some calls were merged
    assert batcher.images == 12
    batcher.close()


def test_large_requests_are_split_at_max_batch():
    model = Recorder()
    batcher = Batcher(model, max_batch=4, max_delay=0.0)
    out = batcher.run(images(10))
    assert out[:, 0].tolist() == list(range(10))
    assert all(size <= 4 for size in model.sizes)
    batcher.close()


def test_without_merging_each_request_runs_alone():
    model = Recorder(delay=0.01)
    batcher = Batcher(model, max_batch=8, max_delay=0.05, merge=False)
    threads = [threading.Thread(target=batcher.run, args=(images(1, i),)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert model.sizes == [1] * 6
    batcher.close()


def test_inactive_requests_are_skipped_and_errors_reach_every_caller():
    model = Recorder()
    batcher = Batcher(model, max_batch=4)
    with pytest.raises(CancelledError):
        batcher.run(images(2), active=lambda: False)
    assert model.sizes == []

    def broken(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("model failed")

    failing = Batcher(broken, max_batch=4)
    with pytest.raises(RuntimeError, match="model failed"):
        failing.run(images(3))
    failing.close()
    batcher.close()


def test_close_finishes_queued_work_then_refuses_new_work():
    model = Recorder(delay=0.05)
    batcher = Batcher(model, max_batch=2, max_delay=0.0)
    futures = batcher.submit(images(6))
    batcher.close()
    batcher.join(5)
    assert [float(f.result(1)[0, 0]) for f in futures] == [0.0, 2.0, 4.0]
    with pytest.raises(BatcherClosed):
        batcher.submit(images(1))
