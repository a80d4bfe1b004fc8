"""The per-tile record loops the columnar task outputs replaced (one dict per tile, in Python): the reference
core.records' columns are checked against (tests/test_records.py) and timed against (bench/bench_scale.py).
Test helpers only: the pipeline never runs them."""

from __future__ import annotations

from core.scores import UNKNOWN, class_scores, softmax
from core.tasks import effective_threshold, slug_fields


def class_records(probs, labels: list[str], top_k: int, threshold: float | None):
    """label, score, top_labels, top_scores and p_<class> per tile from class probabilities."""
    import numpy as np

    k = min(int(top_k), len(labels))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    pnames = slug_fields(labels)
    recs = []
    for i in range(len(probs)):
        top = order[i]
        best = float(probs[i, top[0]])
        label = labels[top[0]] if threshold is None or best >= float(threshold) else UNKNOWN
        r = {"label": label, "score": round(best, 6),
             "top_labels": "|".join(labels[j] for j in top),
             "top_scores": "|".join(f"{probs[i, j]:.4f}" for j in top)}
        for f, j in zip(pnames, range(len(labels)), strict=True):
            r[f] = round(float(probs[i, j]), 6)
        recs.append(r)
    fields_ = [("label", "str"), ("score", "float"), ("top_labels", "str"), ("top_scores", "str")]
    fields_ += [(f, "float") for f in pnames]
    return recs, fields_, dict(zip(pnames, labels, strict=True))


def label_records(emb, text, labels: list[str], logit_scale: float, top_k: int, threshold: float | None):
    probs = softmax(logit_scale * class_scores(emb, text))
    return class_records(probs, labels, top_k, threshold)


def count_records(emb, text, logit_scale: float):
    probs = softmax(logit_scale * class_scores(emb, text))
    best = probs.argmax(axis=1)
    recs = [{"count": int(b) + 1, "count_conf": round(float(probs[i, b]), 6)} for i, b in enumerate(best)]
    return recs, [("count", "int"), ("count_conf", "float")]



def search_records(emb, query, top_k: int | None, threshold: float | None, stand_out: float | None = None):
    """similarity, rank and selected per tile; selected: among the ``top_k`` best, at least ``threshold`` and
    standing out (:func:`stand_out_threshold`)."""
    import numpy as np

    sim = emb @ query
    order = np.argsort(-sim, kind="stable")
    rank = np.empty(len(sim), dtype=np.int64)
    rank[order] = np.arange(1, len(sim) + 1)
    sel = np.ones(len(sim), dtype=bool)
    if top_k is not None:
        sel &= rank <= int(top_k)
    cut = effective_threshold(sim, threshold, stand_out)
    if cut is not None:
        sel &= sim >= cut
    recs = [{"similarity": round(float(s), 6), "rank": int(r), "selected": int(x)}
            for s, r, x in zip(sim, rank, sel, strict=True)]
    return recs, [("similarity", "float"), ("rank", "int"), ("selected", "int")]


