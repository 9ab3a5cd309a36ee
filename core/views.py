"""Test-time views in a saved classifier: what ``predict`` and the server read of them.

The layers live in :mod:`featcache.heads.layers`; the service reads a loaded model's view
count through this module so that it need not import the heads.
"""

from __future__ import annotations

from typing import Any

TEST_VIEWS_LAYER = "test_views"
"""The name of the layer that makes each image's views (``featcache.heads.layers.TestViews``)."""


def views_per_image(model: Any) -> int:
    """How many times ``model`` runs its backbone per image: its test-views layer's count
    (2, 4 or 8), 1 without one."""
    try:
        layer = model.get_layer(TEST_VIEWS_LAYER)
    except ValueError:
        return 1
    return int(layer.views)
