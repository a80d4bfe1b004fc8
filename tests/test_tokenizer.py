"""core.runtime.tokenizer against open_clip.get_tokenizer: identical ids on 10,000+ varied strings."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest
from conftest import require

from core.runtime.tokenizer import Tokenizer

ARCHS = ("RN50", "ViT-B-32", "ViT-L-14")


@pytest.fixture(scope="module")
def tok(tiny_bundle):
    return Tokenizer.from_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def reference():
    try:
        import open_clip
    except ImportError as e:  # the reference ids come from open_clip: in CI its absence fails
        require(False, f"open_clip missing ({e}); run scripts/setup.sh")
    return {arch: open_clip.get_tokenizer(arch) for arch in ARCHS}


WORDS = [
    "satellite", "image", "of", "a", "river", "forest", "dense", "residential", "area", "airport", "runway",
    "harbor", "farmland", "parking", "lot", "baseball", "diamond", "storage", "tanks", "bridge", "desert",
    "mountain", "meadow", "industrial", "building", "ship", "plane", "car", "cars", "road", "intersection",
    "don't", "it's", "we're", "they've", "I'm", "you'll", "he'd", "O'Brien", "rock'n'roll", "São", "Paulo",
    "Zürich", "Kraków", "naïve", "café", "façade", "Ελλάδα", "Москва", "東京", "北京市", "서울", "القاهرة",
    "मुंबई", "ไทย", "🙂", "🚀🛰️", "👩‍🌾", "Ⅻ", "²³", "١٢٣", "٣", "½", "ｆｕｌｌｗｉｄｔｈ", "ﬁne", "Å", "Å",
    "&amp;", "&amp;amp;", "&lt;b&gt;", "&#39;", "&quot;", "<start_of_text>", "<end_of_text>", "<START_OF_TEXT>",
    "mojibake:", "Ã©", "â€™", "\u00a0", "\u200b", "\t", "\n", "--", "...", "?!", "(", ")", "[x]", "#1",
    "100", "3.14", "1,000,000", "2023-05-01", "10km²", "50%", "$5", "e-mail", "snake_case", "CamelCase",
    "ALLCAPS", "x" * 40, "a" * 300, "'s", "'t", "'re", "''", "``", "´", "’", "‘quoted’", "“double”",
]


def _strings(n: int, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    out = ["", " ", "   \t\n ", "a", "A photo of a river.", "a satellite photo of 12 ships in a harbor",
           "x " * 200, "word " * 76, "word " * 75, "word " * 74, "🛰️" * 80]
    alphabet = "".join(chr(c) for c in list(range(32, 127)) + list(range(160, 400)) + [0x3000, 0x3042, 0x4E2D,
                                                                                       0x1F600, 0x0301, 0x200D])
    while len(out) < n:
        kind = rng.random()
        if kind < 0.55:
            k = rng.choice([1, 2, 3, 5, 8, 13, 30, 90])
            s = rng.choice([" ", " ", " ", "", "  ", ", ", "-"]).join(rng.choice(WORDS) for _ in range(k))
        elif kind < 0.8:
            s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        elif kind < 0.9:
            s = " ".join(str(rng.randint(0, 10 ** rng.randint(1, 12))) for _ in range(rng.randint(1, 40)))
        else:
            s = rng.choice(WORDS).upper() + " " + rng.choice(WORDS) * rng.randint(1, 20)
        out.append(s)
    return out


def test_matches_open_clip_on_10000_strings(tok, reference):
    texts = _strings(10_000)
    ours = tok(texts)
    assert ours.dtype == np.int64 and ours.shape == (10_000, 77)
    ref = reference["ViT-B-32"](texts).numpy()
    bad = np.nonzero((ours != ref).any(axis=1))[0]
    assert bad.size == 0, f"{bad.size} strings differ, e.g. {[texts[i] for i in bad[:5]]!r}"
    # every truncated row keeps its end token; at least some long strings were truncated
    ids, truncated = tok.encode_with_info(texts)
    assert any(truncated) and not all(truncated)
    assert all(ids[i, -1] == 49407 for i, t in enumerate(truncated) if t)


@pytest.mark.parametrize("arch", ARCHS)
def test_same_tokenizer_for_every_remoteclip_arch(tok, reference, arch):
    texts = _strings(300, seed=7)
    np.testing.assert_array_equal(tok(texts), reference[arch](texts).numpy())


def test_special_cases(tok):
    ids, truncated = tok.encode_with_info(["", "a " * 100, "a photo of a river"])
    assert ids[0, :3].tolist() == [49406, 49407, 0]
    assert truncated == [False, True, False]
    assert ids[1, 76] == 49407 and ids[1, 75] != 49407
    assert tok.decode(ids[2]) == "a photo of a river"
    assert tok(["a"]).shape == (1, 77) and tok([]).shape == (0, 77)


def test_command_line(tiny_bundle, reference):
    texts = ["a river", "Héllo &amp; wörld", "", "x " * 90]
    stdin = "".join(json.dumps(t) + "\n" for t in texts)
    r = subprocess.run([sys.executable, "-m", "core.runtime.tokenizer", "--model", str(tiny_bundle)], input=stdin,
                       capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert rows == reference["ViT-B-32"](texts).tolist()
    bad = subprocess.run([sys.executable, "-m", "core.runtime.tokenizer", "--model", str(tiny_bundle)], input="not json\n",
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "not JSON" in bad.stderr
