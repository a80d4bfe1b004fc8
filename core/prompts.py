"""Prompt templates, class-name presets and RemoteCount-style count captions.

Templates hold ``{}`` (or ``{c}``) where the class name goes, as in open_clip's
and clip_benchmark's zero-shot templates. A class's text embedding is the
ensemble over templates: each prompt's embedding normalised, averaged, and the
mean renormalised (clip_benchmark's ``zero_shot_classifier``).
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import RemoteClipError

# Remote-sensing phrasings of the CLIP/RemoteCLIP zero-shot templates.
DEFAULT_TEMPLATES = [
    "a satellite photo of {}.",
    "an aerial photo of {}.",
    "a remote sensing image of {}.",
    "a top-down view of {}.",
    "an aerial image showing {}.",
]

PRESETS: dict[str, list[str]] = {
    "land-cover": ["buildings", "road", "trees", "grass", "bare soil", "water", "farmland", "parking lot"],
    "rsscn7": ["grass", "field", "industry", "river or lake", "forest", "residential", "parking"],
    "urban": ["dense residential area", "sparse residential area", "commercial area", "industrial area",
              "road", "parking lot", "park", "construction site"],
    "water": ["river", "lake", "sea", "harbor", "beach", "land"],
    "agriculture": ["cropland", "pasture", "orchard", "bare field", "greenhouses", "forest", "buildings"],
}

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
                "nineteen", "twenty"]

# RemoteCount (RemoteCLIP paper, Sec. 5): one caption per count, "There are two cars in the image."
COUNT_TEMPLATES = ["There {is} {count} {object} in the image."]


def fill(template: str, name: str) -> str:
    """Put ``name`` into a template with ``{}`` or ``{c}``; a template without either gets it appended."""
    if "{}" in template:
        return template.replace("{}", name)
    if "{c}" in template:
        return template.replace("{c}", name)
    return f"{template} {name}".strip()


def plural(noun: str) -> str:
    """English plural of the last word (enough for object names: car, bus, ship, tennis court, ...)."""
    noun = noun.strip()
    head, _, last = noun.rpartition(" ")
    low = last.lower()
    if low.endswith(("s", "x", "z", "ch", "sh")):
        last = last + "es"
    elif low.endswith("y") and len(low) > 1 and low[-2] not in "aeiou":
        last = last[:-1] + "ies"
    else:
        last = last + "s"
    return f"{head} {last}".strip() if head else last


def count_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def count_captions(obj: str, max_count: int = 10, templates: list[str] | None = None) -> list[list[str]]:
    """Captions for counts 1..max_count: a list (one entry per count) of prompts (one per template).

    Template placeholders: ``{count}`` (a number word), ``{object}`` (singular for 1,
    plural otherwise), ``{is}`` (is/are). ``obj`` is the singular name ("car").
    """
    obj = (obj or "").strip()
    if not obj:
        raise RemoteClipError("The object to count is empty.", "Give an object name, e.g. --object car.")
    if max_count < 1:
        raise RemoteClipError(f"max_count must be at least 1, not {max_count}.", "Use e.g. --max-count 10.")
    templates = list(templates or COUNT_TEMPLATES)
    for t in templates:
        if "{count}" not in t:
            raise RemoteClipError(f"Count template {t!r} has no {{count}} placeholder.",
                                  "Write templates like 'There {is} {count} {object} in the image.'")
    out = []
    many = plural(obj)
    for n in range(1, max_count + 1):
        out.append([t.replace("{count}", count_word(n)).replace("{object}", obj if n == 1 else many)
                    .replace("{is}", "is" if n == 1 else "are") for t in templates])
    return out


def label_prompts(labels: list[str], templates: list[str] | None = None) -> list[list[str]]:
    """Per class, its prompts (one per template)."""
    templates = list(templates) if templates else list(DEFAULT_TEMPLATES)
    return [[fill(t, name) for t in templates] for name in labels]


def check_labels(labels) -> list[str]:
    """Strip names; refuse an empty list, empty names and duplicates (case-insensitive)."""
    if labels is None:
        labels = []
    names = [str(x).strip() for x in labels]
    if not names or not any(names):
        raise RemoteClipError("The label list is empty.",
                              "Give at least two class names, e.g. --labels 'buildings,trees,water', "
                              "or a --preset (" + ", ".join(PRESETS) + ").")
    if any(not n for n in names):
        raise RemoteClipError(f"The label list {labels!r} contains an empty name.",
                              "Remove the empty entry (look for ',,' or a trailing comma).")
    seen: dict[str, str] = {}
    for n in names:
        key = n.lower()
        if key in seen:
            raise RemoteClipError(f"The label {n!r} appears more than once in the label list.",
                                  "Give each class once.")
        seen[key] = n
    return names


def preset(name: str) -> list[str]:
    if name not in PRESETS:
        raise RemoteClipError(f"Unknown preset {name!r}.", "Choose one of: " + ", ".join(PRESETS) + ".")
    return list(PRESETS[name])


def read_lines(path) -> list[str]:
    """Labels or templates from a text file (one per line, '#' comments) or a JSON list."""
    p = Path(path)
    if not p.is_file():
        raise RemoteClipError(f"File not found: {p}.", "Check the path.")
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise RemoteClipError(f"{p} is not valid JSON ({e}).", "Write a JSON list of strings.") from None
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise RemoteClipError(f"{p} must hold a JSON list of strings.", 'Write e.g. ["water", "trees"].')
        return data
    return split_lines(text)


def split_lines(text: str) -> list[str]:
    """One entry per line; blank lines and '#' comments dropped (commas are part of a name)."""
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
