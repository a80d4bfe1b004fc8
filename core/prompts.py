"""Prompt templates, class-name presets and RemoteCount-style count captions.

Templates hold ``{}`` (or ``{c}``) where the class name goes, as in open_clip's
and clip_benchmark's zero-shot templates. A class's text embedding is the
ensemble over templates: each prompt's embedding normalised, averaged, and the
mean renormalised (clip_benchmark's ``zero_shot_classifier``).
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

from .errors import InvalidInput, SourceUnreadable

BOM = "\ufeff"
LIST_SEPARATOR = "|"   # joins the labels of top_labels: no label may contain it

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


def object_nouns(name: str | None) -> tuple[str, str]:
    """(singular, plural) of an object name typed either way ("building" or "buildings"; "bus", "city",
    "cities"); "object(s)" without one. Analysts type the plural as often as the singular, and a count prompt
    built on "buildings" as the singular would read "one buildings" and "three buildingses"."""
    name = " ".join((name or "").split())
    if not name:
        return "object", "objects"
    low = name.lower()
    if low.endswith("ies") and len(low) > 4:
        return name[:-3] + "y", name
    if low.endswith("s") and not low.endswith(("ss", "us", "is")):
        return name[:-1], name
    return name, plural(name)


def count_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def count_captions(obj: str, max_count: int = 10, templates: list[str] | None = None) -> list[list[str]]:
    """Captions for counts 1..max_count: a list (one entry per count) of prompts (one per template).

    Template placeholders: ``{count}`` (a number word), ``{object}`` (singular for 1,
    plural otherwise), ``{is}`` (is/are). ``obj`` is the object's name, singular ("car") or plural ("cars").
    """
    obj = (obj or "").strip()
    if not obj:
        raise InvalidInput("The object to count is empty.", "Give an object name, e.g. --object car.", param="object")
    if max_count < 1:
        raise InvalidInput(f"max_count must be at least 1, not {max_count}.", "Use e.g. --max-count 10.", param="max_count")
    templates = list(templates or COUNT_TEMPLATES)
    for t in templates:
        if "{count}" not in t:
            raise InvalidInput(f"Count template {t!r} has no {{count}} placeholder.",
                                  "Write templates like 'There {is} {count} {object} in the image.'",
                           param="templates")
    out = []
    one, many = object_nouns(obj)
    for n in range(1, max_count + 1):
        out.append([t.replace("{count}", count_word(n)).replace("{object}", one if n == 1 else many)
                    .replace("{is}", "is" if n == 1 else "are") for t in templates])
    return out


def label_prompts(labels: list[str], templates: list[str] | None = None) -> list[list[str]]:
    """Per class, its prompts (one per template)."""
    templates = list(templates) if templates else list(DEFAULT_TEMPLATES)
    return [[fill(t, name) for t in templates] for name in labels]


def check_text(text, what: str) -> str:
    """A name or prompt typed or read by a user: stripped, with byte-order marks removed; control
    characters (tabs, NUL, escape codes) are refused, since they come from a wrongly read file."""
    if not isinstance(text, str):
        raise InvalidInput(f"The {what} {text!r} is not text.", f"Give the {what} as a string.")
    text = text.replace(BOM, "").strip()
    if any(unicodedata.category(c) == "Cs" for c in text):   # bytes that were not UTF-8, kept as surrogates
        shown = "".join("\ufffd" if unicodedata.category(c) == "Cs" else c for c in text)
        raise InvalidInput(f"The {what} {shown!r} holds bytes that are not UTF-8 text.",
                           "Type it again, or save the file it came from as UTF-8.")
    bad = next((c for c in text if unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        raise InvalidInput(f"The {what} {text!r} contains the control character {bad!r}.",
                              "Remove it (a tab or a binary byte usually means the file was not plain text).")
    return text


def check_labels(labels) -> list[str]:
    """Class names: stripped (byte-order marks removed); refuse a string (it would be read letter by
    letter), an empty list, empty names, control characters, names containing the list separator
    ``|`` of ``top_labels``, and duplicates (case-insensitive)."""
    if isinstance(labels, str | bytes):
        raise InvalidInput(f"The labels {labels!r} are a single string, not a list of class names.",
                              "Give a list, e.g. ['buildings', 'trees'] (on the command line: "
                              "--labels buildings,trees).", param="labels")
    if labels is None:
        labels = []
    try:
        names = [check_text(x, "label") for x in labels]
    except TypeError:
        raise InvalidInput(f"The labels {labels!r} are not a list of class names.",
                              "Give a list, e.g. ['buildings', 'trees'].", param="labels") from None
    if not names or not any(names):
        raise InvalidInput("The label list is empty.",
                              "Give at least two class names, e.g. --labels 'buildings,trees,water', "
                              "or a --preset (" + ", ".join(PRESETS) + ").", param="labels")
    if any(not n for n in names):
        raise InvalidInput(f"The label list {labels!r} contains an empty name.",
                              "Remove the empty entry (look for ',,' or a trailing comma).", param="labels")
    for n in names:
        if LIST_SEPARATOR in n:
            raise InvalidInput(f"The label {n!r} contains '{LIST_SEPARATOR}', which separates the labels "
                                  "of the top_labels field.", f"Write the class without '{LIST_SEPARATOR}', e.g. "
                                  f"{n.replace(LIST_SEPARATOR, ' or ')!r}.", param="labels")
    seen: dict[str, str] = {}
    for n in names:
        key = n.lower()
        if key in seen:
            raise InvalidInput(f"The label {n!r} appears more than once in the label list.",
                                  "Give each class once.", param="labels")
        seen[key] = n
    return names


def check_templates(templates, what: str = "templates") -> list[str] | None:
    """None (the defaults) or a non-empty list of prompt templates."""
    if templates is None:
        return None
    if isinstance(templates, str | bytes):
        raise InvalidInput(f"The {what} {templates!r} are a single string, not a list.",
                              "Give a list of templates, e.g. ['a satellite photo of {}.'].", param="templates")
    out = [check_text(t, "template") for t in templates]
    out = [t for t in out if t]
    if not out:
        raise InvalidInput(f"The {what} list is empty.", "Give at least one template, or none for the "
                              "defaults.", param="templates")
    return out


def preset(name: str) -> list[str]:
    if name not in PRESETS:
        raise InvalidInput(f"Unknown preset {name!r}.", "Choose one of: " + ", ".join(PRESETS) + ".", param="preset")
    return list(PRESETS[name])


def read_lines(path, what: str = "lines", split=None) -> list[str]:
    """Labels or templates from a UTF-8 text file or a JSON list. A text file is split by ``split``
    (default :func:`split_lines`, one entry per line; class names use :func:`split_names`, templates
    :func:`split_templates`); a JSON list is taken as it is. A byte-order mark is ignored; a binary or
    non-UTF-8 file, and a file with nothing in it, are refused."""
    p = Path(path)
    if not p.exists():
        raise SourceUnreadable(f"File not found: {p}.", "Check the path.", path=p)
    if not p.is_file():
        raise SourceUnreadable(f"{p} is a folder, not a text file.", f"Give a text file with {what}, one per line.", path=p)
    raw = p.read_bytes()
    if b"\0" in raw:
        raise InvalidInput(f"{p} is a binary file, not text.", f"Give a UTF-8 text file with {what}, one per "
                              "line.", path=p)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InvalidInput(f"{p} is not UTF-8 text (byte 0x{raw[e.start]:02x} at position {e.start}).",
                              "Save it as UTF-8 (in a text editor: Save As, encoding UTF-8).", path=p) from None
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidInput(f"{p} is not valid JSON ({e}).", "Write a JSON list of strings.", path=p) from None
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise InvalidInput(f"{p} must hold a JSON list of strings.", 'Write e.g. ["water", "trees"].', path=p)
        lines = [x.strip() for x in data if x.strip()]
    else:
        lines = (split or split_lines)(text)
    if not lines:
        raise InvalidInput(f"{p} holds no {what} (it is empty, or only blank and '#' comment lines).",
                              f"Write {what}, one per line.", path=p)
    return lines


def _lines(text: str) -> list[str]:
    text = text.replace(BOM, "")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def split_lines(text: str) -> list[str]:
    """One entry per line; blank lines and '#' comments dropped (commas are part of an entry)."""
    return _lines(text)


NAME_SEPARATORS = ",\n"
TEMPLATE_SEPARATORS = "|\n"


def split_names(text) -> list[str]:
    """THE rule for class names typed anywhere (command line, dock, Processing, a labels file): new lines
    and commas both separate; blank lines and lines starting with '#' are skipped; names are stripped.
    An empty name between commas (',,' or a trailing comma) is kept as '' so that :func:`check_labels`
    refuses it. A list (from a JSON file, or from Python) is returned as it is: a class name with a
    comma in it can only come that way."""
    if text is None:
        return []
    if not isinstance(text, str):
        return list(text)
    return [part.strip() for line in _lines(text) for part in line.split(",")]


def split_templates(text) -> list[str]:
    """THE rule for prompt templates typed anywhere: new lines and '|' separate (templates hold commas);
    blank entries, and lines starting with '#', are skipped. A list is returned as it is."""
    if text is None:
        return []
    if not isinstance(text, str):
        return list(text)
    return [part.strip() for line in _lines(text) for part in line.split("|") if part.strip()]
