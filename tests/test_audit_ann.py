"""audit through the approximate index (audit/ann_neighbors.py): on a few thousand planted
rows, with the index switched on by a lowered ``approximate_from`` and few cells probed, it
finds the same duplicate pairs as the exact path, and keeps top_k_neighbors' contract."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from test_audit import CLASSES, write_cache

from featcache.audit.ann_neighbors import ann_top_k_neighbors, plan_index
from featcache.audit.audit import audit_cache
from featcache.audit.neighbors import brute_force, normalize
from featcache.audit.options import AuditOptions
from featcache.cli import main

SPLIT_CYCLE = ["train", "train", "train", "val", "test"]


def planted(n=3000, dim=64, clusters=40, seed=0):
    """Clustered rows with planted copies: exact duplicates (same content), and near
    duplicates whose noise puts their cosine below, around and above 0.95. Returns the
    cache rows (path, class, split, content key), the features and the planted pairs."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (clusters, dim))
    which = rng.integers(0, clusters, n)
    x = centres[which] + rng.normal(0, 0.7, (n, dim))
    keys = [f"r{i}" for i in range(n)]
    pairs = []
    half = min(200, n // 6)
    sources = rng.choice(n, 2 * half, replace=False)
    for j, (src, dst) in enumerate(zip(sources[:half], sources[half:])):
        if j % 4 == 0:  # exact: same content, same features
            x[dst], keys[dst] = x[src], keys[src]
        else:  # near: noise levels around the threshold
            scale = [0.15, 0.25, 0.35][j % 3] * np.linalg.norm(x[src]) / np.sqrt(dim)
            x[dst] = x[src] + rng.normal(0, scale, dim)
        pairs.append((min(src, dst), max(src, dst)))
    rows = [
        (f"{CLASSES[w % 4]}/{i}.png", CLASSES[w % 4], SPLIT_CYCLE[i % 5], keys[i])
        for i, w in enumerate(which)
    ]
    return rows, x, pairs


def test_ann_keeps_the_contract_of_top_k_neighbors():
    _, x, _ = planted(n=2000)
    x = normalize(np.vstack([x, np.repeat(x[:1], 14, axis=0)]))  # a group of 15 equal rows
    n, k = len(x), 10
    content = np.arange(n)
    content[2000:] = 0
    plan = plan_index(n, probes=1)
    assert plan.cells >= 8 and plan.probes == 1
    sims, index = ann_top_k_neighbors(x, k, plan, content)
    assert sims.shape == index.shape == (n, k)
    assert not (index == np.arange(n)[:, None]).any()
    assert np.all(np.diff(sims, axis=1) <= 0)
    exact = np.einsum("ij,ij->i", x[np.arange(n).repeat(k)], x[index.reshape(-1)])
    np.testing.assert_allclose(sims.reshape(-1), exact, atol=1e-5)  # cosines are exact
    _, want_i = brute_force(x, k)
    group = [0, *range(2000, n)]
    for row in group:  # equal rows: each other's neighbours, lowest rows first, as exact
        assert set(index[row]) == set(want_i[row]) and np.allclose(sims[row], 1, atol=1e-5)
    recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(index, want_i)])
    assert recall > 0.5  # an approximate graph, not a random one


def _pairs(report):
    return {(p.a, p.b) for p in report.near_pairs}


def test_approximate_audit_finds_the_duplicate_pairs_of_the_exact_one(tmp_path):
    rows, x, planted_pairs = planted()
    cache = write_cache(tmp_path / "c.h5", rows, x)
    common = {"label_issues": False, "progress": False}
    exact = audit_cache(cache, AuditOptions(**common))
    ann = audit_cache(cache, AuditOptions(approximate_from=1000, **common))
    assert exact.neighbors_method["method"] == "exact"
    assert ann.neighbors_method["method"] == "ivf" and ann.neighbors_method["probes"] == 1
    assert "approximate" in ann.summary()["neighbors_method"]
    assert ann.neighbors_method["cells"] == 8  # each row compared with about a quarter
    assert len(exact.near_pairs) >= 60  # the planted pairs below 0.95 are not all in it
    assert _pairs(ann) == _pairs(exact)
    assert ann.duplicate_groups == exact.duplicate_groups and len(exact.duplicate_groups) == 50
    assert {(p.a, p.b) for p in ann.leakage} == {(p.a, p.b) for p in exact.leakage}
    assert ann.threshold_table == exact.threshold_table
    found = _pairs(exact) | {(g[0], g[1]) for g in exact.duplicate_groups}
    assert found <= set(planted_pairs)  # nothing but planted pairs is that close
    assert {r for r, _ in ann.outliers} & {r for r, _ in exact.outliers}


def test_exact_flag_and_the_size_switch(tmp_path):
    assert not AuditOptions().approximate(29_999) and AuditOptions().approximate(30_000)
    assert not AuditOptions(exact=True).approximate(10**7)
    rows, x, _ = planted(n=300)
    cache = write_cache(tmp_path / "c.h5", rows, x)
    runner = CliRunner()
    for extra, method in (([], "ivf"), (["--exact"], "exact")):
        out = tmp_path / f"r{len(extra)}"
        args = ["audit", str(cache), "-o", str(out), "-q", "--no-label-issues"]
        result = runner.invoke(main, [*args, "--approximate-from", "100", *extra])
        assert result.exit_code == 0, result.output
        report = json.loads((out / "report.json").read_text())
        assert report["neighbors_index"]["method"] == method
        assert report["summary"]["neighbors_method"].startswith(
            "approximate" if method == "ivf" else "exact"
        )


@pytest.mark.parametrize("flag,value", [("--probes", "0"), ("--approximate-from", "1")])
def test_bad_index_options_exit_2_naming_the_flag(tmp_path, flag, value):
    result = CliRunner().invoke(main, ["audit", str(tmp_path / "c.h5"), flag, value])
    assert result.exit_code == 2 and flag in result.output
