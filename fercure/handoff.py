"""The review queue handed to an annotation tool, and the tool's export read back as decisions.

Out (``export-cleaned --format label-studio | cvat``, written by ``fercure.stages.export``): one
image per queue card under ``OUT/images/``, named ``<rank>_<sample_id>_<tag>.<ext>`` — the queue's
rank (zero-padded: a name sort is the queue's order), the sample, and ``label_tag`` of its given
label (CVAT's export carries nothing else of ours, and the tag is how a changed label is told).

- Label Studio: ``tasks.json`` (a list of tasks: ``data`` holds the image reference, the sample id,
  the given label, fercure's action and ``review_rank``; fercure's suggestion is a prediction whose
  ``score`` is the queue's key — low = the given label is likely wrong, so Label Studio's
  lowest-score-first order puts the likeliest wrong labels first) and ``label_config.xml`` (an Image and a single Choices
  over the classes plus ``DROP``).
- CVAT for images 1.1: ``annotations.xml`` (each image with one ``<tag>``: its given label) and
  ``cvat_labels.json`` (the labels, in the form CVAT's label constructor takes as raw JSON).

In (``--decisions`` / ``--trusted``): a Label Studio JSON export (tasks with ``annotations``) or a
CVAT for images 1.1 XML, told apart from the report's own files by their content, each task or
image becoming one ``ToolDecision``: the chosen class (a relabel, or a keep when it is the given
label), ``DROP`` (a drop), or the reason it is no decision (not a fercure task, no annotation,
annotations that disagree). ``fercure.decisions`` checks them against the audit like any other row.
"""

from __future__ import annotations

import hashlib
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

LABEL_STUDIO, CVAT = "label-studio", "cvat"
FORMATS = (LABEL_STUDIO, CVAT)
FROM_NAME, TO_NAME = "label", "image"  # the labelling config's Choices and Image names
DROP = "fercure:drop"  # the choice (Label Studio) or label (CVAT) that drops a sample
DROP_SHOWN = "drop (not usable)"  # how Label Studio shows the DROP choice
NOTE = "fercure_note"  # the task field the labelling config's header shows
IMAGES = "images"  # the folder of the card images inside the export
TASKS, LABEL_CONFIG = "tasks.json", "label_config.xml"
CVAT_XML, CVAT_LABELS = "annotations.xml", "cvat_labels.json"
# Label Studio serves files under LOCAL_FILES_DOCUMENT_ROOT at this path (point the root at the export)
DEFAULT_IMAGE_URL = "/data/local-files/?d="


class HandoffFileError(ValueError):
    """A tool's export that cannot be read at all (the message names the file and what to do)."""


def label_tag(label: str) -> str:
    """8 hex digits standing for a given label in an image name (its SHA-1's start)."""
    return hashlib.sha1(str(label).encode("utf-8", "surrogateescape")).hexdigest()[:8]


@dataclass(frozen=True)
class Card:
    """One queue card as a tool shows it."""

    sample_id: str
    review_rank: int  # 1 = the first card
    given_label: str
    suggested_label: str | None  # fercure's suggestion (None: it has none)
    score: float | None  # the queue's key: low = the given label is likely wrong (None: unscored)
    action: str  # what fercure's export does with the sample
    width: int
    height: int
    suffix: str = ".png"

    @property
    def image(self) -> str:
        """The image's path inside the export."""
        return f"{IMAGES}/{self.review_rank:06d}_{self.sample_id}_{label_tag(self.given_label)}{self.suffix}"


# ---------------------------------------------------------------------------------------------
# Out


def choices(classes: Sequence[str]) -> list[str]:
    """The choices a reviewer has: every class, then ``DROP`` (unless a class is named so)."""
    names = [str(c) for c in classes]
    return names + ([DROP] if DROP not in names else [])


def label_config(classes: Sequence[str]) -> str:
    """Label Studio's labelling config for the tasks: the image and one choice among ``choices``."""
    view = ET.Element("View")
    ET.SubElement(view, "Header", value=f"${NOTE}", size="5")  # a Header shows static text or one data field
    ET.SubElement(view, "Image", name=TO_NAME, value=f"${TO_NAME}")
    box = ET.SubElement(view, "Choices", name=FROM_NAME, toName=TO_NAME, choice="single-radio", showInline="true")
    for c in choices(classes):
        # the alias is what the annotation records; the value is what the reviewer reads
        ET.SubElement(box, "Choice", **({"value": DROP_SHOWN, "alias": DROP} if c == DROP else {"value": c}))
    ET.indent(view)
    return ET.tostring(view, encoding="unicode") + "\n"


def label_studio_tasks(cards: Sequence[Card], *, image_url: str, model_version: str) -> list[dict]:
    """Label Studio tasks, one per card: ``data`` for the page and for reading the export back, and
    fercure's suggestion as a prediction (no prediction without a suggestion)."""
    tasks = []
    for c in cards:
        note = f"#{c.review_rank} · given: {c.given_label} · fercure: {c.action}" + (
            f" → {c.suggested_label}" if c.suggested_label not in (None, c.given_label) else "")
        task: dict = {"data": {TO_NAME: image_url + c.image, "sample_id": c.sample_id, "given_label": c.given_label,
                               "review_rank": c.review_rank, "fercure_action": c.action,
                               "fercure_suggestion": c.suggested_label, NOTE: note}}
        if c.suggested_label is not None:
            pred: dict = {"model_version": model_version,
                          "result": [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices",
                                      "value": {"choices": [c.suggested_label]}}]}
            if c.score is not None:
                pred["score"] = c.score
            task["predictions"] = [pred]
        tasks.append(task)
    return tasks


def cvat_labels(classes: Sequence[str]) -> list[dict]:
    """The labels for CVAT's label constructor (Raw): one per ``choices`` entry."""
    return [{"name": c, "attributes": []} for c in choices(classes)]


def cvat_annotations(cards: Sequence[Card], classes: Sequence[str], *, name: str) -> bytes:
    """CVAT for images 1.1: the task's labels and each card's image with its given label as a tag."""
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    task = ET.SubElement(ET.SubElement(root, "meta"), "task")
    ET.SubElement(task, "name").text = name
    ET.SubElement(task, "size").text = str(len(cards))
    ET.SubElement(task, "mode").text = "annotation"
    labels = ET.SubElement(task, "labels")
    for c in choices(classes):
        label = ET.SubElement(labels, "label")
        ET.SubElement(label, "name").text = c
        ET.SubElement(label, "attributes")
    for i, c in enumerate(cards):
        image = ET.SubElement(root, "image", id=str(i), name=Path(c.image).name, width=str(c.width),
                              height=str(c.height))
        ET.SubElement(image, "tag", label=c.given_label, source="auto")  # written by fercure, not a person
    ET.indent(root)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="utf-8",
                                                                      xml_declaration=False) + b"\n"


# ---------------------------------------------------------------------------------------------
# In


@dataclass(frozen=True)
class ToolDecision:
    """One task (Label Studio) or image (CVAT) of a tool's export."""

    where: str  # "task 12" / "image 3": how the problem list names it
    sample_id: str = ""
    choice: str = ""  # the class chosen, or DROP
    given_label: str = ""  # the label at export ("" when the export does not say)
    given_tag: str = ""  # label_tag of the label at export (CVAT)
    problem: str = ""  # why this is no decision ("" when it is one)

    def record(self) -> tuple[str, dict]:
        """The row as ``fercure.decisions.parse`` reads it."""
        if self.problem:
            return self.where, {"_problem": self.problem}
        rec = {"sample_id": self.sample_id, "given_label": self.given_label, "given_tag": self.given_tag}
        if self.choice == DROP:
            return self.where, {**rec, "action": "drop"}
        return self.where, {**rec, "action": "relabel", "label": self.choice}


def is_xml(text: str) -> bool:
    """Whether ``text`` is XML (a CVAT export, or XML of another kind ``read_cvat`` names)."""
    return text.lstrip("\ufeff \t\r\n").startswith("<")


def is_label_studio(data) -> bool:
    """Whether parsed JSON is a list of Label Studio tasks: objects with a ``data`` object (an export
    adds ``annotations``, ``completions`` before Label Studio 1.0). The report's own JSON is a list
    of flat decisions, or ``{"decisions": [...]}``."""
    return isinstance(data, list) and any(isinstance(t, dict) and isinstance(t.get("data"), dict) for t in data)


# the task fields fercure writes: a file whose rows carry them at the top level is Label Studio's
# JSON-MIN or CSV export, which flattens each task (and keeps one annotation of several)
_OWN_FIELDS = {"sample_id", "review_rank", "fercure_action"}


def flattened_tasks_error(path: Path, keys) -> HandoffFileError | None:
    """The error for a flattened export of fercure's tasks (``keys``: a row's fields), else None."""
    if not _OWN_FIELDS <= {str(k).strip().lower() for k in keys}:
        return None
    return HandoffFileError(f"{path} holds Label Studio tasks flattened (its JSON-MIN or CSV export), which keeps "
                            "one annotation per task and drops skipped ones; fercure reads the full JSON export. In "
                            "Label Studio: Export → JSON, and pass that file.")


def _agreed(where: str, sid: str, given: str, tag: str, picks: list[list[str]], tool: str) -> ToolDecision:
    """One decision from the annotations of a task or image: each a list of the labels it chose."""
    chosen = {tuple(p) for p in picks if p}
    base = {"where": where, "sample_id": sid, "given_label": given, "given_tag": tag}
    if not chosen:
        return ToolDecision(**base, problem=f"sample {sid} has no annotation in the {tool} export (not reviewed, or "
                                           "skipped); skipped. Annotate it, or leave it for a later round.")
    if len(chosen) > 1 or len(next(iter(chosen))) != 1:
        shown = " / ".join(", ".join(p) for p in sorted(chosen))
        return ToolDecision(**base, problem=f"sample {sid} has annotations that disagree ({shown}); skipped. Resolve "
                                           f"them in {tool} to one label, export again and run again.")
    return ToolDecision(**base, choice=next(iter(chosen))[0])


def _text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def read_label_studio(path: Path, tasks: list) -> list[ToolDecision]:
    """Label Studio's JSON export: per task, the choices of its annotations (cancelled or empty ones,
    and results of controls other than the config's ``FROM_NAME``, do not count)."""
    if not any(isinstance(t, dict) and ("annotations" in t or "completions" in t) for t in tasks):
        raise HandoffFileError(f"{path} holds Label Studio tasks without annotations (the {TASKS} fercure writes for "
                               "import?); pass Label Studio's export of the reviewed project (Export → JSON).")
    out = []
    for i, task in enumerate(tasks, start=1):
        where = f"task {_text(task.get('id'))[:40] or i}" if isinstance(task, dict) else f"entry {i}"
        data = task.get("data") if isinstance(task, dict) else None
        sid = _text(data.get("sample_id")) if isinstance(data, dict) else ""
        if not sid:
            out.append(ToolDecision(where, problem="no data.sample_id: not a task fercure exported; skipped. Import "
                                                   f"the {TASKS} of `export-cleaned --format label-studio`."))
            continue
        picks = []
        anns = task.get("annotations", task.get("completions")) or []
        for ann in anns if isinstance(anns, list) else []:
            if not isinstance(ann, dict) or ann.get("was_cancelled"):
                continue
            labels = []
            for r in ann.get("result") or []:
                if isinstance(r, dict) and r.get("type") == "choices" and r.get("from_name") == FROM_NAME \
                        and isinstance(r.get("value"), dict):
                    labels += [_text(c) for c in r["value"].get("choices") or []]
            picks.append(labels)
        out.append(_agreed(where, sid, _text(data.get("given_label")), "", picks, "Label Studio"))
    return out


_NAME = re.compile(r"(?P<rank>\d+)_(?P<sid>.+)_(?P<tag>[0-9a-f]{8})\.[A-Za-z0-9]+")


def read_cvat(path: Path, text: str) -> list[ToolDecision]:
    """CVAT for images 1.1 XML: per image, the labels of its tags (shapes are not decisions)."""
    if re.search(r"<!(DOCTYPE|ENTITY)", text):  # before the parser sees them (entity expansion)
        raise HandoffFileError(f"{path} declares a DTD or entities; a CVAT export has none, and fercure does not "
                               "expand them. Export the annotations from CVAT again (CVAT for images 1.1).")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise HandoffFileError(f"{path} is not well-formed XML ({e}); export the annotations from CVAT again "
                               "(CVAT for images 1.1).") from None
    if root.tag != "annotations":
        raise HandoffFileError(f"{path}: the XML's root is <{root.tag}>, not CVAT's <annotations>.")
    images = root.findall("image")
    if not images and root.findall("track"):
        raise HandoffFileError(f"{path} is a CVAT for video export (tracks, no images); export the task as CVAT for "
                               "images 1.1.")
    out = []
    for i, image in enumerate(images, start=1):
        name = Path(_text(image.get("name")).replace("\\", "/")).name
        where = f"image {_text(image.get('id')) or i} ({name[:80]})"
        m = _NAME.fullmatch(name)
        if not m:
            out.append(ToolDecision(where, problem="the image name is not one fercure exported "
                                                   "(<rank>_<sample_id>_<tag>.<ext>); skipped. Create the CVAT task "
                                                   f"from the {IMAGES}/ folder of `export-cleaned --format cvat`."))
            continue
        picks = [[_text(t.get("label"))] for t in image.findall("tag")]
        out.append(_agreed(where, m["sid"], "", m["tag"], picks, "CVAT"))
    return out
