"""core.records: per-tile results as columns give exactly what the per-tile functions gave (tests/record_loops.py:
label_records, count_records, search_records), and are written as the same features."""

from __future__ import annotations

import numpy as np
import pytest
from record_loops import count_records, label_records, search_records

from core.geodata.tiles import TileSpec, make_grid
from core.records import Records, count_columns, label_columns, search_columns, top_k
from core.scores import class_scores, softmax
from core.tasks import slug_fields


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(7)
    emb = _unit(rng, 500, 16)
    text = _unit(rng, 6, 16)
    text[4] = text[1]          # two classes with the same text: tied probabilities everywhere
    emb[:20] = emb[0]          # and repeated tiles
    return emb, text


def _rows(records):
    return [dict(r) for r in records]


@pytest.mark.parametrize("block", [None, 37])   # one block; 14 blocks (the last short) on threads
@pytest.mark.parametrize("top, threshold", [(3, None), (6, "median"), (1, "median"), (9, None)])
def test_labels_equal_the_per_tile_records(case, top, threshold, block, monkeypatch):
    import core.records

    monkeypatch.setattr(core.records, "BLOCK_ROWS", block or core.records.BLOCK_ROWS)
    emb, text = case
    labels = ["water", "forest", "buildings", "road", "forest again", "bare soil"]
    if threshold == "median":   # exactly one tile's best probability: that tile keeps its label (>=)
        best = softmax(30.0 * class_scores(emb, text)).max(axis=1)
        threshold = float(np.sort(best)[len(best) // 2])
    want, want_fields, want_map = label_records(emb, text, labels, 30.0, top, threshold)
    fields, cols = label_columns(emb, text, labels, 30.0, top, threshold, slug_fields(labels))
    got = Records(fields, cols, n=len(emb))
    assert [tuple(f) for f in fields] == [tuple(f) for f in want_fields]
    assert _rows(got) == want            # same values, same rounding, same tie order, same 'unknown'
    assert got[17] == want[17] and got[-1] == want[-1] and got[3:6] == want[3:6]
    if threshold is not None:
        assert any(r["label"] == "unknown" for r in want) and any(r["label"] != "unknown" for r in want)


def test_top_k_is_the_stable_sort(case):
    emb, text = case
    probs = emb @ text.T
    for k in (1, 3, 6):
        np.testing.assert_array_equal(top_k(probs, k), np.argsort(-probs, axis=1, kind="stable")[:, :k])


def test_blocks_give_the_values_of_one_block(case):
    """Row blocks on threads: every row's probabilities and top classes land in that row, the last short
    block included (an off-by-one at a block's edge, or two threads writing one block, would show here)."""
    from core.records import class_probs

    emb, text = case
    whole = class_probs(emb, text, 30.0, block=len(emb))
    np.testing.assert_array_equal(whole, softmax(30.0 * class_scores(emb, text)))
    for block in (1, 7, 64, 499):
        np.testing.assert_array_equal(class_probs(emb, text, 30.0, block=block), whole)
        np.testing.assert_array_equal(top_k(whole, 4, block=block), top_k(whole, 4, block=len(emb)))


@pytest.mark.parametrize("c, k", [(6, 3), (6, 6), (300, 3)])   # a table of every list; np.unique (300**3)
def test_top_label_lists_are_coded_as_np_unique_codes_them(c, k):
    from core.records import _order_codes

    rng = np.random.default_rng(c + k)
    order = np.stack([rng.permutation(c)[:k] for _ in range(400)])
    order[100:150] = order[3]   # repeated lists share a code
    codes, lists = _order_codes(order, c)
    want_lists, want_codes = np.unique(order, axis=0, return_inverse=True)
    np.testing.assert_array_equal(lists, want_lists)
    np.testing.assert_array_equal(codes, want_codes.reshape(-1))
    np.testing.assert_array_equal(lists[codes], order)


@pytest.mark.parametrize("block", [None, 5])
def test_counts_and_search_equal_the_per_tile_records(case, block, monkeypatch):
    import core.records

    monkeypatch.setattr(core.records, "BLOCK_ROWS", block or core.records.BLOCK_ROWS)
    emb, text = case
    want, want_fields = count_records(emb, text, 50.0)
    fields, cols = count_columns(emb, text, 50.0)
    assert fields == want_fields and _rows(Records(fields, cols, n=len(emb))) == want
    for top, threshold in ((None, None), (10, None), (None, 0.1), (25, 0.0)):
        want, want_fields = search_records(emb, text[2], top, threshold)
        fields, cols = search_columns(emb, text[2], top, threshold)
        assert fields == want_fields and _rows(Records(fields, cols, n=len(emb))) == want


def test_records_carry_their_tiles(data_dir, case):
    from core.geodata.raster import open_raster

    src = open_raster(data_dir / "orthomosaic" / "kampala_oam_z20_mosaic_1536x1024.tif")
    grid = make_grid(src, TileSpec(size=64))
    src.close()
    emb, text = case
    kept = np.arange(0, len(grid), 2)[:len(emb)]
    fields, cols = count_columns(emb[:len(kept)], text, 50.0)
    recs = Records(fields, cols, grid=grid, index=kept)
    want, _ = count_records(emb[:len(kept)], text, 50.0)
    for i in (0, 5, len(kept) - 1):
        t = grid[int(kept[i])]
        assert recs[i] == {"row": t.row, "col": t.col, **want[i], "geometry": t.polygon_wkt}
    assert list(recs)[5] == recs[5] and len(recs) == len(kept)


def test_float32_values_round_as_python_rounds():
    """The columns round float32 values with numpy; Python's round(v, 6) gives the very same doubles."""
    from core.records import python_values

    rng = np.random.default_rng(0)
    v = np.concatenate([rng.random(200_000, dtype=np.float32), rng.standard_normal(100_000).astype(np.float32),
                        (rng.integers(0, 10**6, 100_000) / 1e6 + 5e-7).astype(np.float32),   # near half-way
                        np.array([0, 1, 5e-7, 1.5e-6, 2.5e-6, 0.9999995, -0.5e-6], np.float32)])
    assert python_values(v, 0, len(v), "float") == [round(x, 6) for x in v.tolist()]
