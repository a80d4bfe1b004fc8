"""Few-shot classification of tile embeddings from an analyst's samples (numpy only).

The classifier has two heads over the same unit-length tile embeddings:

* the **zero-shot head** of the class names: ``logit_scale * cos(tile, text(class))``, the label task's
  template ensemble of each class name;
* a **sample head** fitted on the sample tiles: multinomial logistic regression (softmax, L2 on the
  weights, class-balanced: every class weighs the same whatever its number of samples), fitted by
  L-BFGS; or, with ``method="knn"``, a class-balanced cosine k-nearest-neighbour vote.

Their log-probabilities are mixed, ``log p = (1 - alpha) log p_zero_shot + alpha log p_samples``
(renormalised). ``alpha`` (0 = class names alone, 1 = samples alone) and the L2 strength are chosen by
k-fold cross-validation on the samples: the pair with the best balanced accuracy (mean per-class
recall) of the held-out predictions. The samples must earn their say: when the class names alone
(``alpha`` 0) tie for the best, they are kept; other ties go to the lower log-loss, then to the
smaller ``alpha``, then to the stronger L2. Folds are **spatial** when the tiles' places are known:
samples drawn close together look alike, so folds that split neighbours measure memory, not skill. Sample
tiles closer than ``d`` tile widths (single linkage, whatever their class) and the tiles of one drawn
polygon or point are never split between training and evaluation; ``d`` is the largest distance up to
:data:`SPATIAL_WIDTHS` that leaves every class in two or more groups. When even neighbouring tiles
cannot be kept apart that way, folds are stratified and **grouped by sample** (said in a warning): the
tiles of one sample (and of samples that share a tile) are never split. When some class has a single
sample, folds fall back to single tiles (an optimistic
estimate, said in a warning); when some class has a single sample tile, nothing can be validated and
the classifier is the zero-shot head alone (``alpha`` 0), so it is never worse than the class names
without evidence.

Uncertainty is ``1 - (p1 - p2)``, one minus the margin between the two most probable classes (0: sure,
1: a tie). :func:`suggest` picks the most uncertain tiles to label next, most uncertain first, skipping
sample tiles and tiles that overlap a tile already picked.

The trained head (:class:`Head`) is a small JSON file: class names, the weights, the mix, the class
text embeddings and the model's sha256 and embedding size; it is refused with another model.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from .errors import InvalidInput, ModelError, SourceUnreadable

HEAD_FORMAT = "remoteclip-classifier-head"
HEAD_VERSION = 1
REPORT_FORMAT = "remoteclip-classify-report"
METHODS = ("logistic", "knn")
ALPHAS = tuple(round(a / 10, 1) for a in range(11))
L2S = (1e-4, 1e-3, 1e-2)
DEFAULT_L2 = 1e-3
MAX_FOLDS = 5
SPATIAL_WIDTHS = 3.0     # spatial folds keep together sample tiles closer than this (tile widths), at most
FEW_SAMPLES = 5          # a class with fewer sample tiles gets a warning


# ------------------------------------------------------------------------------------------ numerics

def log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-sample weights summing to 1 with every class present weighing the same (1 / classes present)."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = int((counts > 0).sum())
    return 1.0 / (present * counts[y])


def _lbfgs(fun, x0: np.ndarray, iters: int = 300, memory: int = 10, gtol: float = 1e-7) -> np.ndarray:
    """Minimise a smooth convex ``fun(x) -> (value, gradient)`` by L-BFGS with a backtracking line search."""
    x = x0.copy()
    f, g = fun(x)
    ss: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for _ in range(iters):
        if np.max(np.abs(g)) < gtol:
            break
        q = g.copy()
        coef = []
        for s, y in zip(reversed(ss), reversed(ys), strict=True):
            rho = 1.0 / float(y @ s)
            a = rho * float(s @ q)
            q -= a * y
            coef.append((rho, a))
        if ys:
            q *= float(ss[-1] @ ys[-1]) / float(ys[-1] @ ys[-1])
        for (s, y), (rho, a) in zip(zip(ss, ys, strict=True), reversed(coef), strict=True):
            q += s * (a - rho * float(y @ q))
        d = -q
        slope = float(g @ d)
        if slope >= 0:   # not a descent direction: restart from the gradient
            ss.clear()
            ys.clear()
            d = -g
            slope = -float(g @ g)
        t = 1.0 if ys else min(1.0, 1.0 / max(float(np.linalg.norm(g)), 1e-12))
        while True:
            xn = x + t * d
            fn, gn = fun(xn)
            if fn <= f + 1e-4 * t * slope:
                break
            t *= 0.5
            if t < 1e-12:
                return x
        s, y = xn - x, gn - g
        if float(s @ y) > 1e-12:
            ss.append(s)
            ys.append(y)
            if len(ss) > memory:
                ss.pop(0)
                ys.pop(0)
        done = abs(f - fn) <= 1e-12 * max(1.0, abs(f))
        x, f, g = xn, fn, gn
        if done:
            break
    return x


def fit_logistic(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float = DEFAULT_L2,
                 iters: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced multinomial logistic regression: minimises sum_i w_i CE(x_i W + b, y_i) + l2 |W|^2
    with the class-balanced weights of :func:`class_weights`. Returns (W (D, C), b (C,)); deterministic."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    n, d = x.shape
    w = class_weights(y, n_classes)
    onehot = np.zeros((n, n_classes))
    onehot[np.arange(n), y] = 1.0

    def fun(theta):
        wm = theta[:d * n_classes].reshape(d, n_classes)
        b = theta[d * n_classes:]
        lp = log_softmax(x @ wm + b)
        loss = -float(np.sum(w * lp[np.arange(n), y])) + l2 * float(np.sum(wm * wm))
        r = (np.exp(lp) - onehot) * w[:, None]
        gw = x.T @ r + 2.0 * l2 * wm
        return loss, np.concatenate([gw.ravel(), r.sum(axis=0)])

    theta = _lbfgs(fun, np.zeros(d * n_classes + n_classes), iters=iters)
    return theta[:d * n_classes].reshape(d, n_classes), theta[d * n_classes:]


def knn_log_proba(train_x: np.ndarray, train_y: np.ndarray, x: np.ndarray, n_classes: int, k: int = 5) -> np.ndarray:
    """Class-balanced cosine k-NN: each of the k nearest samples votes for its class with weight
    1 / (samples of that class); votes are smoothed (+0.5 / class) and normalised."""
    train_y = np.asarray(train_y, dtype=np.int64)
    k = max(1, min(int(k), len(train_y)))
    sims = normalize(x) @ normalize(train_x).T
    nn = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    counts = np.bincount(train_y, minlength=n_classes).astype(np.float64)
    per = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    votes = np.zeros((len(x), n_classes))
    for j in range(k):
        cls = train_y[nn[:, j]]
        np.add.at(votes, (np.arange(len(x)), cls), per[cls])
    votes = votes / np.maximum(votes.sum(axis=1, keepdims=True), 1e-12)
    votes += 0.5 / k
    return np.log(votes / votes.sum(axis=1, keepdims=True))


def zero_shot_log_proba(x: np.ndarray, text: np.ndarray, logit_scale: float) -> np.ndarray:
    return log_softmax(float(logit_scale) * (normalize(x) @ normalize(text).T))


def mix(zs_logp: np.ndarray, head_logp: np.ndarray, alpha: float) -> np.ndarray:
    """Probabilities of the mixed heads: softmax((1 - alpha) log p_zero_shot + alpha log p_samples)."""
    return np.exp(log_softmax((1.0 - alpha) * zs_logp + alpha * head_logp))


def uncertainty(probs: np.ndarray) -> np.ndarray:
    """1 - (p1 - p2): 0 for a sure tile, 1 for a tie between its two most probable classes."""
    if probs.shape[1] < 2:
        return np.zeros(len(probs))
    top = np.sort(probs, axis=1)[:, -2:]
    return 1.0 - (top[:, 1] - top[:, 0])


# ------------------------------------------------------------------------------------ metrics, folds

def evaluation(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, balanced accuracy, per-class precision and recall and the confusion matrix (rows: true)."""
    c = len(classes)
    cm = np.zeros((c, c), dtype=np.int64)
    np.add.at(cm, (np.asarray(y), np.asarray(pred)), 1)
    per = {}
    recalls = []
    for i, name in enumerate(classes):
        support = int(cm[i].sum())
        predicted = int(cm[:, i].sum())
        recall = cm[i, i] / support if support else None
        if recall is not None:
            recalls.append(recall)
        per[name] = {"precision": None if not predicted else round(float(cm[i, i] / predicted), 4),
                     "recall": None if recall is None else round(float(recall), 4), "support": support}
    return {"accuracy": round(float(np.mean(np.asarray(y) == np.asarray(pred))), 4),
            "balanced_accuracy": round(float(np.mean(recalls)), 4) if recalls else None,
            "per_class": per, "confusion": cm.tolist()}


def _balanced(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    rec = [np.mean(pred[y == c] == c) for c in range(n_classes) if np.any(y == c)]
    return float(np.mean(rec))


def make_folds(y: np.ndarray, groups: np.ndarray, n_folds: int = MAX_FOLDS,
               seed: int = 0) -> tuple[np.ndarray | None, str | None]:
    """Stratified folds that keep each group (sample) whole: (fold of each tile, "sample"), or by single
    tiles when some class has only one group (..., "tile"), or (None, None) when some class has a single
    tile. Each class's groups are shuffled (seeded) and dealt round-robin, so every fold holds every class."""
    y = np.asarray(y)
    for by, g in (("sample", np.asarray(groups)), ("tile", np.arange(len(y)))):
        k = min(int(n_folds), int(_groups_per_class(y, g).min()))
        if k >= 2:
            return _deal(y, g, k, seed), by
    return None, None


def _deal(y: np.ndarray, g: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Folds of groups of one class each: each class's groups shuffled (seeded) and dealt round-robin."""
    rng = np.random.default_rng(seed)
    fold_of_group: dict = {}
    start = 0
    for u in (np.unique(g[y == c]) for c in np.unique(y)):
        order = rng.permutation(len(u))
        for i, gi in enumerate(order):
            fold_of_group[u[gi]] = (start + i) % k
        start += len(u)
    return np.array([fold_of_group[v] for v in g], dtype=np.int64)


def spatial_links(places: np.ndarray, groups: np.ndarray, max_widths: float) -> tuple[np.ndarray, np.ndarray]:
    """The single-linkage tree of the sample tiles: (edges (m, 2), their lengths (m,)), ascending, such that
    the tiles closer than ``d`` (<= ``max_widths``) are joined exactly by the edges shorter than ``d``.
    ``places`` is (n, 3): part, x, y in tile widths (tiles of different parts are never joined); tiles of
    one ``group`` (sample) are joined by edges of length 0."""
    places = np.asarray(places, dtype=np.float64)
    groups = np.asarray(groups)
    n = len(places)
    cand: list[tuple[float, int, int]] = []
    first: dict = {}
    for i, g in enumerate(groups.tolist()):
        if g in first:
            cand.append((0.0, first[g], i))
        else:
            first[g] = i
    cells: dict[tuple, list[int]] = {}
    for i, (p, x, yv) in enumerate(places.tolist()):
        cells.setdefault((p, math.floor(x / max_widths), math.floor(yv / max_widths)), []).append(i)
    for (p, cx, cy), members in cells.items():
        a = np.asarray(members)
        for dx, dy in ((0, 0), (1, -1), (1, 0), (1, 1), (0, 1)):   # each pair of neighbouring cells once
            other = cells.get((p, cx + dx, cy + dy))
            if other is None:
                continue
            b = np.asarray(other)
            dist = np.hypot(places[a, 1][:, None] - places[b, 1][None, :], places[a, 2][:, None] - places[b, 2][None, :])
            ia, ib = np.nonzero(dist <= max_widths)
            for u, v in zip(ia.tolist(), ib.tolist(), strict=True):
                if (dx, dy) == (0, 0) and u >= v:
                    continue
                cand.append((float(dist[u, v]), int(a[u]), int(b[v])))
    cand.sort()
    parent = list(range(n))
    edges, lengths = [], []
    for length, i, j in cand:
        ri, rj = _root(parent, i), _root(parent, j)
        if ri != rj:
            parent[ri] = rj
            edges.append((i, j))
            lengths.append(length)
    return np.asarray(edges, dtype=np.int64).reshape(-1, 2), np.asarray(lengths, dtype=np.float64)


def _root(parent: list, a: int) -> int:
    while parent[a] != a:
        parent[a] = parent[parent[a]]
        a = parent[a]
    return a


def _components(groups: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The groups joined by ``edges``, each named by the smallest of its ``groups`` labels (so a grouping
    that joins nothing more than the samples keeps their labels)."""
    parent = list(range(len(groups)))
    for i, j in edges.tolist():
        ri, rj = _root(parent, i), _root(parent, j)
        if ri != rj:
            parent[ri] = rj
    roots = np.asarray([_root(parent, i) for i in range(len(groups))], dtype=np.int64)
    name: dict = {}
    for r, g in zip(roots.tolist(), np.asarray(groups).tolist(), strict=True):
        name[r] = min(name.get(r, g), g)
    return np.asarray([name[r] for r in roots.tolist()])


def _groups_per_class(y: np.ndarray, g: np.ndarray) -> np.ndarray:
    return np.asarray([len(np.unique(g[y == c])) for c in np.unique(y)])


def group_folds(y: np.ndarray, g: np.ndarray, k: int, seed: int = 0) -> np.ndarray | None:
    """Folds that keep each group whole, a group holding tiles of several classes: groups (shuffled, seeded,
    then the largest first) go one by one to the fold that keeps each class's share of the folds most even
    (ties: the fold with fewer tiles, then the lower fold). None unless every class lies in two or more folds
    (so that every fold's training holds every class) and no fold is empty. Groups of one class each are
    dealt as :func:`make_folds` deals samples."""
    y = np.asarray(y)
    if all(len(np.unique(y[g == v])) == 1 for v in np.unique(g)):
        return _deal(y, g, k, seed)
    u, inv = np.unique(g, return_inverse=True)
    classes = np.unique(y)
    counts = np.zeros((len(u), len(classes)))
    np.add.at(counts, (inv, np.searchsorted(classes, y)), 1.0)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(u))
    order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]
    totals = counts.sum(axis=0)
    per_fold = np.zeros((k, len(classes)))
    fold_of = np.zeros(len(u), dtype=np.int64)
    for gi in order.tolist():
        best = None
        for f in range(k):
            trial = per_fold.copy()
            trial[f] += counts[gi]
            key = (round(float(np.std(trial / totals, axis=0).sum()), 12), float(per_fold[f].sum()), f)
            if best is None or key < best:
                best = key
        fold_of[gi] = best[2]
        per_fold[best[2]] += counts[gi]
    if (per_fold.sum(axis=1) == 0).any() or ((per_fold > 0).sum(axis=0) < 2).any():
        return None
    return fold_of[inv]


def spatial_folds(y: np.ndarray, groups: np.ndarray, places: np.ndarray, n_folds: int = MAX_FOLDS, seed: int = 0,
                  max_widths: float = SPATIAL_WIDTHS) -> tuple[np.ndarray | None, float | None, list[str]]:
    """Folds that never put two sample tiles closer than ``d`` tile widths on opposite sides: (fold of each
    tile, d, []). The tiles are grouped by single linkage (tiles closer than d, and the tiles of one sample,
    in one group, whatever their class); d is the largest distance up to ``max_widths`` that leaves every
    class in two or more groups (and the folds hold every class in their training): ``max_widths``, or the
    length of a link of the tree just above it (pairs exactly d apart may be split). A distance of one tile
    width or less would split neighbouring tiles, so none is used: when no distance works, (None, the
    smallest distance tried, the classes whose sample tiles all lie within it of each other)."""
    y = np.asarray(y)
    groups = np.asarray(groups)
    edges, lengths = spatial_links(places, groups, max_widths)
    # candidate distances, largest first: the cap, then every link length in (1, cap) (joins change only there)
    cands = sorted({float(max_widths)} | {float(v) for v in lengths if 1.0 + 1e-6 < v < max_widths}, reverse=True)
    cands = [d for d in cands if d > 1.0 + 1e-6]

    def grouping(d):
        return _components(groups, edges[lengths < d])

    # every class in >= 2 groups is monotone in d: the largest d that keeps it, by bisection
    lo, hi = 0, len(cands)           # cands[lo:] ... find the first index whose grouping keeps 2 groups per class
    while lo < hi:
        mid = (lo + hi) // 2
        if _groups_per_class(y, grouping(cands[mid])).min() >= 2:
            hi = mid
        else:
            lo = mid + 1
    for d in cands[lo:lo + 10]:
        g = grouping(d)
        k = min(int(n_folds), int(_groups_per_class(y, g).min()))
        fold = group_folds(y, g, k, seed)
        if fold is not None:
            return fold, d, []
    d = cands[-1]
    g = grouping(d)
    return None, d, [int(c) for c in np.unique(y) if len(np.unique(g[y == c])) < 2]


# --------------------------------------------------------------------------------------------- head

class Head:
    """A trained classifier: apply with :meth:`log_proba`; save with :meth:`to_json`."""

    def __init__(self, classes, text, logit_scale, alpha, method="logistic", weights=None, bias=None,
                 train_x=None, train_y=None, k=5, l2=DEFAULT_L2, model=None, report=None, templates=None):
        self.classes = list(classes)
        self.text = np.asarray(text, dtype=np.float64)
        self.logit_scale = float(logit_scale)
        self.alpha = float(alpha)
        self.method = method
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        self.bias = None if bias is None else np.asarray(bias, dtype=np.float64)
        self.train_x = None if train_x is None else np.asarray(train_x, dtype=np.float64)
        self.train_y = None if train_y is None else np.asarray(train_y, dtype=np.int64)
        self.k = int(k)
        self.l2 = float(l2)
        self.model = dict(model or {})
        self.report = report
        self.templates = templates

    def head_log_proba(self, x: np.ndarray) -> np.ndarray:
        if self.method == "knn":
            return knn_log_proba(self.train_x, self.train_y, x, len(self.classes), self.k)
        return log_softmax(normalize(x) @ self.weights + self.bias)

    def proba(self, x: np.ndarray) -> np.ndarray:
        zs = zero_shot_log_proba(x, self.text, self.logit_scale)
        if self.alpha == 0.0:
            return np.exp(zs)
        return mix(zs, self.head_log_proba(x), self.alpha)

    # ------------------------------------------------------------------------------------- files

    def to_dict(self) -> dict:
        def arr(a):
            return None if a is None else np.round(np.asarray(a, dtype=np.float64), 7).tolist()

        out = {"format": HEAD_FORMAT, "version": HEAD_VERSION, "classes": self.classes, "method": self.method,
               "alpha": self.alpha, "l2": self.l2, "k": self.k, "logit_scale": self.logit_scale,
               "model": self.model, "templates": self.templates, "text": arr(self.text),
               "weights": arr(self.weights), "bias": arr(self.bias)}
        if self.method == "knn":
            out.update(train_x=arr(self.train_x), train_y=None if self.train_y is None else self.train_y.tolist())
        if self.report is not None:
            out["report"] = {k: v for k, v in self.report.items() if k in ("cv", "samples", "alpha", "l2")}
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False) + "\n"

    @classmethod
    def read(cls, path) -> Head:
        """A head file written by :meth:`to_json`; anything else is refused with a one-line error."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise SourceUnreadable(f"Classifier file not found: {path}.", "Check the path (--head), or train one "
                                  "with --samples and --head-out.", path=path)
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except OSError as e:
            raise SourceUnreadable(f"The classifier file {path} cannot be read ({e.strerror or e}).",
                                   "Check that it is readable (its permissions, the disk).", path=path) from None
        except (ValueError, UnicodeDecodeError, RecursionError) as e:   # RecursionError: lists nested deeply
            why = "nested too deeply" if isinstance(e, RecursionError) else str(e)
            raise InvalidInput(f"{path} is not a RemoteCLIP classifier ({why}).",
                               "Give a file written by classify --head-out.", path=path) from None
        if not isinstance(d, dict) or d.get("format") != HEAD_FORMAT:
            raise InvalidInput(f"{path} is not a RemoteCLIP classifier (no format {HEAD_FORMAT!r}).",
                                  "Give a file written by classify --head-out.", path=path)
        if d.get("version") != HEAD_VERSION:
            raise InvalidInput(f"{path} is a classifier of format version {d.get('version')!r}; this version "
                                  f"reads {HEAD_VERSION}.", "Train it again with this version (--samples).", path=path)
        try:
            head = cls(d["classes"], d["text"], d["logit_scale"], d["alpha"], d.get("method", "logistic"),
                       d.get("weights"), d.get("bias"), d.get("train_x"), d.get("train_y"), d.get("k", 5),
                       d.get("l2", DEFAULT_L2), d.get("model"), d.get("report"), d.get("templates"))
            c, dim = len(head.classes), head.text.shape[1]
            ok = head.text.shape == (c, dim) and head.method in METHODS and 0.0 <= head.alpha <= 1.0 and c >= 2
            if head.method == "logistic":
                ok = ok and head.weights.shape == (dim, c) and head.bias.shape == (c,)
            else:
                ok = ok and head.train_x.ndim == 2 and head.train_x.shape[1] == dim \
                    and len(head.train_y) == len(head.train_x)
            ok = ok and all(math.isfinite(v) for v in (head.alpha, head.logit_scale))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError):
            ok = False
        if not ok:
            raise InvalidInput(f"The classifier {path} is damaged (its arrays do not fit together).",
                                  "Train it again with --samples and --head-out.", path=path)
        head.path = path
        return head

    def check_model(self, bundle, path: str = "") -> None:
        """Refuse a head trained with another model: its weights mean nothing in another embedding space."""
        want = self.model.get("sha256")
        dim = self.model.get("embed_dim")
        if want != bundle.sha256 or (dim is not None and int(dim) != bundle.embed_dim):
            raise ModelError(
                f"The classifier{' ' + path if path else ''} was trained with the model "
                f"{self.model.get('name')!r} (sha256 {str(want)[:12]}…, {dim}-d), not with {bundle.name!r} "
                f"(sha256 {bundle.sha256[:12]}…, {bundle.embed_dim}-d).",
                "Run with the model it was trained with (--model), or train a new one on this model "
                "(--samples).", path=path)


# ------------------------------------------------------------------------------------------ training

def train(x: np.ndarray, y: np.ndarray, groups: np.ndarray, classes: list[str], text: np.ndarray,
          logit_scale: float, method: str = "logistic", k: int = 5, n_folds: int = MAX_FOLDS, seed: int = 0,
          model: dict | None = None, templates=None, places: np.ndarray | None = None,
          tile_m: float | None = None) -> tuple[Head, dict, list[str]]:
    """Fit the classifier on sample tiles ``x`` (classes ``y``, sample ``groups``): (head, report, warnings).
    With ``places`` (n, 3: part, x, y in tile widths; ``tile_m`` metres per tile width, None: unknown) the
    folds are spatial (:func:`spatial_folds`), else, or when no spatial grouping holds, by sample."""
    if method not in METHODS:
        raise InvalidInput(f"Unknown classifier {method!r}.", "Use logistic or knn.", param="method")
    x = normalize(x)
    y = np.asarray(y, dtype=np.int64)
    c = len(classes)
    warnings: list[str] = []
    zs = zero_shot_log_proba(x, text, logit_scale)
    fold, by, distance = None, None, None
    if places is not None and SPATIAL_WIDTHS:
        fold, distance, crowded = spatial_folds(y, groups, places, n_folds, seed, SPATIAL_WIDTHS)
        by = "space" if fold is not None else None
    if fold is None:
        fold, by = make_folds(y, groups, n_folds, seed)
        if by == "sample" and places is not None and SPATIAL_WIDTHS:
            names = ", ".join(repr(classes[i]) for i in crowded) or "some class"
            warnings.append(f"The sample tiles of {names} all lie within {distance:.3g} tile widths of each other, "
                            "so the folds keep only each sample whole and neighbouring tiles fall on both sides: "
                            "the cross-validated accuracy is optimistic. Draw every class's samples in two or "
                            "more places further apart.")
    grid = L2S if method == "logistic" else (None,)

    def head_logp(tr, te, l2):
        if method == "knn":
            return knn_log_proba(x[tr], y[tr], x[te], c, k)
        w, b = fit_logistic(x[tr], y[tr], c, l2)
        return log_softmax(x[te] @ w + b)

    cv = None
    alpha, l2 = 0.0, DEFAULT_L2 if method == "logistic" else None
    if fold is None:
        warnings.append("A class has a single sample tile, so nothing can be cross-validated: the classifier is "
                        "the class names alone (zero-shot) until every class has at least two samples.")
    else:
        k_folds = int(fold.max()) + 1
        if by == "tile":
            warnings.append("A class has a single sample (point or polygon), so cross-validation splits the tiles "
                            "of one sample between training and evaluation: the accuracy is optimistic. Draw two "
                            "or more samples per class.")
        oof = {l2v: np.zeros((len(y), c)) for l2v in grid}
        for f in range(k_folds):
            tr, te = fold != f, fold == f
            for l2v in grid:
                oof[l2v][te] = head_logp(tr, te, l2v)
        best = None
        for l2v in grid:
            for a in ALPHAS:
                p = mix(zs, oof[l2v], a)
                pred = p.argmax(axis=1)
                # best balanced accuracy; ties: the class names alone (the samples must earn their say), then
                # the lower log-loss, then the smaller alpha, then the stronger L2
                score = (_balanced(y, pred, c), a == 0.0, -_log_loss(p, y, c), -a, l2v or 0.0)
                if best is None or score > best[0]:
                    best = (score, a, l2v, pred)
        _, alpha, l2, pred = best
        zs_pred = zs.argmax(axis=1)
        alone = mix(zs, oof[l2], 1.0).argmax(axis=1)
        apart = None if by != "space" else {"tile_widths": round(distance, 3),
                                             "m": None if tile_m is None else round(distance * tile_m, 2)}
        cv = {"folds": k_folds, "grouped_by": by, "group_distance": apart, **evaluation(y, pred, classes),
              "zero_shot": evaluation(y, zs_pred, classes)["balanced_accuracy"],
              "zero_shot_accuracy": evaluation(y, zs_pred, classes)["accuracy"],
              "samples_alone": evaluation(y, alone, classes)["balanced_accuracy"]}
    if method == "logistic":
        w, b = fit_logistic(x, y, c, l2)
        head = Head(classes, text, logit_scale, alpha, "logistic", w, b, l2=l2, model=model, templates=templates)
    else:
        head = Head(classes, text, logit_scale, alpha, "knn", train_x=x, train_y=y, k=k, model=model,
                    templates=templates)
    report = {"format": REPORT_FORMAT, "classes": list(classes), "method": method, "alpha": alpha, "l2": l2,
              "cv": cv}
    head.report = report
    return head, report, warnings


def _log_loss(p: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    w = class_weights(y, n_classes)
    return -float(np.sum(w * np.log(np.maximum(p[np.arange(len(y)), y], 1e-12))))


# ------------------------------------------------------------------------------------- suggestions

def suggest(unc: np.ndarray, n: int, exclude=None, windows=None) -> list[int]:
    """Indices of the ``n`` tiles to label next: most uncertain first (ties: lower index), never a tile of
    ``exclude`` (the samples), and, given pixel ``windows`` (col, row, width, height), never a tile that
    overlaps one already picked (with overlapping tiles the neighbours of an uncertain tile are as
    uncertain; labelling one of them teaches as much)."""
    unc = np.asarray(unc, dtype=np.float64)
    order = np.lexsort((np.arange(len(unc)), -unc))
    skip = np.zeros(len(unc), dtype=bool)
    if exclude is not None:
        skip[np.asarray(list(exclude), dtype=np.int64)] = True
    picked: list[int] = []
    boxes: list[tuple] = []
    for i in order:
        if len(picked) >= n:
            break
        if skip[i]:
            continue
        if windows is not None:
            c0, r0, w, h = windows[i]
            if any(c0 < c1 + w1 and c1 < c0 + w and r0 < r1 + h1 and r1 < r0 + h for c1, r1, w1, h1 in boxes):
                continue
            boxes.append((c0, r0, w, h))
        picked.append(int(i))
    return picked
