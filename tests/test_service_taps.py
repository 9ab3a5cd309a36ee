"""Journey: extract the Fashion-MNIST sample with --taps auto (the real MobileNet at 64 px)
into a server's cache root -> the ``Search`` RPC with ``tap`` answers as ``search(...,
tap=)`` does: by row in each tap, in taps side by side and in the features (an empty tap),
and by a new image embedded by the server's model up to the tap's layer (or both layers
of taps side by side). Then the refusals, each INVALID_ARGUMENT with the library's one
line: a tap the cache has not, a text in a tap's space or in taps side by side."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from test_taps import ARGS, SAMPLE, WEIGHTS, _copy, _ok

from featcache.audit.search import search
from featcache.errors import FeatcacheError, RemoteError
from featcache.store import open_cache

pytestmark = pytest.mark.slow

grpc = pytest.importorskip("grpc", reason="the serve extra")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    if not (SAMPLE.is_dir() and WEIGHTS.is_file()):
        pytest.skip("examples/fashion-mnist or its MobileNet weights are missing")
    from featcache import ServeOptions, start_server
    from featcache.service.client import Client

    root = tmp_path_factory.mktemp("servedtaps")
    data, caches = root / "data", root / "caches"
    caches.mkdir()
    _copy(data, 0, 4)
    cache = caches / "c.h5"
    _ok(CliRunner(), "extract", data, "-o", cache, "--taps", "auto", *ARGS)
    options = ServeOptions(
        port=0,
        data_root=str(data),
        cache_root=str(caches),
        weights_root=str(WEIGHTS.parent),  # the cache's weights file: image queries
    )
    server = start_server(options, warm=False)
    try:
        with Client(f"127.0.0.1:{server.port}", timeout=300) as client:
            yield root, cache, client
    finally:
        server.stop(0)


def _pairs(hits: list[dict]) -> list[tuple[int, str]]:
    return [(h["row"], h["path"]) for h in hits]


def _same(remote: list[dict], local: list[dict], atol: float = 1e-6) -> None:
    assert _pairs(remote) == _pairs(local)
    np.testing.assert_allclose(
        [h["similarity"] for h in remote], [h["similarity"] for h in local], atol=atol
    )


def test_search_rpc_with_a_tap_answers_as_the_library(served):
    root, cache, client = served
    taps = open_cache(cache).taps
    assert len(taps) >= 2
    side_by_side = f"{taps[0]}+{taps[-1]}"
    answers = {}
    for tap in ("main", *taps, side_by_side):
        local = search(cache, row=1, k=5, tap=tap, progress=False)
        assert local.tap == tap
        remote = client.search("c.h5", row=1, k=5, tap=tap)
        _same(remote, local.hits)
        answers[tap] = [h["similarity"] for h in remote]
    # each space ranks with its own cosines (a tap never answers with the features' index)
    assert len({tuple(np.round(s, 5)) for s in answers.values()}) == len(answers)
    # the reply says whose features answered; no tap and an empty one: "main"
    from featcache.protos import extractor_pb2 as pb

    for tap in ("", "main", taps[0], side_by_side):
        reply = client.stub.Search(pb.SearchRequest(cache="c.h5", row=1, k=5, tap=tap))
        assert reply.tap == (tap or "main") and len(reply.hits) == 5
    # no tap, an empty one and "main": the features
    main = client.search("c.h5", row=1, k=5)
    assert client.search("c.h5", row=1, k=5, tap="") == main
    _same(main, search(cache, row=1, k=5, progress=False).hits)

    # a new image, embedded by the server's model up to the tap's layer
    source = sorted(p for p in (root / "data" / "bag").glob("*.png"))[2]
    changed = root / "changed.png"
    pixels = np.asarray(Image.open(source).convert("L")).copy()
    pixels[0, 0] = 255 - pixels[0, 0]  # other bytes (no content shortcut), nearly the same
    Image.fromarray(pixels).save(changed)
    for tap in (taps[-1], side_by_side):  # side by side: embedded up to both layers
        local = search(cache, changed, k=4, tap=tap, progress=False)
        assert "same content" not in local.query
        remote = client.search("c.h5", changed, k=4, tap=tap)
        _same(remote, local.hits, atol=1e-4)
        assert remote[0]["path"] == f"bag/{source.name}" and remote[0]["similarity"] > 0.99


def _refusal(call, *args, **kwargs) -> str:
    with pytest.raises(RemoteError) as info:
        call(*args, **kwargs)
    assert info.value.code == "INVALID_ARGUMENT", info.value
    message = str(info.value).removeprefix("server said INVALID_ARGUMENT: ")
    assert len(message.splitlines()) == 1, message
    return message


def test_search_rpc_refuses_what_a_tap_cannot_answer_in_one_line(served):
    root, cache, client = served
    taps = open_cache(cache).taps
    unknown = _refusal(client.search, "c.h5", row=0, tap="nope")
    assert "no tap 'nope'; the cache has main, " + ", ".join(taps) in unknown
    assert str(root) not in unknown  # server paths stay on the server
    cases = {
        "text": ({"text": "a bag"}, taps[0]),
        "text on a+b": ({"text": "a bag"}, f"{taps[0]}+{taps[1]}"),
    }
    for asked, tap in cases.values():
        with pytest.raises(FeatcacheError) as library:
            search(cache, tap=tap, progress=False, **asked)
        assert _refusal(client.search, "c.h5", tap=tap, **asked) == str(library.value)


def test_clients_at_once_build_each_taps_index_once_and_agree(served):
    """Eight clients at once, half in a tap and half in the features of a cache whose
    indexes do not exist yet: every answer equals the library's, and each space has one
    index of its own. Then four at once by image in taps side by side."""
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    root, cache, client = served
    fresh = cache.with_name("fresh.h5")
    shutil.copyfile(cache, fresh)
    tap = open_cache(fresh).taps[-1]
    asks = [(row % 4, tap if row % 2 else "main") for row in range(8)]
    with ThreadPoolExecutor(len(asks)) as pool:
        got = list(pool.map(lambda a: client.search("fresh.h5", row=a[0], k=4, tap=a[1]), asks))
    for (row, space), remote in zip(asks, got):
        _same(remote, search(fresh, row=row, k=4, tap=space, progress=False).hits)
    made = sorted(p.name for p in fresh.parent.glob("fresh.h5.search*"))
    assert "fresh.h5.search.npy" in made and f"fresh.h5.search@{tap}.npy" in made, made
    assert not [name for name in made if "tmp" in name or name.endswith(".partial")], made
    # four clients at once by image in taps side by side: one model up to both layers
    both = f"{open_cache(fresh).taps[0]}+main"
    images = sorted((root / "data" / "sandal").glob("*.png"))[:4]
    with ThreadPoolExecutor(len(images)) as pool:
        found = list(pool.map(lambda i: client.search("fresh.h5", i, k=3, tap=both), images))
    for image, remote in zip(images, found):
        _same(remote, search(fresh, image, k=3, tap=both, progress=False).hits, atol=1e-4)
        assert remote[0]["path"] == f"sandal/{image.name}"  # its own row, at a cosine of ~1
