"""Shared fixtures (tiny real image folders, the pretrained-weights directory) and one
collection hook; the plain helpers are in ``helpers.py``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import make_class_folder

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

ROOT = Path(__file__).resolve().parents[1]


class _CheckoutIsNotATestPackage:
    """Collect the repository root as a plain folder, not as a test package.

    The root is the ``featcache`` package (it has an ``__init__.py``), so pytest would
    otherwise import ``ROOT/__init__.py`` before the first test, under the name of the
    checkout folder (``main``, with ``main.errors`` etc.: a second copy of the package next
    to ``featcache``), after putting the folder above the checkout on ``sys.path``.
    """

    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_directory(self, path: Path, parent: pytest.Collector) -> pytest.Dir | None:
        if path == ROOT:
            return pytest.Dir.from_parent(parent, path=path)
        return None


def pytest_configure(config: pytest.Config) -> None:
    # A plugin, not a hook of this conftest: conftest hooks only see paths under tests/.
    config.pluginmanager.register(_CheckoutIsNotATestPackage(), "featcache-checkout-root")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The modules that hold slow tests run first, each module's tests together and in
    their order.

    ``pytest -n 2`` hands tests out in this order (after the ``ray`` group, which xdist
    sends first as its largest unit): the long tests start while the other worker has work,
    and the run ends on quick ones instead of one worker finishing a long test alone.
    """
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)  # stable: the order within is kept


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    """Three classes of four images each."""
    return make_class_folder(tmp_path / "data")


@pytest.fixture
def weights_dir() -> Path:
    """``$FEATCACHE_WEIGHTS_DIR`` (the shared pretrained weights); skips when unset."""
    value = os.environ.get("FEATCACHE_WEIGHTS_DIR")
    if not value:
        pytest.skip("FEATCACHE_WEIGHTS_DIR is not set (CI sets it to ../shared/weights)")
    path = Path(value)
    if not path.is_dir():
        pytest.skip(f"FEATCACHE_WEIGHTS_DIR={value} is not a folder")
    return path


@pytest.fixture
def mobilenet_weights(weights_dir: Path) -> Path:
    """The real ImageNet MobileNet (no top) weights file."""
    path = weights_dir / "mobilenet_1_0_224_imagenet_notop.weights.h5"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path
