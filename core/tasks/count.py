"""Count: how many of an object each tile shows (one caption per count, RemoteCLIP's RemoteCount)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .. import checks
from ..errors import InvalidInput
from ..prompts import COUNT_TEMPLATES, check_templates, check_text, count_captions
from .base import Param, Style, Task, TaskOutput, register


@register
@dataclass
class CountTask(Task):
    object_name: str
    max_count: int = 10
    templates: list[str] | None = None

    kind: ClassVar[str] = "count"
    title: ClassVar[str] = "Count"
    summary: ClassVar[str] = "count an object class per tile (RemoteCount captions)"
    algorithm: ClassVar[str] = "countobjects"
    algorithm_title: ClassVar[str] = "Count objects"
    output_title: ClassVar[str] = "Object counts"
    help: ClassVar[str] = (
        "Estimates per tile how many of an object (e.g. 'car' or 'cars') it shows, from 1 to the largest count, "
        "by matching one caption per count ('There are two cars in the image.', RemoteCLIP's RemoteCount). "
        "Templates replace that caption: use {count}, {object} and {is} (separated by new lines or |). The "
        "output has one polygon per tile with count and count_conf (the probability of that count).")
    params: ClassVar[tuple[Param, ...]] = (
        Param("object_name", "text", "Object to count", key="OBJECT", flag="--object", form_default="car",
              help="the object, singular or plural, e.g. car"),
        Param("max_count", "int", "Largest count", default=10, lo=1, hi=100),
        Param("templates", "templates", "Count captions ({count}, {object}, {is})", optional=True, advanced=True,
              help="count templates with {count}, {object} and {is}; separated by new lines or '|'"),
    )
    style: ClassVar[Style] = Style("counts", "count", '"count"', True)
    default_templates: ClassVar[tuple[str, ...]] = tuple(COUNT_TEMPLATES)
    dissolve_field: ClassVar[str | None] = "count"

    def __post_init__(self):
        self.object_name = check_text(self.object_name if self.object_name is not None else "", "object name")
        if not self.object_name:
            raise InvalidInput("The object to count is empty.", "Give an object name, e.g. --object car.", param="object")
        self.max_count = checks.whole(self.max_count, "max_count", 1, 100, "default 10", param="max_count")
        self.templates = check_templates(self.templates, "count templates")
        if self.templates:
            count_captions(self.object_name, 1, self.templates)   # refuses templates without {count}

    def prompts(self, prepared):
        return count_captions(self.object_name, int(self.max_count), self.templates)

    def outputs(self, part, text, bundle, fitted):
        from ..records import count_columns

        fields_, columns = count_columns(part.embeddings, text, bundle.logit_scale)
        # the legend names the object and says that the largest count is a cap
        return TaskOutput(None, fields_, columns=columns,
                          metadata={"object": self.object_name, "max_count": self.max_count})

    def layer_name(self):
        return f"count_{checks.slug(self.object_name)}"

    def layer_title(self, raster_name):
        return f"{raster_name} · count {self.object_name}"

    def describe(self, result):
        return [f"total {self.object_name} count: {sum(r['count'] for r in result.records)}"]

    widget_names: ClassVar[dict[str, str]] = {"object_name": "count_object", "max_count": "count_max"}

    def value_text(self, value) -> str:
        return self.count_text(int(value), self.object_name, self.max_count)

    @staticmethod
    def count_text(value: int, object_name: str | None, max_count: int | None) -> str:
        """'1 building', '3 buildings', and at the largest count the model can tell, '10 or more buildings'."""
        from ..prompts import object_nouns

        one, many = object_nouns(object_name)
        if max_count is not None and value >= int(max_count):
            return f"{value} or more {many}"
        return f"{value} {one if value == 1 else many}"
