"""Module attributes loaded on first use (the package root's public API)."""

from __future__ import annotations

from importlib import import_module
from typing import Any


def lazy_attributes(package: str, moved: dict[str, str], namespace: dict[str, Any]) -> Any:
    """A module ``__getattr__`` loading ``name`` from the module ``moved[name]`` on first use
    (and keeping it, over a submodule of the same name)."""

    def __getattr__(name: str) -> Any:
        if name in moved:
            value = getattr(import_module(moved[name], package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
