"""The few-shot classifier's rules (core.classify, core.samples), pinned on constructed embeddings and tiles:
class balance, the zero-shot mix and when it is used, tiles claimed by two classes, grouped folds, a saved
classifier refused with another model, the suggestion order, the dense map's averaging."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core import classify
from core.errors import InvalidInput, ModelError, RemoteClipError
from core.geodata.tiles import Tile, window_polygon_wkt
from core.samples import Samples, match_tiles

D = 16


def unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def cluster(center, n, spread, rng):
    return unit(center + spread * rng.standard_normal((n, D)))


def axes(*idx):
    out = np.zeros((len(idx), D))
    out[np.arange(len(idx)), idx] = 1.0
    return out


# ---------------------------------------------------------------------------------------- balance

def test_class_weights_give_every_class_the_same_weight():
    y = np.array([0] * 90 + [1] * 10 + [2] * 1)
    w = classify.class_weights(y, 3)
    assert w.sum() == pytest.approx(1.0)
    assert [w[y == c].sum() for c in range(3)] == pytest.approx([1 / 3] * 3)


def test_logistic_regression_is_class_balanced():
    """90 samples of one class, 10 of the other, mirror images of each other: the balanced fit puts the
    boundary in the middle; an unweighted fit would push it towards the small class."""
    rng = np.random.default_rng(0)
    a, b = axes(0, 1)
    mid = unit(a + b)
    x = np.concatenate([cluster(a + 0.3 * b, 90, 0.25, rng), cluster(b + 0.3 * a, 10, 0.25, rng)])
    y = np.array([0] * 90 + [1] * 10)
    w, bias = classify.fit_logistic(x, y, 2, l2=1e-2)
    p = np.exp(classify.log_softmax(mid[None] @ w + bias))[0]
    assert p[0] == pytest.approx(0.5, abs=0.1)
    # what the balance prevents: the same data with every sample weighing the same
    heavy = np.concatenate([x, np.repeat(x[90:], 8, axis=0)])   # 10 -> 90 copies: now balanced by count
    w2, b2 = classify.fit_logistic(heavy, np.array([0] * 90 + [1] * 90), 2, l2=1e-2)
    p2 = np.exp(classify.log_softmax(mid[None] @ w2 + b2))[0]
    assert p[0] == pytest.approx(p2[0], abs=0.05)   # weighting = duplicating the small class


def test_logistic_regression_converges_to_the_optimum():
    """The gradient at the L-BFGS solution is (near) zero: a wrong gradient or a stopped search fails this."""
    rng = np.random.default_rng(1)
    x = unit(rng.standard_normal((40, D)))
    y = rng.integers(0, 3, 40)
    w, b = classify.fit_logistic(x, y, 3, l2=1e-2)
    cw = classify.class_weights(y, 3)
    p = np.exp(classify.log_softmax(x @ w + b))
    onehot = np.eye(3)[y]
    grad_w = x.T @ ((p - onehot) * cw[:, None]) + 2e-2 * w
    assert np.abs(grad_w).max() < 1e-5 and np.abs(((p - onehot) * cw[:, None]).sum(0)).max() < 1e-5


# ------------------------------------------------------------------------------------------ mix

def _two_class_world(rng, text_right: bool, n_per_class: int):
    """Two classes along axes 0 and 1; the class names' text embeddings point at the right class (or swapped)."""
    a, b = axes(0, 1)
    text = np.stack([a, b]) if text_right else np.stack([b, a])
    x = np.concatenate([cluster(a + 0.2 * axes(2)[0], n_per_class, 0.35, rng),
                        cluster(b + 0.2 * axes(2)[0], n_per_class, 0.35, rng)])
    y = np.array([0] * n_per_class + [1] * n_per_class)
    return x, y, text


def test_one_sample_per_class_is_the_zero_shot_head_exactly():
    rng = np.random.default_rng(2)
    x, y, text = _two_class_world(rng, text_right=False, n_per_class=1)
    head, report, warnings = classify.train(x, y, np.arange(2), ["a", "b"], text, 30.0)
    assert head.alpha == 0.0 and report["cv"] is None
    assert any("single sample tile" in w for w in warnings)
    probe = unit(rng.standard_normal((20, D)))
    assert np.allclose(head.proba(probe), np.exp(classify.zero_shot_log_proba(probe, text, 30.0)))


def test_misleading_class_names_are_outvoted_by_samples():
    """Class names that point the wrong way: cross-validation gives the samples the whole say."""
    rng = np.random.default_rng(3)
    x, y, text = _two_class_world(rng, text_right=False, n_per_class=6)
    head, report, _ = classify.train(x, y, np.arange(12), ["a", "b"], text, 30.0)
    assert head.alpha >= 0.7
    assert report["cv"]["zero_shot"] == 0.0 and report["cv"]["balanced_accuracy"] == 1.0
    xt, yt, _ = _two_class_world(rng, text_right=False, n_per_class=50)
    assert np.mean(head.proba(xt).argmax(1) == yt) > 0.95


def test_good_class_names_are_kept_when_samples_add_nothing():
    """Two samples per class and class names that already separate the classes: the mix stays on the names
    (ties go to the smaller alpha) and the classifier is not worse than zero-shot on new tiles."""
    rng = np.random.default_rng(4)
    x, y, text = _two_class_world(rng, text_right=True, n_per_class=2)
    head, report, _ = classify.train(x, y, np.arange(4), ["a", "b"], text, 100.0)
    xt, yt, _ = _two_class_world(np.random.default_rng(40), text_right=True, n_per_class=200)
    zs = np.exp(classify.zero_shot_log_proba(xt, text, 100.0)).argmax(1)
    assert np.mean(head.proba(xt).argmax(1) == yt) >= np.mean(zs == yt)
    assert report["cv"]["folds"] == 2 and report["cv"]["grouped_by"] == "sample"


def test_the_mix_is_the_one_cross_validation_prefers():
    """Replay the selection: no (alpha, L2) of the grid scores better than the chosen one."""
    rng = np.random.default_rng(5)
    a, b, c = axes(0, 1, 2)
    text = unit(np.stack([a + b, b + c, c + a]))   # half right
    x = np.concatenate([cluster(a, 5, 0.5, rng), cluster(b, 5, 0.5, rng), cluster(c, 5, 0.5, rng)])
    y = np.repeat([0, 1, 2], 5)
    groups = np.arange(15)
    head, report, _ = classify.train(x, y, groups, ["a", "b", "c"], text, 50.0, seed=7)
    fold, _ = classify.make_folds(y, groups, 5, 7)
    zs = classify.zero_shot_log_proba(classify.normalize(x), text, 50.0)
    best = -1.0
    for l2 in classify.L2S:
        oof = np.zeros((15, 3))
        for f in range(fold.max() + 1):
            tr, te = fold != f, fold == f
            w, bb = classify.fit_logistic(classify.normalize(x)[tr], y[tr], 3, l2)
            oof[te] = classify.log_softmax(classify.normalize(x)[te] @ w + bb)
        for alpha in classify.ALPHAS:
            best = max(best, classify._balanced(y, classify.mix(zs, oof, alpha).argmax(1), 3))
    assert report["cv"]["balanced_accuracy"] == pytest.approx(best, abs=1e-4)


def test_knn_head_votes_by_class_balanced_neighbours():
    a, b = axes(0, 1)
    train_x = np.stack([a, a, a, b])
    train_y = np.array([0, 0, 0, 1])
    # a point nearer the single b sample than the three a samples, with k = 4: balanced votes choose b
    probe = unit(0.3 * a + b)[None]
    logp = classify.knn_log_proba(train_x, train_y, probe, 2, k=3)
    assert logp[0].argmax() == 1
    head, report, _ = classify.train(np.concatenate([train_x, [b, b]]), np.array([0, 0, 0, 1, 1, 1]),
                                     np.arange(6), ["a", "b"], np.stack([b, a]), 30.0, method="knn", k=1)
    assert head.method == "knn" and head.alpha > 0 and report["cv"]["balanced_accuracy"] == 1.0


# ---------------------------------------------------------------------------------------- folds

def test_folds_keep_samples_whole_and_hold_every_class():
    y = np.array([0] * 6 + [1] * 6)
    groups = np.array([0, 0, 0, 1, 2, 3, 4, 4, 5, 5, 6, 7])
    fold, by = classify.make_folds(y, groups, 5, seed=0)
    assert by == "sample" and fold.max() + 1 == 4   # class 0 has 4 samples
    for g in np.unique(groups):
        assert len(set(fold[groups == g])) == 1
    for f in range(fold.max() + 1):
        assert set(y[fold == f]) == {0, 1}


def test_folds_fall_back_to_tiles_then_to_nothing():
    y = np.array([0, 0, 0, 1, 1])
    fold, by = classify.make_folds(y, np.array([0, 0, 0, 1, 2]), 5, 0)
    assert by == "tile" and fold.max() + 1 == 2
    assert classify.make_folds(np.array([0, 1, 1]), np.array([0, 1, 2]), 5, 0) == (None, None)


def _neighbour_world(rng):
    """Two classes, each drawn in two places 20 tile widths apart, five adjacent tiles a place. The tiles of
    one place look alike (a signature of the place, nothing of the class) and the class names say nothing:
    what a sample teaches about its neighbours is memory, not skill."""
    x, y, places = [], [], []
    for k, (cls, (px, py)) in enumerate([(0, (0, 0)), (0, (20, 0)), (1, (0, 20)), (1, (20, 20))]):
        x.append(cluster(axes(k)[0], 5, 0.01, rng))
        y += [cls] * 5
        places += [(0, px + i, py) for i in range(5)]
    text = axes(D - 2, D - 1)
    return np.concatenate(x), np.asarray(y), np.asarray(places, dtype=np.float64), text


def test_spatial_folds_never_split_neighbours_and_see_through_memory():
    x, y, places, text = _neighbour_world(np.random.default_rng(8))
    groups = np.arange(len(y))
    _, by_sample, _ = classify.train(x, y, groups, ["a", "b"], text, 30.0)
    _, spatial, warnings = classify.train(x, y, groups, ["a", "b"], text, 30.0, places=places, tile_m=10.0)
    assert by_sample["cv"]["grouped_by"] == "sample" and by_sample["cv"]["balanced_accuracy"] >= 0.9
    assert spatial["cv"]["grouped_by"] == "space"
    assert spatial["cv"]["balanced_accuracy"] <= by_sample["cv"]["balanced_accuracy"] - 0.25
    assert spatial["cv"]["group_distance"] == {"tile_widths": 3.0, "m": 30.0} and not warnings
    fold, d, crowded = classify.spatial_folds(y, groups, places, 5, 0)
    assert d == classify.SPATIAL_WIDTHS == 3.0 and not crowded and fold.max() + 1 == 2
    near = np.hypot(*(places[:, None, 1:] - places[None, :, 1:]).transpose(2, 0, 1)) < d
    assert (fold[:, None] == fold[None, :])[near].all()          # no two tiles closer than d on both sides
    for f in range(2):
        assert set(y[fold != f]) == {0, 1}                       # every fold's training holds every class


def test_neighbours_of_two_classes_share_a_fold():
    """A building tile beside an open-ground tile teaches about it too: single linkage joins whatever the
    class, and the folds of such mixed groups still hold every class in every fold's training."""
    y = np.array([0, 1, 0, 1, 0, 1, 0])
    places = np.array([[0, 0, 0], [0, 1, 0], [0, 10, 0], [0, 11, 0], [0, 20, 0], [0, 20, 1], [0, 30, 0]], float)
    fold, d, _ = classify.spatial_folds(y, np.arange(7), places, 5, seed=3)
    assert d == 3.0 and fold.max() + 1 == 3                     # class 1 lies in three places
    assert fold[0] == fold[1] and fold[2] == fold[3] and fold[4] == fold[5]
    for f in range(3):
        assert set(y[fold != f]) == {0, 1}


def test_the_spatial_distance_joins_tiles_closer_than_it_never_those_exactly_at_it():
    """The distance is capped (here at 2.5 tile widths): two tiles of a class exactly 2.5 apart stay apart, so
    the cap holds; just under it they would join, leaving the class one group, so the distance drops to
    theirs. With a third tile of the class far away, the two just under the cap are joined (one fold)."""
    y, groups = np.array([0, 0, 1, 1]), np.arange(4)
    for gap, want in ((2.5, 2.5), (2.5 - 1e-6, 2.5 - 1e-6)):
        places = np.array([[0, 0, 0], [0, gap, 0], [0, 0, 50], [0, 50, 50]], dtype=np.float64)
        fold, d, _ = classify.spatial_folds(y, groups, places, 5, 0, max_widths=2.5)
        assert d == pytest.approx(want, abs=1e-12) and fold[0] != fold[1]
    y3, g3 = np.array([0, 0, 0, 1, 1]), np.arange(5)
    places = np.array([[0, 0, 0], [0, 2.5 - 1e-6, 0], [0, 40, 0], [0, 0, 50], [0, 50, 50]], dtype=np.float64)
    fold, d, _ = classify.spatial_folds(y3, g3, places, 5, 0, max_widths=2.5)
    assert d == 2.5 and fold[0] == fold[1] != fold[2]
    # tiles of different parts (rasters) are never joined, however close their places
    places[1, 0] = 1
    fold, d, _ = classify.spatial_folds(y, groups, places[[0, 1, 3, 4]], 5, 0, max_widths=2.5)
    assert d == 2.5 and fold[0] != fold[1]


def test_a_class_in_one_place_falls_back_to_folds_by_sample_and_says_so():
    rng = np.random.default_rng(9)
    x, y, text = _two_class_world(rng, text_right=False, n_per_class=3)
    places = np.array([[0, 0, 0], [0, 1, 0], [0, 2, 0], [0, 0, 30], [0, 30, 30], [0, 60, 30]], dtype=np.float64)
    fold, d, crowded = classify.spatial_folds(y, np.arange(6), places, 5, 0)
    assert fold is None and crowded == [0]
    _, report, warnings = classify.train(x, y, np.arange(6), ["a", "b"], text, 30.0, places=places, tile_m=5.0)
    assert report["cv"]["grouped_by"] == "sample" and report["cv"]["group_distance"] is None
    assert report["cv"]["folds"] == 3
    assert any("'a'" in w and "'b'" not in w and "optimistic" in w for w in warnings)
    from core.tasks import report_lines

    assert "(3 folds by sample)" in report_lines(report)[0]


def test_the_report_names_the_spatial_grouping_and_its_distance():
    x, y, places, text = _neighbour_world(np.random.default_rng(10))
    _, report, _ = classify.train(x, y, np.arange(len(y)), ["a", "b"], text, 30.0, places=places, tile_m=12.5)
    assert report["cv"]["group_distance"] == {"tile_widths": 3.0, "m": 37.5}
    from core.tasks import report_lines

    assert "(2 folds by place: sample tiles closer than 3 tile widths (37.5 m) kept together)" in \
        report_lines(report)[0]
    _, report, _ = classify.train(x, y, np.arange(len(y)), ["a", "b"], text, 30.0, places=places)
    assert report["cv"]["group_distance"] == {"tile_widths": 3.0, "m": None}
    assert "closer than 3 tile widths kept together)" in report_lines(report)[0]


# ---------------------------------------------------------------------------------------- uncertainty

def test_uncertainty_is_one_minus_the_margin():
    p = np.array([[0.9, 0.05, 0.05], [0.4, 0.4, 0.2], [0.5, 0.3, 0.2]])
    assert classify.uncertainty(p) == pytest.approx([0.15, 1.0, 0.8])


def test_suggestions_are_the_most_uncertain_first_without_samples_or_overlap():
    unc = np.array([0.2, 0.9, 0.95, 0.9, 0.1, 0.99])
    assert classify.suggest(unc, 3) == [5, 2, 1]            # ties (1 and 3) by index
    assert classify.suggest(unc, 3, exclude=[5]) == [2, 1, 3]
    windows = [(0, 0, 10, 10), (5, 0, 10, 10), (10, 0, 10, 10), (20, 0, 10, 10), (30, 0, 10, 10), (100, 0, 10, 10)]
    # tile 1 overlaps tile 2 (picked before it), tile 3 touches tile 2 only along an edge
    assert classify.suggest(unc, 4, windows=windows) == [5, 2, 3, 0]


# ------------------------------------------------------------------------------------------ samples

def _tiles(rows=2, cols=3, size=10):
    transform = (1.0, 0.0, 1000.0, 0.0, -1.0, 2000.0)
    out = []
    for r in range(rows):
        for c in range(cols):
            win = (c * size, r * size, size, size)
            out.append(Tile(r, c, win, window_polygon_wkt(transform, win)))
    return out, transform


def _poly(x0, y0, x1, y1):
    return f"POLYGON (({x0} {y0}, {x1} {y0}, {x1} {y1}, {x0} {y1}, {x0} {y0}))"


def test_tiles_claimed_by_two_classes_are_left_out():
    tiles, _ = _tiles()
    # row 0 spans y 1990..2000, row 1 y 1980..1990; columns x 1000..1010..1020..1030
    s = Samples([_poly(1001, 1991, 1019, 1999), _poly(1011, 1991, 1029, 1999), "POINT (1005 1985)",
                 "POINT (1025 1985)", _poly(1000, 1970, 1010, 1980)],
                ["roof", "water", "roof", "water", "roof"], "EPSG:32636")
    m = match_tiles(s, tiles, "EPSG:32636")
    got = {(tiles[i].row, tiles[i].col): m.classes[y] for i, y in zip(m.index, m.y, strict=True)}
    assert got == {(0, 0): "roof", (0, 2): "water", (1, 0): "roof", (1, 2): "water"}
    assert m.conflicts == 1                      # tile (0, 1): roof and water
    assert m.outside == 1                        # the last polygon only touches row 1's bottom edge: no area


def test_a_point_on_a_shared_edge_claims_both_tiles_and_joins_nothing_else():
    tiles, _ = _tiles()
    s = Samples(["POINT (1010 1995)", "POINT (1025 1985)"], ["a", "b"], None)
    m = match_tiles(s, tiles, "EPSG:32636")
    got = sorted((tiles[i].row, tiles[i].col) for i in m.index[m.y == 0])
    assert got == [(0, 0), (0, 1)]
    assert len(set(m.group[m.y == 0])) == 1      # one sample: one group, never split by the folds


def test_samples_in_another_crs_are_transformed():
    from osgeo import osr

    tiles, _ = _tiles()
    utm = osr.SpatialReference()
    utm.ImportFromEPSG(32636)
    geo = osr.SpatialReference()
    geo.ImportFromEPSG(4326)
    geo.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    utm.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    lon, lat, _ = osr.CoordinateTransformation(utm, geo).TransformPoint(1025.0, 1985.0)
    m = match_tiles(Samples([f"POINT ({lon!r} {lat!r})"], ["b"], "EPSG:4326"), tiles, utm.ExportToWkt(), ["a", "b"])
    assert [(tiles[i].row, tiles[i].col) for i in m.index] == [(1, 2)]


def test_sample_tiles_know_their_places_in_tile_widths_and_metres():
    tiles, _ = _tiles(size=10)                       # 10 m tiles of a UTM grid (10 px of 1 m)
    s = Samples(["POINT (1005 1995)", "POINT (1025 1985)"], ["a", "b"], None)
    m = match_tiles(s, tiles, "EPSG:32636")
    assert m.tile_m == pytest.approx(10.0)
    assert np.allclose(m.places, [[100.5, 199.5], [102.5, 198.5]])   # centres / 10 m
    geo = [Tile(0, c, (c, 0, 1, 1), _poly(30 + c * 0.001, 60.0, 30.001 + c * 0.001, 60.001)) for c in range(2)]
    m = match_tiles(Samples(["POINT (30.0005 60.0005)", "POINT (30.0015 60.0005)"], ["a", "b"], None), geo,
                    "EPSG:4326")
    # at 60 degrees north a degree of longitude is half a degree of latitude on the ground
    assert m.tile_m == pytest.approx(0.0005 * 6371008.8 * np.pi / 180, rel=1e-3)
    assert np.hypot(*(m.places[1] - m.places[0])) == pytest.approx(1.0, rel=1e-3)


def test_sample_classes_are_checked():
    with pytest.raises(InvalidInput) as err:
        Samples(["POINT (0 0)", "POINT (1 1)"], ["a", None])
    assert "2" in err.value.problem and err.value.fix   # the second sample (numbered from 1) is named
    with pytest.raises(InvalidInput) as err:
        Samples(["POINT (0 0)", "POINT (1 1)"], ["a", "a"]).class_names()
    assert "'a'" in err.value.problem and err.value.fix
    with pytest.raises(InvalidInput) as err:
        Samples(["POINT (0 0)", "POINT (1 1)"], ["Water", "water"]).class_names()
    assert "'Water'" in err.value.problem and "'water'" in err.value.problem
    assert Samples(["POINT (0 0)"] * 3, [2, 10.0, 1]).class_names() == ["1", "10", "2"]


def test_lines_are_not_samples():
    tiles, _ = _tiles()
    s = Samples(["LINESTRING (1001 1999, 1029 1991)", "POINT (1005 1995)"], ["a", "b"])
    with pytest.raises(InvalidInput) as err:
        match_tiles(s, tiles, "EPSG:32636")
    assert "1" in err.value.problem and "line string" in err.value.problem   # the sample and its geometry type


# --------------------------------------------------------------------------------------------- head

class FakeBundle:
    def __init__(self, sha, dim, name="m"):
        self.sha256, self.embed_dim, self.name = sha, dim, name


def test_a_saved_head_round_trips_and_is_refused_with_another_model(tmp_path):
    rng = np.random.default_rng(6)
    x, y, text = _two_class_world(rng, text_right=False, n_per_class=5)
    head, _, _ = classify.train(x, y, np.arange(10), ["a", "b"], text, 30.0,
                                model={"name": "m", "sha256": "abc", "embed_dim": D})
    path = tmp_path / "head.json"
    path.write_text(head.to_json())
    again = classify.Head.read(path)
    probe = unit(rng.standard_normal((30, D)))
    assert np.allclose(again.proba(probe), head.proba(probe), atol=1e-5)
    again.check_model(FakeBundle("abc", D))
    with pytest.raises(ModelError) as err:
        again.check_model(FakeBundle("def", D, "other"))
    assert "'m'" in err.value.problem and "'other'" in err.value.problem and err.value.fix
    with pytest.raises(ModelError) as err:
        again.check_model(FakeBundle("abc", D + 1))
    assert f"{D}-d" in err.value.problem and f"{D + 1}-d" in err.value.problem
    broken = json.loads(path.read_text())
    broken["weights"] = broken["weights"][:-1]
    path.write_text(json.dumps(broken))
    with pytest.raises(InvalidInput) as err:
        classify.Head.read(path)
    assert err.value.path == str(path) and err.value.fix
    path.write_text('{"format": "something else"}')
    with pytest.raises(InvalidInput) as err:
        classify.Head.read(path)
    assert err.value.path == str(path) and "'remoteclip-classifier-head'" in err.value.problem   # the format wanted


# ---------------------------------------------------------------------------------------- dense map

def test_dense_cells_average_the_tiles_that_cover_them():
    from core.geodata.dense import dense_values

    transform = (2.0, 0.0, 100.0, 0.0, -2.0, 500.0)
    # 20 px tiles, step 10 px (overlap 0.5): a row of three tiles
    tiles = [Tile(0, j, (10 * j, 0, 20, 20), "") for j in range(3)]
    values = np.array([[1.0], [3.0], [5.0]])
    data, gt = dense_values(tiles, values, (20, 20), (10, 10), transform)
    assert data.shape == (1, 2, 4)
    assert data[0, 0].tolist() == [1.0, 2.0, 4.0, 5.0]   # cells shared by two tiles are their mean
    assert gt == (100.0, 20.0, 0.0, 500.0, 0.0, -20.0)
    # without overlap a cell is a tile, and a cell no tile covers is nodata
    data, _ = dense_values([tiles[0], Tile(1, 1, (20, 20, 20, 20), "")], np.array([1.0, 2.0]), (20, 20), (20, 20),
                           transform)
    assert data.shape == (1, 2, 2) and data[0, 0, 0] == 1.0 and data[0, 1, 1] == 2.0
    assert np.isnan(data[0, 0, 1]) and np.isnan(data[0, 1, 0])


# ------------------------------------------------------------------------- GDAL exceptions (QGIS 3.40+)

@pytest.fixture
def exceptions_on():
    """GDAL, OGR and OSR raise Python exceptions, as inside QGIS 3.40 and later; restored afterwards."""
    from osgeo import gdal, ogr, osr

    before = [m.GetUseExceptions() for m in (gdal, ogr, osr)]
    for m in (gdal, ogr, osr):
        m.UseExceptions()
    yield
    for m, was in reversed(list(zip((gdal, ogr, osr), before, strict=True))):
        if not was:
            m.DontUseExceptions()


def test_samples_and_dense_maps_give_our_errors_with_gdal_exceptions_on(exceptions_on, tmp_path):
    from core.geodata.dense import write_dense
    from core.samples import read_samples

    junk = tmp_path / "junk.geojson"
    junk.write_text("not json", encoding="utf-8")
    with pytest.raises(InvalidInput) as err:
        read_samples(junk, "class")
    assert err.value.path == str(junk) and err.value.fix
    tiles, transform = _tiles()
    with pytest.raises(InvalidInput) as err:
        match_tiles(Samples(["POINT (1005 1995)", "POINT (1025 1985)"], ["a", "b"], "EPSG:999999"), tiles,
                    "EPSG:32636")
    assert err.value.param == "samples" and "'EPSG:999999'" in err.value.problem
    with pytest.raises(InvalidInput) as err:
        match_tiles(Samples(["POINT (1005", "POINT (1025 1985)"], ["a", "b"]), tiles, "EPSG:32636")
    assert err.value.param is None and "1" in err.value.problem and err.value.fix   # the first sample
    out = write_dense(str(tmp_path / "d.tif"), tiles, np.arange(6.0), ["v"], (10, 10), (10, 10), transform,
                      "EPSG:32636")
    from osgeo import gdal

    ds = gdal.Open(out)
    assert ds.GetRasterBand(1).ReadAsArray().ravel().tolist() == [0, 1, 2, 3, 4, 5]
    ds = None


def test_replacing_a_dense_map_drops_its_statistics_only_once_the_new_map_is_in_place(tmp_path, monkeypatch):
    """The old map's .aux.xml describes its values: gone with it when the new map replaces it, kept with it
    when the replacement fails (the old map stays, and so must what describes it)."""
    import core.geodata.vectors
    from core.geodata.dense import write_dense

    tiles, transform = _tiles()
    path = tmp_path / "d.tif"
    write_dense(str(path), tiles, np.arange(6.0), ["v"], (10, 10), (10, 10), transform, "EPSG:32636")
    aux = tmp_path / "d.tif.aux.xml"
    aux.write_text("<PAMDataset>old statistics</PAMDataset>")
    old = path.read_bytes()

    def refuse(tmp, dest):
        raise RemoteClipError(f"Cannot replace {dest}: locked.", "Close it.")

    monkeypatch.setattr(core.geodata.vectors, "_replace", refuse)
    with pytest.raises(RemoteClipError) as err:
        write_dense(str(path), tiles, np.arange(6.0)[::-1], ["v"], (10, 10), (10, 10), transform, "EPSG:32636",
                    overwrite=True)
    assert err.value.fix == "Close it."   # the replace's own error comes through
    assert path.read_bytes() == old and aux.read_text() == "<PAMDataset>old statistics</PAMDataset>"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.tif", "d.tif.aux.xml"]   # no temp left
    monkeypatch.undo()
    write_dense(str(path), tiles, np.arange(6.0)[::-1], ["v"], (10, 10), (10, 10), transform, "EPSG:32636",
                overwrite=True)
    assert not aux.exists() and path.read_bytes() != old


def test_the_report_counts_drawn_samples_and_their_tiles_apart():
    """10 points where overlapping tiles meet claim 13 tiles: the table says both (it said "13 samples")."""
    from core.tasks import report_lines

    rng = np.random.default_rng(11)
    x, y, text = _two_class_world(rng, text_right=False, n_per_class=7)
    _, report, _ = classify.train(x, y, np.arange(len(y)), ["a", "b"], text, 30.0)
    report["samples"] = {"samples": {"a": 5, "b": 5}, "tiles": {"a": 7, "b": 6}}
    header, row_a = report_lines(report)[1:3]
    assert header.split()[-2:] == ["samples", "tiles"]
    assert row_a.split()[0] == "a" and row_a.split()[-2:] == ["5", str(report["cv"]["per_class"]["a"]["support"])]
