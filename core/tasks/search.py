"""Search: the similarity of every tile to a text query, its ranks and selection (top K, threshold, stand-out)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

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



@register
@dataclass
class SearchTask(Task):
    query: str
    top_k: int | None = None
    threshold: float | None = None
    stand_out: float | None = None

    kind: ClassVar[str] = "search"
    title: ClassVar[str] = "Search"
    summary: ClassVar[str] = "similarity of every tile to a text query"
    algorithm: ClassVar[str] = "textsearch"
    algorithm_title: ClassVar[str] = "Text search"
    output_title: ClassVar[str] = "Search results"
    help: ClassVar[str] = (
        "Scores every tile by the cosine similarity of its image embedding to a text query (e.g. 'a swimming "
        "pool'). Every tile is kept with similarity and rank (1 = best); selected is 1 for the top K tiles "
        "whose similarity is at least the threshold (both optional; neither selects all).")
    params: ClassVar[tuple[Param, ...]] = (
        Param("query", "text", "Query", help="e.g. 'a swimming pool'"),
        Param("top_k", "int", "Select the best K tiles", optional=True, lo=1, none_text="all", form_default=20,
              help="select the K best tiles"),
        Param("threshold", "float", "Select tiles with a similarity of at least", optional=True, lo=-1.0, hi=1.0,
              none_text="none", help="select tiles with a cosine similarity at least this"),
        Param("stand_out", "float", "Tiles must stand out by (sd)", optional=True, lo=0.0,
              hi=5.0, none_text="off", form_default=1.0,
              help="select only tiles whose similarity is at least the mean of this raster's tiles plus this many "
                   "standard deviations; the similarity this makes is reported"),
    )
    style: ClassVar[Style] = Style("graduated", "similarity", 'if("selected" = 1, "rank", \'\')', False,
                                   "Show ranks on the map", highlight='"selected" = 1')
    dissolve_field: ClassVar[str | None] = "selected"
    dense: ClassVar[bool] = True
    whole_job: ClassVar[bool] = True           # ranks and the top K over the whole collection

    def __post_init__(self):
        self.query = check_text(self.query if self.query is not None else "", "search query")
        if not self.query:
            raise InvalidInput("The search query is empty.", "Give a query, e.g. --query 'a swimming pool'.", param="query")
        self.top_k = checks.optional(checks.whole, self.top_k, "top_k", 1, example="e.g. 20")
        self.threshold = checks.optional(checks.number, self.threshold, "The similarity threshold (a cosine)",
                                         -1.0, 1.0, example="e.g. 0.25")
        self.stand_out = checks.optional(checks.number, self.stand_out, "stand_out (standard deviations)", 0.0, 5.0,
                                         example="e.g. 1")

    def prompts(self, prepared):
        return [[self.query.strip()]]

    def outputs(self, part, text, bundle, fitted):
        from ..records import similarity_columns

        sim = part.embeddings @ text[0]
        # the legend and the summary say which similarity the selection took (the stand-out rule's is computed)
        cut = effective_threshold(sim, self.threshold, self.stand_out)
        fields_, columns = similarity_columns(sim, self.top_k, cut)
        return TaskOutput(None, fields_, dense=columns["similarity"][:, None], dense_names=["similarity"],
                          columns=columns, metadata={"query": self.query, "top_k": self.top_k, "threshold": cut,
                                                     "stand_out": self.stand_out})

    def layer_name(self):
        return "search"

    def layer_title(self, raster_name):
        return f"{raster_name} · search “{self.query}”"

    def describe(self, result):
        recs = result.records
        if not recs:
            return []
        best = sorted(recs, key=lambda r: r["rank"])[:3]
        return ["best tiles (row,col similarity): " + ", ".join(
            f"({r['row']},{r['col']} {r['similarity']:.3f})" for r in best)
            + f"; selected {sum(r['selected'] for r in recs)}" + self._cut_text([r["similarity"] for r in recs])]

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
