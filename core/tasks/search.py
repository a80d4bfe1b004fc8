"""Search: the similarity of every tile to a text query, its ranks and selection (top K, threshold, stand-out)."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from .. import checks
from ..errors import InvalidInput
from ..prompts import check_text
from .base import Param, Style, Task, TaskOutput, register


def stand_out_threshold(sim, stand_out: float | None) -> float | None:
    """The similarity a tile needs to stand out from this raster's tiles: their mean plus ``stand_out``
    standard deviations (None: no such rule). Relative, because cosine similarities of one model and query
    sit in a narrow band of their own (all negative, or all near 0.25), so no fixed number suits them all."""
    import numpy as np

    if stand_out is None or len(sim) == 0:
        return None
    return float(np.mean(sim) + float(stand_out) * np.std(sim))


def effective_threshold(sim, threshold: float | None, stand_out: float | None) -> float | None:
    """The similarity a selected tile needs: the larger of ``threshold`` and the stand-out rule's."""
    cuts = [c for c in (threshold, stand_out_threshold(sim, stand_out)) if c is not None]
    return max(float(c) for c in cuts) if cuts else None


TEXT_WEIGHT = 1.0     # the text's weight beside the like examples' mean (each a unit vector)
UNLIKE_WEIGHT = 0.5   # the unlike examples' push (Rocchio's relevance feedback weighs them below the like ones)


def query_vector(like, text, unlike, text_weight: float = TEXT_WEIGHT, unlike_weight: float = UNLIKE_WEIGHT):
    """The search vector: normalise(mean(like) + text_weight * text - unlike_weight * mean(unlike)), where
    ``like`` and ``unlike`` are (n, D) example embeddings (or None) and each mean is normalised first, so one
    example counts as much as a hundred and a text as much as the examples (with weight 1). Text alone is the
    text's embedding as it is."""
    import numpy as np

    def unit(v):
        n = float(np.linalg.norm(v))
        return v / n if n > 0 else v

    if like is None and text is None:
        raise InvalidInput("Nothing says what to find (no text and no like examples).",
                           "Give a query (--query) or examples (--like).", param="like")
    if like is None and unlike is None:
        return np.asarray(text, dtype=np.float32)
    q = np.zeros(len(text if like is None else like[0]), dtype=np.float64)
    if like is not None:
        q += unit(np.mean(np.asarray(like, dtype=np.float64), axis=0))
    if text is not None:
        q += (text_weight if like is not None else 1.0) * unit(np.asarray(text, dtype=np.float64))
    if unlike is not None:
        q -= unlike_weight * unit(np.mean(np.asarray(unlike, dtype=np.float64), axis=0))
    return unit(q).astype(np.float32)


def _paths(value):
    """One path or several (a list, or the dock's/Processing's quoted list) as path strings."""
    if value is None:
        return []
    if isinstance(value, str | os.PathLike):
        value = [value]
    return [os.fspath(v) for v in value if str(v).strip()]



@register
@dataclass
class SearchTask(Task):
    query: str | None = None
    top_k: int | None = None
    threshold: float | None = None
    stand_out: float | None = None
    like: Any = None                      # core.examples.Examples: tiles to find more of
    unlike: Any = None                    # core.examples.Examples: tiles to push away from
    like_images: list[str] | None = None  # image files to find more of
    unlike_images: list[str] | None = None
    text_weight: float = TEXT_WEIGHT
    unlike_weight: float = UNLIKE_WEIGHT

    kind: ClassVar[str] = "search"
    title: ClassVar[str] = "Search"
    summary: ClassVar[str] = "similarity of every tile to a text query or to example tiles and images"
    algorithm: ClassVar[str] = "textsearch"
    algorithm_title: ClassVar[str] = "Search by text or example"
    output_title: ClassVar[str] = "Search results"
    help: ClassVar[str] = (
        "Scores every tile by the cosine similarity of its image embedding to a query: a text (e.g. 'a swimming "
        "pool'), example tiles (points or polygons: a point picks the tile that contains it, a polygon the tiles "
        "it covers) or example image files (PNG, JPEG, GeoTIFF chips), or text and examples together; examples "
        "to push away from (unlike) may be added. The query is normalise(mean(like) + text weight * text - unlike "
        "weight * mean(unlike)), each term a unit vector. Every tile is kept with similarity and rank (1 = best), "
        "is_example marks the example tiles (1 like, -1 unlike); selected is 1 for the top K tiles whose "
        "similarity is at least the threshold (both optional; neither selects all).")
    params: ClassVar[tuple[Param, ...]] = (
        Param("query", "text", "Query", optional=True, help="e.g. 'a swimming pool' (optional with examples)"),
        Param("like", "examples", "More like these (points or polygons)", optional=True,
              help="example points or polygons (any CRS): the tiles they pick are what to find more of; on the "
                   "command line also image files (PNG, JPEG, GeoTIFF chips)"),
        Param("unlike", "examples", "Less like these (points or polygons)", optional=True,
              help="examples to push away from (points or polygons, or on the command line image files)"),
        Param("like_images", "images", "More like these image files", optional=True,
              file_filter="Images (*.png *.jpg *.jpeg *.tif *.tiff)",
              help="example image files (PNG, JPEG or GeoTIFF chips), encoded as tiles are"),
        Param("unlike_images", "images", "Less like these image files", optional=True,
              file_filter="Images (*.png *.jpg *.jpeg *.tif *.tiff)",
              help="image files to push away from (PNG, JPEG or GeoTIFF chips), encoded as tiles are"),
        Param("top_k", "int", "Select the best K tiles", optional=True, lo=1, none_text="all", form_default=20,
              help="select the K best tiles"),
        Param("threshold", "float", "Select tiles with a similarity of at least", optional=True, lo=-1.0, hi=1.0,
              none_text="none", help="select tiles with a cosine similarity at least this"),
        Param("stand_out", "float", "Tiles must stand out by (sd)", optional=True, lo=0.0,
              hi=5.0, none_text="off", form_default=1.0,
              help="select only tiles whose similarity is at least the mean of this raster's tiles plus this many "
                   "standard deviations; the similarity this makes is reported"),
        Param("text_weight", "float", "Weight of the text beside examples", default=TEXT_WEIGHT, lo=0.0, hi=10.0,
              advanced=True, help="the text's weight in the query when examples are given too (their mean: 1)"),
        Param("unlike_weight", "float", "Weight of the unlike examples", default=UNLIKE_WEIGHT, lo=0.0, hi=10.0,
              advanced=True, help="how hard the unlike examples push away (the like examples' weight: 1)"),
    )
    style: ClassVar[Style] = Style("graduated", "similarity", 'if("selected" = 1, "rank", \'\')', False,
                                   "Show ranks on the map", highlight='"selected" = 1')
    dissolve_field: ClassVar[str | None] = "selected"
    dense: ClassVar[bool] = True
    whole_job: ClassVar[bool] = True           # ranks and the top K over the whole collection

    def __post_init__(self):
        from ..examples import Examples

        self.query = check_text(self.query if self.query is not None else "", "search query") or None
        for name in ("like", "unlike"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Examples):
                raise InvalidInput(f"The {name} examples are a {type(value).__name__}, not core.examples.Examples.",
                                   "Read them with core.examples.read_examples(path).", param=name)
        for name in ("like_images", "unlike_images"):
            value = getattr(self, name)
            if isinstance(value, str | os.PathLike):
                value = [value]
            value = [checks.path_text(os.fspath(v), "example image") for v in value or ()
                     if str(v).strip()] or None
            setattr(self, name, value)
        has_like = self.like is not None or bool(self.like_images)
        has_unlike = self.unlike is not None or bool(self.unlike_images)
        if not self.query and not has_like:
            _nothing_to_find(has_unlike, lambda p: p.label)
        self.top_k = checks.optional(checks.whole, self.top_k, "top_k", 1, example="e.g. 20",
                                     param="top_k")
        self.threshold = checks.optional(checks.number, self.threshold, "The similarity threshold (a cosine)",
                                         -1.0, 1.0, example="e.g. 0.25", param="threshold")
        self.stand_out = checks.optional(checks.number, self.stand_out, "stand_out (standard deviations)", 0.0, 5.0,
                                         example="e.g. 1", param="stand_out")
        self.text_weight = checks.number(TEXT_WEIGHT if self.text_weight is None else self.text_weight,
                                         "text_weight", 0.0, 10.0, example="e.g. 1", param="text_weight")
        self.unlike_weight = checks.number(UNLIKE_WEIGHT if self.unlike_weight is None else self.unlike_weight,
                                           "unlike_weight", 0.0, 10.0, example="e.g. 0.5",
                                           param="unlike_weight")

    @classmethod
    def from_inputs(cls, raw, spell=None):
        """``like`` and ``unlike`` may be paths (the command line): a vector file is read as examples, image
        files (PNG, JPEG, GeoTIFF chips) join the example images."""
        from ..examples import is_image_file, read_examples

        spell = spell or (lambda p: p.label)

        def given(name):
            v = raw.get(name)
            return bool(v.strip()) if isinstance(v, str) else bool(v)

        if not given("query") and not given("like") and not given("like_images"):
            # in the front-end's words (the dock's field names, the command line's options)
            _nothing_to_find(given("unlike") or given("unlike_images"), spell, cls)
        raw = dict(raw)
        images = {"like": list(_paths(raw.get("like_images"))), "unlike": list(_paths(raw.get("unlike_images")))}
        for name in ("like", "unlike"):
            value = raw.get(name)
            if value is None or not isinstance(value, str | os.PathLike | list | tuple):
                continue
            paths = list(_paths(value))
            images[name] += [p for p in paths if is_image_file(p)]
            vectors = [p for p in paths if not is_image_file(p)]
            if len(vectors) > 1:
                raise InvalidInput(f"{spell(cls.param(name))} names {len(vectors)} vector files.",
                                   "Give one vector file of example points or polygons (or image files).",
                                   param=name)
            raw[name] = read_examples(vectors[0], name) if vectors else None
        names = {f.name for f in fields(cls)}
        kwargs = {p.name: p.parse(raw.get(p.name)) for p in cls.params if p.name in names}
        return cls(**{**kwargs, "like_images": images["like"] or None, "unlike_images": images["unlike"] or None})

    # -------------------------------------------------------------------------------------- run

    def prompts(self, prepared):
        return [[self.query.strip()]] if self.query else None

    def encode_inputs(self, encoder, prepared, warnings):
        """The example image files' embeddings, with the job's encoder, before any pixel of a raster is read."""
        from ..examples import encode_images

        return {"like_images": encode_images(encoder, self.like_images or [], "like_images"),
                "unlike_images": encode_images(encoder, self.unlike_images or [], "unlike_images")}

    def fit(self, parts, text, bundle, prepared, warnings):
        """The query vector (see :func:`query_vector`) and the example tiles of each part."""
        import numpy as np

        from ..examples import example_tiles

        images = prepared or {}
        found: dict[str, dict] = {}
        for name in ("like", "unlike"):
            examples = getattr(self, name)
            vectors = [images.get(f"{name}_images", np.zeros((0, 0), np.float32))]
            if examples is None:
                found[name] = {}
                tiles = vectors
            else:
                where, outside, nodata = example_tiles(examples, parts)
                found[name] = where
                tiles = vectors + [part.embeddings[where[part.name]] for part in parts if len(where[part.name])]
                n = len(examples.wkts)
                path = examples.origin.partition("|")[0] or None
                if outside == n:
                    raise InvalidInput(f"{outside} of {n} {name} example{'s' if n > 1 else ''} fall outside every "
                                       "raster.", "Put the examples over the raster (check their CRS and the "
                                       "extent).", path=path, param=name)
                if outside + nodata == n:
                    raise InvalidInput(f"The tiles of the {name} examples are all nodata ({nodata} of {n} examples "
                                       f"on nodata or outside the extent, {outside} outside every raster).",
                                       "Put the examples on tiles with image data.", path=path, param=name)
                if outside:
                    warnings.append(f"{outside} of {n} {name} examples fall outside every raster and were left out.")
                if nodata:
                    warnings.append(f"{nodata} of {n} {name} examples fall on nodata tiles (or outside the extent) "
                                    "and were left out.")
            found[name + "_vectors"] = np.concatenate([v for v in tiles if v.size]) if any(v.size for v in tiles) \
                else None
        q = query_vector(found["like_vectors"], None if text is None else text[0], found["unlike_vectors"],
                         self.text_weight, self.unlike_weight)
        return {"query": q, "like": found["like"], "unlike": found["unlike"],
                "sizes": [(part.name, len(part.index)) for part in parts],
                "n_like": 0 if found["like_vectors"] is None else len(found["like_vectors"]),
                "n_unlike": 0 if found["unlike_vectors"] is None else len(found["unlike_vectors"])}

    def outputs(self, part, text, bundle, fitted):
        import numpy as np

        from ..records import similarity_columns

        q = fitted["query"] if isinstance(fitted, dict) and "query" in fitted else text[0]
        sim = part.embeddings @ q
        # the legend and the summary say which similarity the selection took (the stand-out rule's is computed)
        cut = effective_threshold(sim, self.threshold, self.stand_out)
        fields_, columns = similarity_columns(sim, self.top_k, cut)
        meta = {"query": self.query, "top_k": self.top_k, "threshold": cut, "stand_out": self.stand_out}
        if self.examples_given:
            marks = np.zeros(len(sim), dtype=np.int64)
            for name, value in (("unlike", -1), ("like", 1)):   # a tile that is both is a like example
                where = fitted[name]
                if part.name in where:
                    marks[where[part.name]] = value
                elif where:   # the collection as one part: the parts' tiles one after the other
                    offset = 0
                    for key, size in fitted["sizes"]:
                        marks[offset + where.get(key, np.zeros(0, np.int64))] = value
                        offset += size
            columns["is_example"] = marks
            fields_ = [*fields_, ("is_example", "int")]
            meta.update({"like_tiles": int(np.sum(marks == 1)), "unlike_tiles": int(np.sum(marks == -1)),
                         "like_images": len(self.like_images or ()), "unlike_images": len(self.unlike_images or ()),
                         "text_weight": self.text_weight, "unlike_weight": self.unlike_weight})
        return TaskOutput(None, fields_, dense=columns["similarity"][:, None], dense_names=["similarity"],
                          columns=columns, metadata=meta)

    @property
    def examples_given(self) -> bool:
        return any(v for v in (self.like, self.unlike, self.like_images, self.unlike_images))

    def files_in(self):
        out = [(e.origin, f"{n} examples") for n, e in (("like", self.like), ("unlike", self.unlike))
               if e is not None and e.origin]
        return out + [(p, "example image") for p in (self.like_images or []) + (self.unlike_images or [])]

    def layer_name(self):
        return "search"

    def layer_title(self, raster_name):
        what = [f"“{self.query}”"] if self.query else []
        if self.like is not None or self.like_images:
            what.append("like examples")
        if self.unlike is not None or self.unlike_images:
            what.append("unlike examples")
        return f"{raster_name} · search " + " + ".join(what)

    def describe(self, result):
        recs = result.records
        if not recs:
            return []
        best = sorted(recs, key=lambda r: r["rank"])[:3]
        return ["best tiles (row,col similarity): " + ", ".join(
            f"({r['row']},{r['col']} {r['similarity']:.3f})" for r in best)
            + f"; selected {sum(r['selected'] for r in recs)}" + self._cut_text([r["similarity"] for r in recs])] \
            + self._examples_text(recs)

    def _examples_text(self, recs) -> list[str]:
        if not self.examples_given:
            return []
        like = sum(1 for r in recs if r.get("is_example") == 1)
        unlike = sum(1 for r in recs if r.get("is_example") == -1)
        images = len(self.like_images or ()) + len(self.unlike_images or ())
        return [f"examples: {like} like tile{'s' if like != 1 else ''}, {unlike} unlike, {images} image file"
                f"{'s' if images != 1 else ''}" + (f"; text weight {self.text_weight:g}" if self.query else "")
                + (f"; unlike weight {self.unlike_weight:g}" if unlike or self.unlike_images else "")]

    def _cut_text(self, sims) -> str:
        """The similarity the selection took, and whether the stand-out rule made it (as the legend says)."""
        import numpy as np

        sims = np.asarray(sims, dtype=np.float64)
        cut = effective_threshold(sims, self.threshold, self.stand_out)
        if cut is None:
            return ""
        rule = stand_out_threshold(sims, self.stand_out)
        why = f": mean + {self.stand_out:g} sd" if rule is not None and rule >= cut else ""
        return f" (similarity >= {cut:.3f}{why})"

    widget_names: ClassVar[dict[str, str]] = {"query": "search_query", "top_k": "search_topk",
                                              "threshold": "search_threshold", "map_labels": "search_map_labels"}

    def value_text(self, value) -> str:
        return "selected" if value else "not selected"


def _nothing_to_find(has_unlike: bool, spell, cls=None):
    """Refuse a search with neither a query nor examples of what to find, naming the inputs by ``spell``."""
    cls = cls or SearchTask
    query, like = spell(cls.param("query")), spell(cls.param("like"))
    if has_unlike:
        raise InvalidInput("Only examples to push away from were given: nothing says what to find.",
                           f"Add examples of what to find ({like}) or a text query ({query}).", param="like")
    raise InvalidInput("The search query is empty.", f"Type a query ({query}), e.g. 'a swimming pool', or give "
                       f"examples of what to find ({like}).", param="query")
