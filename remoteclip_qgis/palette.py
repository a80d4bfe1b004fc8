"""Class colours of result layers: ``class_colors`` gives one layer's classes colours that a map reader tells
apart and expects (see its docstring); ``delta_e`` measures how far apart two fills look as drawn."""

from __future__ import annotations

from qgis.PyQt.QtGui import QColor

UNKNOWN = "unknown"
# Qualitative palette (Tableau 10 + 10 lighter tones): distinct on imagery, colour-blind tolerable.
PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#bab0ac", "#a0cbe8", "#ffbe7d", "#8cd17d", "#ff9d9a", "#86bcb6", "#f1ce63",
           "#d4a6c8", "#fabfd2", "#d7b5a6", "#79706e"]
UNKNOWN_COLOR = "#d0d0d0"   # light: nothing matched; far from the roads' grey as drawn
LAYER_OPACITY = 0.5         # result layers are drawn at this opacity: the imagery must stay readable underneath

# Colours a map reader expects for common class names (first matching keyword wins).
NAMED_COLORS = [
    (("water", "river", "lake", "sea", "ocean", "pond", "reservoir"), "#3a7dc9"),
    (("tree", "forest", "wood", "orchard", "jungle"), "#2e7d32"),
    (("grass", "meadow", "pasture", "park", "lawn"), "#9ccc65"),
    (("farm", "crop", "field", "agricult", "paddy"), "#e6c229"),
    (("building", "residential", "house", "roof", "industr", "commercial", "urban"), "#e15759"),
    (("road", "street", "highway", "parking", "runway", "railway"), "#5f5f5f"),
    (("bare", "soil", "sand", "desert", "construction", "quarry"), "#b5835a"),
    (("beach",), "#f1ce63"),
    (("harbor", "harbour", "port"), "#76b7b2"),
    (("greenhouse",), "#d4a6c8"),
]


def _name_hash(name: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(" ".join(name.lower().split()).encode("utf-8")).digest()[:8], "big")


def _family(name: str) -> tuple[tuple[str, ...], str] | None:
    """The NAMED_COLORS family of a class name: the longest keyword that starts one of its words
    ("parking lot" is a road's "parking", not a park's)."""
    import re

    words = re.findall(r"[a-z]+", name.lower())
    best = None
    for keys, color in NAMED_COLORS:
        for k in keys:
            if any(w.startswith(k) for w in words) and (best is None or len(k) > len(best[0])):
                best = (k, keys, color)
    return (best[1], best[2]) if best else None


def drawn_lab(color: str, opacity: float = LAYER_OPACITY) -> tuple[float, float, float]:
    """CIELAB (D65) of ``color`` as a result layer draws it: at ``opacity`` over white."""
    c = QColor(color)

    def linear(v: int) -> float:
        v = (opacity * v + (1 - opacity) * 255) / 255
        return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4

    r, g, b = linear(c.red()), linear(c.green()), linear(c.blue())
    xyz = ((0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047, 0.2126 * r + 0.7152 * g + 0.0722 * b,
           (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883)
    fx, fy, fz = (t ** (1 / 3) if t > 216 / 24389 else (24389 / 27 * t + 16) / 116 for t in xyz)
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


def delta_e(a: str, b: str, opacity: float = LAYER_OPACITY) -> float:
    """CIE76 colour difference of two fills as drawn (``drawn_lab``): about 2 is just noticeable, 20 and more
    reads as another class at a glance."""
    return sum((x - y) ** 2 for x, y in zip(drawn_lab(a, opacity), drawn_lab(b, opacity), strict=True)) ** 0.5


MIN_DELTA_E = 20.0   # every two classes of one layer, as drawn


def _hls(h: float, lightness: float, s: float) -> str:
    return QColor.fromHslF(h % 1.0, min(max(s, 0.0), 1.0), min(max(lightness, 0.1), 0.85)).name()


def _shades(base: str) -> list[str]:
    """Lighter, darker and slightly turned tones of a family's colour, the nearest to it first."""
    c = QColor(base)
    h, s, lightness = max(c.hslHueF(), 0.0), c.hslSaturationF(), c.lightnessF()
    tones = {_hls(h + dh, lightness + dl, s) for dl in (-0.3, -0.2, -0.1, 0.0, 0.1, 0.2)
             for dh in (-0.08, -0.04, 0.0, 0.04, 0.08) if dl or dh}
    return sorted(tones - {base}, key=lambda t: (delta_e(t, base), t))


def _pool() -> list[str]:
    """Colours for names of no family, and for family names whose family's tones are all taken: the qualitative
    PALETTE, then hues around the circle at four lightnesses."""
    return list(dict.fromkeys(PALETTE + [_hls(i / 12, lightness, 0.75) for lightness in (0.3, 0.5, 0.7, 0.15)
                                         for i in range(12)]))


def _candidates(low: str) -> tuple[int, list[str]]:
    """(rank, colours to try in order) for a class name: a family's own name (rank 0) its family's colour
    first, another name of a family (1) that colour, then its tones, then the pool nearest to it; any other name
    (2) the pool, from a place of its own (a hash of the name)."""
    pool = _pool()
    family = _family(low)
    if family is None:
        k = _name_hash(low) % len(pool)
        return 2, pool[k:] + pool[:k]
    keys, base = family
    rank = 0 if low.rstrip("s") == keys[0] or low == keys[0] else 1
    return rank, [base, *_shades(base), *sorted(pool, key=lambda t: (delta_e(t, base), t))]


def class_colors(classes: list[str]) -> dict[str, str]:
    """The colour of each class of one layer, and ``unknown``'s grey: a function of the class list alone (its
    order, case and spacing aside), so a list looks the same in every run and project. Every two classes
    differ by at least MIN_DELTA_E as drawn (``delta_e``) where the colours allow it. Common names keep the
    colour a map reader expects (water blue, trees green, buildings red, roads grey, ...) or a tone of it;
    the family's own name ("water", "trees") chooses first, the other names of a family take the nearest
    free tone, other names a colour of their own. Each class takes the first of its candidates far enough
    from those chosen before (the most distant one if none is)."""
    out = {UNKNOWN: UNKNOWN_COLOR}
    names = {}
    for c in classes:
        low = " ".join(str(c).lower().split())
        if low != UNKNOWN:
            names.setdefault(low, []).append(c)
    ranked = sorted((*_candidates(low), low) for low in names)   # (rank, candidates, name)
    for _, cands, low in sorted(ranked, key=lambda r: (r[0], r[2])):
        taken = list(dict.fromkeys(out.values()))
        pick = next((t for t in cands if min(delta_e(t, u) for u in taken) >= MIN_DELTA_E), None)
        if pick is None:
            pick = max(cands, key=lambda t: min(delta_e(t, u) for u in taken))
        for c in names[low]:
            out[c] = pick
    return out


def class_color(name: str) -> str:
    """The colour of a class shown alone (``class_colors`` of a list of one)."""
    return class_colors([name])[name]
