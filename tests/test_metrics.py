"""Every metric of training/metrics.py against cases worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from training import metrics

# 4 images, 3 classes; rows are scores, worked through by hand below
SCORES = np.array([
    [0.9, 0.05, 0.05],   # true 0: ranked 0,1,2 -> top-1 hit
    [0.5, 0.3, 0.2],     # true 1: ranked 0,1,2 -> top-1 miss, top-2 hit
    [0.1, 0.2, 0.7],     # true 2: top-1 hit
    [0.2, 0.5, 0.3],     # true 0: ranked 1,2,0 -> only top-3
])
LABELS = np.array([0, 1, 2, 0])


def test_topk_accuracy_by_hand():
    assert metrics.topk_accuracy(SCORES, LABELS, 1) == pytest.approx(2 / 4)
    assert metrics.topk_accuracy(SCORES, LABELS, 2) == pytest.approx(3 / 4)
    assert metrics.topk_accuracy(SCORES, LABELS, 3) == pytest.approx(1.0)
    # k larger than the number of classes is capped: every label is found
    assert metrics.topk_accuracy(SCORES, LABELS, 5) == pytest.approx(1.0)


def test_mean_per_class_recall_by_hand():
    pred = SCORES.argmax(1)  # [0, 0, 2, 1]
    # class 0: 1 of 2 right, class 1: 0 of 1, class 2: 1 of 1 -> (0.5 + 0 + 1) / 3
    assert metrics.mean_per_class_recall(pred, LABELS) == pytest.approx(0.5)
    # a class absent from the labels does not count
    assert metrics.mean_per_class_recall([0, 0], [0, 0], n_classes=3) == pytest.approx(1.0)
    cm = metrics.confusion_matrix(pred, LABELS, 3)
    assert cm.tolist() == [[1, 1, 0], [1, 0, 0], [0, 0, 1]]


def test_classification_report_combines():
    rep = metrics.classification_report(SCORES, LABELS)
    ci = rep.pop("top1_ci95")
    assert rep == {"top1": 0.5, "top5": 1.0, "mean_per_class_recall": 0.5, "n": 4}
    assert ci == pytest.approx([0.1500, 0.8500], abs=1e-4)   # Wilson 95 % for 2 of 4


def test_wilson_interval_textbook_values():
    # Newcombe (1998), Stat. Med. 17:857, table I, "score method": 81/263, 15/148, 0/20, 1/29
    assert metrics.wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert metrics.wilson_interval(15, 148) == pytest.approx((0.0624, 0.1605), abs=1e-4)
    assert metrics.wilson_interval(0, 20) == pytest.approx((0.0, 0.1611), abs=1e-4)
    assert metrics.wilson_interval(1, 29) == pytest.approx((0.0061, 0.1718), abs=1e-4)
    assert metrics.wilson_interval(20, 20) == pytest.approx((1 - 0.1611, 1.0), abs=1e-4)


def test_class_embeddings_average_templates():
    # class 0: prompts (1,0) and (0,1) -> mean (0.5,0.5) -> normalised (1/sqrt2, 1/sqrt2)
    # class 1: prompts (0,2) and (0,3) -> each normalised to (0,1) -> (0,1)
    t = np.array([[1, 0], [0, 1], [0, 2], [0, 3]], dtype=float)
    c = metrics.class_embeddings(t, 2, 2)
    s = 1 / np.sqrt(2)
    np.testing.assert_allclose(c, [[s, s], [0, 1]], atol=1e-12)


def test_retrieval_recalls_by_hand():
    # 3 images (unit axes), 4 texts; text j describes image t2i[j]
    img = np.eye(3)
    txt = np.array([
        [1.0, 0.2, 0.1],   # describes 0; best image 0 -> rank 1
        [0.9, 0.3, 0.0],   # describes 1; images ranked 0,1,2 -> rank 2
        [0.0, 0.1, 1.0],   # describes 2; rank 1
        [0.8, 0.0, 0.5],   # describes 2; images ranked 0,2,1 -> rank 2
    ])
    t2i = [0, 1, 2, 2]
    r = metrics.retrieval_recalls(img, txt, t2i, ks=(1, 2))
    # text->image: R@1 = texts 0 and 2 -> 2/4; R@2 = all -> 4/4
    assert r["text_to_image_R@1"] == pytest.approx(50.0)
    assert r["text_to_image_R@2"] == pytest.approx(100.0)
    # image->text, cosine of normalised texts: norms t0=1.0247, t1=0.9487, t2=1.005, t3=0.9434
    # image 0 column: t0 .9759, t1 .9487, t2 0, t3 .8480 -> best t0 (its own) -> hit at 1
    # image 1 column: t0 .1952, t1 .3162, t2 .0995, t3 0 -> best t1 (its own) -> hit at 1
    # image 2 column: t0 .0976, t1 0, t2 .9950, t3 .5300 -> best t2 (its own) -> hit at 1
    assert r["image_to_text_R@1"] == pytest.approx(100.0)
    assert r["image_to_text_R@2"] == pytest.approx(100.0)
    assert r["mean_recall"] == pytest.approx((50 + 100 + 100 + 100) / 4)


def test_retrieval_image_to_text_any_caption_counts():
    # image 0 has two captions; only its second is in the top 1 -> still a hit (clip_benchmark's rule)
    img = np.array([[1.0, 0.0], [0.0, 1.0]])
    txt = np.array([[0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])  # t0 -> image 0 (but looks like image 1)
    r = metrics.retrieval_recalls(img, txt, [0, 0, 1], ks=(1,))
    # image 0: best text t1 (own) -> hit; image 1: best text t0 (image 0's) -> miss
    assert r["image_to_text_R@1"] == pytest.approx(50.0)
    # texts: t0 -> best image 1 (miss), t1 -> image 0 (hit), t2 -> image 1 (hit)
    assert r["text_to_image_R@1"] == pytest.approx(200 / 3)


def test_knn_by_hand():
    train_x = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [0.7, 0.7]])
    train_y = np.array([0, 0, 1, 1, 1])
    test_x = np.array([[1, 0.05], [0.05, 1]])
    # k=1: nearest neighbours are train 0 (class 0) and train 2 (class 1)
    assert metrics.knn_predict(train_x, train_y, test_x, k=1).tolist() == [0, 1]
    # k=3 for test 0: neighbours train 0, 1 (class 0) and 4 (class 1) -> 2 votes class 0
    assert metrics.knn_predict(train_x, train_y, test_x, k=3).tolist() == [0, 1]
    # k=2 tie (one vote each) for a query at 45 degrees between train 0 (class 0, cos .707)
    # and train 4 (class 1, cos 1.0): the larger similarity wins -> class 1
    q = np.array([[1.0, 1.0]])
    assert metrics.knn_predict(train_x[[0, 4]], np.array([0, 1]), q, k=2).tolist() == [1]


def test_logistic_regression_separable():
    # two clusters on either side of x=0: the fitted boundary must separate them
    x = np.array([[-2.0, 0.1], [-1.5, -0.2], [-1.0, 0.3], [1.0, 0.0], [1.5, 0.2], [2.0, -0.1]])
    y = np.array([0, 0, 0, 1, 1, 1])
    w, b = metrics.fit_logistic(x, y, 2, l2=1e-2)
    assert metrics.logistic_predict(w, b, x).tolist() == y.tolist()
    assert metrics.logistic_predict(w, b, np.array([[-0.5, 0.0], [0.5, 0.0]])).tolist() == [0, 1]
    # symmetric data: the weight difference points along +x, bias difference near 0
    d = w[:, 1] - w[:, 0]
    assert d[0] > 0 and abs(d[1]) < abs(d[0])


def test_linear_probe_and_few_shot_by_hand():
    train_x = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0.1, 0.9, 0], [0, 0, 1], [0, 0.1, 0.9]])
    train_y = np.array([0, 0, 1, 1, 2, 2])
    test_x = np.array([[0.8, 0.2, 0], [0.2, 0.8, 0], [0.1, 0, 0.9], [0, 0.9, 0.2]])
    test_y = np.array([0, 1, 2, 2])
    res = metrics.linear_probe(train_x, train_y, test_x, test_y, 3)
    # the last test point lies in class 1's direction: 3 of 4 right; recalls 1, 1, 0.5
    assert res["top1"] == pytest.approx(0.75)
    assert res["mean_per_class_recall"] == pytest.approx((1 + 1 + 0.5) / 3)
    # 1-shot: each draw keeps one of two near-identical points per class -> the same 3 of 4 for every seed
    fs = metrics.few_shot(train_x, train_y, test_x, test_y, k=1, seeds=(0, 1, 2), n_classes=3)
    assert fs["top1"] == pytest.approx(0.75) and fs["std"] == pytest.approx(0.0) and fs["seeds"] == 3


def test_sample_k_shot():
    labels = np.array([0, 0, 0, 1, 1, 2])
    sel = metrics.sample_k_shot(labels, 2, seed=0)
    assert np.bincount(labels[sel]).tolist() == [2, 2, 1]  # class 2 has only one example
    assert metrics.sample_k_shot(labels, 2, seed=0).tolist() == sel.tolist()  # fixed seed


def test_counting_accuracy_by_hand():
    r = metrics.counting_accuracy([1, 3, 5, 10], [1, 2, 7, 10])
    # exact: 1 and 10 -> 2/4; within 1: 1, 3 vs 2, 10 -> 3/4; MAE (0 + 1 + 2 + 0) / 4
    assert r == {"accuracy": 0.5, "within_1": 0.75, "mae": 0.75, "n": 4}


# ------------------------------------------------------------------------------- evaluate: bad input

def test_evaluate_refuses_a_decompression_bomb_and_a_garbage_split_file(tmp_path, tiny_bundle, data_dir, capsys):
    """A 400-megapixel PNG in the dataset (PIL's DecompressionBombError) and a --split-file that is not JSON
    (JSONDecodeError) or not a split: typed errors naming the file, one line from main, exit 2."""
    import shutil

    from PIL import Image

    from core.errors import InvalidInput
    from training import evaluate

    big = tmp_path / "big.png"
    Image.new("1", (20_000, 20_000)).save(big)   # 400 Mpx, a few kB of zeros
    with pytest.raises(InvalidInput) as err:
        evaluate.open_rgb(big)
    assert err.value.path == str(big) and "too large" in err.value.problem
    folder = tmp_path / "scenes"
    for cls in ("grass", "forest"):
        (folder / cls).mkdir(parents=True)
        for i, src in enumerate(sorted((data_dir / "scenes" / "rsscn7" / "aGrass").glob("*.jpg"))[:2]):
            shutil.copy(src, folder / cls / f"{i}.jpg")
    shutil.copy(big, folder / "forest" / "2.png")
    capsys.readouterr()
    assert evaluate.main(["--bundle", str(tiny_bundle), "--zeroshot", str(folder)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "too large" in lines[0] and "Fix:" in lines[0]
    (folder / "forest" / "2.png").unlink()
    for name, text in (("garbage.json", "{not json"), ("list.json", "[1, 2]"), ("numbers.json", '{"test": [1]}'),
                       ("latin1.json", b"\xe9\xe9")):
        split = tmp_path / name
        split.write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(InvalidInput) as err:
            evaluate.load_split(folder, split, "test")
        assert err.value.path == str(split) and err.value.param == "split_file"
    assert evaluate.main(["--bundle", str(tiny_bundle), "--zeroshot", str(folder), "--split-file",
                          str(tmp_path / "garbage.json")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "is not a split" in lines[0] and "--make-split" in lines[0]
