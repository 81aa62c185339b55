"""Structured clinical messages as the findings reader's text: each observation as a "name: value" line.

Hospitals send dermoscopy findings as structured messages as often as prose: HL7 v2 result messages (OBX segments),
FHIR Observation resources (JSON) and delimited exports (a spreadsheet's header row over its rows). Read as prose,
their labels are criteria's names with no value ("OBX|3|CWE|BWV^Blue-whitish veil^L||N^Absent^HL70136" names the veil
whatever it says of it), so :func:`~monai_cir.data.report.read_findings` first asks :func:`message_text` for the
message written the way a clinician writes a form, one observation a line ("Blue-whitish veil: Absent"), and reads
that. A message's own words say which observations stand: a result's status (preliminary, entered in error, not
final: left out), a correction (it replaces what it corrects), a value left out ("dataAbsentReason") and observations
of several lesions (several HL7 sub-IDs, several rows: none of them is read, since which one the image shows the
message does not say). Free-text notes (HL7 NTE, FHIR ``note``) are kept as lines of their own.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

__all__ = ["message_text"]

# HL7 v2 result statuses (table 0085) whose values stand: final, corrected, changed to final. The others are
# preliminary, pending, not verified, partial, wrong, deleted, cannot be obtained or not asked: not read
_HL7_STANDING = frozenset({"F", "C", "U", ""})
_HL7_SEGMENT_RE = re.compile(r"^[ \t]*([A-Z][A-Z0-9]{2})\|")
_HL7_CODED_TYPES = frozenset({"CWE", "CE", "CNE", "CF"})

# FHIR Observation statuses whose values stand
_FHIR_STANDING = frozenset({"final", "amended", "corrected"})

# a delimited export's column names that name a criterion (as clinicians' forms and exports abbreviate them)
_COLUMN_NAMES = frozenset({
    "pn", "network", "pigment network", "st", "streaks", "pig", "pigmentation", "blotch", "rs", "regression",
    "regression structures", "dg", "d/g", "dots", "globules", "dots and globules", "dots/globules", "bwv", "veil",
    "blue-whitish veil", "blue-white veil", "blue white veil", "vs", "vessels", "vascular structures",
})
_HEADER_CELL_RE = re.compile(r"[ \t]*[a-z][\w.#/&-]*(?:[ \t]+[\w.#/&-]+){0,2}[ \t]*")
_HEADER_VALUE_RE = re.compile(r"(?<![\w-])(?:absent|present|yes|no|none|nil|seen|typical|atypical|regular|irregular)(?![\w-])")


def message_text(text: str) -> str | None:
    """``text`` with the structured message it holds (HL7 v2 OBX segments, a FHIR Observation, a delimited export's
    header and rows) written as "name: value" lines and its notes as lines of their own; None where it holds none."""
    for rewrite in (_hl7_v2_text, _fhir_text, _delimited_table_text):
        if (rewritten := rewrite(text)) is not None:
            return rewritten
    return None


def _component(field: str, index: int) -> str:
    parts = field.split("^")
    return parts[index].strip() if index < len(parts) else ""


def _hl7_v2_text(text: str) -> str | None:
    """HL7 v2 segments: each standing OBX as "OBX-3's text: OBX-5's value" (a correction, status C, replaces the
    observation it corrects: same OBX-3 code and sub-ID), NTE comments as lines, the other segments (MSH, PID, OBR ...)
    left out; OBX of several sub-IDs (several lesions or images) are none of them read. Lines that are no segment are
    kept."""
    lines = text.splitlines()
    segments = [_HL7_SEGMENT_RE.match(line) for line in lines]
    if not any(m is not None and m.group(1) == "OBX" for m in segments):
        return None
    observations: dict[tuple[str, str], str] = {}
    sub_ids = set()
    kept: list[str | tuple[str, str]] = []
    for line, segment in zip(lines, segments):
        if segment is None:
            kept.append(line)
            continue
        fields = line.strip().split("|") + [""] * 12
        if segment.group(1) == "NTE":
            kept.append(fields[3].strip())
        if segment.group(1) != "OBX":
            continue
        name = _component(fields[3], 1) or _component(fields[3], 0)
        key = (_component(fields[3], 0) or name, fields[4].strip())
        # the status, OBX-11, or OBX-10 where OBX-11 is empty (a field short by one, as hand-made messages have it)
        status = (fields[11].strip() or fields[10].strip()).upper()
        if status not in _HL7_STANDING:
            if status in ("W", "D") and key in observations:
                observations[key] = ""  # (posted in error, or deleted: what it was posted as is not read)
            continue
        value = (_component(fields[5], 1) or _component(fields[5], 0)) if fields[2].strip().upper() in _HL7_CODED_TYPES else fields[5].strip()
        if not name or not value:
            continue
        sub_ids.add(key[1])
        if key not in observations:
            kept.append(key)
        observations[key] = f"{name}: {value}"  # (a later one, a correction, replaces it in place)
    several = len(sub_ids - {""}) > 1  # (several lesions or images: none of the observations is read)
    lines = []
    for item in kept:
        if isinstance(item, tuple):
            if several:
                continue
            item = observations[item]
        if item:
            lines.append(item)
    return "\n".join(lines)


def _fhir_value(element: dict[str, Any]) -> str | None:
    """An Observation's or a component's value as words ("absent" for ``valueBoolean: false``); None where it has none."""
    if "valueBoolean" in element:
        return "present" if element["valueBoolean"] else "absent"
    if isinstance(concept := element.get("valueCodeableConcept"), dict):
        return _fhir_concept(concept)
    for key in ("valueString", "valueInteger"):
        if element.get(key) not in (None, ""):
            return str(element[key])
    if isinstance(quantity := element.get("valueQuantity"), dict) and "value" in quantity:
        return str(quantity["value"])
    return None


def _fhir_concept(concept: dict[str, Any]) -> str | None:
    """A CodeableConcept's words: its text, else its first coding's display, else that coding's code."""
    if concept.get("text"):
        return str(concept["text"])
    for coding in concept.get("coding") or []:
        if isinstance(coding, dict) and (coding.get("display") or coding.get("code")):
            return str(coding.get("display") or coding.get("code"))
    return None


def _fhir_text(text: str) -> str | None:
    """A FHIR Observation (JSON): where its status stands, its value and each component's as "code: value" lines (a
    component with a ``dataAbsentReason`` and no value is left out), its members' displays and its notes as lines;
    nothing where it does not (preliminary, entered in error, cancelled). Not an Observation, or not JSON: None."""
    stripped = text.strip()
    if not stripped.startswith("{"):
        return None
    try:
        resource = json.loads(stripped)
    except ValueError:
        return None
    if not isinstance(resource, dict) or resource.get("resourceType") != "Observation":
        return None
    if resource.get("status") not in _FHIR_STANDING:
        return ""
    lines = []
    for element in [resource] + [c for c in resource.get("component") or [] if isinstance(c, dict)]:
        name = _fhir_concept(element["code"]) if isinstance(element.get("code"), dict) else None
        if (value := _fhir_value(element)) is not None:
            lines.append(f"{name}: {value}" if name else value)  # (a value with no code of its own: its words alone)
    # the panel's members as the message names them ("Regression: white scar-like areas"), and its notes
    lines += [str(member["display"]) for member in resource.get("hasMember") or [] if isinstance(member, dict) and member.get("display")]
    lines += [str(note["text"]) for note in resource.get("note") or [] if isinstance(note, dict) and note.get("text")]
    return "\n".join(lines)


def _delimited_table_text(text: str) -> str | None:
    """A delimited export (";", "," or tab), a header row naming two or more criteria (:data:`_COLUMN_NAMES`) over its
    rows: one row as its "header: value" lines (empty cells left out); several rows, or none, left out. The text's
    other lines are kept. Without such a header: None."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        lowered = line.lower()
        for sep in (";", ",", "\t"):
            cells = lowered.split(sep)
            if (len(cells) < 3 or sum(c.strip() in _COLUMN_NAMES for c in cells) < 2
                    or not all(_HEADER_CELL_RE.fullmatch(c) and not _HEADER_VALUE_RE.search(c) for c in cells)):
                continue
            rows = list(itertools.takewhile(lambda row: row.count(sep) == len(cells) - 1, lines[i + 1:]))
            header = line.split(sep)
            read = [f"{name.strip()}: {value.strip()}" for name, value in zip(header, rows[0].split(sep)) if value.strip()] if len(rows) == 1 else []
            return "\n".join(lines[:i] + read + lines[i + 1 + len(rows):])
    return None
