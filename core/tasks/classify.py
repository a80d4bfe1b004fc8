"""Classify: few-shot classification from the analyst's samples (core.classify has the classifier's rules), and
its report as text."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar

from .. import checks
from ..errors import InvalidInput
from ..prompts import check_templates, label_prompts
from .base import TEMPLATES_HELP, Param, Style, Task, TaskOutput, _label_summary, register, slug_fields


@register
@dataclass
class ClassifyTask(Task):
    """Few-shot classification from the analyst's samples (core.classify has the classifier's rules)."""
    samples: Any = None                   # core.samples.Samples
    head: str | None = None               # a saved classifier to apply instead of training one
    head_out: str | None = None           # where to save the trained classifier
    suggest: int = 0                      # mark the N most uncertain tiles to label next
    method: str = "logistic"              # "logistic" or "knn"
    k: int = 5                            # neighbours of the k-NN vote
    templates: list[str] | None = None    # of the class names' zero-shot head
    folds: int = 5
    seed: int = 0

    kind: ClassVar[str] = "classify"
    title: ClassVar[str] = "Classify"
    summary: ClassVar[str] = "classify tiles into the analyst's classes, learnt from sample points or polygons"
    algorithm: ClassVar[str] = "classifyfromsamples"
    algorithm_title: ClassVar[str] = "Classify from samples"
    group: ClassVar[str] = "Few-shot analysis"
    output_title: ClassVar[str] = "Classified tiles"
    help: ClassVar[str] = (
        "Learns the analyst's own classes from a few samples (points or polygons, any CRS, with a class field) "
        "and classifies every tile. A tile takes a sample's class when it shares area with the sample polygon "
        "or contains the point; tiles claimed by two classes are left out. The classifier is a class-balanced "
        "logistic regression (or a k-NN vote) on the tile embeddings, mixed with the zero-shot head of the "
        "class names; the mix is chosen by cross-validation over the samples, and the cross-validated "
        "accuracy, per-class precision and recall and the confusion matrix are reported (and saved as "
        "NAME.remoteclip-report.json beside the output). The output has label, score, per-class "
        "probabilities, uncertainty (1 - the margin between the two best classes) and is_sample; asked for "
        "suggestions, suggest ranks the most uncertain tiles to label next (1 = first). The trained classifier "
        "can be saved and applied to other rasters with the same model.")
    params: ClassVar[tuple[Param, ...]] = (
        Param("samples", "samples", "Samples (points or polygons)", optional=True,
              help="vector file of sample points or polygons (any CRS)"),
        Param("class_field", "field", "Class field", optional=True, parent="samples",
              help="the samples' attribute that holds their class"),
        Param("head", "file", "Apply a saved classifier instead", optional=True, file_filter="Classifier (*.json)",
              help="a classifier saved with --head-out, applied instead of training on samples"),
        Param("head_out", "file_out", "Save the classifier to", optional=True, key="HEAD_OUTPUT",
              file_filter="Classifier (*.json)", help="save the trained classifier (JSON) for other rasters"),
        Param("suggest", "int", "Tiles to suggest for labelling next", default=0, lo=0, hi=10_000,
              help="mark the N most uncertain tiles as the ones to label next"),
        Param("method", "choice", "Classifier", default="logistic", choices=("logistic", "knn"), advanced=True,
              help="logistic regression (default) or a k-nearest-neighbour vote"),
        Param("k", "int", "Neighbours of the k-NN vote", default=5, lo=1, hi=100, advanced=True),
        Param("templates", "templates", "Prompt templates of the class names ({} = class)", optional=True,
              advanced=True, help=TEMPLATES_HELP),
    )
    style: ClassVar[Style] = Style("categories", "label", '"label"', False, "Show labels on the map",
                                   highlight='"is_sample" = 1', dense_range=(0.0, 1.0))
    dissolve_field: ClassVar[str | None] = "label"
    dense: ClassVar[bool] = True
    reports: ClassVar[bool] = True

    def __post_init__(self):
        from ..classify import METHODS
        from ..samples import Samples

        if self.samples is not None and not isinstance(self.samples, Samples):
            raise InvalidInput(f"The samples are a {type(self.samples).__name__}, not core.samples.Samples.",
                                  "Read them with core.samples.read_samples(path, class_field).", param="samples")
        for name in ("head", "head_out"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str | os.PathLike):
                raise InvalidInput(f"The classifier file {value!r} is not a path.", "Give a .json path.", param="head")
            if value is not None:
                setattr(self, name, checks.path_text(value, "classifier file"))
        if self.samples is None and self.head is None:
            raise InvalidInput("No samples and no saved classifier were given.",
                                  "Give sample points or polygons with their class field, or a saved classifier.")
        if self.samples is not None and self.head is not None:
            raise InvalidInput("Both samples and a saved classifier were given.",
                                  "Give samples to train a classifier, or a saved one to apply, not both.")
        if self.head is not None and self.head_out is not None:
            raise InvalidInput("A saved classifier is applied, so there is nothing new to save.",
                                  "Leave out the file to save the classifier to, or train on samples.", param="head_out")
        self.suggest = checks.whole(self.suggest or 0, "suggest", 0, 10_000, "the number of tiles, e.g. 20",
                                    param="suggest")
        self.method = checks.choice(self.method or "logistic", "classifier", METHODS, param="method")
        self.k = checks.whole(self.k, "k", 1, 100, "e.g. 5", param="k")
        self.folds = checks.whole(self.folds, "folds", 2, 20, "e.g. 5", param="folds")
        self.seed = checks.whole(self.seed, "seed", 0, param="seed")
        self.templates = check_templates(self.templates)
        if self.samples is not None:
            self.samples.class_names()   # at least two classes, named as labels must be

    @classmethod
    def from_inputs(cls, raw, spell=None):
        spell = spell or (lambda p: p.label)
        samples, class_field = raw.get("samples"), raw.get("class_field")
        if isinstance(samples, str | os.PathLike) and str(samples).strip():
            if not class_field:
                raise InvalidInput(f"No class field was given for the samples ({spell(cls.param('class_field'))}).",
                                      "Name the attribute that holds each sample's class.", param="class_field")
            from ..samples import read_samples

            samples = read_samples(samples, class_field)
        elif isinstance(samples, str):
            samples = None
        # how the inputs combine, in the front-end's words (the dock's field names, the command line's options)
        head, head_out = (raw.get(n) if str(raw.get(n) or "").strip() else None for n in ("head", "head_out"))
        if samples is None and head is None:
            raise InvalidInput("No samples and no saved classifier were given.",
                               f"Give sample points or polygons ({spell(cls.param('samples'))}) with their class "
                               f"field ({spell(cls.param('class_field'))}), or a saved classifier "
                               f"({spell(cls.param('head'))}).")
        if head is not None and head_out is not None:
            raise InvalidInput(f"A saved classifier ({spell(cls.param('head'))}) is applied, so there is nothing "
                               f"new to save ({spell(cls.param('head_out'))}).",
                               f"Leave out {spell(cls.param('head_out'))}, or train on samples "
                               f"({spell(cls.param('samples'))}).", param="head_out")
        return super().from_inputs({**raw, "samples": samples}, spell)

    # -------------------------------------------------------------------------------------- run

    def prepare(self, bundle, warnings):
        if self.head is None:
            return {"classes": self.samples.class_names()}
        from ..classify import Head

        head = Head.read(self.head)
        head.check_model(bundle, self.head)
        return {"classes": head.classes, "head": head}

    def prompts(self, prepared):
        if "head" in prepared:
            return None    # the saved classifier carries its class names' text embeddings
        return label_prompts(prepared["classes"], self.templates)

    def fit(self, parts, text, bundle, prepared, warnings):
        import numpy as np

        from ..classify import FEW_SAMPLES, train
        from ..samples import match_tiles

        if "head" in prepared:
            head = prepared["head"]
            report = {**(head.report or {}), "format": "remoteclip-classify-report", "classes": head.classes,
                      "method": head.method, "alpha": head.alpha, "applied": self.head, "model": head.model}
            return {"head": head, "sample_tiles": {}, "report": report}
        classes = prepared["classes"]
        xs, ys, gs, places, tile_m = [], [], [], [], set()
        kept: dict[str, np.ndarray] = {}
        conflicts = 0
        tiles_per_class = dict.fromkeys(classes, 0)
        samples_per_class = dict.fromkeys(classes, 0)
        outside = 0
        offset = 0
        for part in parts:
            m = match_tiles(self.samples, part.tiles, part.crs_wkt, classes)
            xs.append(part.embeddings[m.index])
            ys.append(m.y)
            gs.append(m.group + offset)   # groups of another raster are other samples' tiles
            places.append(np.column_stack([np.full(len(m.index), len(places)), m.places]))   # part, x, y
            tile_m.add(m.tile_m)
            offset += len(self.samples.wkts)
            kept[part.name] = m.index
            conflicts += m.conflicts
            outside += m.outside
            for c in classes:
                tiles_per_class[c] += m.tiles_per_class[c]
                samples_per_class[c] = max(samples_per_class[c], m.samples_per_class[c])
        if conflicts:
            warnings.append(f"{conflicts} tile{'s were' if conflicts > 1 else ' was'} claimed by samples of two "
                            "classes and left out of the training.")
        if outside:
            warnings.append(f"{outside} sample{'s' if outside > 1 else ''} touched no tile (outside the raster or "
                            "the extent) and taught nothing.")
        empty = [c for c in classes if tiles_per_class[c] == 0]
        if empty:
            raise InvalidInput(f"The class{'es' if len(empty) > 1 else ''} {', '.join(map(repr, empty))} "
                                  f"{'have' if len(empty) > 1 else 'has'} no sample tile (its samples are outside "
                                  "the raster or the extent, or every tile they claim is also claimed by another "
                                  "class).", "Draw at least one sample of every class over the raster.")
        few = [f"{c} ({tiles_per_class[c]})" for c in classes if tiles_per_class[c] < FEW_SAMPLES]
        if few:
            warnings.append(f"Few sample tiles for {', '.join(few)}: {FEW_SAMPLES} or more per class give a "
                            "steadier classifier and a truer accuracy.")
        x = np.concatenate(xs)
        y = np.concatenate(ys)
        model = {"name": bundle.name, "sha256": bundle.sha256, "embed_dim": bundle.embed_dim}
        head, report, notes = train(x, y, np.concatenate(gs), classes, text, bundle.logit_scale, self.method,
                                    self.k, self.folds, self.seed, model=model, templates=self.templates,
                                    places=np.concatenate(places), tile_m=tile_m.pop() if len(tile_m) == 1 else None)
        warnings.extend(notes)
        report["samples"] = {"tiles": tiles_per_class, "samples": samples_per_class, "conflicts": conflicts,
                             "outside": outside}
        report["model"] = model
        return {"head": head, "sample_tiles": kept, "report": report}

    def outputs(self, part, text, bundle, fitted):
        import numpy as np

        from ..classify import suggest, uncertainty
        from ..records import class_columns

        head = fitted["head"]
        probs = head.proba(part.embeddings)
        pnames = slug_fields(head.classes)
        fields_, columns = class_columns(probs, head.classes, 3, None, pnames)
        fmap = dict(zip(pnames, head.classes, strict=True))
        unc = np.asarray(uncertainty(probs))
        samples = {int(i) for i in fitted["sample_tiles"].get(part.name, ())}
        picks = suggest(unc, self.suggest, samples, [t.window for t in part.tiles]) if self.suggest else []
        columns["uncertainty"] = unc
        is_sample = np.zeros(len(unc), dtype=np.int64)
        is_sample[sorted(samples)] = 1
        columns["is_sample"] = is_sample
        if self.suggest:
            order = np.zeros(len(unc), dtype=np.int64)
            order[list(picks)] = np.arange(1, len(picks) + 1)
            columns["suggest"] = order
        fields_ += [("uncertainty", "float"), ("is_sample", "int")] + ([("suggest", "int")] if self.suggest else [])
        report = dict(fitted["report"] or {})
        if picks:
            report["suggested"] = [{"rank": n + 1, "row": int(part.tiles[i].row), "col": int(part.tiles[i].col),
                                    "uncertainty": round(float(unc[i]), 4)} for n, i in enumerate(picks)]
        cv = (report.get("cv") or {}) if report else {}
        meta = {"classify": {"alpha": report.get("alpha"), "method": report.get("method"),
                             "accuracy": cv.get("accuracy"), "balanced_accuracy": cv.get("balanced_accuracy")}}
        return TaskOutput(None, fields_, fmap, dense=np.asarray(probs, dtype=np.float32),
                          dense_names=list(head.classes), metadata=meta, report=report or None,
                          head=head if self.head is None else None, columns=columns)

    def layer_name(self):
        return "classes"

    def files_out(self):
        return [(self.head_out, "classifier")] if self.head_out else []

    def files_in(self):
        out = [(self.head, "saved classifier")] if self.head else []
        origin = getattr(self.samples, "origin", "")
        return out + ([(origin, "samples")] if origin else [])

    def describe(self, result):
        lines = _label_summary(result.records)
        lines += report_lines(result.report)
        if self.suggest:
            picks = sorted((r for r in result.records if r.get("suggest")), key=lambda r: r["suggest"])
            if picks:
                lines.append("label these next (row,col uncertainty): " + ", ".join(
                    f"({r['row']},{r['col']} {r['uncertainty']:.2f})" for r in picks[:10])
                    + (f" and {len(picks) - 10} more" if len(picks) > 10 else ""))
        return lines


def report_lines(report: dict | None) -> list[str]:
    """A classify report as text: the cross-validated accuracy, the mix, per-class precision and recall, and
    the confusion matrix (rows: true class, columns: predicted)."""
    if not report:
        return []
    lines = [f"applied the saved classifier {report['applied']}; its figures are from its training:"] \
        if report.get("applied") else []
    return lines + _report_lines(report)


def _report_lines(report: dict) -> list[str]:
    cv = report.get("cv")
    alpha = report.get("alpha")
    mix = "class names alone" if not alpha else "samples alone" if alpha == 1 else \
        f"{alpha:.0%} samples + {1 - alpha:.0%} class names"
    if not cv:
        return [f"cross-validation: not possible (a class has a single sample tile); classifier: {mix}"]
    by = "by sample" if cv.get("grouped_by") == "sample" else "by tile (optimistic)"
    if cv.get("grouped_by") == "space":
        apart = cv.get("group_distance") or {}
        metres = f" ({apart['m']:.3g} m)" if apart.get("m") is not None else ""
        by = f"by place: sample tiles closer than {apart.get('tile_widths', 0):.3g} tile widths{metres} kept together"
    lines = [f"cross-validated accuracy {cv['accuracy']:.1%}, balanced {cv['balanced_accuracy']:.1%} "
             f"({cv['folds']} folds {by}); class names alone {cv['zero_shot']:.1%} balanced; classifier: {mix}"]
    classes = list(report.get("classes") or cv["per_class"])
    width = max(len(c) for c in classes)
    # points or polygons drawn, and the tiles they claim (a point where overlapping tiles meet claims several)
    drawn = (report.get("samples") or {}).get("samples") or {}
    lines.append(f"  {'class'.ljust(width)}  precision  recall  samples  tiles")
    for c in classes:
        pc = cv["per_class"][c]
        p = "-" if pc["precision"] is None else f"{pc['precision']:.0%}"
        r = "-" if pc["recall"] is None else f"{pc['recall']:.0%}"
        lines.append(f"  {c.ljust(width)}  {p:>9}  {r:>6}  {drawn.get(c, '-'):>7}  {pc['support']:>5}")
    lines.append("  confusion (rows: true, columns: predicted, in the order above):")
    for c, row in zip(classes, cv["confusion"], strict=True):
        lines.append(f"  {c.ljust(width)}  " + " ".join(f"{v:>5}" for v in row))
    return lines
