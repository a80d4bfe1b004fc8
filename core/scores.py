"""The class scores every path takes: one definition of each (core.records and core.tasks use them)."""

from __future__ import annotations

UNKNOWN = "unknown"   # the label of a tile whose best probability is below the threshold


def softmax(x, axis: int = -1):
    import numpy as np

    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def class_scores(emb, text):
    """(n, c) cosine scores ``emb @ text.T``, computed as ``(text @ emb.T).T``: one BLAS call on all its
    threads (faster than the other orientation at a million tiles), a class's scores contiguous (the column
    written for it). Every path from embeddings to class scores goes through here, so all give the same
    float32 values bit for bit."""
    return (text @ emb.T).T
