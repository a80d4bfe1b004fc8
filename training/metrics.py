"""Evaluation metrics as pure numpy functions (hand-checked in tests/test_metrics.py).

Conventions: embeddings are rows, L2-normalised; scores are cosine similarities (higher = better);
labels are integer class indices; accuracies are fractions in [0, 1], recalls in percent where the
reference implementation reports percent (retrieval, as RemoteCLIP's retrieval script does).
"""

from __future__ import annotations

import math

import numpy as np


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _ranked(scores: np.ndarray) -> np.ndarray:
    """Column indices of each row from best to worst; ties keep the lower index first (stable)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), axis=1, kind="stable")


# --- classification ---------------------------------------------------------------------------------

def topk_accuracy(scores: np.ndarray, labels, k: int = 1) -> float:
    """Fraction of rows whose true label is among the k best-scoring classes (k capped at n_classes)."""
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    k = min(k, scores.shape[1])
    top = _ranked(scores)[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def mean_per_class_recall(pred, labels, n_classes: int | None = None) -> float:
    """Balanced accuracy: the recall of each class present in ``labels``, averaged over those classes."""
    pred = np.asarray(pred)
    labels = np.asarray(labels)
    classes = np.unique(labels) if n_classes is None else [c for c in range(n_classes) if np.any(labels == c)]
    return float(np.mean([np.mean(pred[labels == c] == c) for c in classes]))


def confusion_matrix(pred, labels, n_classes: int) -> np.ndarray:
    """cm[true, predicted] counts."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels), np.asarray(pred)), 1)
    return cm


def class_embeddings(text_embeds: np.ndarray, n_classes: int, n_templates: int) -> np.ndarray:
    """Template ensemble (clip_benchmark's zero_shot_classifier): prompts ordered class-major
    (class 0 with every template, then class 1, ...); each normalised, averaged per class, renormalised."""
    t = normalize(text_embeds).reshape(n_classes, n_templates, -1)
    return normalize(t.mean(axis=1))


def zeroshot_scores(image_embeds: np.ndarray, class_embeds: np.ndarray) -> np.ndarray:
    return normalize(image_embeds) @ normalize(class_embeds).T


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion (95 % for the default z): unlike p +- z*se it stays inside 0..1
    and is honest for the few dozen images a small test set has."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def classification_report(scores: np.ndarray, labels) -> dict:
    labels = np.asarray(labels)
    pred = np.argmax(scores, axis=1)
    top1 = topk_accuracy(scores, labels, 1)
    return {"top1": top1, "top1_ci95": list(wilson_interval(int(np.sum(pred == labels)), len(labels))),
            "top5": topk_accuracy(scores, labels, 5),
            "mean_per_class_recall": mean_per_class_recall(pred, labels, scores.shape[1]), "n": int(len(labels))}


# --- retrieval ----------------------------------------------------------------------------------------

def retrieval_recalls(image_embeds: np.ndarray, text_embeds: np.ndarray, text_to_image, ks=(1, 5, 10)) -> dict:
    """Image<->text recall@k in percent, as RemoteCLIP's retrieval script computes it (clip_benchmark's
    ``recall_at_k``): text->image counts a text as found when its image is within the top k images;
    image->text counts an image as found when *any* of its captions is within the top k texts. Mean recall
    is the mean of the 2 x len(ks) recalls.

    ``text_to_image[j]`` is the index of the image that text j describes."""
    text_to_image = np.asarray(text_to_image)
    scores = normalize(text_embeds) @ normalize(image_embeds).T  # (n_texts, n_images)
    positive = np.zeros_like(scores, dtype=bool)
    positive[np.arange(len(text_to_image)), text_to_image] = True
    out = {}
    t_rank = _ranked(scores)
    i_rank = _ranked(scores.T)
    for k in ks:
        t_hit = np.take_along_axis(positive, t_rank[:, :k], axis=1).any(axis=1)
        out[f"text_to_image_R@{k}"] = 100.0 * float(t_hit.mean())
    for k in ks:
        i_hit = np.take_along_axis(positive.T, i_rank[:, :k], axis=1).any(axis=1)
        out[f"image_to_text_R@{k}"] = 100.0 * float(i_hit.mean())
    out["mean_recall"] = float(np.mean(list(out.values())))
    return out


# --- feature classifiers -----------------------------------------------------------------------------

def knn_predict(train_x, train_y, test_x, k: int = 5, n_classes: int | None = None) -> np.ndarray:
    """Cosine k-NN, majority vote; a tied vote goes to the class with the larger summed similarity."""
    train_y = np.asarray(train_y)
    n_classes = int(n_classes or train_y.max() + 1)
    sims = normalize(test_x) @ normalize(train_x).T
    k = min(k, len(train_y))
    nn = _ranked(sims)[:, :k]
    votes = np.zeros((len(sims), n_classes))
    weight = np.zeros((len(sims), n_classes))
    for r in range(len(sims)):
        for j in nn[r]:
            votes[r, train_y[j]] += 1
            weight[r, train_y[j]] += sims[r, j]
    # votes dominate; similarity only breaks ties (weights are < k in magnitude, scaled under 1 vote)
    return np.argmax(votes + weight / (2.0 * k + 1.0), axis=1)


def fit_logistic(x, y, n_classes: int | None = None, l2: float = 1e-3, steps: int = 500):
    """Multinomial logistic regression (softmax + L2 on the weights) fitted by full-batch L-BFGS in torch.

    Returns (W (D, C), b (C,)) as numpy arrays. Deterministic for given inputs."""
    import torch

    x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    y_np = np.asarray(y)
    y = torch.as_tensor(y_np, dtype=torch.long)
    n_classes = int(n_classes or y_np.max() + 1)
    w = torch.zeros(x.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), b.detach().numpy()


def logistic_predict(w, b, x) -> np.ndarray:
    return np.argmax(np.asarray(x, dtype=np.float64) @ w + b, axis=1)


def linear_probe(train_x, train_y, test_x, test_y, n_classes: int | None = None, l2: float = 1e-3) -> dict:
    test_y = np.asarray(test_y)
    n_classes = int(n_classes or max(np.max(train_y), np.max(test_y)) + 1)
    w, b = fit_logistic(normalize(train_x), train_y, n_classes, l2)
    pred = logistic_predict(w, b, normalize(test_x))
    return {"top1": float(np.mean(pred == test_y)), "mean_per_class_recall": mean_per_class_recall(pred, test_y,
                                                                                                     n_classes)}


def sample_k_shot(labels, k: int, seed: int) -> np.ndarray:
    """Indices of k examples per class (all of a class with fewer), drawn with a fixed seed."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    idx = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        idx.extend(rng.choice(members, size=min(k, len(members)), replace=False).tolist())
    return np.sort(np.asarray(idx, dtype=np.int64))


def few_shot(train_x, train_y, test_x, test_y, k: int, seeds=(0, 1, 2, 3, 4), n_classes: int | None = None,
             l2: float = 1e-3) -> dict:
    """k-shot linear probe: k training examples per class, averaged over seeds (mean and std of top-1)."""
    train_y = np.asarray(train_y)
    accs = []
    for s in seeds:
        sel = sample_k_shot(train_y, k, s)
        accs.append(linear_probe(np.asarray(train_x)[sel], train_y[sel], test_x, test_y, n_classes, l2)["top1"])
    return {"k": int(k), "top1": float(np.mean(accs)), "std": float(np.std(accs)), "seeds": len(accs)}


# --- counting -------------------------------------------------------------------------------------------

def counting_accuracy(pred_counts, true_counts) -> dict:
    """RemoteCount-style: exact-count accuracy, within-one accuracy and mean absolute error."""
    p = np.asarray(pred_counts, dtype=np.int64)
    t = np.asarray(true_counts, dtype=np.int64)
    diff = np.abs(p - t)
    return {"accuracy": float(np.mean(diff == 0)), "within_1": float(np.mean(diff <= 1)),
            "mae": float(np.mean(diff)), "n": int(len(t))}
