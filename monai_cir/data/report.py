"""The "meta report template": a case's 7-point criteria and elevation / location / sex as a short
clinical report, the text half of a composed query (paper section 3.1, DESIGN.md section 3); and
the other ways clinicians write the same findings (:func:`render_report` for evaluation,
:func:`augment_report` for training).

The report describes what a dermatologist sees and notes; it NEVER contains the diagnosis or the
management (excision, follow-up...), which would leak the retrieval label. :data:`FORBIDDEN_WORDS`
lists the words the tests check for.

Example (Derm7pt case 701)::

    Palpable lesion on the chest of a female patient. Dermoscopy: atypical pigment network;
    irregular streaks; diffuse irregular pigmentation; regression structures (blue and white areas);
    irregular dots and globules; no blue-whitish veil; no vascular structures.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import re
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .messages import message_text
from .sites import DERM7PT_LOCATION_TO_SITE

__all__ = [
    "CRITERIA",
    "FORBIDDEN_WORDS",
    "HELD_OUT_STYLES",
    "MAX_READ_CHARS",
    "TEXT_FORMS",
    "TRAINING_STYLES",
    "ReportFields",
    "WordingStyle",
    "augment_report",
    "case_generator",
    "findings_report",
    "meta_report",
    "recognised_findings",
    "read_findings",
    "query_text",
    "CRITERION_VALUES",
    "SEVERAL_LESIONS_NOTICE",
    "TEXT_NOT_USED_NOTICE",
    "describes_several_lesions",
    "finding_names",
    "text_use_notice",
    "render_report",
    "render_reports",
    "report_fields",
]

# The seven criteria of the 7-point checklist, in Derm7pt's column order, with their report phrase.
CRITERIA: tuple[tuple[str, str], ...] = (
    ("pigment_network", "pigment network"),
    ("streaks", "streaks"),
    ("pigmentation", "pigmentation"),
    ("regression_structures", "regression structures"),
    ("dots_and_globules", "dots and globules"),
    ("blue_whitish_veil", "blue-whitish veil"),
    ("vascular_structures", "vascular structures"),
)

# Words that would reveal the label (diagnoses of the 3 classes and the other Derm7pt diagnoses,
# and the management column). Used by the tests; never produced by the template.
FORBIDDEN_WORDS: tuple[str, ...] = (
    "melanoma", "nevus", "naevus", "keratosis", "seborrheic", "melanosis", "lentigo", "carcinoma",
    "dermatofibroma", "malignant", "benign", "excision", "follow up", "follow-up", "further examination",
    "metastasis", "spitz", "clark",
)

_LOCATION_PHRASE = {"head neck": "head or neck", "genital areas": "genital area", "acral": "acral skin"}


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


def _criterion(value: Any, phrase: str) -> str | None:
    """One criterion as a phrase: ``absent`` -> ``no <phrase>``; ``present`` -> ``<phrase> present``;
    a grade (``typical``, ``irregular``, ``blue areas``...) -> ``<grade> <phrase>``."""
    if _missing(value):
        return None
    value = str(value).strip().lower()
    if value == "absent":
        return f"no {phrase}"
    if value == "present":
        return f"{phrase} present"
    if phrase == "regression structures":  # "blue areas", "white areas", "combinations"
        return f"regression structures ({value})" if value != "combinations" else "regression structures (blue and white areas)"
    if phrase == "vascular structures":
        return f"vascular structures {value}" if value.startswith("within") else f"{value} vascular structures"
    return f"{value} {phrase}"


def meta_report(case: Mapping[str, Any]) -> str:
    """Render the clinical report of one case.

    Args:
        case: a mapping with any of the 7-point criteria columns of Derm7pt's ``meta.csv``
            (:data:`CRITERIA` keys) and ``elevation``, ``location``, ``sex``. Missing values are left
            out of the sentence. ``diagnosis``, ``management`` and every other key are ignored on
            purpose: they leak the label.

    Returns:
        Two sentences: the clinical context (elevation, location, sex), then the dermoscopic
        criteria. An empty string when the case has none of these fields.
    """
    elevation, location, sex = (None if _missing(case.get(k)) else str(case.get(k)).strip().lower() for k in ("elevation", "location", "sex"))
    first = f"{elevation.capitalize()} lesion" if elevation else "Lesion"
    if location:
        first += f" on the {_LOCATION_PHRASE.get(location, location)}"
    if sex:
        first += f" of a {sex} patient"
    findings = [p for p in (_criterion(case.get(key), phrase) for key, phrase in CRITERIA) if p]
    if not findings and not (elevation or location or sex):
        return ""
    text = first + "."
    if findings:
        text += " Dermoscopy: " + "; ".join(findings) + "."
    return text


# ------------------------------------------------------------------------------------------------
# Text as clinicians write it: evaluation forms and training augmentation
# ------------------------------------------------------------------------------------------------
# Real reports are not the template: findings come in any order and wording, partly, as coded SR
# items, or not at all (issue 13). Training draws from TRAINING_STYLES; the evaluation form
# "reworded" draws from HELD_OUT_STYLES, whose vocabulary (criterion nouns, negations, context
# words) never occurs in a training text, so "reworded" measures wording the network has not seen.
# The findings reader knows three of its nouns, the checklist's own words ("radial streaming",
# "blotches", "bluish-white veil": CLINICAL_SYNONYMS), and "negative for"; the other four it does not,
# so "reworded" measures a report the reader reads in part: three findings and no context (its context
# words are held out too), which the diagnosis prior's probes are fitted on (fit_diagnosis_prior).

TEXT_FORMS: tuple[str, ...] = ("template", "reworded", "partial", "demographics", "empty", "restyled", "findings_only")

_AGE_KEYS = ("age_approx", "age")


@dataclass(frozen=True)
class ReportFields:
    """What a report may say about one case, normalised (lower case, ``None`` when not recorded).

    ``criteria`` holds the recorded 7-point criteria as ``(key, value)`` pairs in :data:`CRITERIA`
    order (``absent`` included: "no streaks" is a finding). There is no field for the diagnosis or
    the management: no form can write them."""

    criteria: tuple[tuple[str, str], ...] = ()
    elevation: str | None = None
    location: str | None = None
    sex: str | None = None
    age: int | None = None

    def demographics(self) -> ReportFields:
        """Age, sex and site only."""
        return ReportFields(location=self.location, sex=self.sex, age=self.age)


def _value(source: Mapping[str, Any], key: str) -> str | None:
    value = source.get(key)
    return None if _missing(value) else str(value).strip().lower()


def report_fields(record: Any) -> ReportFields:
    """The :class:`ReportFields` of a :class:`~monai_cir.data.collections.CaseRecord` (read from its
    ``metadata``; its ``site`` when there is no ``location``) or of a mapping of Derm7pt / ISIC columns."""
    source = getattr(record, "metadata", None)
    if source is None:
        source = record if isinstance(record, Mapping) else {}
    criteria = tuple((key, value) for key, _ in CRITERIA if (value := _value(source, key)) is not None)
    location = _value(source, "location")
    site = str(getattr(record, "site", "") or "").strip().lower()
    if location is None and site not in ("", "unknown"):
        location = site
    age = None
    for key in _AGE_KEYS:
        raw = _value(source, key)
        if raw is not None:
            try:
                age = int(float(raw))
            except ValueError:
                pass  # "85+", "unknown": no age rather than a wrong one
            break
    return ReportFields(criteria, _value(source, "elevation"), location, _value(source, "sex"), age)


def _join_context(*parts: str | None, sep: str = ", ") -> str:
    return sep.join(p for p in parts if p)


@dataclass(frozen=True)
class WordingStyle:
    """One way of writing a report.

    A finding is written with ``absent`` / ``present`` / ``graded`` (``"{grade} {name}"``) or
    ``qualified`` (for grades that follow the noun: regression "blue areas", vessels "within
    regression"), with ``names`` (criterion key -> noun) and ``grades`` (grade rewrites, e.g.
    ``atypical`` -> ``atyp.``). ``negatives`` (optional) gathers the absent findings into one clause
    (``"without {names}"``). The findings text is ``header`` + findings joined by ``joiner`` + ``end``;
    ``context(fields, with_elevation)`` writes elevation / location / sex / age."""

    name: str
    names: Mapping[str, str]
    absent: str
    present: str
    graded: str
    qualified: str
    header: str
    joiner: str
    context: Callable[[ReportFields, bool], str]
    end: str = ""
    grades: Mapping[str, str] = field(default_factory=dict)
    negatives: str | None = None
    capitalize: bool = False

    def finding(self, key: str, value: str) -> str:
        noun = self.names[key]
        if value == "absent":
            text = self.absent.format(name=noun)
        elif value == "present":
            text = self.present.format(name=noun)
        else:
            grade = "blue and white areas" if value == "combinations" else value  # Derm7pt's "combinations"
            pattern = self.qualified if key == "regression_structures" or grade.startswith("within") else self.graded
            text = pattern.format(name=noun, grade=self.grades.get(grade, grade))
        return text[:1].upper() + text[1:] if self.capitalize else text

    def findings(self, criteria: Sequence[tuple[str, str]]) -> str:
        if not criteria:
            return ""
        if self.negatives is None:
            parts = [self.finding(k, v) for k, v in criteria]
        else:
            parts = [self.finding(k, v) for k, v in criteria if v != "absent"]
            absent = [self.names[k] for k, v in criteria if v == "absent"]
            if absent:
                parts.append(self.negatives.format(names=absent[0] if len(absent) == 1 else ", ".join(absent[:-1]) + " or " + absent[-1]))
        return self.header + self.joiner.join(parts) + self.end

    def render(self, fields: ReportFields, criteria: Sequence[tuple[str, str]] | None = None, with_context: bool = True,
               with_elevation: bool = True) -> str:
        """The context, then the findings (``criteria``, default all of ``fields``, in the given order)."""
        context = self.context(fields, with_elevation) if with_context else ""
        findings = self.findings(fields.criteria if criteria is None else criteria)
        return ("\n" if "\n" in self.joiner else " ").join(p for p in (context, findings) if p)


def _location(fields: ReportFields, form: str) -> str | None:
    return form.format(_LOCATION_PHRASE.get(fields.location, fields.location)) if fields.location else None


def _sentence(fields: ReportFields, elevation: bool) -> str:
    # "Palpable lesion on the back, female patient, aged 45."
    head = f"{fields.elevation} lesion" if elevation and fields.elevation else ("lesion" if fields.location else None)
    if fields.location:
        head = f"{head} {_location(fields, 'on the {}')}"
    text = _join_context(head, f"{fields.sex} patient" if fields.sex else None, f"aged {fields.age}" if fields.age is not None else None)
    return (text[:1].upper() + text[1:] + ".") if text else ""


def _key_values(fields: ReportFields, elevation: bool) -> str:
    # "sex: female, age: 45, site: back, elevation: palpable"
    return _join_context(
        f"sex: {fields.sex}" if fields.sex else None, f"age: {fields.age}" if fields.age is not None else None,
        _location(fields, "site: {}"), f"elevation: {fields.elevation}" if elevation and fields.elevation else None,
    )


def _abbreviated(fields: ReportFields, elevation: bool) -> str:
    # "45y F, back, palpable."
    who = _join_context(f"{fields.age}y" if fields.age is not None else None, {"female": "F", "male": "M"}.get(fields.sex, fields.sex), sep=" ")
    text = _join_context(who, _location(fields, "{}"), fields.elevation if elevation else None)
    return text + "." if text else ""


def _prose(fields: ReportFields, elevation: bool) -> str:
    # "Female patient aged 45 with a palpable lesion on the back."
    who = _join_context(f"{fields.sex} patient" if fields.sex else "patient", f"aged {fields.age}" if fields.age is not None else None, sep=" ")
    lesion = _join_context("with a", fields.elevation if elevation else None, "lesion", _location(fields, "on the {}"), sep=" ")
    if not (fields.sex or fields.age is not None or fields.location or (elevation and fields.elevation)):
        return ""
    return f"{who[:1].upper()}{who[1:]} {lesion}."


_HELD_OUT_PEOPLE = {"female": "woman", "male": "man"}
_HELD_OUT_ELEVATIONS = {"flat": "macular", "palpable": "raised", "nodular": "nodular"}


def _held_out_narrative(fields: ReportFields, elevation: bool) -> str:
    # "A woman of 45 years presenting a raised lesion of the back."
    if not (fields.sex or fields.age is not None or fields.location or (elevation and fields.elevation)):
        return ""
    who = _join_context("A", _HELD_OUT_PEOPLE.get(fields.sex, fields.sex) if fields.sex else "person",
                        f"of {fields.age} years" if fields.age is not None else None, sep=" ")
    lesion = _join_context(_HELD_OUT_ELEVATIONS.get(fields.elevation, fields.elevation) if elevation and fields.elevation else None,
                           "lesion", _location(fields, "of the {}"), sep=" ")
    return f"{who} presenting a {lesion}."


def _held_out_located(fields: ReportFields, elevation: bool) -> str:
    # "Lesion located at the back in a woman of 45 years, raised."
    if not (fields.sex or fields.age is not None or fields.location or (elevation and fields.elevation)):
        return ""
    who = _join_context("in a", _HELD_OUT_PEOPLE.get(fields.sex, fields.sex) if fields.sex else "person",
                        f"of {fields.age} years" if fields.age is not None else None, sep=" ")
    head = _join_context("Lesion", _location(fields, "located at the {}"), who, sep=" ")
    return _join_context(head, _HELD_OUT_ELEVATIONS.get(fields.elevation, fields.elevation) if elevation and fields.elevation else None) + "."


_NOUNS = dict(CRITERIA)
_ABBREVIATIONS = {
    "pigment_network": "PN", "streaks": "streaks", "pigmentation": "pigm.", "regression_structures": "regression",
    "dots_and_globules": "D/G", "blue_whitish_veil": "BWV", "vascular_structures": "vessels",
}
# Held-out vocabulary: synonyms dermatologists use that no training style writes.
_HELD_OUT_NOUNS = {
    "pigment_network": "reticular pattern", "streaks": "radial streaming", "pigmentation": "blotches",
    "regression_structures": "regressive areas", "dots_and_globules": "globular elements",
    "blue_whitish_veil": "bluish-white veil", "vascular_structures": "vasculature",
}
_HELD_OUT_GRADES = {"typical": "regular", "atypical": "irregular", "within regression": "within regressive areas",
                    "blue and white areas": "bluish and whitish zones", "blue areas": "bluish zones", "white areas": "whitish zones"}

TRAINING_STYLES: dict[str, WordingStyle] = {
    style.name: style
    for style in (
        # one sentence per finding: "Atypical pigment network. No streaks. Blue-whitish veil present."
        WordingStyle("sentences", _NOUNS, absent="no {name}", present="{name} present", graded="{grade} {name}",
                     qualified="{name} ({grade})", header="", joiner=". ", end=".", context=_sentence, capitalize=True),
        # a list: "Dermoscopic findings:\n- pigment network: atypical\n- streaks: absent"
        WordingStyle("list", _NOUNS, absent="{name}: absent", present="{name}: present", graded="{name}: {grade}",
                     qualified="{name}: {grade}", header="Dermoscopic findings:\n- ", joiner="\n- ", context=_key_values),
        # the 7-point checklist in abbreviations: "7PCL: atyp. PN, streaks -, BWV +"
        WordingStyle("abbreviated", _ABBREVIATIONS, absent="{name} -", present="{name} +", graded="{grade} {name}",
                     qualified="{name} {grade}", header="7PCL: ", joiner=", ", context=_abbreviated,
                     grades={"typical": "typ.", "atypical": "atyp.", "regular": "reg.", "irregular": "irreg."}),
        # prose with the absent findings in one clause: "Dermoscopy shows atypical pigment network, without streaks or BWV."
        WordingStyle("prose", _NOUNS, absent="no {name}", present="{name}", graded="{grade} {name}",
                     qualified="{name} with {grade}", header="Dermoscopy shows ", joiner=", ", end=".",
                     negatives="without {names}", context=_prose),
        # coded SR findings as monai_cir.dicom.reader.read_sr_text writes them: "<concept>: <meaning>" lines
        WordingStyle("sr_coded", {k: v[:1].upper() + v[1:] for k, v in _NOUNS.items()}, absent="{name}: absent",
                     present="{name}: present", graded="{name}: {grade}", qualified="{name}: {grade}", header="",
                     joiner="\n", context=_key_values),
    )
}
"""Wording styles of :func:`augment_report` (training), besides the template itself (:func:`meta_report`)."""

HELD_OUT_STYLES: dict[str, WordingStyle] = {
    style.name: style
    for style in (
        # "On dermoscopy: irregular reticular pattern, radial streaming not seen, bluish-white veil seen."
        WordingStyle("held_out_not_seen", _HELD_OUT_NOUNS, absent="{name} not seen", present="{name} seen",
                     graded="{grade} {name}", qualified="{name} with {grade}", header="On dermoscopy: ", joiner=", ", end=".",
                     grades=_HELD_OUT_GRADES, context=_held_out_narrative),
        # "Examination: reticular pattern irregular; negative for radial streaming; bluish-white veil observed."
        WordingStyle("held_out_negative_for", _HELD_OUT_NOUNS, absent="negative for {name}", present="{name} observed",
                     graded="{name} {grade}", qualified="{name} {grade}", header="Examination: ", joiner="; ", end=".",
                     grades=_HELD_OUT_GRADES, context=_held_out_located),
    )
}
"""Wording styles held out of training: only the ``reworded`` evaluation form writes them."""


def _generator(rng: np.random.Generator | int) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _template_fields(fields: ReportFields, criteria: Sequence[tuple[str, str]] | None = None, elevation: bool = True) -> dict[str, Any]:
    row: dict[str, Any] = dict(fields.criteria if criteria is None else criteria)
    row.update(location=fields.location, sex=fields.sex, elevation=fields.elevation if elevation else None)
    return row


def _template_demographics(fields: ReportFields) -> str:
    # the template's context sentence, with the age when known: "Lesion on the back of a female patient, about 55 years old."
    text = meta_report(_template_fields(fields, (), elevation=False))
    if fields.age is not None:
        text = (text[:-1] + f", about {fields.age} years old.") if text else f"Patient about {fields.age} years old."
    return text


def render_report(record: Any, form: str, rng: np.random.Generator | int) -> str:
    """The query text of one case in one evaluation form (``monai-cir evaluate --text-forms``).

    Forms (:data:`TEXT_FORMS`):

    - ``template``: today's text, unchanged: ``record.text`` for a
      :class:`~monai_cir.data.collections.CaseRecord` (:func:`meta_report` for Derm7pt, age and sex
      for ISIC), :func:`meta_report` for a mapping of columns.
    - ``reworded``: every recorded field in a style of :data:`HELD_OUT_STYLES` (drawn with ``rng``),
      i.e. wording never used in training.
    - ``partial``: the template with a random 1-4 of the recorded criteria (at most as many as
      recorded; the context sentence kept). A case with no criteria gives its template.
    - ``demographics``: age, sex and site only, in the template's words.
    - ``empty``: ``""`` (the image-only query).
    - ``restyled``: every recorded field in a style of :data:`TRAINING_STYLES` (drawn with ``rng``):
      abbreviations ("7PCL: atyp. PN, streaks -, BWV +"), a list, sentences, prose, or coded SR lines
      (without context, as the SR reader writes them): the words the findings gate reads, not the template's.
    - ``findings_only``: a random 1-4 of the recorded criteria in the template's words and no context
      ("Lesion. Dermoscopy: irregular streaks; blue-whitish veil."): what the findings gate gives the
      network for a clinician's "BWV present, irregular streaks" (no age, sex, site or elevation). A case
      with no criteria gives ``""``.

    Only the structured fields (:func:`report_fields`) are rewritten: a user's record whose text is
    free prose with no such fields gives ``""`` for ``reworded`` and ``demographics``.

    Args:
        record: a ``CaseRecord`` or a mapping of Derm7pt / ISIC columns.
        form: one of :data:`TEXT_FORMS`.
        rng: a ``numpy.random.Generator`` (or a seed); the text is a function of the record and the
            generator's state. :func:`render_reports` seeds one per case (:func:`case_generator`).
    """
    if form not in TEXT_FORMS:
        raise ValueError(f"unknown text form {form!r}; choose one of {list(TEXT_FORMS)}")
    rng = _generator(rng)
    fields = report_fields(record)
    if form == "template":
        text = getattr(record, "text", None)
        return text if isinstance(text, str) else meta_report(_template_fields(fields))
    if form == "empty":
        return ""
    if form == "demographics":
        return _template_demographics(fields)
    if form == "reworded":
        names = sorted(HELD_OUT_STYLES)
        return HELD_OUT_STYLES[names[int(rng.integers(len(names)))]].render(fields)
    if form == "restyled":
        names = sorted(TRAINING_STYLES)
        name = names[int(rng.integers(len(names)))]
        return TRAINING_STYLES[name].render(fields, with_context=name != "sr_coded")  # coded SR lines carry no context
    # partial, findings_only: a random 1-4 of the recorded criteria, with the context sentence or without
    if not fields.criteria:
        return render_report(record, "template", rng) if form == "partial" else ""
    count = int(rng.integers(1, min(4, len(fields.criteria)) + 1))
    keep = np.sort(rng.choice(len(fields.criteria), size=count, replace=False))
    kept = [fields.criteria[i] for i in keep]
    return meta_report(_template_fields(fields, kept)) if form == "partial" else findings_report(kept)


def findings_report(criteria: Sequence[tuple[str, str]]) -> str:
    """The template's text of 7-point findings ``(criterion key, value)`` with no context: "Lesion. Dermoscopy:
    ...", what :func:`query_text` gives a text that states findings and no age, sex, site or elevation."""
    return meta_report(dict(criteria))


def case_generator(record: Any, seed: int = 0) -> np.random.Generator:
    """A generator seeded by ``seed`` and the case's id (``case_id``; CRC-32, stable across
    processes): a case's text is the same whichever other cases are rendered, and in whatever order."""
    case_id = str(getattr(record, "case_id", None) or (record.get("case_id") if isinstance(record, Mapping) else "") or "")
    return np.random.default_rng((int(seed), zlib.crc32(case_id.encode())))


def render_reports(records: Sequence[Any], form: str, seed: int = 0) -> list[str]:
    """:func:`render_report` of each record, each with its own :func:`case_generator` (the one
    seeding every evaluation uses, so all methods see the same texts)."""
    return [render_report(r, form, case_generator(r, seed)) for r in records]


# How augment_report draws a training text: kind -> probability (they sum to 1).
AUGMENT_MIX: dict[str, float] = {"template": 0.2, "findings": 0.45, "sr_coded": 0.1, "demographics": 0.1, "empty": 0.15}


def augment_report(record: Any, rng: np.random.Generator | int, mix: Mapping[str, float] | None = None) -> str:
    """A random training text for one case: the same content as clinicians write it in many ways.

    ``mix`` (default :data:`AUGMENT_MIX`) gives the probability of each kind of text:
    ``template`` — today's text (``render_report(record, "template")``); ``findings`` — a random
    non-empty subset of the recorded criteria, in random order half of the time (the template
    wording keeps its own order), in the template's or a :data:`TRAINING_STYLES` style's words
    (``sr_coded`` aside), the context kept 70% of the time; ``sr_coded`` — all recorded criteria as
    the SR reader writes coded findings; ``demographics`` — age / sex / site only in a training
    style; ``empty`` — ``""`` (text dropout). A case without criteria gives demographics instead of
    findings. Never the diagnosis or management, never a word of :data:`HELD_OUT_STYLES`'
    vocabulary. Deterministic given the generator's state."""
    mix = AUGMENT_MIX if mix is None else mix
    unknown = sorted(set(mix) - set(AUGMENT_MIX))
    weights = np.array([float(mix.get(k, 0.0)) for k in AUGMENT_MIX])
    if unknown or (weights < 0).any() or not np.isclose(weights.sum(), 1.0):
        raise ValueError(f"mix must give probabilities summing to 1 over {list(AUGMENT_MIX)}, got {dict(mix)}")
    rng = _generator(rng)
    fields = report_fields(record)
    kind = list(AUGMENT_MIX)[int(rng.choice(len(weights), p=weights))]
    if kind == "template":
        return render_report(record, "template", rng)
    if not fields.criteria and kind in ("findings", "sr_coded"):
        kind = "demographics"
    if kind == "empty":
        return ""
    styles = ["template"] + sorted(set(TRAINING_STYLES) - {"sr_coded"})
    if kind == "demographics":
        style = styles[int(rng.integers(len(styles)))]
        demographics = fields.demographics()
        return _template_demographics(demographics) if style == "template" else TRAINING_STYLES[style].context(demographics, False)
    if kind == "sr_coded":
        return TRAINING_STYLES["sr_coded"].render(fields, with_context=False)
    count = int(rng.integers(1, len(fields.criteria) + 1))
    order = rng.permutation(len(fields.criteria))[:count]
    if rng.random() < 0.5:
        order = np.sort(order)
    criteria = [fields.criteria[i] for i in order]
    with_context = bool(rng.random() < 0.7)
    style = styles[int(rng.integers(len(styles)))]
    if style == "template":
        row = _template_fields(fields, criteria)
        if not with_context:
            row.update(location=None, sex=None, elevation=None)
        return meta_report(row)
    return TRAINING_STYLES[style].render(fields, criteria, with_context=with_context)


# ------------------------------------------------------------------------------------------------
# The findings gate: does a text say anything the network was trained to read?
# ------------------------------------------------------------------------------------------------
# The values Derm7pt records per criterion (meta.csv), ``absent`` included: what a finding can say.
CRITERION_VALUES: dict[str, tuple[str, ...]] = {
    "pigment_network": ("absent", "typical", "atypical"),
    "streaks": ("absent", "regular", "irregular"),
    "pigmentation": ("absent", "diffuse regular", "localized regular", "diffuse irregular", "localized irregular"),
    "regression_structures": ("absent", "blue areas", "white areas", "combinations"),
    "dots_and_globules": ("absent", "regular", "irregular"),
    "blue_whitish_veil": ("absent", "present"),
    "vascular_structures": ("absent", "arborizing", "comma", "hairpin", "within regression", "linear irregular", "dotted", "wreath"),
}


def _both_ways(place: str, kind: str) -> tuple[str, ...]:
    """A pigmentation grade's two words (``place`` diffuse / localized, ``kind`` regular / irregular) either way round,
    joined by "and", "but" or a comma, in both spellings of "localized"."""
    places = (place, "localised") if place == "localized" else (place,)
    return tuple(f"{a}{sep}{b}" for p in places for a, b in ((p, kind), (kind, p)) for sep in (" and ", " but ", ", "))


# Nouns clinicians write for a criterion that no training style writes: the reader reads them with the training styles'
# grades and patterns ("atypical network", "no blue-white veil", "irregular globules"). The network is given what the
# reader read in the template's words (query_text), so a synonym teaches it nothing new. Three are held-out styles'
# nouns, the checklist's own words, which a reader that did not know them would miss in real reports (stated findings
# the reviews held, unread before): "radial streaming" and "pseudopods" (Argenziano's irregular streaks), "blotches"
# (its irregular pigmentation) and "bluish-white veil"; HELD_OUT_STYLES' other nouns ("reticular pattern", "regressive
# areas", "globular elements", "vasculature") are not read, so the `reworded` text form reads a report in part.
CLINICAL_SYNONYMS: dict[str, tuple[str, ...]] = {
    # (and clinicians' shorthand: "atyp ntwk", "irreg globs", "DG reg", "no regr", "vsls absent", "diffuse reg pigm")
    # ("pigm network": the network's, not pigmentation's "pigm", so "no pigm network" is not pigmentation ABSENT)
    "pigment_network": ("network", "pigmented network", "pigm network", "pigm. network", "ntwk", "netwk"),
    "vascular_structures": ("vv", "vsls", "telangiectasia", "telangiectasias", "telangiectases"),  # ("dotted vv", "arb vv -": shorthand for vessels)
    "dots_and_globules": ("dots/globules", "dots & globules", "dots+globules", "dots + globules", "globules", "dots", "globs", "dots+globs", "dg", "d/g", "d&g"),
    "regression_structures": ("regr",),
    "blue_whitish_veil": ("blue-white veil", "blue white veil", "blue-whitish-veil", "bluish-white veil", "bluish white veil"),
    # the checklist's own definitions: irregular streaks are "pseudopods and radial streaming", irregular pigmentation
    # "blotches" (Argenziano 1998; the 2016 consensus terminology keeps the words)
    "streaks": ("pseudopods", "radial streaming"),
    "pigmentation": ("blotches", "blotch", "pigm"),
}


# ... and grades: a "regular" network is the checklist's typical one, an "irregular" network its atypical one (the
# 7-point checklist's own definitions; clinicians write both). Read with every noun of the network, never a held-out
# style's word
CLINICAL_GRADE_SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "pigment_network": {"typical": ("regular", "reg."), "atypical": ("irregular", "irreg.", "thickened", "broadened")},
    # dots and globules even in size and spread are the checklist's regular ones ("uniform globules", "dots evenly spaced")
    "dots_and_globules": {"regular": ("uniform", "evenly sized", "evenly spaced", "evenly distributed")},
    # (British spelling; the shapes' "-shaped" and "-like"; the sebaceous hyperplasia's "wreath-like vessels")
    "vascular_structures": {"arborizing": ("arborising",), "comma": ("comma-shaped", "comma shaped"), "wreath": ("wreath-like",),
                            "linear irregular": ("irregular linear", "linear-irregular"),
                            # the place in clinicians' words: "vessels within the regression area", "in the regression zone" (not
                            # "the regressed area": "regressed" puts a finding in the past)
                            "within regression": ("within the regression", "within the regression area", "within the regression areas",
                                                  "within the regression zone", "in the regression area", "in the regression areas",
                                                  "in the regression zone")},
    # (British spelling: "localised irregular pigmentation" was not read)
    # ... and its two words either way round, joined by "and" or a comma ("Pigmentation: irregular, localised", "diffuse and
    # regular pigmentation": not read before)
    "pigmentation": {"localized irregular": ("localised irregular", *_both_ways("localized", "irregular")),
                     "localized regular": ("localised regular", *_both_ways("localized", "regular")),
                     "diffuse irregular": _both_ways("diffuse", "irregular"), "diffuse regular": _both_ways("diffuse", "regular")},
    # regression's white scar-like areas and blue pepper-like granules, and both ("regression - blue + white")
    "regression_structures": {"white areas": ("white scar-like areas", "white"), "blue areas": ("blue peppering", "blue"),
                              "combinations": ("white and blue areas", "blue + white", "white + blue", "blue and white", "white and blue",
                                               "blue+white", "white+blue", "blue/white", "white/blue",
                                               # Derm7pt's own word for both colours, and clinicians' ("combined regression")
                                               "combinations", "combination", "combined")},
}
# regression's other colour in any words: where a text names it beside a reading of one colour, the regression may be
# both (the combinations) and is not read
_OTHER_REGRESSION_COLOUR_RE = {
    "blue areas": re.compile(r"scar|white(?:ish)? (?:area|structureless|depigment|regression|colou?r)|depigment|white\)"),
    "white areas": re.compile(r"pep+er|granul|blue(?:ish)?(?:-gr[ae]y)? (?:area|granul|colou?r)|gr[ae]y(?:-blue)? (?:area|granul|dots)|blue\)"),
}
# ... and whole phrasings that name no criterion noun: "white areas of regression", "blue-grey peppering" (read as their
# criterion's value; denied or doubted like any other). White and blue areas both read make regression's combinations
CLINICAL_PHRASINGS: dict[str, tuple[str, str]] = {
    **{p: ("regression_structures", "white areas") for p in (
        "white areas of regression", "white regression areas", "white areas (regression)", "white scar-like areas", "white scar-like area",
        "white scar like areas", "white scar like area",
        "white area of regression", "white regression area",
        "scar-like depigmentation", "white scar-like depigmentation")},
    **{p: ("regression_structures", "blue areas") for p in (
        "blue areas of regression", "blue regression areas", "blue areas (regression)", "blue area of regression", "blue regression area", "blue peppering", "grey-blue peppering",
        "blue-grey peppering", "gray-blue peppering", "blue-gray peppering", "peppering")},  # ("the other lesion has peppering": out of scope)
    # an irregular blotch placed in one part of the lesion is the checklist's localized irregular pigmentation ("an eccentric
    # irregular dark blotch", "an irregular blotch at the periphery"; a bare "irregular blotch" says not where, and is not read)
    **{p: ("pigmentation", "localized irregular") for p in (
        "localised irregular blotch", "localized irregular blotch", "eccentric irregular blotch", "focal irregular blotch",
        "peripheral irregular blotch", "off-centre irregular blotch", "off-center irregular blotch", "single irregular blotch",
        "irregular blotch at the periphery", "irregular blotch at one edge", "irregular blotch at the edge")},
    # the 7-point checklist's abbreviation of its first criterion, as scores write it ("APN 2", "APN+", "Scoring: APN=2, BWV=2";
    # not the advanced practice nurse, "seen by the APN": _PERSON_BEFORE_RE)
    "apn": ("pigment_network", "atypical"),
    **{p: ("regression_structures", "combinations") for p in (
        "white and blue regression areas", "blue and white regression areas", "white and blue areas of regression",
        "blue and white areas of regression")},
}


def _training_vocabulary() -> dict[str, tuple[str, ...]]:
    """Per criterion, every noun the reader reads for it: the template's phrase (:data:`CRITERIA`), each
    :data:`TRAINING_STYLES` style's name (``BWV``, ``D/G``, ``vessels``...), derived from the styles, and the
    :data:`CLINICAL_SYNONYMS`."""
    vocabulary: dict[str, set[str]] = {key: {phrase} for key, phrase in CRITERIA}
    for style in TRAINING_STYLES.values():
        for key, noun in style.names.items():
            vocabulary[key].add(noun.lower())
    for key, nouns in CLINICAL_SYNONYMS.items():
        vocabulary[key].update(nouns)
    return {key: tuple(sorted(nouns)) for key, nouns in vocabulary.items()}


# graded findings as clinicians write them with the training styles' nouns and grades, read but never written in
# training: "Network - atypical", "the network is atypical", "globules are regular" (before: not read). No held-out
# style writes a training noun (only CLINICAL_SYNONYMS' three held-out nouns are read in the `reworded` form)
READER_GRADED_PATTERNS = ("{name} - {grade}", "{name} is {grade}", "{name} are {grade}")


def _phrasings() -> dict[str, tuple[str, str]]:
    """Every way a training text writes one (criterion, value) pair, lower case -> ``(key, value)``: the
    template's phrase (:func:`_criterion`) and each :data:`TRAINING_STYLES` style's patterns, with every noun
    and grade wording of the training styles (so "pigment network atypical", "atyp. PN" and "pigment network:
    atypical" all read as an atypical pigment network). Derived from the styles, so it reads what they write."""
    nouns = _training_vocabulary()
    grade_words: dict[str, set[str]] = {}
    for style in TRAINING_STYLES.values():
        for grade, word in style.grades.items():
            grade_words.setdefault(grade, set()).add(word.lower())
    patterns = {(style.absent, style.present, style.graded, style.qualified) for style in TRAINING_STYLES.values()}
    out: dict[str, tuple[str, str]] = {}
    for key, phrase in CRITERIA:
        for value in CRITERION_VALUES[key]:
            out[_criterion(value, phrase).lower()] = (key, value)
            grade = "blue and white areas" if value == "combinations" else value
            grades = {grade} | grade_words.get(grade, set()) | set(CLINICAL_GRADE_SYNONYMS.get(key, {}).get(value, ()))
            for two_words in [g for g in grades if " " in g]:  # "diffuse irregular" -> "diffuse irreg." too ("localised irreg." too)
                head, tail = two_words.rsplit(" ", 1)
                grades |= {f"{head} {w}" for w in grade_words.get(tail, ())}
            grades |= {g[:-1] for g in grades if g.endswith(".")}  # "typ PN", "D/G reg", "localized irreg pigm": the abbreviation without its period
            for noun in nouns[key]:
                for absent, present, graded, qualified in patterns:
                    if value == "absent":
                        out[absent.format(name=noun).lower()] = (key, value)
                    elif value == "present":
                        out[present.format(name=noun).lower()] = (key, value)
                    else:
                        for g in grades:
                            out[graded.format(name=noun, grade=g).lower()] = (key, value)
                            out[qualified.format(name=noun, grade=g).lower()] = (key, value)
                            for written in READER_GRADED_PATTERNS:
                                out[written.format(name=noun, grade=g).lower()] = (key, value)
    return out | CLINICAL_PHRASINGS


def _phrase_pattern(phrase: str, graded: bool = False) -> str:
    # whole words only ("regression" does not match "regressive"); a trailing "." ("pigm.") or sign ("BWV -") ends
    # itself; a sign written close ("BWV-") belongs to the noun before it, so a bare noun is never read before one; a
    # phrasing stays on its line ("Ulceration: no\nPN: atypical" holds no "no PN"); a "+" after one, apart, joins it to the
    # next ("typical network + regular globules"), unless "+/-", "+-" or "+?" puts it in doubt. ``graded``: a phrasing
    # that names its grade ("atyp PN") may take a "+" written close, the shorthand's "it is there" ("atyp PN+ BWV+"; before:
    # the network not read), unless "+/-", "+-", "++" or "+?" follows
    body = re.escape(phrase).replace(r"\ ", r"[ \t]*" if phrase[-1] in "+-" else r"[ \t]+")
    if phrase[-1] == "+":  # the sign ends its clause ("BWV +/-", "BWV+-", "BWV +?" are not signs), or, written close to
        # its noun, a word follows it ("BWV+ irregular streaks", "BWV+ atypical PN": read neither way before)
        return body + r"(?:(?=\s*(?:[,;.)\n]|$))|(?<=[^ \t]\+)(?=[ \t]+[a-z]))"
    if phrase[-1] == "-":  # the sign ends its clause: "Streaks - irregular", "Streaks- irregular" (a dash between noun
        # and grade), "BWV-positive" are not signs
        return body + r"(?=\s*(?:[,;.)\n]|$))"
    if phrase[-1] in ".)":
        return body + r"(?![ \t]*[+-]\s*(?:[,;.)\n]|$))"
    close = r"(?![\w/-])(?!\+[ \t]*[/?+-])" if graded else r"(?![\w/+-])"
    return body + close + r"(?![ \t]+(?:-|\+[ \t]*[/?-]))"  # (a list's "\n- " bullet is no sign)


_PHRASINGS = _phrasings()


def _longest_first(strings: Iterable[str]) -> list[str]:
    """``strings`` longest first, as an alternation needs them (a regex takes the first branch that matches, so a phrase
    must come before its own prefix); ties in alphabetical order, so the compiled pattern is the same under every
    ``PYTHONHASHSEED`` (several of these come from sets)."""
    return sorted(strings, key=lambda s: (-len(s), s))


def _phrase_alternation(phrases: Sequence[str]) -> tuple[str, list[str]]:
    """One alternation of ``phrases`` (longest first), a capture group per phrase, factored by the phrase's first word:
    "bwv(?:(\\s+present)|(...)|())": a word start tries each first word once, not each of the ~1,200 phrasings (about
    25 times faster than a branch per phrasing). Returns the pattern and the phrases in the order of their groups."""
    buckets: dict[str, list[str]] = {}
    for phrase in phrases:  # (dicts keep the order: a first word's bucket stands where its longest phrase did)
        buckets.setdefault(phrase.split(" ")[0], []).append(phrase)
    branches, order = [], []
    for first, members in buckets.items():
        head = re.escape(first)
        rests = []
        for phrase in members:
            pattern = _phrase_pattern(phrase, graded=_PHRASINGS[phrase][1] not in ("present", "absent"))
            assert pattern.startswith(head), (phrase, pattern)
            rests.append(f"({pattern[len(head):]})")
            order.append(phrase)
        branches.append(head + "(?:" + "|".join(rests) + ")")
    return "(?:" + "|".join(branches) + ")", order


_PHRASE_ALTERNATION, _PHRASE_OF_GROUP = _phrase_alternation(_longest_first(_PHRASINGS))
# every phrasing, longest first, behind one word-start check
_PHRASE_RE = re.compile(r"(?<![\w/-])(?=[\w/])" + _PHRASE_ALTERNATION)
# A negated list: prose gathers the absent findings after "without" ("without streaks, BWV or vessels"), and a clinician
# writes "no streaks or BWV", "no PN, streaks or BWV", "no streaks nor BWV". Its items are the training nouns (any of
# them: "BWV" as "blue-whitish veil"), each bare: where a longer phrasing starts at an item ("BWV +", "BWV present",
# "pigment network: atypical") or a sign follows it ("BWV +/-"), the item states its own value and the list ends before
# it. "without" takes a list of nouns only, joined by commas or a conjunction; after "no" a comma ends the clause ("no
# streaks, BWV +", "no streaks, BWV, atyp. PN") unless a conjunction ("or", "nor", "and") joins a later noun to the list.
_NOUN_OF = {noun: key for key, nouns in _training_vocabulary().items() for noun in nouns}
_NOUN_OF_GROUP = _longest_first(_NOUN_OF)
_ANY_NOUN = "|".join(re.escape(n) for n in _NOUN_OF_GROUP)  # any training noun, longest first (inside other patterns)
# ... as a word of its own, group 1 (not "regression" in "vessels within regression")
_BARE_NOUN = r"(?<![\w/-])(?<!within )(" + _ANY_NOUN + r")"
_NOUN_RE = re.compile("|".join(f"({_phrase_pattern(n)})" for n in _NOUN_OF_GROUP))  # whole words, no sign after
# a noun written close to the next with "/" ("streaks/BWV"; the groups in _NOUN_RE's order): the whole-word rule
# above keeps "/" out of a bare noun, so that "D/G" is one noun and not "D" or "G"
_NOUN_BEFORE_SLASH_RE = re.compile(
    "(?:" + "|".join(f"({re.escape(n)})" for n in _NOUN_OF_GROUP) + ")"
    + r"(?=\s*/\s*(?:" + _ANY_NOUN + r")(?!\w))"
)
# per noun, the phrasings that start with it and say more ("BWV +", "BWV: present"): one that matches where the noun
# does is what _PHRASE_RE (longest first) reads there, so the noun is not bare (a few patterns, not all 300 of _PHRASE_RE)
class _LongerPhrasings(dict):
    """noun -> its longer phrasings' pattern, compiled when a text first holds the noun bare: the 45 nouns' patterns
    (790,000 characters of regex) took a second to compile at import, which a cold app paid on its first study
    whatever its text named."""

    def __missing__(self, noun: str) -> re.Pattern[str]:
        longer = [_phrase_pattern(p) for p in _PHRASE_OF_GROUP if p != noun and p.startswith(noun)]
        pattern = self[noun] = re.compile("|".join(longer or [r"(?!)"]))
        return pattern


_LONGER_PHRASING = _LongerPhrasings()
# a negated list's head: "no" or "without", and the words a clinician puts between it and the nouns ("no evidence of
# streaks or BWV", "without any signs of BWV"): with them the list is read as without them (before: "without evidence
# of BWV" read the veil PRESENT, a bare "BWV" after words that are no noun)
_LIST_FILLER = r"(?:(?:any|evidence|signs?|features?|of|for|obvious|definite|clear|visible|appreciable|discernible)\s+)*"
# a word after a list's noun that affirms it: the noun is no item of the negated list ("without streaks or BWV
# positive": before, the veil read absent)
_AFFIRMED_AFTER_RE = re.compile(r"[ \t]*(?:positive|pos\.?|\+ve)(?![\w])")
# "lacking", "lacks", "lack of", "absence of" head a list as "without" does ("lacking streaks, BWV": before, the veil
# read PRESENT, its comma clause had no negation); so does "negative for" ("Negative for BWV. Negative for streaks.":
# before, read neither way)
# (a writer who did not see them: "I did not see any streaks", "I don't see any veil")
_LIST_HEAD_RE = re.compile(r"(?<![\w-])(no|without|zero|free from|lacking|lacks|lack of|absence of|(?<!not )negative for"
                           r"|(?:do not|don't|did not|didn't|could not|couldn't) see any"
                           r"|(?:cannot|can not|can't|cant|unable to) (?:see|identify|appreciate|detect) any)\s+(" + _LIST_FILLER + ")")
# "/" between two nouns is an "or" ("no streaks/BWV"); inside a noun ("D/G") or a sign ("+/-") it is read as part of them
_LIST_SEP_RE = re.compile(r"\s*,\s*(?:(or|nor|and)\s+)?|\s+(or|nor|and)\s+|\s*(/)\s*")
# a negation in the clause of a present or graded phrasing: "BWV absent", "no irregular streaks", "streaks not seen",
# "neither streaks nor BWV", "absence of BWV", "BWV excluded", "BWV -ve" (read neither way: the absent phrasings are
# the ones training writes; before, the words after "absent" here read a bare "BWV" as PRESENT); and a writer who could
# not see it, "I cannot see a blue-whitish veil", "unable to identify", "nothing to suggest", "failed to show",
# "undetected", "excludes" (before: each read the veil PRESENT, and the learned check kept it; "zero" and "free from"
# head a list as "no" does)
_NEGATION_RE = re.compile(
    r"(?<![\w-])(?:no|not|none|nil|absent|absence|negatives?|neg|loss of|resolution of|disappearance of|lacks?|lacking|missing"
    r"|free of|nor|neither|excluded|ruled out|never|denied|devoid|unseen|non-?existent|invisible|undetectable|hardly|barely"
    r"|w/o|ø|⊖|\w+n't|undetected|excludes?|nothing to suggest|nothing (?:like|resembling)|nowhere|nope"
    # a writer's failing to see, bound to the seeing verb: "failed to respond to cryotherapy" or "cannot recall" deny nothing
    r"|(?:cannot|can not|cant|unable to|fail(?:s|ed|ing)? to)[ \t]+(?:be[ \t]+)?(?:see|seen|identify|identified|appreciate|appreciated|detect"
    r"|detected|demonstrate|demonstrated|show|shown|reveal|revealed|visuali[sz]e|visuali[sz]ed|find|found|confirm|confirmed))(?![\w-])"
    r"|(?<![\w+-])-\s?ve(?![\w])"
)


# a negation a conjunction joins after a mention, heading the next item: "typical network and no dots or globules", "regular
# globules but no network" (before: the network's clause held a negation and it was not read)
_CONJOINED_NEGATION_RE = re.compile(r"[ \t]+(?:and|but|with|while|whereas)[ \t]+(?=(?:no|without|nil)[ \t])")
# ... and, words after the mention, a "no" that heads a noun of its own: an unpunctuated dictation's "irregular streaks at
# about four o'clock no blue white veil seen" (before: the veil's "no" denied the streaks too, and nothing but the veil
# was read). Right after the mention ("BWV no streaks") it is not cut: whose "no" that is, the text does not say
_NEGATION_HEADS_NOUN_RE = re.compile(r"(?<![\w-])(?:no|without|nil)[ \t]+(?:[\w-]+[ \t]+){0,3}?(?:" + _ANY_NOUN + r")(?![\w])")


# a denial of a structure in the lesion's centre only: "no network to speak of centrally but a faint regular network at
# the rim" (before: read the network ABSENT)
_CENTRE_ONLY_RE = re.compile(r"(?<![\w-])(?:centrally|(?:in|at) the cent(?:re|er)(?: only)?"
                             # ... or within the areas just named: "white scar-like areas with blue-grey peppering, no
                             # vessels within them" (not "no vessels within it", the lesion, nor "within the scar",
                             # the lesion a re-excision leaves)
                             r"|within (?:them|these|those|the (?:areas?|regression))"
                             # ... or in part of it: "no network in most of it", "no dots or globules off the furrows"
                             r"|in (?:most|parts?|much) of (?:it|the lesion)|off the (?:furrows|ridges))(?![\w-])")
# ... and a "but" between a negation and a phrasing ends the negation's reach: "no network centrally but a faint regular
# network", "no streaks but irregular dots" (before: the network, the dots were not read)
_BUT_RE = re.compile(r"(?<![\w-])but(?![\w-])")


# ... and one of a quality of the structure, not the structure: "no network abnormality - network typical" (before: read
# the network ABSENT)
_QUALITY_AFTER_RE = re.compile(r"[ \t]+(?:abnormalit(?:y|ies)|changes?|concerns?|atypia|irregularit(?:y|ies))(?![\w-])")
# ... and a kind or a colour after a negated list's last noun, said of the whole list: "no dots or globules of brown
# colour" (blue-grey ones are seen), "no vessels of the melanoma type"
_KIND_AFTER_RE = re.compile(r"[ \t]+of[ \t]+(?:(?:brown|black|blue|grey|gray|red)[ \t]+colou?r|the[ \t]+[\w-]+[ \t]+type|(?:melanoma|malignant)[ \t]+type)(?![\w-])")
# a criterion's name as a code's or a field's label, not a finding: HL7 v2's "BWV^Veil^L", FHIR's {"text":"Blue-whitish
# veil"}, a template's unmerged "{{bwv}}" (before: the bare noun read PRESENT)
_LABEL_OPENERS = "^\"{"
_LABEL_AFTER_RE = re.compile(r" ?[\^\"}]")
# a parenthesised list of criteria that the words after it leave ungraded: "Colour-dependent features (veil, regression)
# not graded" (before: the veil read PRESENT)
_LIST_NOT_ASSESSED_AFTER_RE = re.compile(r"[^()\n]{0,60}\)[ \t]*(?:were |was |are |is )?(?:not|cannot be|could not be)[ \t]+(?:assess|grad|evaluat|judg|scor)\w*")
# a template's values left at their defaults: "Network: typical*" under "(* template default, not changed)" or "(*
# pre-filled default value - not reviewed)", and the
# fields under "NOTE: default values not reviewed" up to the clinician's own ("Free-text findings (clinician): ...")
_DEFAULT_LEGEND_RE = re.compile(r"\*[ \t]*(?:=[ \t]*)?(?:(?:template|pre-?filled|system)[ \t]+)?default"
                                r"|\*[ \t]*(?:=[ \t]*)?(?:values?[ \t]+)?(?:pre-?filled|pre-?populated|auto-?filled)(?![\w-])")  # ("* = value pre-filled by the system")
_DEFAULT_BLOCK_RE = re.compile(
    r"(?m)^[^\n]*(?:default values? (?:were |was |are )?(?:not reviewed|unchanged|not changed|left unchanged)|pre-?filled[^\n]{0,60}not (?:updated|reviewed|changed))"
    r"[^\n]*$[\s\S]*?(?=^[^\n:]*(?:clinician|free-?text)[^\n:]{0,40}:|\Z)")


# dermoscopic structures the checklist does not name (or names in words no training style writes: blotches and pseudopods,
# read as nouns too, stay here so that a described one, "structureless blotches", keeps the list going), met as items of
# a negated list
_OTHER_STRUCTURE_RE = re.compile(
    r"(?:(?:irregular|regular|structureless|dark|brown|black|blue|white|grey|gray)\s+)*(?:blotch(?:es)?|structureless areas?|ulcerations?"
    r"|milia-?like cysts|comedo-?like openings|scales?|crystalline structures|shiny white (?:lines|structures)|pseudopods|peppering"
    r"|granularity|blue-?grey (?:dots|ovoid nests)|ovoid nests|leaf-?like areas|spoke-?wheel areas|lacunae|pink areas|milky-?red areas"
    r"|(?:negative|inverse|inv|inverted|reverse|reversed)\s+(?:pigment\s+)?network|atypical vessels|polymorphous vessels|vascular blush|asymmetry|asymmetric pigmentation"
    # other lesions' structures in the consensus terminology (Kittler 2016): "no rosettes, BWV or streaks" (before: the
    # list ended at "rosettes" and the veil read PRESENT)
    r"|rosettes|white circles|fissures(?: and ridges)?|ridges|fingerprint-?like (?:structures|areas|pattern)|moth-?eaten borders?"
    r"|cerebriform pattern|rhomboidal structures|annular-?granular (?:pattern|structures)|(?:pigmented )?follicular openings"
    r"|circles? within (?:a )?circles?|strawberry pattern|starburst pattern)(?![\w-])")


def _negated_lists(lowered: str) -> tuple[list[tuple[int, int, list[tuple[str, int, int]]]], set[int]]:
    """``(lists, governed)``: each negated list of ``lowered`` as ``(start, end, items)``, ``items`` its ``(key, start,
    end)`` nouns; ``governed`` the positions where "without" (or its list's "or" / "nor") is followed by a phrasing
    that is not a bare noun ("without irregular streaks", "without streaks or irregular D/G"): what starts there is
    negated by it, so a present or graded phrasing there is read neither way. Not after a bare comma or "and"
    ("without streaks, irregular D/G", "without streaks and typical PN" may say what the lesion has), nor past the
    list ("without streaks but with BWV")."""
    lists, governed = [], set()
    for head in _LIST_HEAD_RE.finditer(lowered):
        items: list[tuple[str, int, int]] = []
        joined: list[str] = []  # per separator: the conjunction that joins the next item ("or", "nor", "and", "/"), or ""
        pos = head.end()
        while True:
            noun = _NOUN_RE.match(lowered, pos) or _NOUN_BEFORE_SLASH_RE.match(lowered, pos)
            if noun is None and (other := _OTHER_STRUCTURE_RE.match(lowered, pos)) and (sep := _LIST_SEP_RE.match(lowered, other.end())):
                # a structure the checklist does not name, as an item of the list ("no vascular structures, blotches,
                # BWV or streaks"; before: the list ended at "blotches" and the veil read PRESENT): skipped, the list goes on
                conjunction = sep.group(1) or sep.group(2) or sep.group(3) or ""
                if joined and conjunction:
                    joined[-1] = conjunction
                pos = sep.end()
                continue
            if noun is None:
                if head.group(1) != "no" and (not joined or joined[-1] in ("or", "nor", "/")):
                    governed.add(pos)
                    # the list goes on past a governed phrasing that "or" / "nor" joins to more ("without irregular
                    # streaks or BWV": before, the veil read PRESENT)
                    phrasing = _PHRASE_RE.match(lowered, pos)
                    sep = _LIST_SEP_RE.match(lowered, phrasing.end()) if phrasing else None
                    if sep is not None and (sep.group(1) or sep.group(2) or sep.group(3)) in ("or", "nor", "/"):
                        joined.append(sep.group(1) or sep.group(2) or sep.group(3))
                        pos = sep.end()
                        continue
                break
            name = _NOUN_OF_GROUP[noun.lastindex - 1]
            if _LONGER_PHRASING[name].match(lowered, pos):
                break  # "BWV +", "BWV present": a phrasing with its own value
            if _AFFIRMED_AFTER_RE.match(lowered, noun.end()):
                governed.add(pos)  # "without streaks or BWV positive": read neither way
                break
            items.append((_NOUN_OF[name], noun.start(), noun.end()))
            sep = _LIST_SEP_RE.match(lowered, noun.end())
            if sep is None:
                break
            joined.append(sep.group(1) or sep.group(2) or sep.group(3) or "")
            pos = sep.end()
        if head.group(1) == "no":  # up to the last noun a conjunction joins; none: "no X" alone, a phrasing
            last = max((i + 1 for i in range(len(items) - 1) if joined[i]), default=0)  # ("no evidence of X": X alone)
            items = items[: last + 1] if last else items[: 1 if head.group(2) else 0]
        if items:
            lists.append((head.start(), items[-1][2], items))
    return lists, governed


# what denies a present or graded mention right after it, or leaves it blank: "BWV (-)", "BWV, absent", "BWV 0",
# "BWV N", "BWV ±", a template's "BWV Y/N", "BWV: ___", "BWV [ ]", "BWV:" at a line's end (before: each read PRESENT),
# also where a wide gap, not a stop, ends it: a form's row "BWV [ ]   irreg streaks [ ]"
_TRAILING_DENIAL_RE = re.compile(
    r"(?:\s*[,|\t]\s*|\s+|\s*:\s*)?(?!\[[ \t]*x[ \t]*\])[(\[]?\s*(?:-|0|0/\d|n|no|none|nil|neg|negative|absent|abs|not (?:seen|present|observed|identified)|x|✗|✘|ø|⊖"
    r"|nd|nad|wnl|ve-"
    r"|±|\+/-|\+-|-/\+|y/n|yes/no|present/absent|_+|\.{2,}|\[\s*\](?:[ \t]*0(?![\d.]))?|☐|□|\(\s*\))\s*[)\]]?(?:\s*(?=[;,.\n|]|$)|[ \t]{2,})|\s*:\s*(?=\n|$)"
    # a yes / no field answered no or left blank: "BWV Y/N: N", "BWV (Y/N): no", "BWV (y/n) - n", "BWV Y/N:"; "BWV non present"
    r"|\s*\(?\s*(?:y/n|yes/no)\s*\)?\s*(?:[:-]\s*(?:n|no)?)?\s*(?=[;,.\n|]|$)|\s+non[ -]?present(?![\w-])"
    # a clause or sentence of its own that is a denial word alone: "BWV; not seen", "atypical PN. Absent." ("BWV. N.B. ...",
    # "BWV; 0.5 cm area" are no denials)
    r"|\s*(?:;|\.(?=\s))\s*(?:not (?:seen|present|observed|identified)|absent|none|nil|negative|no)\s*(?=[;.\n]|$)")
# an empty check box before a mention: "[ ] BWV", "☐ BWV" (a ticked one, "[x] BWV", is read)
_BOX_BEFORE_RE = re.compile(r"(?:\[\s*\]|☐|□|\(\s*\))\s*$")
# a cross that marks a mention: before it where the text's marks lead their items, "✓ atypical PN ✓ irregular streaks ✗
# BWV", after it where they follow them, "Blue-white veil ✗   Streaks ✗   Typical network ✓" (before: the veil read
# PRESENT either way). A crossed noun reads absent, a crossed grade is not read (as "BWV (2): 0", "Irregular streaks (1): 0")
_CROSS_BEFORE_RE = re.compile(r"[✗✘][ \t]*$")
_CROSS_AFTER_RE = re.compile(r"[ \t]*(?::[ \t]*)?[✗✘]")
_MARK_RE = re.compile(r"[✓✔✗✘]")
# the empty-set sign or a circled minus before a noun: "Ø BWV", "⊖ streaks" (after it: :data:`_NOUN_DENIED_RE`)
_SIGN_DENIED_BEFORE_RE = re.compile(r"(?<![\w])[ø⊖][ \t]*(" + _ANY_NOUN + r")(?![\w-])")
_CROSSED_NOUN_BEFORE_RE = re.compile(r"[✗✘][ \t]*(" + _ANY_NOUN + r")(?![\w-])")
_CROSSED_NOUN_AFTER_RE = re.compile(_BARE_NOUN + r"[ \t]*(?::[ \t]*)?[✗✘]")
# "non" before a grade, on its line: "non typical PN" (before: read TYPICAL, the opposite of what a clinician means;
# "non-typical PN", one word, was never read). Not across a line: "Ulceration: non" ("none") ends its line
_NON_BEFORE_GRADE_RE = re.compile(r"(?<![\w-])non[ \t]+$")
_GRADE_START_RE = re.compile(r"(?:atypical|typical|irregular|regular|atyp\.|typ\.|irreg\.|reg\.)(?![\w-])")
# one denial after several nouns: "BWV and streaks -", "BWV, streaks: absent" (the bare "BWV" is denied with the rest)
_SHARED_ABSENT_RE = re.compile(
    r"(?:\s*(?:,|&|and|/|\+)\s*(?:" + _ANY_NOUN + r"))+"
    r"\s*(?::\s*)?(?:all\s+)?(?:-|(?:-\s*)?(?:absent|none|no|not seen|nil|0|negative))\s*(?=[;,.)\n]|$)")
# a grade word before an absent sign: "atyp. PN -" denies the atypical network, not the network (the checklist's items
# are graded: "irreg. streaks -" is not "no streaks")
_GRADE_WORDS = _longest_first({p[: -len(n)].strip() for p, (k, v) in _PHRASINGS.items() if v != "absent"
                               for n in _training_vocabulary()[k] if p.endswith(" " + n) and not p.startswith("no ")})
_GRADE_BEFORE_RE = re.compile(r"(?<![\w-])(?:" + "|".join(re.escape(g) for g in _GRADE_WORDS if g) + r"|atyp|irreg)\s+$")  # ("atyp PN -")
# a grade (or "no") and a noun with a describing word or two between them: "regular brown globules", "atypical thickened
# network", "an irregular dark blotch", "no discrete vessels" (before: not read). _normalised blanks the describing words
# out, so the phrasings read the grade and the noun as written together
_DESCRIBED_NOUN_RE = re.compile(
    r"((?<![\w/-])(?:" + "|".join(re.escape(g) for g in _GRADE_WORDS if g) + r"|no|without)[ \t]+)"
    r"((?:(?:light-brown|dark-brown|mid-brown|grey-brown|gray-brown|brownish"  # ("diffuse regular light-brown pigmentation")
    r"|brown|dark|light|black|blue|grey|gray|tan|pink|red|small|large|fine|thin|thick|thickened|broadened|prominent|short|long"
    r"|few|several|multiple|scattered|peripheral|central|eccentric|discrete|tiny|subtle|focal|reticular|clustered|numerous)[ \t]+){1,2})"
    r"(?=(?:" + _ANY_NOUN + r"|blotch)(?![\w-]))")
# ... but not a colour of regression before its noun: "no blue regression" denies the blue areas, not regression
# (before: read regression ABSENT, also beside "white scar-like regression")
_REGRESSION_COLOUR_BEFORE_RE = re.compile(
    r"(?:[\w-]+[ \t]+)?(?:blue|grey|gray)[ \t]+(?=(?:" + "|".join(re.escape(n) for n, k in _NOUN_OF.items() if k == "regression_structures") + r")(?![\w-]))")
# ... and a comma between them: "?irregular, thickened pigment network" is one network, in doubt (before: the thickened
# one read atypical on its own, once "thickened" was a grade)
_GRADE_COMMA_DESCRIBED_RE = re.compile(
    r"((?<![\w/-])(?:atypical|typical|irregular|regular|atyp\.|typ\.|irreg\.|reg\.))(,)(?=[ \t]+(?:(?:thick|thickened|broadened|prominent|fine|thin|dark"
    r"|brown|reticular)[ \t]+){1,2}(?:" + _ANY_NOUN + r")(?![\w-]))")
# a comma between pigmentation and its two grade words: "blue-black pigmentation, diffuse and regular" (before: read
# nothing; with no comma it was read), blanked
_PIGMENTATION_COMMA_GRADE_RE = re.compile(
    r"(?<=pigmentation),(?=[ \t]+(?:diffuse|locali[sz]ed|regular|irregular)(?:[ \t]*,[ \t]*|[ \t]+(?:and|but)[ \t]+|[ \t]+)(?:diffuse|locali[sz]ed|regular|irregular)(?![\w-]))")
# a template's filled field, its value in braces after the colon: "Pigment network: {Typical}" (before: read nothing)
_BRACED_VALUE_RE = re.compile(r"(?<=:)[ \t]*\{[^{}\n]{1,40}\}")
# ... and a noun, a word or three that say when, how surely or what it looks like, then its grade: "network still
# typical", "network now atypical", "network definitely typical", "network agreed typical", "Network unchanged -
# typical", "network: reticular, regular", "Network: peripheral, delicate, regular" (the grade follows its noun as the
# abbreviated style writes it; before: all but the first two read nothing). Not a word that makes it partial ("mostly")
_WORDS_BEFORE_GRADE_RE = re.compile(
    r"((?<![\w/-])(?:" + _ANY_NOUN + r")(?:[ \t]*:[ \t]*|[ \t]+))((?:(?:is|are)[ \t]+)?(?:(?:still|now|definitely|clearly|unchanged|agreed|reticular"
    r"|delicate|peripheral|fine|thin|overall|entirely|uniformly|also|in fact|actually|indeed|a few|few|some|scattered|small|y|yes)"
    r"(?:[ \t]*[,-][ \t]*|[ \t]+)){1,3})"
    r"(?=(?:typical|atypical|regular|irregular)(?![\w-])(?![ \t]+(?:" + _ANY_NOUN + r")(?![\w-])))")
# ... a colon with no space after it, "NETWORK:ATYPICAL;;STREAKS:ABSENT" (before: the network read nothing), and a grade in
# square brackets, "PN: [atypical]" (a tick box, "[x]", and "[REDACTED]" stay as they are)
_TIGHT_COLON_RE = re.compile(r"((?<![\w/-])(?:" + _ANY_NOUN + r")):(?=(?:typical|atypical|regular|irregular|absent|present)(?![\w-]))")
_BRACKETED_GRADE_RE = re.compile(r"(?<=:)([ \t]*)\[((?:typical|atypical|regular|irregular|absent|present))\]")
# a typing slip that swaps two letters of a criterion's word ("netwrok", "irregualr", "viel"): read as the word (same
# length, so positions are kept)
_SWAPPED_LETTERS: dict[str, str] = {
    w[:i] + w[i + 1] + w[i] + w[i + 2:]: w
    for w in ("network", "irregular", "regular", "globules", "streaks", "vessels", "regression", "atypical", "typical", "pigmentation",
              "pigment", "pigmented", "dotted", "hairpin", "arborizing", "arborising", "veil")
    for i in range(len(w) - 1) if w[i] != w[i + 1]
}
_SWAPPED_LETTERS.pop("evil")  # (a word of its own)
_SWAPPED_LETTERS_RE = re.compile(r"(?<![\w-])(?:" + "|".join(_longest_first(_SWAPPED_LETTERS)) + r")(?![\w-])")
# a section header that negates its section: "Absent: streaks, BWV", "Not seen:\n- BWV"
_SECTION_RE = re.compile(r"(?m)(?:^|(?<=\.) )[ \t]*(?:[-*•][ \t]*)?([a-z0-9][\w \t/-]{0,40}?)[ \t]*:")


# a grade word that qualifies no noun of its own after a graded mention, before the next mention or the sentence's
# end: "PN: typical, focally atypical", "D/G: regular and irregular", "PN typical / atypical" (before: the first grade
# read); "atypical PN, irregular streaks" names a second finding, whose mention starts at its grade
_DANGLING_GRADE_RE = re.compile(
    r"(?<![\w-])(?:atypical|typical|irregular|regular|atyp\.|typ\.|irreg\.|reg\.)(?![\w-])"
    r"(?!\s*(?:" + _ANY_NOUN + r")(?![\w]))"  # ("irreg. streaks -": the streaks')
)
# the criteria whose grades are (a)typical or (ir)regular: a second such word after one of their mentions is a second
# grade ("PN: typical, focally atypical"), after a vessel or regression pattern it is not ("dotted vessels (regular
# distribution)": before, not read)
_TWO_GRADES_CRITERIA = frozenset({"pigment_network", "streaks", "pigmentation", "dots_and_globules"})
# a noun of these criteria, a comma, then its grade alone: "reticular network, regular throughout", "delicate peripheral
# network, regular, with a central white patch" (before: read neither way; a grade that heads a noun of its own, "no
# streaks, regular dots", is that noun's). _normalised drops the comma
_COMMA_BEFORE_GRADE_RE = re.compile(
    r"((?<![\w/-])(?:" + "|".join(re.escape(n) for n in _NOUN_OF_GROUP if _NOUN_OF[n] in _TWO_GRADES_CRITERIA)
    + r"))(,)(?=[ \t]+(?:typical|atypical|regular|irregular)(?![\w-])(?![ \t]*(?:" + _ANY_NOUN + r"|[\w-]+[ \t]+(?:" + _ANY_NOUN + r"))(?![\w-])))")
_SENTENCE_END_RE = re.compile(r"[;\n]|(?<!pigm)(?<!atyp)(?<!irreg)(?<!reg)(?<!typ)(?<!dr [a-z])(?<!dr\. [a-z])\.(?:\s|$)")  # ("Dr K. described")


# a value word after a noun: it is stated, not bare ("BWV present - ?melanoma", "BWV: seen", "BWV +")
_VALUE_AFTER_RE = re.compile(r"\s*:?\s*(?:present|seen|yes|positive|pos\.?|\+ve|\+)(?![\w])")


def _sentence_end(end: int, sentence_ends: list[int]) -> int:
    """Where the sentence of a mention that ends at ``end`` ends (the text's end for the last)."""
    after = bisect.bisect_left(sentence_ends, end)
    return min(sentence_ends[after] if after < len(sentence_ends) else 1 << 30, end + SENTENCE_REACH)


# how far around a mention its sentence and clause are read (the words that put it in the past, in a plan, in doubt, that
# deny it): a run-on dictation or a pasted history without a full stop is one sentence, and each of its mentions read all
# of it before, so the time grew with the square of the text's length (10 kB: 2.7 s; "BWV + " repeated over 4 kB: 4.7 s,
# 20 kB: 31 s). A sentence or clause that goes on further is read as if it ended there
SENTENCE_REACH = 400


def _sentence_start(start: int, sentence_ends: list[int]) -> int:
    """Where the sentence (or line, or ';' clause: :data:`_SENTENCE_END_RE`) of the mention at ``start`` starts, at most
    :data:`SENTENCE_REACH` characters before it."""
    sentence = bisect.bisect_right(sentence_ends, start) - 1
    return max(sentence_ends[sentence] if sentence >= 0 else 0, start - SENTENCE_REACH)


def _in_negated_series(lowered: str, start: int, bare: bool, sentence_ends: list[int], heads: list[re.Match],
                       head_ends: list[int]) -> bool:
    """Whether the phrasing at ``start`` is an item of a series of phrasings that a list head ("no", "without",
    "lacking", "no evidence of"...) opens in its sentence and "or" / "nor" joins: "no atypical PN, irregular streaks or
    BWV", "no evidence of atypical PN, streaks or BWV" deny every item up to the one the last "or" / "nor" joins
    (before: the graded and bare ones after the first read PRESENT; "no streaks or BWV, irreg. D/G" reads D/G). Past it,
    or with no "or" / "nor", a graded item may say what the lesion has ("no streaks, atypical PN and BWV" reads both), but
    a ``bare`` noun among the series' first, bare items is ambiguous ("no streaks, BWV, PN": the veil is not read PRESENT).
    ``sentence_ends`` / ``heads`` / ``head_ends``: where each sentence of ``lowered`` ends, its list heads and where they end
    (read once per text)."""
    last = bisect.bisect_right(head_ends, start) - 1
    if last < 0 or heads[last].start() < _sentence_start(start, sentence_ends):
        return False
    head = heads[last]
    pos, starts, last_joined, bare_run = head.end(), [], 0, 0
    while (phrase := _PHRASE_RE.match(lowered, pos) or _NOUN_RE.match(lowered, pos)) is not None:  # ("streaks": a noun only)
        starts.append(phrase.start())
        if (bare_run == len(starts) - 1 and (phrase.re is _NOUN_RE or _PHRASE_OF_GROUP[phrase.lastindex - 1] in _NOUN_OF)
                and not _VALUE_AFTER_RE.match(lowered, phrase.end())):
            bare_run += 1  # the series' first items that are bare nouns ("no streaks, BWV, PN"; not "no streaks, BWV present")
        sep = _LIST_SEP_RE.match(lowered, phrase.end())
        if sep is None:
            break
        if (sep.group(1) or sep.group(2) or sep.group(3)) in ("or", "nor"):
            last_joined = len(starts) + 1  # the series runs to the item this "or" joins ("no A or B, C": C is not in it)
        pos = sep.end()
    return start in starts[1:last_joined] or (bare and start in starts[1:bare_run])


def _another_grade_after(lowered: str, end: int, next_mention: int, value: str) -> bool:
    """Whether another grade word follows a graded mention ending at ``end``, on its own (before ``next_mention``,
    the next phrasing's start, and the sentence's end): the text gives the criterion two grades (a criterion graded
    typical / regular: see :data:`_TWO_GRADES_CRITERIA`). The same grade again is no other one: "a regular reticular
    network (typical)" (a network's typical is its regular)."""
    stop = _SENTENCE_END_RE.search(lowered, end, next_mention)
    limit = stop.start() if stop else next_mention
    grade = _DANGLING_GRADE_RE.search(lowered, end, limit + 40)  # (past the limit: the noun after a grade is looked at)
    if grade is None or grade.start() >= limit:
        return False
    irregular = ("atyp", "irreg")
    return grade.group(0).startswith(irregular) != value.split(" ")[-1].startswith(irregular)


# what follows a mention and puts it in the past or in a hypothesis: "BWV, now resolved", "BWV seen before",
# "BWV would prompt excision", "should BWV develop", "when BWV appears"
_PAST_OR_HYPOTHETICAL_AFTER_RE = re.compile(
    r"\s*[,;]?\s*(?:(?:is|was|has|have|had|now|since|since then|seen|in \d{4})[, ]+)*(?:resolved|gone|disappeared|faded|vanished"
    r"|cleared|before|previously|earlier)(?![\w-])|\s+(?:would|should|will|may|might|could|appears?|develops?|emerges?|arises?)(?![\w-])"
)


def _denied_around(lowered: str, start: int, end: int, bare: bool, sections: tuple[list[int], list[bool]]) -> bool:
    """Whether the text around a present or graded mention ``lowered[start:end]`` denies it or leaves it blank: a
    denial or blank right after it, an empty box before it, "non" before its grade, a negating section header (``sections``, from
    :func:`_sections`), and for a ``bare`` noun one denial after it and more nouns."""
    return bool(_TRAILING_DENIAL_RE.match(lowered, end) or _BOX_BEFORE_RE.search(lowered, max(0, start - 6), start)
                or (_GRADE_START_RE.match(lowered, start) and _NON_BEFORE_GRADE_RE.search(lowered, max(0, start - 6), start))
                or _PAST_OR_HYPOTHETICAL_AFTER_RE.match(lowered, end)
                or (bare and _SHARED_ABSENT_RE.match(lowered, end)) or _negated_section(sections, start))


# a lesion's label in a text: "Lesion 2:", "lesion B has", "mole #3 (", "L1:" ("lesion 2 mm", "lesion c. 7 mm", "mole 2 years"
# are no labels). Two labels make a text about several lesions ("Lesion 1: BWV; lesion 2: no BWV", "lesion A has BWV,
# lesion B does not"): which one the image shows it does not say, so none of its findings is read; one label alone is a
# mole map's name of the imaged lesion ("Lesion 3 (left scapula): atypical PN"), and read
_LESION_LABEL_RE = re.compile(
    r"(?<![\w-])(?:(?:lesion|naevus|nevus|mole)\s*(?:#\s*|no\.\s*)?([1-9]|[a-c]|i{1,3})(?=\s*[:)(,;-]|\s+(?:has|have|had|with|without|shows?|is|was|does|did)(?![\w-]))"
    r"|l([1-9])\s*:"
    # an audit's or a case series' cases: "Case 1: 61M, atypical network + BWV; Case 2: 34F, regular globules" (before:
    # every case's findings read as the imaged lesion's)
    r"|case\s*(?:#\s*|no\.\s*)?(\d{1,3})(?=\s*[:)(,;-]|\s+(?:has|have|had|with|without|shows?|is|was|does|did)(?![\w-]))"
    # ... or a list's letters at its lines' starts: "A - new irregular streaks at 6 months -> MIS\nB - new regression ..."
    r"|(?:^|(?<=\n))[ \t]*([a-d])[ \t]*(?:-|\))[ \t]"
    # ... or "(a) L scapula: shave; ... / (b) R flank: excision; ...", "A: L shoulder - dermoscopy: ... / B: R shoulder - ..."
    # (a time-out's procedures, an order's specimens): a letter in brackets or before a colon, then a side and a site (a
    # letter and a colon alone may be a note's part, "A: dressing changed")
    r"|(?:^|(?<=\n))[ \t]*\(?([a-d])[ \t]*[):][ \t]+(?=(?:l|r|left|right)[ \t]+[a-z]{3})"
    # ... or patients numbered in a log: "Pt 1: typical network. Pt 2: irregular streaks, BWV present." (or a note's
    # headings: "## Pt 1 - BCC nose / ## Pt 2 - naevus back"), or a teaching panel's: "a) typical network (patient 1),
    # b) irregular streaks (patient 2)"
    r"|pt\.?[ \t]*(\d{1,2})[ \t]*(?::|-[ \t])|\(patient[ \t]*(\d{1,2})\)"
    # ... or a day list's appointments: "08:30 Mr A - SK, hairpin vessels\n08:45 Ms B - BCC, arborizing"
    r"|(?:^|(?<=\n))[ \t]*\d{1,2}[:.]\d{2}[ \t]+(?:mr|mrs|ms|miss|mx|dr)\.?[ \t]+([a-z][\w'-]*)"
    # ... or sites numbered in a surgical plan: "Site 1 - L nasal sidewall: arborising vessels. Site 2 - R cheek: ..."
    r"|site[ \t]*(?:#[ \t]*)?([1-9])(?=[ \t]*[:)(,;-]))"
)
# ... and a text that says several lesions were imaged, without saying which image this is: "Dermoscopy done on both",
# "Dermoscopy images saved for all three", "no lesion designated as the index lesion" (before: every lesion's findings
# read as the image's; "Two lesions examined" alone is not one: such texts most often say which one was imaged), or that
# leaves it open ("I'll sort out which is which", "no single lesion was singled out for photography", "does not say which
# mole is the worry"), numbers them in a
# range ("Lesions 1-6 (back): arborizing vessels on most") or gives findings to them all ("three naevi ...; all showed a
# regular network")
_SEVERAL_IMAGED_RE = re.compile(
    r"(?<![\w-])(?:(?:dermoscopy|dermoscopic images?|images?|photos?)[ \t]+(?:[\w-]+[ \t]+){0,2}?(?:on|of|for)[ \t]+(?:both|all(?:[ \t]+(?:two|three|four|\d))?)"
    r"(?=[ \t]*(?:[.,;:)\n]|$|lesions|moles|sites|showed|shows|show|revealed|had|demonstrated))|no (?:lesion )?designated as (?:the )?index(?: lesion)?|no index lesion"
    r"|which is which|no (?:single )?(?:lesion|mole|na?evus) (?:was )?singled out"
    # ... "no single lesion recorded as the index", "None chosen for imaging" (several looked at, none the image's)
    r"|no (?:single )?(?:lesion|mole|na?evus) (?:was )?(?:recorded|chosen|named|marked) as (?:the )?index"
    r"|none (?:was |were )?(?:chosen|selected|picked) for (?:imaging|photography|dermoscopy|the image)"
    # ... a table of patients or cases, a header and two rows or more: "Pt | Lesion | Dscopy / AB | R shin | comma vessels / CD
    # | ...", "# | Date | Dx | Key features / 1 | 02/07 | BCC | arborising vessels / 2 | ..."
    r"|(?m:^[ \t]*(?:pt|patient|name|case|#)[ \t]*\|[^\n]*\n(?:[^\n]*\|[^\n]*\n)+[^\n]*\|)"
    # ... "the referral does not say which mole is the worry", "Which image was under review was not recorded"
    r"|(?:does|did|do) not (?:say|state|specify|record|indicate) which|which (?:image|photo|lesion|mole|na?evus|one)(?![\w-])[^.\n]{0,30}?"
    r"(?:was|is) not (?:recorded|stated|known|clear|documented))(?![\w-])")
# ... where no index lesion is named ("the index lesion", "imaged today", "the one I photographed")
_SEVERAL_NAMED_RE = re.compile(
    r"(?<![\w-])(?:lesions[ \t]+\d{1,2}[ \t]*(?:-|to)[ \t]*\d{1,2}(?![\d/.-]|[ \t]*(?:mm|cm))"
    r"|(?:na?evi|nevi|moles|lesions)(?![\w-])[^.\n]{0,60}?(?<![\w-])(?:all|each|both)(?:[ \t]+(?:of them|two|three|four))?[ \t]+(?:showed|show|shows|had|have|has)"
    # ... or counts them and treats them alike, a line each: "Two lesions on the L ear today. / L helix: arborising vessels
    # ... / L preauricular: hairpin vessels ... / Both to be excised" (before: the helix's "no network" read as the image's)
    r"|(?:two|three|four|2|3|4)[ \t]+(?:[\w-]+[ \t]+){0,2}(?:lesions|moles|na?evi|nevi|papules|macules|nodules|spots)(?![\w-])[\s\S]*?(?<![\w-])"
    r"(?:(?:both|all(?:[ \t]+(?:two|three|four))?)[ \t]+(?:(?:to be|will be|are to be|were|are)[ \t]+)?(?:listed for|booked for|for|excised|excision"
    r"|biopsied|biopsy|removed|removal|referred|scoped|imaged|dermoscoped|sent)|(?:refer|excise|biopsy|remove|scope)[ \t]+(?:both|all|them)|each[ \t]+lesion)"
    # ... or looks at them together: "Dermoscopy of these: diffuse regular pigmentation", "Scoped all of them: typical
    # network throughout", "Looked at them with the dermatoscope: some show irregular dots", "Several scoped; most with ..."
    r"|(?:dermoscopy|dermatoscopy)[ \t]+of[ \t]+(?:these|them|all of them|each)|(?:scoped|dermoscoped|imaged|looked at)[ \t]+(?:all[ \t]+(?:of[ \t]+)?)?(?:them|these|all)"
    r"|(?:several|some|many|most|a few|all)[ \t]+(?:were[ \t]+)?(?:scoped|dermoscoped|imaged)"
    r"|(?:dermoscoped|scoped|imaged)[ \t]+(?:the[ \t]+|all[ \t]+)?(?:\d+|two|three|four|five|six|several)[ \t]+(?:[\w-]+[ \t]+){0,2}(?:lesions|moles|na?evi|nevi)"
    # ... or names sites a line each, "L shin: dermoscopy - dotted vessels ... R shin: dermoscopy - white structureless area"
    r"|(?:l|r|left|right)[ \t]+[a-z]+[ \t]*:[ \t]*dermoscop[\s\S]*?(?:l|r|left|right)[ \t]+[a-z]+[ \t]*:[ \t]*dermoscop\w*"
    # ... "Three naevi on the trunk looked at with the dermatoscope: one has ..., the others ...", a "Lesion list"
    r"|(?:two|three|four|five|several|multiple|many|2|3|4|5)[ \t]+(?:[\w-]+[ \t]+){0,2}(?:lesions|moles|na?evi|nevi)(?![\w-])[^.\n]{0,40}?"
    r"(?<![\w-])(?:looked at|examined|checked|viewed)[ \t]+with[ \t]+(?:the[ \t]+|a[ \t]+)?(?:dermatoscope|dermoscope)|lesion list"
    # ... "Three naevi dermoscoped: back - ...; L thigh - ...", "Three new pigmented macules ... examined dermoscopically",
    # "3 lesions dermoscoped on this patient", "my 3 moles (back, chest, arm) / Dr's notes against each"
    r"|(?:two|three|four|five|several|multiple|2|3|4|5)[ \t]+(?:[\w-]+[ \t]+){0,2}(?:lesions|moles|na?evi|nevi|macules|papules|spots)(?![\w-])"
    r"(?:(?!(?:one|only|the imaged|which|index)(?![\w-]))[^.;\n]){0,40}?(?<![\w-])(?:dermoscoped|scoped|imaged|examined dermoscopically)"
    r"|(?:two|three|four|five|2|3|4|5)[ \t]+(?:[\w-]+[ \t]+){0,2}(?:lesions|moles|na?evi|nevi)(?![\w-])[\s\S]*?(?<![\w-])(?:against|for)[ \t]+each(?![\w-])"
    # ... or a list's numbered patients: "1) Mrs A - for review of biopsy result\n2) Mr K - SDDI, ..."
    r"|(?m:^[ \t]*\d{1,2}[).][ \t]+(?:mr|mrs|ms|miss|mx)\.?[ \t][^\n]*\n(?:[^\n]*\n)*?[ \t]*\d{1,2}[).][ \t]+(?:mr|mrs|ms|miss|mx)\.?(?=[ \t]))"
    # ... or patients named in a log, "Pt 1 (Neema) - AKs, cryo. Pt 2 (Juma) - nodule neck, arborizing vessels" (where the log
    # names the lesion photographed today, that one is read)
    r"|pt\.?[ \t]*\d{1,2}[ \t]*\([^)\n]{0,30}\)[ \t]*[:-][\s\S]*?pt\.?[ \t]*\d{1,2}[ \t]*\([^)\n]{0,30}\)[ \t]*[:-]"
    # ... or gives them findings together, "All three: even fine network, regular dots", or apart, "two had a regular network
    # and one had irregular dots", "one had ... and the other had ...", "back x3 scoped: 2 regular network, 1 regression";
    # or will image them all, "Let's photograph all three", "I'll look at all of them with the scope"; or shows them side
    # by side, "Two lesions from the same patient ... Left: ... Right: ..." (before: each read as the image's; "I disagree
    # with both: ..." and "R1 and R2 both: ..." are one lesion's, a "both:" is a heading only at a line's or sentence's start)
    r"|(?:^|(?<=\n)|(?<=\] )|(?<=\. ))(?:both|all[ \t]+(?:two|three|four|five|\d))[ \t]*:|(?:one|two|three|both|2|3)[ \t]+(?:had|have|showed|show)(?![\w-])[^.;\n]{0,60}?(?:and|,)[ \t]+"
    r"(?:one|the other|the third|the others|1)[ \t]+(?:had|has|have|showed|shows)|x[ \t]*[2-9][ \t]+(?:scoped|dermoscoped|imaged)"
    # ... "dscopy pre-freeze ok x3": the look counted over several lesions (not its images: "dermoscopy images taken x3")
    r"|(?:dscopy|dermoscopy|scoped|dermoscoped)(?:[ \t]+(?!(?:images?|photos?|pictures?|views?|shots?|taken)(?![\w-]))[\w-]+){0,3}?[ \t]+x[ \t]*[2-9]"
    r"|(?:photograph|scope|image|dermoscope|look at)[ \t]+(?:all[ \t]+(?:of[ \t]+)?(?:two|three|four|five|them|these)|both)"
    r"|(?:two|three|four|2|3|4)[ \t]+(?:[\w-]+[ \t]+){0,2}(?:lesions|moles|na?evi|nevi)[ \t]+(?:from|of|in|on)[ \t]+the[ \t]+same[ \t]+(?:patient|day)"
    r")(?![\w-])")
_INDEX_NAMED_RE = re.compile(r"(?<![\w-])(?:index|(?:imaged|photographed|dermoscoped) today|(?:one|lesion) (?:i|we) (?:imaged|photographed|dermoscoped)"
                             r"|the (?:imaged|photographed|dermoscoped) (?:one|lesion)|the one (?:imaged|photographed|dermoscoped)|image attached\s*(?:=|:|is))(?![\w-])")
# ... and a series counted as a whole: "2WW referrals for suspected melanoma (n=42)", "BCC audit (n = 210)"
_SERIES_RE = re.compile(r"\(\s*n\s*=\s*\d+|(?<![\w-])n\s*=\s*\d{2,}")


_MONTHS = "january|february|march|april|may|june|july|august|september|october|november|december"  # (a month named in a date: "at her visit on 4 March", "in March ... had shown")

# the checklist's weights as a slide or a handout writes them: "Major criteria (2 points)", "Minor criteria (1 point each)"
_CHECKLIST_WEIGHTS = r"(?:major|minor) criteria\s*\(\s*\d\s*(?:points?|pts?)(?:\s+each)?\s*\)"
# a sentence (or line, or ';' clause) about the checklist, not the lesion, at its start: "The 7PCL includes BWV, atypical
# PN and atypical vessels." (before: read the veil PRESENT and the network ATYPICAL; "Checklist includes: atypical PN ✓"
# is a filled form, and "Criteria are met: ..." states them)
_CHECKLIST_SENTENCE_RE = re.compile(
    r"\s*(?:[-*•][ \t]*)?(?:[a-z][a-z ]{0,24}:\s*)?(?:(?:the|this|our|a)\s+)?(?:[\w-]+\s+)?(?:7\s*pcl|7-?\s*point check-?list|seven-?\s*point check-?list|check-?list)"
    r"\s+(?:includes|comprises|consists of|covers|lists|gives|assigns|awards|scores|weights)(?![\w-])(?!\s*:)"
    # ... or taught: "We covered the 7-point checklist: atypical network, BWV ... score 2" (a portfolio, not a lesion)
    r"|\s*(?:(?:we|i)\s+)?(?:covered|taught|revised|discussed|went through)\s+(?:the\s+)?(?:7\s*pcl|7-?\s*point check-?list|seven-?\s*point check-?list)"
    # ... or the checklist's own weights: "Major criteria (2 points): atypical network, BWV, ..." (a slide, not a lesion)
    r"|\s*(?:[-*•][ \t]*)?" + _CHECKLIST_WEIGHTS +
    # ... or recited: "INT: Just to remind you, the seven points are atypical network, blue-whitish veil, ..." (a reader
    # study's interviewer, not a lesion)
    r"|\s*(?:[a-z][a-z0-9 ]{0,24}:\s*)?[^.;\n]{0,40}?(?<![\w-])the\s+(?:seven|7)\s+(?:points|criteria|items)\s+are(?![\w-])")
# ... and one that puts what follows in the past or in another's words at its start: "At that time dermoscopy showed
# irregular globules.", "Dermoscopy at baseline (2020): typical network, regular globules.", "Original lesion had regular
# globules.", "Hx: MM excised 2017 (BWV, atypical network)", "Previous dermoscopy (2024): PN atypical, BWV present",
# "Referral said 'irregular streaks'.", "GP reported BWV.", "Practice nurse comment (not verified): 'BWV +'" (before:
# the clause's own words only, so every item after the first comma was read as today's). Up to a word of today, "now",
# "today", "currently": "Previously typical network, now atypical network" reads the atypical one
_PAST_OR_REPORTED_SENTENCE_RE = re.compile(
    # after a short header of its own ("NP: Patient's previous dermoscopy ...", "Second opinion: Dr K. described ...")
    r"\s*(?:[-*•][ \t]*)?(?:[a-z][a-z ]{0,24}:\s*)?(?:(?:dermoscopy|dermatoscopy|the lesion|this lesion|it)\s+)?"
    # an earlier visit, dated or not: "At that visit dermoscopy showed ...", "Last visit the 7-point score was 4 (...)",
    # "Seen 14/03/2026: ... had a typical network", "During pregnancy (Feb 2026) the naevus had ...", "At the clinic visit of
    # 2023-06-14 dermoscopy showed ...", "At her visit on 4 March the dermoscopy showed ..."
    r"(?:at that visit|(?:at |on )?(?:the |her |his )?(?:last|previous|prior) visit|during pregnancy|seen\s+(?:on\s+)?\d{1,4}[/.-]\d{1,2}[/.-]\d{2,4}"
    r"|(?:at|on|during)\s+(?:the|her|his|their)\s+(?:[\w-]+\s+)?visit\s+(?:of|on)\s+(?:\d[\d/.-]*\d|\d|(?:" + _MONTHS + r")(?![\w-]))"
    # ... a session named by its month or its week: "At the March session the image showed ...", "Last week's image: ..."
    r"|(?:at|in|during)\s+(?:the|her|his|their)\s+(?:(?:" + _MONTHS + r")(?:\s+(?:19|20)\d\d)?|(?:19|20)\d\d)\s+(?:session|visit|appointment|review|clinic|consultation|admission|stay|attendance)"
    r"|last (?:week|month)|yesterday"
    # ... others' answers to a poll: "Listener poll results are in for last week's image: 62 percent of you said there was a
    # blue-white veil", "Most of you voted for BWV" (a podcast's or a quiz's audience, not a reading)
    r"|(?:listener|audience|reader|viewer|twitter|online)s?'?\s+(?:poll|vote|survey)|[^.;\n]{0,60}?(?<![\w-])(?:\d+\s*(?:percent|per cent|%)|most|many|half|some|a third|a quarter)"
    r"\s+of\s+(?:you|the audience|respondents|listeners|readers|viewers|voters|participants)\s+(?:said|thought|voted|felt|chose|picked|answered|went for)"
    # another's reading: "Patient's previous dermoscopy (2025, Dr Chen) documented ...", "Findings (trainee, Dr A. Kowalski): ...",
    # "Summary of the first report: ...", "Dr K. described regular globules.", "Reader A said hairpin vessels"
    r"|(?:patient|pt)'?s previous|(?:her|his|their) previous|findings\s*\(\s*(?:trainee|registrar|resident|(?:medical\s+)?student)"
    r"|summary of (?:the )?(?:first|previous|original|external|other|referral) (?:report|reading|opinion)"
    r"|(?:dr\.?\s+[a-z]+\.?|reader\s+[a-z0-9])\s+(?:described|said|says|reported|wrote|noted|thought|felt|documented)"
    r"|(?:i |we )?explained (?:that|what|to (?:her|him|them|the patient))"
    r"|at that time|at the time|initially|originally|(?:the\s+)?original(?:\s+lesion)?|(?:at|on)\s+baseline|baseline\s*:"
    r"|(?:at|on)\s+(?:the\s+)?(?:first|initial|last)\s+(?:visit|review|dermoscopy|examination)|(?:the\s+)?last time|in the past"
    r"|(?:hx|history)\s*[:-]|(?:the\s+)?excised lesion|previous(?:ly)?|(?:the\s+|an\s+)?earlier (?:dermoscopy|image|photo)|old notes|past\s*:|last year"
    # ... records from elsewhere: "Records from Dr P. Lindqvist (2021) describe irregular streaks on a lesion ..."
    r"|(?:the\s+)?(?:medical\s+)?records?\s+(?:from|of)\s+[^;\n]{0,40}?(?:describe|document|mention|show|note|record|state|report)(?:s|d|ed)?"
    r"|pre-?op(?:erative)? dermoscopy|findings from|since excision|excised in|before one year|years ago|fhx|fh\s*:"
    # a note copied forward, an earlier state, a trainee's or another's reading: "[Copied from 12/03]: ...", "Was: BWV
    # present", "Had regular streaks at age 9", "Registrar: BWV present", "Medical student recorded 'BWV'"
    r"|[\[(<]*\s*cop(?:ied|y)(?:[ -]forward| fwd| forward)?|(?:was|then|prev)\s*:|had|before excision|training note|teaching note"
    r"|(?:the\s+)?(?:registrar|reg|spr|trainee|(?:medical\s+)?student)(?:'s)?(?:\s+(?:note|draft))?\s*(?::|recorded|says|said|wrote|noted)"
    r"|(?:she|he|the patient|patient|pt) (?:was told|has read|read online)|(?:gp|referral) letter quotes"
    r"|your (?:letter|referral|dermoscopy description|description)\s+(?:described|describes|mentioned|mentions|said|says|noted|reported)"
    r"|(?:the\s+)?(?:consultant|first reader|other reader)\s+(?:felt|thought|said|reported|described)|comparison with (?:19|20)\d\d"
    r"|in (?:19|20)\d\d,? (?:(?:this|the) lesion (?:had|showed|was)|there (?:was|were)|it (?:had|showed)|(?:the |her |his )?(?:dermoscopy|dermatoscopy|image|photo))"
    r"|past (?:medical )?history\s*[:-]|pmh\s*[:-]"
    # ... a bracketed header that dates it: "[printed clinic letter, dictated last month] Dermoscopy showed a regular network"
    r"|\[[^\]\n]{0,60}?(?<![\w-])(?:last (?:week|month|year)|(?:weeks|months|years) ago)[^\]\n]{0,40}\]"
    # ... a first report's: "The first report's dermoscopy (taken 12 March) described irregular streaks."
    r"|(?:the\s+)?(?:first|initial)\s+(?:report|referral|letter|review|reading)'s"
    r"|(?:the\s+)?(?:referral|referrer|referring (?:gp|doctor|clinician|dermatologist)|gp|surgeon|pathologist|locum|(?:practice\s+)?nurse"
    r"|student|ai tool|pathology request form)(?:'s)?"
    r"(?:\s+(?:letter|note|notes|report|text|comment))?\s*(?:said|says|stated|states|reported|reports|mentioned|mentions|described"
    r"|describes|noted|notes|thought|thinks|wrote|writes|queried|queries|flagged|asked)"
    r"|(?:the\s+)?(?:referral|referrer|gp|surgeon|pathologist|locum|(?:practice\s+)?nurse)(?:'s)?\s+(?:letter|note|notes|report|referral|comment)"
    r"(?:\s*\([^)]*\))?\s*:"
    # ... a specialist's letter: "Oncologist's letter: primary L calf (BWV, irregular streaks)" (a letter is from elsewhere;
    # not "Dermatologist's note:", which may head the writer's own entry)
    r"|(?:the\s+)?(?:[a-z]+ologist|oncologist|physician|surgeon|consultant)'s\s+letter(?:\s*\([^)]*\))?\s*:)(?![\w-])")
# a sentence that says whose words its findings are, after them: "Dermoscopy pre-op had shown irregular streaks (per
# referral letter)" (before: read as the writer's own, today's)
_RELAYED_AFTER_RE = re.compile(r"\(\s*(?:as\s+)?per\s+(?:the\s+)?(?:referral|referrer|referring|gp|letter|summary|report|notes?|records?|outside|external"
                               r"|private|previous|old|patient|family)[^)\n]{0,40}\)"
                               # ... or that nobody has verified them yet: "7PCL scored by medical student (not yet verified): APN 2, BWV 2"
                               r"|\(\s*(?:not\s+(?:yet\s+)?verified|unverified|to be verified|awaiting verification)\s*\)[^.;\n]*")
# ... and a look the text dates, taken or made on a named day, where a later one follows ("The photographs and dermoscopy
# taken on 14 June 2023 showed a regular network ... At your appointment on Tuesday ... it now has radial streaming",
# "examined the lesion with a dermatoscope on 2 February and recorded a typical network ... When I saw you on 28 March
# the mole had changed"): the dated one is the earlier
_DATED_LOOK_RE = re.compile(r"(?<![\w-])(?:taken|done|performed|examined|scoped|dermoscoped|imaged|photographed)(?![\w-])[^.;\n]{0,40}?(?<![\w-])(?:on|in)[ \t]+"
                            r"(?:\d{1,2}(?:st|nd|rd|th)?[ \t]+)?(?:" + _MONTHS + r")(?:[ \t]+(?:19|20)\d\d)?(?![\w-])")
_LATER_LOOK_RE = re.compile(r"(?<![\w-])(?:now|today|currently|(?:has|had)[ \t]+(?:since[ \t]+)?changed|when i saw (?:you|her|him|them))(?![\w-])")
# ... and a line of the checklist's weights, to its end: "Minor criteria (1 point each): irregular streaks; irregular
# pigmentation; ..." (its ';' ends the sentence :data:`_CHECKLIST_SENTENCE_RE` looks at)
_CHECKLIST_WEIGHTS_LINE_RE = re.compile(r"(?m)^[ \t]*(?:[-*•][ \t]*)?" + _CHECKLIST_WEIGHTS + r"[^\n]*")
_TODAY_RE = re.compile(r"(?<![\w-])(?:now|today|currently|at present|this visit|this time|on review today)(?![\w-])")
# a plan that runs to its sentence's end: "SDDI in 3/12 - look for asymmetric enlargement, new irregular dots or an
# atypical network" (before: the clause's own words only, so the dots and the network were read as seen)
# ... or, earlier in its sentence, a time it had them: "Known naevus, first seen in 2024 when it had dotted vessels and a
# few irregular globules." (up to a word of today after it)
_PAST_BEFORE_RE = re.compile(
    r"(?<![\w-])(?:when|where|at which time)\s+(?:it|the lesion|this lesion|the na?evus|the mole|there)\s+(?:had|showed|was|were|displayed)(?![\w-])"
    # the pluperfect of a dated look, "The dermoscopy in March had shown a typical network" (undated, "the dermoscopy had
    # shown an atypical network" is the imaged one's, before its excision), and another's note, "The treating
    # dermatologist's pre-excision note records a blue-white veil" (before: both read as today's)
    r"|(?<![\w-])(?:in|on|from)\s+(?:" + _MONTHS + r"|(?:19|20)\d\d)"
    r"(?![\w-])[^.;\n]{0,40}?(?<![\w-])had\s+(?:shown|demonstrated|revealed|displayed|documented|recorded)(?![\w-])"
    # ... a dated excision or image: "the lesion on the scalp, excised in 2022, had ...", "Images from 2021 showed ..."
    # ... "Her 2023 melanoma showed ...", "re-review of that March 2025 image", "the dermoscopy on 12/01/2025 showed ...",
    # "GP dermoscopy on 03/02 recorded ..."
    r"|(?<![\w-])(?:19|20)\d\d\s+(?:melanoma|lesion|na?evus|nevus|mole|image|photo|picture|dermoscopy|primary|excision)\s+(?:showed|had|demonstrated|revealed)(?![\w-])"
    r"|(?<![\w-])(?:that|the)\s+(?:(?:" + _MONTHS + r")\s+)?(?:19|20)\d\d\s+(?:image|photo|picture|dermoscopy)"
    r"|(?<![\w-])(?:dermoscopy|image|photo)\s+(?:on|of|dated)\s+\d{1,2}[/.-]\d{1,2}(?:[/.-]\d{2,4})?\s+(?:showed|had|demonstrated|revealed|recorded|documented|described|noted)(?![\w-])"
    r"|(?<![\w-])excised\s+in\s+(?:19|20)\d\d\s*,|(?<![\w-])(?:from|in)\s+(?:19|20)\d\d\s+(?:showed|had|demonstrated|revealed)(?![\w-])"
    r"|(?:'s|(?<![\w-])(?:pre-?excision|pre-?op(?:erative)?|referral|earlier|original|outside|external))\s+(?:[\w-]+\s+)?(?:note|letter|report)s?"
    r"\s+(?:records|recorded|documents|documented|describes|described|mentions|mentioned|notes|noted|says|said|reports|reported)(?![\w-])"
    # ... a dated excision's pluperfect: "In-transit nodule excised 2024 had shown BWV" (an undated "the dermoscopy had shown"
    # is the imaged lesion's before its excision, and read)
    r"|(?<![\w-])excised\s+(?:in\s+)?(?:19|20)\d\d\s+had\s+(?:shown|demonstrated|revealed)(?![\w-])"
    # ... another's dermoscopy told by a pronoun ("They said dermoscopy showed regression with peppering", "they say
    # dermoscopy showed comma vessels") or an algorithm ("the AI report lists irregular streaks"), and a dermoscopy dated
    # by how long ago ("Dermoscopy R thigh lesion 1 year ago (vein clinic letter 2023): dotted vessels")
    r"|(?<![\w-])(?:they|she|he)\s+(?:said|say|says|reported|reports|told\s+(?:me|us)|mentioned|wrote|writes)\s+(?:that\s+)?(?:the\s+)?(?:dermoscopy|dermatoscopy|image|photo)"
    r"|(?<![\w-])(?:ai|algorithm|software)(?:'s)?(?:\s+(?:report|output|tool|result))?\s+(?:lists|listed|flags|flagged|reports|reported|suggests|suggested)(?![\w-])"
    r"|(?<![\w-])(?:dermoscopy|dermatoscopy|image|photo)s?\s+(?=[^.;\n]{0,80}?(?<![\w-])ago(?![\w-]))(?:(?!(?:noticed|appeared|arose|started|first|present|since|grown|growing|changing|changed|new)(?![\w-]))[\w-]+\s+){0,6}?"
    r"(?:\d+|a|an|one|two|three|four|five|six)\s+(?:years?|months?|weeks?)\s+ago(?![\w-])"  # (not "Dermoscopy of the lesion noticed 3 months ago: ...")
    # ... "back in March this one had a typical network", and what a colleague found ("our own clinician imaged it in clinic on
    # Monday and found no veil and a typical network")
    r"|(?<![\w-])back in (?:(?:" + _MONTHS + r")|(?:19|20)\d\d)(?![\w-])"
    r"|(?<![\w-])(?:clinician|doctor|colleague|consultant|dermatologist|registrar|nurse)\s+(?:imaged|examined|scoped|dermoscoped|looked at)\s+it(?![\w-])"
    r"[^.;\n]{0,40}?\s+and\s+found(?![\w-])"  # (not "The practice nurse found a changing mole and I dermoscoped it: ...")
    # ... what another tells the writer ("Dr Ferris last week, who tells me the mole ... has an irregular network"; not a
    # patient's "she told me 'no blue-white veil'", the doctor's words) or what is reported ("her lesion reportedly had ...")
    r"|(?<![\w-])who\s+(?:tells|told|informs|informed)\s+(?:me|us)(?![\w-])|(?<![\w-])(?:reportedly|apparently|allegedly)(?![\w-])"
    # ... and another's reading told in the third person: "the dermatologist present confirmed her reading - irregular
    # streaks and a veil" (minutes; not the writer's "I confirmed my reading", nor "her images", the patient's)
    r"|(?<![\w-])(?:confirmed|confirms|gave|gives|stated|states|repeated|reiterated|restated|maintained|presented|summari[sz]ed|shared)"
    r"\s+(?:her|his|their)\s+(?:own\s+)?(?:reading|interpretation|impression|opinion|assessment|findings)(?![\w-])")
# ... or after it: "irregular streaks had been documented before excision" (a mention then, not now), and a definition
# or a general statement: "arborizing vessels are typical of BCC", "peppering corresponds to regression"
_PAST_AFTER_RE = re.compile(
    r"[ \t]+had[ \t]+been[ \t]+(?:documented|noted|recorded|seen|described|reported|present|shown)(?![\w-])"
    r"|[ \t]+(?:is|are)[ \t]+(?:[\w-]+[ \t]+)?(?:typical|characteristic|classic|pathognomonic|diagnostic)[ \t]+(?:of|for)(?![\w-])"
    r"|[ \t]+(?:corresponds?[ \t]+to|refers?[ \t]+to|means|(?:is|are)[ \t]+(?:termed|called|defined[ \t]+as))(?![\w-])"
    # "a blue-white veil is a sign of melanoma", "listed wreath vessels as a feature of sebaceous hyperplasia"
    r"|[ \t]+(?:is|are|as)[ \t]+(?:a|an|one)[ \t]+(?:[\w-]+[ \t]+)?(?:sign|feature|clue|marker|criterion|hallmark)[ \t]+of(?![\w-])"
    # "comma vessels are considered benign"
    r"|[ \t]+(?:is|are)[ \t]+(?:generally[ \t]+|usually[ \t]+)?(?:considered|regarded)(?![\w-])"
    # "dotted vessels can be seen in Bowen's, psoriasis ..."
    r"|[ \t]+(?:can|may|could)[ \t]+(?:also[ \t]+)?be[ \t]+(?:seen|found)[ \t]+in(?![\w-])"
    # a checklist's weight taught: "and irregular streaks, also two points"
    r"|[ \t]*,[ \t]*also[ \t]+(?:one|two|1|2)[ \t]+points?(?![\w-])"
    # a rule of thumb: "arborizing vessels = think BCC"
    r"|[^.;\n]{0,40}?=[ \t]*think(?![\w-])")
# a value nobody stated after a phrasing: a template's "(auto-filled)", a disclosure's "[REDACTED]"
_UNSTATED_VALUE_AFTER_RE = re.compile(r"[ \t]*[\[(][ \t]*(?:auto-?filled|auto-?populated|pre-?filled|pre-?populated|template default|default|redacted|removed|withheld)[ \t]*[\])]")
# a form's options after a phrasing: "Pigmentation: absent / diffuse reg / local reg" (before: read ABSENT)
_OPTIONS_AFTER_RE = re.compile(r"[ \t]*/[ \t]*(?:absent|present|typical|atypical|typ\.?|atyp\.?|regular|irregular|reg\.?|irreg\.?|diffuse|local|locali[sz]ed)(?![\w-])")
# ... or later in its sentence, the visit it was seen at: "an eccentric irregular dark blotch when I saw him in January",
# or "then" ending it: "It showed an atypical network then." (last summer's photo; not "If BWV, then excise")
_EARLIER_VISIT_AFTER_RE = re.compile(r"(?<![\w-])when (?:it|this|the lesion) was (?:imaged|dermoscoped|photographed)[ \t]+in[ \t]+(?:19|20)\d\d(?![\w-])"  # ("... showed irregular dots when it was imaged in 2021")
                                     r"|(?<![\w-])when (?:i|we) (?:first )?(?:saw|examined|reviewed|imaged)(?![\w-])|(?<![\w-])then(?=[ \t]*(?:[.;!]|$))")
# ... or, in its clause, the year it was seen when the text goes on to today: "BWV noted in 2019; not seen today",
# "Blue-whitish veil seen at the 2019 visit; absent today", "irregular streaks (2021), now gone" (before: read PRESENT).
# Not when today's words keep it: "BWV noted in 2019, still present today"
_SEEN_IN_A_YEAR_AFTER_RE = re.compile(
    r"[ \t]*(?:(?:was|were)[ \t]+)?(?:(?:first|also|already)[ \t]+)?(?:(?:noted|seen|documented|recorded|present|described|reported|observed|visible)[ \t]+)?"
    r"(?:\(|(?:in|at|on|from)[ \t]+(?:the[ \t]+)?(?:[a-z]+[ \t]+){0,2}?)(?:19|20)\d\d(?!\d)")
_KEPT_TODAY_RE = re.compile(r"(?<![\w-])(?:and (?:still )?(?:now|today)|still|persists?|persistent|persisting|unchanged|again|remains?|as before|stable)(?![\w-])")


def _seen_in_an_earlier_year(lowered: str, end: int, clause_end: int, sentence_ends: list[int]) -> bool:
    """A present mention ending at ``end`` dated, in its clause, by a year the text later contrasts with today
    (:data:`_SEEN_IN_A_YEAR_AFTER_RE`)."""
    if not (dated := _SEEN_IN_A_YEAR_AFTER_RE.match(lowered, end)) or dated.end() > clause_end:
        return False
    today = _LATER_LOOK_RE.search(lowered, dated.end())
    return today is not None and not _KEPT_TODAY_RE.search(lowered, dated.end(), _sentence_end(today.end(), sentence_ends))


# a count over a series after a mention: "arborizing vessels were documented in 88% of BCCs", "BWV 2/6", "network atypical
# in 3, BWV in 2" (an audit's statistic, not the imaged lesion's finding; before: read as present)
_SERIES_COUNT_AFTER_RE = re.compile(
    r"[ \t]*(?:(?:was|were)[ \t]+(?:[\w-]+[ \t]+)?(?:documented|present|seen|found|recorded|noted)[ \t]+)?"
    r"(?:in[ \t]+\d+(?:\.\d+)?[ \t]*(?:%|(?:/|of)[ \t]*\d+)|\d+(?:\.\d+)?[ \t]*%|(?:in[ \t]+)?(\d+)[ \t]*/[ \t]*(\d+)(?![\d/])|in[ \t]+\d{1,3}(?=[ \t]*(?:[,;.)]|$)))")  # ("in 3," a count; "in 2026." a year)
_PLAN_BEFORE_RE = re.compile(r"(?<![\w-])(?:look|watch|monitor|check|review|assess|re-?assess|evaluate|re-?image)(?:ing)?\s+(?:specifically\s+|closely\s+|carefully\s+|particularly\s+|especially\s+)?for(?![\w-])"
                             # ... a request ("Please arrange dermoscopy ... and fax back findings (network, streaks, veil)")
                             # or what a condition typically shows ("Spitz naevus, which typically shows regular streaks")
                             r"|(?<![\w-])(?:please|pls|kindly)\s+(?:arrange|perform|do|send|fax|report|record|document|comment)(?![\w-])"
                             # ... or the next visit's ("Dermoscopy at next appointment for new globules or veil"), or
                             # examples shown ("given the leaflet showing examples of irregular streaks and veil")
                             r"|(?<![\w-])(?:next (?:appointment|visit|review)|examples? of|leaflet showing)(?![\w-])"
                             # ... or a rule for any lesion ("Do not freeze any lesion with an irregular pigment network, streaks or a veil")
                             r"|(?<![\w-])(?:any|every|all)\s+(?:[\w-]+\s+)?(?:lesions?|na?evi|moles?)\s+(?:with|showing|that shows?)(?![\w-])"
                             r"|(?<![\w-])(?:typically|classically|characteristically|usually)\s+(?:shows?|has|have|displays?|presents?\s+with)(?![\w-])"
                             # ... or a general statement: "Features commonly found in a melanoma of this thickness include ..."
                             r"|(?<![\w-])(?:features|findings|signs|structures)\s+(?:[\w-]+\s+){0,2}(?:found|seen|associated|described)\s+(?:in|with)(?![\w-])"
                             r"|(?<![\w-])(?:learned|learnt)\s+that(?![\w-])"
                             # ... a definition or a drug's typical picture: "the paper defines the blue-whitish veil as ...",
                             # "the typical dermoscopy is a globular pattern with regular globules"
                             r"|(?<![\w-])defines(?![\w-])|(?<![\w-])typical\s+(?:dermoscop\w+|appearance|picture)(?:\s+(?:pattern|appearance|picture))?\s+(?:is|are|includes?|shows?)(?![\w-])"
                             r"|(?<![\w-])(?:criteria for (?:excision|referral|biopsy)|document presence|record all|recognise any|recognize any)(?![\w-])"
                             r"|(?<![\w-])to (?:exclude|rule out)(?![\w-])")


# a text that says no lesion was imaged or dermoscoped today: whatever findings it names are another time's or another's
# ("Nothing imaged today", "no dermoscopy done", "awaiting images"), so none is read
_NO_IMAGE_TODAY_RE = re.compile(
    r"(?<![\w-])(?:no dermoscopy(?! (?:of|on|for) (?:the |her |his )?other)|dermoscopy (?:was )?not (?:done|performed|repeated|available)|no dermoscopic image|not (?:yet )?(?:been )?dermoscoped"
    r"|nothing (?:was )?imaged|nothing to image|no lesion (?:was )?imaged|not imaged today|no images? (?:to review|received)|awaiting (?:dermoscopic )?images"
    r"|no imaging|awaiting dermoscopy|no new imaging|dermoscopy was not possible|not (?:yet )?re-?examined|not yet imaged"
    r"|to be imaged|did not attend (?:for )?imaging|could not look|haven't re-examined|have not (?:performed dermoscopy|examined it)"
    r"|unfilled|not completed|to be completed|did not complete|please disregard"
    # ... or an algorithm's output no clinician has reviewed yet: 'Status = "unverified - awaiting clinician review"'
    r"|awaiting (?:clinician|clinical|dermatologist|physician|human)(?:'s)? (?:review|verification|sign-?off)"
    # ... or that nobody looked at this patient's images ("I did not review the images myself", "the panel has not seen the
    # images"), or that it is teaching, not a patient's note ("for education only", "no patient data", a leaflet, a tutorial)
    r"|no (?:patient )?lesions? (?:was |were )?imaged|ds not done|(?:did not|have not|has not|haven't|hasn't) (?:review(?:ed)?|seen|looked at) the images"
    r"|for (?:education|teaching)(?:al purposes)? only|no patient data|patient information leaflet|dermoscopy tutorial|teaching session"
    # ... or a test image, not a patient's: "Test case (synthetic image from the vendor's demo set, not a patient): ..."
    # (not "not a patient" alone: "attends with her daughter (not a patient)")
    r"|synthetic (?:image|case|lesion)s?|(?:vendor|manufacturer)'?s? demo|demo (?:image|set|case)s?"
    r"|teaching bullets|training (?:for|session|slide|material)s?|not a patient visit|not filled in|draft[^.\n]{0,10}not (?:yet )?(?:been )?reviewed|dermoscopy teaching"
    r"|no current image|not re-?imaged|(?:haven't|have not|hasn't|has not) (?:yet )?(?:re-?imaged|dermoscoped)|(?:skin )?not examined by (?:us|me)|not yet seen by (?:us|me)|no current (?:exam(?:ination)?|dermoscopy|visit)(?: on file| recorded)?|(?:image|dermoscopy|photo)[^.\n]{0,30}(?:is|was) not available|not retrieved"
    # ... or an exam question on the checklist itself: "List the seven criteria of the 7-point checklist and their weights"
    r"|list the (?:seven|7) criteria|(?:its|their) weights|no images? (?:is |are |was |were )?attached|no boxes? (?:is |are |was |were )?ticked|(?:was |were )?(?:not able|unable) to assess it(?: meaningfully)?)(?![\w-])")


# a doubt that heads its sentence past a comma: "Panel could not agree on whether there is fine, typical reticular network",
# "I wonder about fine, typical reticular network" (before: the comma ended the doubt's clause and the network read TYPICAL)
_DOUBT_BEFORE_RE = re.compile(r"(?<![\w-])(?:whether|could not agree|cannot agree|no consensus|wonder(?:ed)? (?:about|if)|disagreed? (?:about|on|over))(?![\w-])")
# ... unless answered before the mention: "panel asked whether vessels within regression were present - Dr Osei confirmed
# vessels within regression"
_DOUBT_ANSWERED_RE = re.compile(r"\s-\s|:|(?<![\w-])confirm")
# another lesion, named as not imaged earlier in the sentence: "1) central chest (not imaged): focal irregular blotch, irregular
# D/G", "The right thigh lesion (not imaged) has white scar-like areas, no vessels"
_NOT_IMAGED_BEFORE_RE = re.compile(r"\(\s*(?:not imaged|no image|handheld only)[^)]*\)|(?<![\w-])not imaged(?![\w-])")


def _series_count_after(lowered: str, end: int) -> bool:
    """Whether a count over a series follows the mention ending at ``end`` (:data:`_SERIES_COUNT_AFTER_RE`; a fraction
    only when it is one, "2/6", not a date's "12/03")."""
    count = _SERIES_COUNT_AFTER_RE.match(lowered, end)
    return count is not None and (count.group(1) is None or 0 < int(count.group(1)) <= int(count.group(2)))


# a sentence about another person's lesion, seen today or not: "Her twin sister, also seen today, has a lesion with irregular
# globules and peppering (separate record).", "Family: sister died of melanoma 2019 (I reviewed her images - BWV, ...)"
_ANOTHER_PERSON_SENTENCE_RE = re.compile(
    r"\s*(?:[-*•(\[][ \t]*)?(?:family(?: history)?\s*:\s*)?(?:(?:her|his|their|the patient's|pt's)\s+)?(?:twin\s+)?"
    r"(?:sister|brother|mother|father|daughter|son|husband|wife|partner|twin)(?:'s)?(?![\w-])")


# a sentence whose subject is another lesion than the one imaged: "The lower one, um, has irregular streaks", "Upper
# lesion: typical network, left alone" (before: read past its clause; not where it says it is the imaged one, "The upper
# one - that's the one I photographed - has ...", "Lower lesion (marked for biopsy): ...")
_OTHER_LESION_SENTENCE_RE = re.compile(
    r"\s*(?:\[[^\]\n]{0,20}\][ \t]*)?(?:[-*•][ \t]*)?(?:the\s+)?(?:lower|upper|other|second|larger|smaller)\s+(?:one|lesion|na?evus|nevus|mole)(?![\w-])"
    r"(?![^.\n]{0,60}?(?:this|imaged|photographed|index|marked|dermoscoped))")

# ... and "the one on <a site>" where the text names the imaged one elsewhere: "the one on her back is fine (regular
# network). The one I photographed is on the scalp - ..." (before: the back's network read as the image's; without a
# named index, "The one on her back has an atypical network" may be the only lesion, and is read)
_ONE_AT_A_SITE_SENTENCE_RE = re.compile(
    r"\s*(?:[-*•][ \t]*)?the\s+one\s+(?:on|at|near|by|over|under|behind|in)\s+(?![^.\n]{0,60}?(?:this|imaged|photographed|index|marked|dermoscoped))")


def _out_of_scope(lowered: str, sentence_start: int, start: int, clause_end: int, value: str) -> bool:
    """Whether the sentence of a mention at ``start`` puts it in the past, in another's words or in a plan before it
    (:data:`_PAST_OR_REPORTED_SENTENCE_RE` with no word of today up to the mention's clause end ``clause_end``), gives it
    to a lesion not imaged (:data:`_NOT_IMAGED_BEFORE_RE`) or another than the imaged one (:data:`_OTHER_LESION_SENTENCE_RE`)
    or to a plan (:data:`_PLAN_BEFORE_RE`, a present or graded one)."""
    if _PAST_OR_REPORTED_SENTENCE_RE.match(lowered, sentence_start) and not _TODAY_RE.search(lowered, sentence_start, clause_end):
        return True
    if _ANOTHER_PERSON_SENTENCE_RE.match(lowered, sentence_start) or _OTHER_LESION_SENTENCE_RE.match(lowered, sentence_start):
        return True
    if _ONE_AT_A_SITE_SENTENCE_RE.match(lowered, sentence_start) and _INDEX_NAMED_RE.search(lowered):
        return True
    if (past := _PAST_BEFORE_RE.search(lowered, sentence_start, start)) and not _TODAY_RE.search(lowered, past.end(), clause_end):
        return True
    if _NOT_IMAGED_BEFORE_RE.search(lowered, sentence_start, start):
        return True
    if (doubts := list(_DOUBT_BEFORE_RE.finditer(lowered, sentence_start, start))) and not _DOUBT_ANSWERED_RE.search(lowered, doubts[-1].end(), start):
        return True
    return value != "absent" and _PLAN_BEFORE_RE.search(lowered, sentence_start, start) is not None


# ... and one that a negating word and a dash start, "Negatives - BWV, irregular streaks": no present or graded mention in
# it is read (before: the streaks read IRREGULAR; its "no BWV" is read absent). Unlike "Negatives:", it heads no
# section: the next line, "Positives - atypical PN", is read
_NEGATIVES_DASH_SENTENCE_RE = re.compile(
    r"\s*(?:[-*•][ \t]*)?(?:(?:pertinent|relevant)\s+)?(?:negatives|negative findings|absent|not seen|not present)[ \t]+-[ \t]")


# the word that makes a network another structure: the negative (inverse, reverse, white) network of Spitz naevi and
# melanoma, not the checklist's pigment network. Nothing said of it is read of the pigment network: "Negative network:
# absent", "Inverse network absent", "Reverse network: no" (before: read the pigment network ABSENT)
_OTHER_NETWORK_BEFORE_RE = re.compile(r"(?<![\w-])(?:inverse|inv|inverted|reverse|reversed|white)[ \t]+(?:pigment(?:ed)?[ \t]+)?$")
# ... whose "negative" (or "neg") :func:`_normalised` writes "inverse" ("inv"): no negation reads it, "Negative network:
# absent. BWV: present" (before: "Negative network:" headed a negated section and the veil was not read)
_NEGATIVE_NETWORK_RE = re.compile(r"(?<![\w-])(negative|neg)(?=[ \t]+(?:pigment(?:ed)?[ \t]+)?(?:network|pn)(?![\w-]))")


# an article or preposition before "APN" makes it a person, the advanced practice nurse ("seen by the APN", "per APN")
_PERSON_BEFORE_RE = re.compile(r"(?<![\w-])(?:the|an|by|our|per|with|to)[ \t]+$")


def _another_network(lowered: str, start: int) -> bool:
    """Whether the network named at ``start`` is the negative (inverse, white) network: :data:`_OTHER_NETWORK_BEFORE_RE`."""
    return _OTHER_NETWORK_BEFORE_RE.search(lowered, max(0, start - 20), start) is not None


# a bare noun a denial word follows, alone in its clause: "BWV absent", "Streaks neg.", "Vessels nil", "Streaks      absent" (a
# table's column), "pigment network none" (before: read neither way). A graded one ("irregular streaks absent", "atyp PN
# absent") denies the grade, not the criterion, and is not read; nor is another structure's, "Negative network: no"
# (:func:`_another_network`)
# (possessive white space, and the dash's space looked behind for: "[ \t]*(?:[ \t]-)?[ \t]*" tried every split of a run of
# spaces, so a noun followed by a padded column of thousands took seconds a noun)
_NOUN_DENIED_RE = re.compile(_BARE_NOUN + r"[ \t]*+(?::|(?<=[ \t])[-–—])?[ \t]*+(?:(?:is|are|still|remains?|now)[ \t]++){0,2}(?:absent|abs|not seen|not present|not observed|not identified|cannot be seen|undetected"
                             r"|none|nil|no|neg|negative|-ve|none seen|none visible|not visible|none noted|not noted|none detected|not detected|none identified|ø|⊖)(?=[ \t]*(?:[;,.\n|)(]|$))")


# "N" after a bare noun in a yes/no form, one with a "Y/N" legend or a noun answered "Y": "Checklist (Y/N) ... BWV: N",
# "streaks Y, BWV N", "bwv:N | rs:N", "BWV ........ N" (before: read nothing). Elsewhere "BWV N" stays unread
_YES_NO_FORM_RE = re.compile(r"(?<![\w/])\(?y/n\)?(?![\w/])|" + _BARE_NOUN + r"[ \t]*[:=]?[ \t]*y(?![\w/'-])")
_NOUN_ANSWERED_NO_RE = re.compile(_BARE_NOUN + r"[ \t]*[:=]?[ \t]*n(?=[ \t]*(?:[;,.\n|)(]|$))")


# a 7-point checklist item's weight and score after its name: "BWV (2): 0", "Atypical pigment network (2): 2 - thickened
# lines" (before: "(2)" hid the score, and "BWV (2): 0" read the veil PRESENT). A score of 0 denies a bare noun's criterion
# ("BWV (2): 0" reads absent) and a graded item's grade only (not read); a score above 0 reads the item as named
_WEIGHT_AND_SCORE_RE = re.compile(r"[ \t]*\(\s*[0-9]\s*(?:pts?|points?)?\s*\)[ \t]*[:=-]?[ \t]*([0-9])(?![\d.])")


# a header whose section names criteria without stating them: "Assessed: PN, streaks, BWV", "Key: ...", "Plan: ..."
_META_HEADER_RE = re.compile(r"(?<![\w-])(?:assessed|evaluated|features to watch|key|abbreviations?|checklist items"
                             r"|differential|ddx|to do|plan|reminders? to (?:trainees|students|residents)|protocol reminder|governance|audit|next steps|uncertain"
                             r"|action points?|comment on|mark(?:ing)? scheme)(?![\w-])")


# words in quotation marks are another's, not the writer's reading: "the nurse's note says 'hairpin vessels'", "you wrote
# that the lesion has 'blue-white veil and atypical network'. I agree with the atypical network", "'localized irregular
# pigmentation' per first reader" (before: read as today's). An apostrophe inside a word ("patient's") opens none
# (a quote the writer agrees with before it, in its sentence, is read: "agree with your assessment of 'typical network'",
# and one of the writer's own words: "Convert my note to the 7-point format: 'DS: no network, ...'")
_AGREED_BEFORE_RE = re.compile(r"(?<![\w-])(?:i|we)\s+(?:\w+\s+)?(?:agree|concur|confirm)(?![\w-])|(?<![\w-])agree(?:d|s)? with(?![\w-])"
                               r"|(?<![\w-])my (?:own )?(?:note|notes|words|text|reading|description)(?![\w-])")
# an email's quoted lines ("> From Dr Ellis: the lesion has a BWV I think"): another's words, read only where the reply
# agrees ("Agree, dermal naevus"); a reply that disputes them ("I don't think that's a blue-white veil") does not take them
# as its own (before: the quoted veil read PRESENT under a reply that denied it)
_EMAIL_QUOTE_RE = re.compile(r"(?m)^[ \t]*>.*$")
_AGREED_RE = re.compile(r"(?<![\w-])(?:agree[ds]?|concur|confirmed?)(?![\w-])")
_QUOTED_RE = re.compile(r"(?:(?<=[\s(\[:,;=-])|^)(?:['‘`](?=\S)[^'\"‘’“”\n]{1,200}?(?<=\S)['’]|[\"“](?=\S)[^\"“”\n]{1,200}?(?<=\S)[\"”])(?=[\s.,;:)\]!?-]|$)")
# (double quotes may hold an apostrophe: her note says "dotted vessels, ?Bowen's"; before, it ended no quote; LaTeX opens
# a quote with a backtick: `regular globules')
# a quoted value replaced by another: "[Edited 13:45 by Dr Lam: 'dots regular' -> 'dots irregular, clustered at one edge']",
# "stated `regular globules'; this should read `irregular globules'". The old value is read nowhere in the text, the new
# one is read (an amendment replaces what it amends; before: the old value read from the entry it amends)
_REPLACED_RE = re.compile(
    r"['‘`\"“]([^'\"‘’“”`\n]{1,120}?)['’\"”]\s*[;,]?\s*(?:(?:this|it|which)\s+)?"
    r"(?:->|→|=>|should (?:read|be)|to read|now reads|changed to|amended to|corrected to|replaced (?:by|with))\s*:?\s*(['‘`\"“][^'\"‘’“”`\n]{1,120}?['’\"”])")


# a block of copied text between its markers: "---- copied from note 12/01/2024 ---- ... ---- end of copied text ----",
# ">>> carried forward from 2023 letter >>> ... <<< end >>>", "== PASTED FROM OUTSIDE CLINIC LETTER == ... == END ==" (before:
# its findings read as today's; a marker's own line alone was out of scope)
_COPIED_BLOCK_RE = re.compile(r"(?m)^[ \t]*[-=<>#*\[]{2,}[^\n]*(?:copied|pasted|carried forward|copy)[^\n]*\n(?:.*\n)*?[ \t]*[-=<>#*\[]{2,}[^\n]*\bend\b[^\n]*$")
# a trainee's findings that a supervisor's heading below corrects: "Resident note (Dr Lee, PGY2): ... / Attending addendum
# (Dr Morales): ...", "Fellow: ... arborizing vessels. / Consultant: the vessels are crown vessels" (before: the trainee's
# findings read beside the supervisor's, or against them). Up to the supervisor's heading; a trainee's reading alone
# stays as :data:`_PAST_OR_REPORTED_SENTENCE_RE` reads it
# ... and an algorithm's output that the clinician's reading below follows: "AI triage (v2.3): ... atypical network, irregular
# streaks.\nClinician review: agree atypical network. I do not see streaks" (before: the streaks the clinician did not see read),
# and a decision-support alert that the clinician overrides: "ALERT: flagged by classifier. Detected: irregular streaks.\n
# Override reason (Dr N.): I do not see streaks", and an export's "ai_suggestion:" key above its "clinician:" key
_TRAINEE_BLOCK_RE = re.compile(
    r"(?m)(?:^|(?<=\. ))[ \t]*(?:[-*•][ \t]*)?(?:the\s+)?(?:resident|trainee|registrar|fellow|(?:medical\s+)?student|spr|reg|ai(?:_\w+)?|algorithm|alert|classifier)(?![\w-])[^:\n]{0,60}:"
    r"[\s\S]*?(?=(?:^|(?<=\. ))[ \t]*(?:[-*•][ \t]*)?(?:the\s+)?(?:attending|consultant|supervisor|senior|clinician|override)(?![\w-])[^:\n]{0,60}:)")
# ... a first read that an addendum or a second read corrects: "First report: blue-white veil.\nAddendum: ... Not a veil."
# (before: the first read's findings read beside the addendum's, or against them)
_FIRST_READ_BLOCK_RE = re.compile(
    r"(?m)(?:^|(?<=\. ))[ \t]*(?:first (?:read|report|reader|opinion)|(?:initial |original )?report)(?![\w-])[^:\n]{0,40}:"
    r"[\s\S]*?(?=(?:^|(?<=\. ))[ \t]*(?:addendum|second (?:read|reader|opinion))(?![\w-])[^:\n]{0,80}:)")
# ... and a double read's readers in turn, "R1: hairpin vessels. R2: on review these are comma vessels ... Final: comma.",
# "Reader 1: ... Reader 2: ... Adjudicator (me): the network is atypical": the first reader's findings up to the next
# heading, unless that one agrees ("R2: agree, dotted"); the second reader's up to an arbiter's or a final heading that
# states findings of its own ("Final: both" leaves them). Before: a first read's findings read beside the second's, or
# against them
_READER_HEADING_RE = re.compile(
    r"(?m)(?:^|(?<=\. ))[ \t]*(?:[-*•][ \t]*)?(?:(r1|reader[ \t]*(?:1|one|a))|(r2|reader[ \t]*(?:2|two|b))|(r3|reader[ \t]*(?:3|three|c)|third reader"
    r"|arbiter|adjudicator|final(?: reading| read)?|consensus))(?![\w-])[^:\n]{0,40}:")
_AGREES_RE = re.compile(r"[ \t]*(?:(?:i|we)[ \t]+)?(?:agrees?|concur|concordant|same)(?![\w-])")
# ... and what a correction marker corrects: the clause right before "Correction:", "EDIT 14:10:", "Sorry, typo:", "no
# wait" ("Network atypical. Correction: network typical", "streaks irregular at 3 o'clock - sorry, that's wrong, ...").
# Before: the corrected finding read beside the correction, or against it
_CORRECTION_RE = re.compile(
    r"(?<![\w-])(?:correction|corrected|amendment|erratum|edit(?:ed)?(?:[ \t]+\d{1,2}[:.]\d{2})?)(?:[ \t]*\([^)\n]{0,40}\))?[ \t]*[:-]"
    # ... "CORRECTION (same day, Dr Kaur): dots are regular", "Network: typical. Amended to atypical by Dr Sandhu"
    r"|(?<![\w-])(?:amended|corrected|revised)[ \t]+to(?![\w-])"
    # ... an addendum that reviews the image again, "Addendum 16:40: on review of the polarised image ...", and an author's
    # comment that says no, "[AUTHOR COMMENT: no - it's localised ...]"
    r"|(?<![\w-])addendum[^:\n]{0,40}:[ \t}]*on (?:re-?)?review(?![\w-])|\[[ \t]*(?:author|reviewer|editor)(?:'s)? comment[ \t]*:[ \t]*no(?![\w-])"
    r"|\([ \t]*correction(?![\w-])|(?<![\w-])sorry,?[ \t]+(?:typo|that's wrong|that is wrong|wrong|i meant|scratch that)(?![\w-])"
    r"|(?<![\w-])no[ \t]+wait(?![\w-])|(?<![\w-])scratch that(?![\w-])"
    r"|(?<![\w-])(?:sorry,?[ \t]+)?(?:pls|please)[ \t]+read[ \t]*:"  # ("reg network (sorry pls read: atypical network ...)")
    # ... a bracketed note of a correction over what was typed: "[handwritten correction over the typed text, initialled by
    # the dictating consultant] NOT a veil - typing error"
    r"|\[[^\]\n]{0,40}?(?<![\w-])correction(?![\w-])[^\]\n]{0,80}\]")
# ... a line that a dated look heads, where the text has a look of today ("Dermoscopy 2023: irregular network, irregular
# dots. / Dermoscopy today: network regular throughout"; alone, "Dermoscopy (2026): ..." is the image's)
_DATED_LOOK_LINE_RE = re.compile(r"(?m)^[ \t]*(?:[\w-]+[ \t]+)?(?:dermoscopy|dermatoscopy|image|photo|photograph)s?[ \t]*\(?(?:19|20)\d\d\)?[^:\n]{0,40}:[^\n]*")
# ... a line that earlier findings head ("Previous findings (copied): regression - white; vessels - none.\nCurrent findings:
# ..."; before: only its first clause was the earlier visit's, the vessels read absent)
_PREVIOUS_FINDINGS_LINE_RE = re.compile(r"(?m)^[ \t]*(?:[-*•][ \t]*)?(?:previous|prior|earlier|old)[ \t]+(?:dermoscopic[ \t]+)?findings(?![\w-])[^:\n]{0,40}:[^\n]*")
# ... an HTML form's unchosen option or unchecked box with its label
_UNCHOSEN_HTML_RE = re.compile(r"<option(?![^>]*selected)[^>]*>[^<]*</option>|(?:[\w-]+[ \t]*:[ \t]*)?<input(?=[^>]*checkbox)(?![^>]*checked)[^>]*>[^<\n]*")
# ... a flat export's line whose path names a relative
_RELATIVE_PATH_LINE_RE = re.compile(r"(?m)^[^\n=]*(?:relative|family|mother|father|sister|brother|sibling)[^\n=]*=[^\n]*")
# ... a trial's site or local reading (read only where the text holds no adjudication: "Site reading: dots/globules regular
# / Central reader 1: irregular / ... Adjudicated (final): irregular")
_SITE_READING_LINE_RE = re.compile(r"(?m)^[ \t]*(?:site|local|investigator)(?:'s)?[ \t]+read(?:ing)?[ \t]*:[^\n]*")
# ... a questioner's lines in a transcript: "Q. And if a veil had been present ...?" (the answers, "A. ...", are read)
_QUESTIONER_LINE_RE = re.compile(r"(?m)^[ \t]*q[.:][^\n]*")
# ... and a chat's assistant turns, up to the user's next turn, where a user's turns answer them ("User: Describe the
# features.\nAssistant: I can see arborizing vessels and no pigment network ..."): a model's words, not a reading of the
# lesion (before: read as its findings); the user's turns are read
_CHAT_USER_RE = re.compile(r"(?m)^[ \t]*user[ \t]*:")
_CHAT_ASSISTANT_TURN_RE = re.compile(r"(?m)^[ \t]*(?:assistant|chatbot|bot|chatgpt|copilot|ai)[ \t]*:[\s\S]*?(?=^[ \t]*user[ \t]*:|\Z)")
# visits labelled in turn, "Visit 1: ... Visit 2: ... Visit 3 (current): ...", "1st: ... 2nd: ... 3rd (current): ...": the
# last is the one the image shows; the earlier ones are not read (before: every visit's findings read as today's)
_VISIT_LABEL_RE = re.compile(r"(?m)(?:^|(?<=[.;] ))[ \t]*(?:[-*•][ \t]*)?(?:visit[ \t]*(\d{1,2})|(\d)(?:st|nd|rd|th)(?:[ \t]+visit)?"
                             # ... or a reading day starting its line (unindented, no bullet), as a patch test's: "D2:
                             # dotted vessels ... / D4 today: ..."
                             r"|(?<=^)d(?:ay)?[ \t]*(\d{1,2})(?=[ \t]*(?:today[ \t]*)?:))(?![\w])")
# a table's header row, its cells names without a value ("Visit | PN | Streaks | Veil"): the veil there is a column, not
# a finding (before: read PRESENT)
_TABLE_ROW_RE = re.compile(r"(?m)^[^\n|]*\|[^\n|]*\|[^\n]*$")
# ... and a row that records a suggestion, whatever its values: an audit trail's "10:02 | AI-ASSIST | SUGGEST |
# Dermoscopy.BWV | value: present | status: suggested" (a later row says what was kept)
_SUGGESTION_ROW_RE = re.compile(r"(?<![\w-])(?:suggest(?:s|ed|ion)?|ai-assist)(?![\w-])")
_TABLE_VALUE_RE = re.compile(r"(?<![\w-])(?:absent|present|yes|no|none|nil|seen|typ\w*|atyp\w*|reg\w*|irreg\w*|diffuse|locali[sz]ed|dotted|comma"
                             r"|hairpin|arbori[sz]ing|linear|wreath|blue|white|\d)(?![\w-])|[+✓✗x]\s*(?:\||$)")


# a word a text extracted from a PDF splits at a line's end ("an atypical pig-\nment network with ir-\nregular streaks":
# before, "regular streaks" was read), joined again; a criterion's name or value before the hyphen is a sign ("streaks-")
_LINE_END_HYPHEN_RE = re.compile(
    r"(?<![A-Za-z])(?!(?i:streaks?|networks?|veil|vessels?|globules?|dots?|regression|pigmentation|present|absent|typical|atypical"
    r"|regular|irregular|none|nil|neg|pos|yes|no)-)([A-Z]?[a-z]+)-[ \t]*\n[ \t]*([a-z]+)")
_STRUCK_THROUGH_RE = re.compile(r"~~[^~\n]+~~")
# the checklist's criteria named in a bare list, three or more with no value: a form's or a sheet's title ("NETWORK /
# STREAKS / VEIL ASSESSMENT SHEET"), a field's label ("Dermoscopy (network / streaks / BWV / vessels): ___"), a protocol
# ("records network, streaks, pigmentation, regression, dots/globules, veil and vessels"): before, its bare "veil" was read
# present. A list a denial or a grade precedes, or a value follows ("no streaks, BWV or vessels", "streaks / BWV: absent"),
# is left to the rules.
_LISTED_CRITERION_NOUN = (r"(?:(?:pigment(?:ed)?|pigm\.?)[ \t]+network|network|pn|streaks?|blu(?:e|ish)[- ]?whit(?:e|ish)[ \t]+veil|veil|bwv|vessels|vascular[ \t]+structures"
                          r"|regression(?:[ \t]+structures)?|pigmentation|dots[ \t]*(?:/|and|&)[ \t]*globules|dots|globules|d/g|dg)")
_BARE_CRITERIA_LIST_RE = re.compile(
    r"(?<![\w/-])" + _LISTED_CRITERION_NOUN + r"(?:(?:[ \t]*[/,;&][ \t]*(?:(?:and|or)[ \t]+)?|[ \t]+(?:and|or)[ \t]+)" + _LISTED_CRITERION_NOUN
    + r"){2,}(?![\w/-])")
_BEFORE_BARE_LIST_RE = re.compile(r"(?<![\w])(?:no|not|without|nil|none|neither|nor|absent|absence|negative|lacks?|lacking|free|typical|atypical"
                                  r"|regular|irregular|irreg|reg|atyp|typ|present|any|possible|\?)(?![\w])")
_AFTER_BARE_LIST_RE = re.compile(r"[ \t]*(?:[:=+(]|-(?![\w])|(?:absent|present|seen|noted|not|none|nil|neg|negative|positive|pos|yes|no|x|0|1|2|all|each|both|are|is|were|was|from)(?![\w]))")
# an RTF source's markup: "{\\rtf1\\ansi ...}", "\\b Previous dermoscopy:\\b0 ...\\par" (before: "\\b" hid a sentence's start)
_RTF_MARKUP_RE = re.compile(r"\{\\fonttbl(?:[^{}]|\{[^{}]*\})*\}|\\[a-z]+-?\d* ?|\\[{}\\]|[{}]")  # (the font table first: its names are no text)
# a legend's line: "Legend: L-reg-pig = regular pigmentation localized ...", "key: str=streaks, veil=BWV, ~=possible",
# "Abbreviations - PN, pigment network; BWV, blue-whitish veil" (it names the criteria, it states none of them; before:
# read PRESENT and every grade it defines)
_LEGEND_LINE_RE = re.compile(r"(?m)^[ \t]*(?:legend|key|abbreviations?|glossary)[ \t]*[:=(-][^\n]*$")
# a DICOM SR content item as DCMTK's dsrdump prints it, a concept's name and its coded or text value:
# '<CONTAINS:CODE:(BWV,99SKNL,"Blue-whitish veil")=(AB,99SKNL,"Absent")>' reads as "blue-whitish veil: absent" (before: the
# name in quotes was a label, and the value was not read), and a concept modifier's line joins the line of the item it
# modifies ('<HAS CONCEPT MOD:TEXT:(M,99SKNP,"Entry status")="[default] not reviewed">' is that item's default)
_SR_ITEM_RE = re.compile(r'\([^,()"\n]*,[^,()"\n]*,"(?P<name>[^"\n]*)"\)[ \t]*=[ \t]*(?:\([^,()"\n]*,[^,()"\n]*,"(?P<code>[^"\n]*)"\)|"(?P<text>[^"\n]*)")')
_SR_MODIFIER_LINE_RE = re.compile(r"\n(?=[ \t]*<has concept mod:)")


# ... and an XML element's tags, '<text>At the clinic visit of 2023-06-14 dermoscopy showed ...</text>' (a CDA section):
# blanked, so that its text starts a sentence (before: the tag hid "At the clinic visit of ..." from the sentence's start)
_XML_TAG_RE = re.compile(r'</?[a-z][\w.-]*(?:[ \t]+[\w:.-]+[ \t]*=[ \t]*"[^"\n]*")*[ \t]*/?>')


# a form's criterion and its options, each with a box, one ticked: "Streaks: [x] irreg  [ ] reg  [ ] abs", "BWV
# present [ ]  absent [x]", "Pigment network: ☑ typical ☐ atypical ☐ absent" (before: read neither way). The box leads or
# follows each option; the options run to the line's or the clause's end
_BOX = r"\[[ \t]*[x✓✔]?[ \t]*\]|[☑☒☐□]"
_BOX_RE = re.compile(_BOX)
_TICKED_BOX_RE = re.compile(r"\[[ \t]*[x✓✔][ \t]*\]|[☑☒]")
_OPTIONS_LINE_RE = re.compile(
    r"(?<![\w/-])(?P<noun>" + _ANY_NOUN + r"|veil)[ \t]*(?:[:?-][ \t]*)?"
    r"(?P<options>(?:(?:" + _BOX + r")[ \t]*[a-z][a-z &/-]{0,24}?[ \t]*|[a-z][a-z &/-]{0,24}?[ \t]*(?:" + _BOX + r")[ \t]*){2,})(?=[;\n]|$)")
_OPTION_WORDS = {"none": "absent", "nil": "absent", "no": "absent", "abs": "absent", "not seen": "absent", "yes": "present", "typ": "typical",
                 "atyp": "atypical", "reg": "regular", "irreg": "irregular", "blue": "blue areas", "white": "white areas",
                 "both": "combinations", "combo": "combinations", "combination": "combinations", "blue and white": "combinations",
                 "arborising": "arborizing", "localised regular": "localized regular", "localised irregular": "localized irregular"}
_OPTION_GRADES = {"pigment_network": {"regular": "typical", "irregular": "atypical"}}


def _ticked_option(key: str, options: str) -> str | None:
    """The value of ``key`` the one ticked box of ``options`` gives, or None (no box ticked, several, or a word that is
    not one of the criterion's values)."""
    boxes = list(_BOX_RE.finditer(options))
    leads = options.lstrip().startswith(("[", "☑", "☒", "☐", "□"))
    words = [options[b.end(): boxes[i + 1].start() if i + 1 < len(boxes) else len(options)] if leads
             else options[boxes[i - 1].end() if i else 0: b.start()] for i, b in enumerate(boxes)]
    ticked = [w.strip() for b, w in zip(boxes, words) if _TICKED_BOX_RE.fullmatch(b.group(0))]
    if len(ticked) != 1 or not all(w.strip() for w in words):
        return None
    word = _OPTION_WORDS.get(ticked[0], ticked[0])
    word = _OPTION_GRADES.get(key, {}).get(word, word)
    return word if word in CRITERION_VALUES[key] else None


def _ticked_options(raw: str) -> str:
    """``raw`` with each form line of a criterion's boxed options, one ticked, written "criterion: value" (the
    template's name where it fits), position for position."""
    def written(m: re.Match) -> str:
        key = _NOUN_OF.get(m["noun"], "blue_whitish_veil")  # (a bare "veil" is no noun of its own yet: _normalised writes it "bwv")
        value = _ticked_option(key, m["options"])
        if value is None:
            return m[0]
        for name in (_NOUNS[key], m["noun"]):
            if len(text := f"{name}: {value}") <= len(m[0]):
                return text.ljust(len(m[0]))
        return m[0]

    return _OPTIONS_LINE_RE.sub(written, raw)


def _structured_items(raw: str) -> str:
    """``raw`` with each dsrdump content item written "name: value" (:data:`_SR_ITEM_RE`), each form line of boxed
    options written "name: value" (:func:`_ticked_options`) and XML tags blanked (:data:`_XML_TAG_RE`), position for
    position."""
    raw = _SR_ITEM_RE.sub(lambda m: f"{m['name']}: {m['code'] if m['code'] is not None else m['text']}".ljust(len(m[0])), raw)
    if "[" in raw or "☑" in raw or "☒" in raw:
        raw = _ticked_options(raw)
    if "</" in raw:  # (markup that closes its elements: "BWV <absent>" alone is no tag)
        raw = _XML_TAG_RE.sub(lambda m: " " * len(m.group(0)), raw)
    return _SR_MODIFIER_LINE_RE.sub(" ", raw)


_UNCHANGED_RE = re.compile(r"(?<![\w-])(?:unchanged|no change|same as)(?![\w-])")


# an SBAR handover's labels, a line each: "S: new dark lesion right calf / B: Melanoma excised 2019 ...; dermoscopy of that
# one showed an atypical network / A: Dermoscopy today ... / R: 2WW". Its Background is history (before: the excised
# melanoma's network read as today's)
_SBAR_LABEL_RE = re.compile(r"(?m)^[ \t]*(?:[-*•][ \t]*)?(s|b|a|r|situation|background|assessment|recommendations?)[ \t]*[:-][ \t]")


def _sbar_background(lowered: str) -> list[tuple[int, int]]:
    """The span of an SBAR note's Background (:data:`_SBAR_LABEL_RE`), up to the next label: only where the text labels a
    Situation, a Background and an Assessment (a SOAP note's "S:" and "A:" have no "B:")."""
    labels = list(_SBAR_LABEL_RE.finditer(lowered))
    if not {"s", "b", "a"} <= {m.group(1)[0] for m in labels}:
        return []
    ends = [m.start() for m in labels[1:]] + [len(lowered)]
    return [(m.start(), end) for m, end in zip(labels, ends) if m.group(1)[0] == "b"]


def _earlier_visits(lowered: str) -> list[tuple[int, int]]:
    """The spans of every labelled visit but the last (:data:`_VISIT_LABEL_RE`), where a text labels two or more."""
    labels = list(_VISIT_LABEL_RE.finditer(lowered))
    if len({next(label for label in m.groups() if label) for m in labels}) < 2 or _UNCHANGED_RE.search(lowered, labels[-1].start()):
        return []  # (a last visit "unchanged from visit 2" carries the earlier findings forward: all are read)
    return [(a.start(), b.start()) for a, b in zip(labels, labels[1:])]


# speech-to-text punctuation in a dictated text (one that says "full stop"): "full stop" ends a sentence, "colon" and "new
# paragraph" are their signs (same length, so positions are kept). Not "comma": "comma vessels" is a finding
_DICTATED_PUNCTUATION = {"full stop": ".", "colon": ":", "new paragraph": "\n"}
_DICTATED_RE = re.compile(r"[ \t]?\b(full stop|colon|new paragraph)(?![\w-])")  # (with the space before it: "network colon" -> "network:")
# a table row of two cells, "| Pigment network | atypical |": its cells are a name and its value (" | " read as " : ");
# a row of more cells (today beside an earlier date, the imaged lesion beside another) is not read this way
_TWO_CELL_ROW_RE = re.compile(r"(?m)^([ \t]*)\|([^|\n]+)\|([^|\n]+)\|([ \t]*)$")


def _superseded_reads(lowered: str) -> list[tuple[int, int]]:
    """The spans of a double read's readers that a later reader's heading supersedes (:data:`_READER_HEADING_RE`)."""
    headings = list(_READER_HEADING_RE.finditer(lowered))
    spans = []
    for i, (a, b) in enumerate(zip(headings, headings[1:])):
        if _AGREES_RE.match(lowered, b.end()):
            continue
        section_end = headings[i + 2].start() if i + 2 < len(headings) else len(lowered)
        if a.group(1) or (a.group(2) and b.group(3) and (_PHRASE_RE.search(lowered, b.end(), section_end) or _NOUN_RE.search(lowered, b.end(), section_end))):
            spans.append((a.start(), b.start()))
    return spans


def _corrected(lowered: str, sentence_ends: list[int]) -> list[tuple[int, int]]:
    """The spans a correction marker corrects (:data:`_CORRECTION_RE`): the clause right before it, in its sentence or,
    where it starts its sentence, the sentence before ("dots irregular, network atypical, veil present... sorry, I meant
    blue areas of regression" corrects the veil only)."""
    spans = []
    for marker in _CORRECTION_RE.finditer(lowered):
        end = marker.start()
        while end > 0 and lowered[end - 1] in " \t-(*•.…;,\n":  # (the marker's own punctuation: what it corrects is before)
            end -= 1
        start = max(_sentence_start(max(0, end - 1), sentence_ends), *(lowered.rfind(c, 0, end) + 1 for c in ",;\n"))
        spans.append((start, marker.start()))
    return spans


# a printed form's dot leaders between a name and its value, "pigment network ........ typical" (before: not read), as
# the colon they stand for: a space before them, or four dots or more
_DOT_LEADER_RE = re.compile(r"(?<=[a-z/)])(?:[ \t]+\.{3,}|\.{4,})[ \t]*(?=[a-z0-9])")  # (not an ellipsis: "Network... typical, I think")


def _normalised(lowered: str) -> str:
    """``lowered`` with two swapped letters of a criterion's word put back, the negative network written "inverse", a
    bare "veil" written "bwv ", a braced or bracketed value unbraced, a colon right after a noun before its grade a
    space, a comma between pigmentation and its grades blanked, dictated punctuation as signs, dot leaders as a colon,
    two-cell table rows as "name: value" and the describing words between a grade and its noun (or a noun and its
    grade) blanked, position for position (a reading's positions stay the text's)."""
    lowered = _SWAPPED_LETTERS_RE.sub(lambda m: _SWAPPED_LETTERS[m.group(0)], lowered)
    if "neg" in lowered:
        lowered = _NEGATIVE_NETWORK_RE.sub(lambda m: "inverse " if m.group(1) == "negative" else "inv", lowered)
    if "..." in lowered:
        lowered = _DOT_LEADER_RE.sub(lambda m: ":".ljust(len(m.group(0))), lowered)
    lowered = _BARE_VEIL_RE.sub("bwv ", lowered)
    if "pigmentation," in lowered:
        lowered = _PIGMENTATION_COMMA_GRADE_RE.sub(" ", lowered)
    if "{" in lowered:
        lowered = _BRACED_VALUE_RE.sub(lambda m: m.group(0).replace("{", " ").replace("}", " "), lowered)
    if "[" in lowered:  # (the pattern allows any spaces or a tab after the colon)
        lowered = _BRACKETED_GRADE_RE.sub(lambda m: m.group(1) + " " + m.group(2) + " ", lowered)
    if ":" in lowered:
        lowered = _TIGHT_COLON_RE.sub(lambda m: m.group(1) + " ", lowered)
    lowered = _GRADE_COMMA_DESCRIBED_RE.sub(lambda m: m.group(1) + " ", lowered)
    lowered = _DESCRIBED_NOUN_RE.sub(lambda m: m.group(0) if _REGRESSION_COLOUR_BEFORE_RE.match(lowered, m.start(2))
                                     else m.group(1) + " " * len(m.group(2)), lowered)
    lowered = _WORDS_BEFORE_GRADE_RE.sub(lambda m: m.group(1) + " " * len(m.group(2)), lowered)
    lowered = _COMMA_BEFORE_GRADE_RE.sub(lambda m: m.group(1) + " ", lowered)
    if "full stop" in lowered:
        lowered = _DICTATED_RE.sub(lambda m: _DICTATED_PUNCTUATION[m.group(1)].ljust(len(m.group(0))), lowered)
    # (the colon right after the name, its spaces after it: "| Dots/globules | Regular |" reads as "dots/globules: regular")
    return _TWO_CELL_ROW_RE.sub(lambda m: m.group(1) + " " + m.group(2).rstrip() + ":" + " " * (len(m.group(2)) - len(m.group(2).rstrip()))
                                + m.group(3) + " " + m.group(4), lowered)


def _sections(lowered: str) -> tuple[list[int], list[bool]]:
    """The text's section headers ("Absent:", "Assessed:", "Findings:"): where each ends, and whether it negates its
    section or names criteria without stating them (read once per text)."""
    headers = list(_SECTION_RE.finditer(lowered))
    return [m.end() for m in headers], [bool(_NEGATION_RE.search(m.group(1)) or _META_HEADER_RE.search(m.group(1))) for m in headers]


def _negated_section(sections: tuple[list[int], list[bool]], start: int) -> bool:
    """Under a header that negates its section ("Absent: streaks, BWV", "Pertinent negatives:\n- BWV") or names
    criteria only ("Assessed: PN, streaks, BWV"): the last header that ends before ``start``."""
    ends, flags = sections
    last = bisect.bisect_right(ends, start) - 1
    return last >= 0 and flags[last]


@functools.lru_cache(maxsize=4096)  # every query of an evaluation is read several times (weights, terms, notices)
def read_findings(text: str) -> tuple[tuple[str, str], ...]:
    """The 7-point findings ``text`` states in the words of the training texts, as ``(key, value)`` pairs in
    :data:`CRITERIA` order (``value`` one of :data:`CRITERION_VALUES`, ``absent`` included: "no streaks", "streaks -",
    "Streaks: absent" and "without streaks" all read ``("streaks", "absent")``, and a negated list of nouns, "without
    streaks or BWV", "no streaks or BWV", "no PN, streaks nor BWV", reads each of its nouns absent).

    What is not read: a criterion in words no training text writes (it stays out rather than be guessed), one
    named only as not assessed ("PN n/a", "streaks: unclear") or in doubt ("?BWV", "possible BWV", "r/o BWV", "BWV
    cannot be excluded"), a present or graded one the text negates in words of its own ("absence of BWV", "BWV
    excluded", "BWV -ve") or gives another value after a colon ("BWV: 0", "atyp. PN: ?"), and one the text states
    twice with different values ("BWV present ... no BWV": a contradiction is not a finding). A text's words are
    never read as a finding the text denies or doubts.

    Each reading the rules make (:func:`read_by_rules`) is kept only when the learned check
    (:func:`~monai_cir.data.finding_check.default_check`) finds it likely stated of the imaged lesion, now: the rules
    cover the writing they were written from, the check carries what every review taught to writing not seen yet."""
    from .finding_check import default_check

    text = _readable(text)  # the rules and the check read the same characters
    readings = read_by_rules(text)
    if not readings:
        return readings
    check = default_check()
    return tuple(f for f in readings if check.keeps(text, *f))


# the characters of a text the findings reader reads, from its start (a dermoscopy report is a few hundred; a pasted letter
# a few thousand): an adversarial one, "BWV + " over and over, took 1.1 s at 4 kB and 48 s at 60 kB with nothing to stop
# it, and the app joins every SR text of a study (the app says when a text was cut: :func:`text_too_long_notice`)
MAX_READ_CHARS = 8000


def text_too_long_notice(text: str) -> str | None:
    """What the app and ``monai-cir search`` say of a query text longer than :data:`MAX_READ_CHARS`, None for any other."""
    if len(text) <= MAX_READ_CHARS:
        return None
    return (f"the query text is {len(text)} characters long: the findings were read in its first {MAX_READ_CHARS} only "
            "(send the dermoscopy findings in a report of their own)")


# runs of white space longer than a table's column gap, and of blank lines, kept to that much: the patterns' white space
# before and after a noun backtracked over every split of a long run ("BWV" and 3000 tabs: over 5 s; a padded export's
# column of 2000 spaces: 40 s)
_LONG_SPACE_RUN_RE = re.compile(r"[ \t]{9,}")
_BLANK_LINES_RE = re.compile(r"\n(?:[ \t]*\n){3,}")


def _readable(text: str) -> str:
    """The part of ``text`` the reader reads: its first :data:`MAX_READ_CHARS` characters, each run of spaces and tabs
    kept to its first 8 characters and of blank lines to 2 (the same words, the same column gaps and paragraphs)."""
    text = _LONG_SPACE_RUN_RE.sub(lambda m: m.group()[:8], text[:MAX_READ_CHARS])
    return _BLANK_LINES_RE.sub("\n\n\n", text)


def read_by_rules(text: str) -> tuple[tuple[str, str], ...]:
    """The findings :func:`read_findings` reads before its learned check: the rules alone, in the text's first
    :data:`MAX_READ_CHARS` characters (:func:`_readable`)."""
    text = _readable(text)
    if describes_several_lesions(text):
        return ()
    if (message := message_text(text)) is not None:  # an HL7 v2 or FHIR message, a delimited export: "name: value" lines
        return read_by_rules(message)
    lowered_text = _LINE_END_HYPHEN_RE.sub(r"\1\2", text.translate(_DASHES)).lower()
    if "~~" in lowered_text:  # markdown's struck-through words, deleted: "~~regular streaks~~ irregular streaks"
        lowered_text = _STRUCK_THROUGH_RE.sub(lambda m: " " * len(m.group(0)), lowered_text)
    lowered_text = _BARE_CRITERIA_LIST_RE.sub(
        lambda m: m.group(0) if (_BEFORE_BARE_LIST_RE.search(lowered_text, max(lowered_text.rfind("\n", 0, m.start()) + 1, m.start() - 30), m.start())
                                 or _AFTER_BARE_LIST_RE.match(lowered_text, m.end())) else " " * len(m.group(0)), lowered_text)
    if lowered_text.lstrip().startswith("{\\rtf"):  # an RTF source: its control words and braces are blanked, position for position
        lowered_text = _RTF_MARKUP_RE.sub(lambda m: " " * len(m.group(0)), lowered_text)
    raw = _structured_items(lowered_text)
    lowered = _normalised(raw)
    if _NO_IMAGE_TODAY_RE.search(lowered):
        return ()
    found: dict[str, set[str]] = {}
    sentence_ends = [m.end() for m in _SENTENCE_END_RE.finditer(lowered)]
    replacements = list(_REPLACED_RE.finditer(raw))
    replaced = {f for r in replacements for f in read_by_rules(r.group(1))}
    new_values = {r.start(2) for r in replacements}
    quoted = [m.span() for m in _QUOTED_RE.finditer(raw) if m.start() not in new_values  # another's words (found before "veil" is written "bwv ": its space ended no quote), unless agreed with: nothing in them is read
              if not _AGREED_BEFORE_RE.search(lowered, _sentence_start(m.start(), sentence_ends), m.start())]
    quoted += [m.span() for m in itertools.chain(_COPIED_BLOCK_RE.finditer(lowered), _TRAINEE_BLOCK_RE.finditer(lowered),  # ... copied, corrected,
                                                 _FIRST_READ_BLOCK_RE.finditer(lowered), _QUESTIONER_LINE_RE.finditer(lowered))]  # ... a questioner's
    quoted += _earlier_visits(lowered) + _sbar_background(lowered) + [m.span() for m in _TABLE_ROW_RE.finditer(lowered)
                                                                       if not _TABLE_VALUE_RE.search(m.group(0)) or _SUGGESTION_ROW_RE.search(m.group(0))]
    quoted += _corrected(lowered, sentence_ends) + _superseded_reads(lowered) + [m.span() for m in _DEFAULT_BLOCK_RE.finditer(lowered)]
    quoted += [m.span() for m in _LEGEND_LINE_RE.finditer(lowered)]
    quoted += [(_sentence_start(m.start(), sentence_ends), m.end()) for m in _RELAYED_AFTER_RE.finditer(lowered)]
    quoted += [m.span() for m in itertools.chain(_CHECKLIST_WEIGHTS_LINE_RE.finditer(lowered), _PREVIOUS_FINDINGS_LINE_RE.finditer(lowered))]
    quoted += [(_sentence_start(m.start(), sentence_ends), _sentence_end(m.end(), sentence_ends)) for m in _DATED_LOOK_RE.finditer(lowered)
               if _LATER_LOOK_RE.search(lowered, _sentence_end(m.end(), sentence_ends))]
    if (dated := _DATED_LOOK_LINE_RE.search(lowered)) and _TODAY_RE.search(_DATED_LOOK_LINE_RE.sub("", lowered)):
        quoted.append(dated.span())  # "Dermoscopy 2023: irregular network ... / Dermoscopy today: network regular"
    if "<input" in lowered_text or "<option" in lowered_text:  # an HTML form's unchosen options and unchecked boxes (before its tags are blanked)
        quoted += [m.span() for m in _UNCHOSEN_HTML_RE.finditer(lowered_text)]
    if "=" in lowered:  # a flat export's paths of a relative: "family_hx_form.v1/relative:0/dermoscopy_reported=irregular streaks"
        quoted += [m.span() for m in _RELATIVE_PATH_LINE_RE.finditer(lowered)]
    if "adjudicat" in lowered:  # a trial's site reading, superseded by the adjudicated one
        quoted += [m.span() for m in _SITE_READING_LINE_RE.finditer(lowered)]
    if _CHAT_USER_RE.search(lowered):
        quoted += [m.span() for m in _CHAT_ASSISTANT_TURN_RE.finditer(lowered)]
    default_legend = _DEFAULT_LEGEND_RE.search(lowered) is not None
    if (email_quotes := [m.span() for m in _EMAIL_QUOTE_RE.finditer(lowered)]) and not _AGREED_RE.search(_EMAIL_QUOTE_RE.sub("", lowered)):
        quoted += email_quotes  # ... or quoted in an email the writer does not agree with
    gathered = list(quoted)  # ... and the spans of negated lists: their nouns are absent, not bare mentions of present findings
    lists, governed = _negated_lists(lowered)
    for start, end, items in lists:
        gathered.append((start, end))
        last_end = items[-1][2]  # (a kind or a place after the last noun is said of the whole list)
        list_end = _clause_bounds(lowered, items[-1][1], last_end)[1]
        if (any(a <= start < b for a, b in quoted) or _KIND_AFTER_RE.match(lowered, last_end)
                or _CENTRE_ONLY_RE.search(lowered, last_end, list_end)):
            continue
        for i, (key, a, b) in enumerate(items):
            # the item up to the next one (the last: to its clause's end): "without streaks or PN unclear" drops PN only
            upto = items[i + 1][1] if i + 1 < len(items) else list_end
            if (not _NOT_ASSESSED.search(lowered, a, upto) and not _questioned(lowered, a, b) and not _CENTRE_ONLY_RE.search(lowered, b, upto)
                    and not _QUALITY_AFTER_RE.match(lowered, b)):
                found.setdefault(key, set()).add("absent")
    matches = list(_PHRASE_RE.finditer(lowered))
    mark = _MARK_RE.search(lowered)  # check marks: do they lead their items or follow them (the first mark before any mention)?
    first_noun = _NOUN_RE.search(lowered) if mark is not None else None
    marks_lead = first_noun is not None and mark.start() < min(first_noun.start(), matches[0].start() if matches else len(lowered))
    sections = _sections(lowered)
    heads = list(_LIST_HEAD_RE.finditer(lowered))
    head_ends = [h.end() for h in heads]
    crossed = () if mark is None else (_CROSSED_NOUN_BEFORE_RE if marks_lead else _CROSSED_NOUN_AFTER_RE).finditer(lowered)
    answered_no = _NOUN_ANSWERED_NO_RE.finditer(lowered) if _YES_NO_FORM_RE.search(lowered) else ()
    for denial in itertools.chain(_NOUN_DENIED_RE.finditer(lowered), _SIGN_DENIED_BEFORE_RE.finditer(lowered), crossed, answered_no):  # "BWV absent", "Streaks neg", "Vessels nil", "✗ BWV": absent
        start = denial.start(1)
        clause_start, clause_end = _clause_bounds(lowered, start, start + len(denial.group(1)))
        sentence_start = _sentence_start(start, sentence_ends)
        line_start = lowered.rfind("\n", 0, start) + 1  # (a grade ending the line above is that line's)
        if (any(a <= start < b for a, b in gathered) or _GRADE_BEFORE_RE.search(lowered, max(line_start, start - 30), start)
                or _NOUN_OF[denial.group(1)] == "pigment_network" and _another_network(lowered, start)
                or _NOT_ASSESSED.search(lowered, clause_start, clause_end) or _questioned(lowered, start, denial.end())
                or _CHECKLIST_SENTENCE_RE.match(lowered, sentence_start) or _out_of_scope(lowered, sentence_start, start, clause_end, "absent")
                or _UNSTATED_VALUE_AFTER_RE.match(lowered, denial.end())):
            continue
        found.setdefault(_NOUN_OF[denial.group(1)], set()).add("absent")
    for n, match in enumerate(matches):
        if any(a <= match.start() < b for a, b in gathered):
            continue
        phrase = _PHRASE_OF_GROUP[match.lastindex - 1]
        key, value = _PHRASINGS[phrase]
        if key == "pigment_network" and _another_network(lowered, match.start()):
            continue  # "Negative network: absent" says nothing of the pigment network
        if phrase == "apn" and _PERSON_BEFORE_RE.search(lowered, max(0, match.start() - 8), match.start()):
            continue  # "seen by the APN": a nurse
        if (scored := _WEIGHT_AND_SCORE_RE.match(lowered, match.end())) and scored.group(1) == "0":
            if phrase not in _NOUN_OF:  # "Irregular streaks (1): 0": the grade denied, not the criterion
                continue
            value = "absent"  # "BWV (2): 0"
        if mark is not None and value != "absent" and (_CROSS_BEFORE_RE.search(lowered, max(0, match.start() - 6), match.start()) if marks_lead
                                                       else _CROSS_AFTER_RE.match(lowered, match.end())):
            continue  # "✗ BWV" (read absent with the denied nouns), "✗ irregular streaks" (the grade denied, not the criterion)
        next_mention = matches[n + 1].start() if n + 1 < len(matches) else len(lowered)
        if key in _TWO_GRADES_CRITERIA and value not in ("absent", "present") and _another_grade_after(lowered, match.end(), next_mention, value):
            continue
        if value != "absent" and (stated := _STATED_VALUE_RE.match(lowered, match.end())) and not _PRESENT_VALUE_RE.match(lowered, stated.end()):
            continue
        if value != "absent" and _denied_around(lowered, match.start(), match.end(), phrase in _NOUN_OF, sections):
            continue
        if value == "absent" and phrase[-1] == "-" and _GRADE_BEFORE_RE.search(lowered, max(0, match.start() - 30), match.start()):
            continue  # "atyp. PN -": the atypical network is denied, not the network
        start, end = _clause_bounds(lowered, match.start(), match.end())
        clause = lowered[start:end]
        sentence_start = _sentence_start(match.start(), sentence_ends)
        if (_NOT_ASSESSED.search(clause) or _questioned(lowered, match.start(), match.end()) or _CHECKLIST_SENTENCE_RE.match(lowered, sentence_start)
                or _out_of_scope(lowered, sentence_start, match.start(), end, value)):
            continue
        if value != "absent" and _CHECKLIST_TALK_RE.search(lowered, sentence_start, _sentence_end(match.end(), sentence_ends)):
            continue  # "The blue-whitish veil is one of the three major criteria of the 7-point checklist"
        if key == "regression_structures" and value != "absent" and _NOT_REGRESSION_AFTER_RE.match(lowered, match.end()):
            continue  # "The white scar-like areas around it are the burn scar itself, not regression"
        if phrase in _NOUN_OF and value != "absent" and _not_assessed_list(lowered, sentence_start, match.start()):
            continue
        if value == "absent" and (_CENTRE_ONLY_RE.search(lowered, match.end(), end) or _QUALITY_AFTER_RE.match(lowered, match.end())
                                  or _KIND_AFTER_RE.match(lowered, match.end())):
            continue  # "no network centrally", "no network abnormality": not the criterion's absence
        if phrase in _NOUN_OF and value != "absent" and (lowered[match.start() - 1: match.start()] in _LABEL_OPENERS and match.start() > 0
                                                         or _LABEL_AFTER_RE.match(lowered, match.end())):
            continue  # a code's or a field's label
        if default_legend and lowered.startswith("*", match.end()):
            continue  # a template's default
        if phrase in _NOUN_OF and value != "absent" and _LIST_NOT_ASSESSED_AFTER_RE.match(lowered, match.end()):
            continue  # "Colour-dependent features (veil, regression) not graded"
        if _UNSTATED_VALUE_AFTER_RE.match(lowered, match.end()):
            continue  # "Dermoscopy veil: absent (auto-filled)", "blue-white veil [REDACTED]"
        if _OPTIONS_AFTER_RE.match(lowered, match.end()):
            continue  # a form's options, "Pigmentation: absent / diffuse reg / local reg / ...": none chosen by these words
        if value != "absent" and (_PAST_AFTER_RE.match(lowered, match.end()) or _series_count_after(lowered, match.end())
                                  or _EARLIER_VISIT_AFTER_RE.search(lowered, match.end(), _sentence_end(match.end(), sentence_ends))
                                  or _seen_in_an_earlier_year(lowered, match.end(), end, sentence_ends)):
            continue
        # (a negation that a conjunction joins after the mention is the next item's: "a typical network and no dots")
        negation_end = conjoined.start() if (conjoined := _CONJOINED_NEGATION_RE.search(lowered, match.end(), end)) else end
        if (head := _NEGATION_HEADS_NOUN_RE.search(lowered, match.end(), negation_end)) and lowered[match.end():head.start()].strip():
            negation_end = head.start()
        negation_start = buts[-1].end() if (buts := list(_BUT_RE.finditer(lowered, start, match.start()))) else start
        if value != "absent" and (_NEGATION_RE.search(lowered, negation_start, negation_end) or match.start() in governed or _NEGATIVES_DASH_SENTENCE_RE.match(lowered, sentence_start)
                                  or _in_negated_series(lowered, match.start(), phrase in _NOUN_OF, sentence_ends, heads, head_ends)):
            continue
        found.setdefault(key, set()).add(value)
    for key, value in replaced:  # (an amended value: the amendment's is read)
        found.get(key, set()).discard(value)
    for doubt in _DOUBTED_NOUN_RE.finditer(lowered) if _DOUBT_WORD_RE.search(lowered) else ():  # a criterion the text doubts anywhere: "I'm not sure about the veil"
        if not any(a <= doubt.start() < b for a, b in quoted):
            key = _NOUN_OF[doubt.group(1) or doubt.group(2)]
            found[key] = found.get(key, set()) & {"absent"}  # (its absence stays read)
    regression = found.get("regression_structures", set())
    if regression - {"combinations"} == {"white areas", "blue areas"} or ("combinations" in regression and regression <= {"combinations", "white areas", "blue areas"}):
        # "white scar-like areas and blue peppering": both, the checklist's combinations ("white and blue (new peppering)" too)
        found["regression_structures"] = {"combinations"}
    elif regression in ({"white areas"}, {"blue areas"}) and _OTHER_REGRESSION_COLOUR_RE[next(iter(regression))].search(lowered):
        del found["regression_structures"]  # one colour read, the other named in words not read ("peppering + scar-like whitish areas")
    return tuple((key, next(iter(found[key]))) for key, _ in CRITERIA if len(found.get(key, ())) == 1)


# a sentence that defines the checklist's criteria, wherever it names them: "The blue-whitish veil is one of the three
# major criteria of the 7-point checklist", "[Inserted: irregular streaks, irregular dots ... are the minor criteria.]"
_CHECKLIST_TALK_RE = re.compile(
    r"(?<![\w-])(?:(?:is|are)\s+(?:one\s+of\s+)?(?:the\s+)?(?:[\w-]+\s+)?(?:major|minor)\s+criteri(?:a|on)|criteria of the (?:7|seven)-?\s*point"
    # (not a filled checklist's "Major criteria: atypical network 2", nor "2 major criteria are present: ...")
    r"|(?:major|minor)\s+criteria\s+(?:are|include)(?!\s+(?:present|met|seen|found|positive|absent|none)))(?![\w-])")
# ... white areas the text names as something else: "... are the burn scar itself, not regression"
_NOT_REGRESSION_AFTER_RE = re.compile(r"[^.;\n]{0,60}?(?<![\w-])(?:not (?:true |a )?regression|post-?[\w-]*\s+scar\w*"
                                     r"|(?:at|on|of) the (?:treated|treatment|biopsy|excision|surgical|cryo) site)(?![\w-])")  # ("... at the treated site (post-cryo scarring)")
# ... and a criterion the text doubts anywhere, as a noun (looked for only in a text with a word of doubt: the nouns'
# alternation is long): "[Comment: I'm not sure about the veil - looks like glare]",
# "agree, the veil is doubtful" (a present or graded reading of it is not read; its absence is)
_DOUBT_WORD_RE = re.compile(r"doubt|not (?:so |too |entirely |quite |really )?sure|unsure|unconvinced|questionable|uncertain|equivocal|dubious")
_DOUBTED_NOUN_RE = re.compile(
    r"(?<![\w-])(?:not (?:so |too |entirely |quite |really )?sure about|unsure about|doubts? about|doubtful about|unconvinced (?:by|about))\s+(?:the\s+|a\s+)?(" + _ANY_NOUN + r")(?![\w-])"
    r"|(?<![\w-])(?:the\s+)?(" + _ANY_NOUN + r")\s+(?:is|was|looks|seems)\s+(?:doubtful|questionable|uncertain|equivocal|dubious)(?![\w-])")


# a criterion named as not assessed, or in doubt, says nothing about the lesion ("PN n/a", "pigment network: not
# assessable", "?BWV", "possible BWV", "r/o BWV", "BWV cannot be excluded": before, a bare "BWV" in doubt read PRESENT)
_NOT_ASSESSED = re.compile(
    r"(?<![\w/])n/?a(?![\w/])|\bnot (?:assess|evaluat|determin|examin|grad)\w*|\bcannot be (?:assess|evaluat|determin|judg)\w*"
    r"|\b(?:unassessable|non-?evaluable|not-?evaluable|indeterminate|unknown|unclear|equivocal|uncertain)\b"
    r"|(?<![\w/-])(?:r/o|rule out|possible|possibly|poss\.|probable|probably|prob\.|questionable|query|suspicious|suspected|suspect"
    r"|doubtful|likely|unlikely|suggestive|cannot exclude|can't exclude|cannot be (?:excluded|ruled out)"
    r"|can't be (?:excluded|ruled out)|not (?:be )?(?:excluded|ruled out)"
    # a hedge: "maybe BWV", "BWV vs regression", "pseudo BWV", "BWV-like area", "BWV ±"
    r"|maybe|may be|perhaps|could|might|represents?|hint of|possibility|not convinced|lighting (?:is|was) poor|poor lighting|favou?rs?|favou?red|equivocally|awaiting|cannot be confirmed"
    r"|vs\.?|versus|ddx|pseudo|mimic\w*|resembl\w*|borderline|unsure|not sure|looks? like"
    r"|unconfirmed|not confirmed|to be confirmed|tbc|pending|inconclusive|difficult to|hard to|rather than|instead of"
    # a condition or a plan: "excise if BWV develops", "monitor for new BWV", "evaluate for atypical PN"
    r"|unresolved"
    r"|if|unless|in case|monitor|watch for|look for|check for|assess for|evaluate for|should|would|re-?image for|review for"
    r"|to exclude|is there|are there|is (?:this|that|it)|was there|were there|next case|previous case|other case|described as|comment on|to assess|to judge|not reported|not recorded|to be documented|see image|criterion|cannot decide|can't decide"
    r"|other (?:lesion|naevus|nevus|mole)s?|(?:comparison|reference|control) (?:lesion|naevus|nevus|mole)s?|for (?:comparison|reference)(?: only)?|the (?:lower|upper|other|second|larger|smaller) (?:one|lesion|na?evus|nevus|mole)(?!\s*\(\s*(?:this|imaged))"
    # the past, another lesion or person: "previous dermoscopy showed BWV", "BWV resolved", "mother's lesion had BWV"
    r"|previous|previously|prior|prev\.|h/o|hx|history|formerly|baseline|last visit|resolved|disappeared|faded|regressed"
    # ... and the forms that say nothing else: "BWV (old)", "s/p BWV", "PMH: lesion with BWV" (a year, "earlier", "past",
    # "referral" or "old images" also head today's findings: "Seen in 2026: BWV", "changed over the past year: atypical PN")
    r"|\(\s*old\s*\)|s/p|status post|pmh"
    r"|family|mother'?s?|father'?s?|sibling|adjacent|neighbou?ring|contralateral|satellite"
    r"|(?:daughter|son|sister|brother|husband|wife|partner|grandmother|grandfather|aunt|uncle|cousin)(?:'?s)?|next to (?:it|this|the)"
    # the first visit's or the last review's findings: "Had irregular D/G at the first visit", "noted at last review"
    r"|(?:first|last) (?:visit|review)|initial dermoscopy|at that time|initially|originally"
    # another's word, another lesion, a hedge, a plan: "per the GP", "incidental lesion", "there seem to be", "exclude BWV"
    r"|per (?:the )?(?:gp|referrer|reports?)|incidental|another (?:spot|lesion|naevus|nevus|mole)|fhx|relatives?|twin'?s?"
    r"|seems? to|not confident|not convincing|cannot assess|can't assess|unable to assess|exclude|explained"
    r"|wondered|wonder|thought|told|read online|textbook|at the time|next time|next visit|asked by|see (?:the )?(?:clinic )?letter"
    r"|not (?:yet )?verified|unverified|per (?:her|his|the) letters?|mum'?s?|mom'?s?|dad'?s?|whether|suggestion of|felt"
    # a checklist's score: "BWV (2 points)", "7PCL score 3 (BWV 2, ...)" (a number is no finding's value here)
    r"|score|points?|pts"
    r")(?![\w-])|(?<=[\w-])(?<!scar-)(?<!pepper-)(?<!wreath-)like(?![\w-])|±|\(\s*\+/-\s*\)"  # ("BWV-like"; "white scar-like areas" is a term)
    # a template's value left at its default: "Streaks: absent [default]", "Network: typical (default)"
    r"|[\[(]\s*default(?![\w-])"
    # ... or in a comment of an export's line: "network: typical   # default", "streaks: regular   # corrected below"
    r"|#[ \t]*(?:default|(?:corrected|amended|changed|superseded)[ \t]+below)(?![\w-])"
)
# "veil" alone is the checklist's blue-whitish veil ("No veil.", "Veil: none"), read as "BWV" (same length, so positions
# are kept). Not after a colour word, where it ends a longer noun ("blue-white veil"; the held-out "bluish-white veil"),
# nor in "veil-like". (A noun of CLINICAL_SYNONYMS would match inside those longer nouns.)
_BARE_VEIL_RE = re.compile(r"(?<![\w-])(?<!white )(?<!whitish )(?<!blue )(?<!bluish )(?<!grey )(?<!gray )veil(?![\w-])")
# typographic dashes and the minus sign as the hyphen they stand for: a word processor writes "BWV –" for "BWV -"
# (before: read PRESENT, the bare noun); one character each, so positions in the text are kept
_DASHES = str.maketrans({c: "-" for c in "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe63\uff0d\u207b\u208b\u02d7"})
# a question mark at a mention ("?BWV", "BWV?", "streaks: irregular?", "regular streaks (?)") puts it in doubt; one
# elsewhere in the clause ("BWV present (biopsy: melanoma?)") does not
_QUESTION_BEFORE_RE = re.compile(r"\?\s*$|\?[ \t]*[a-z]+[ \t]+$")  # ("? subtle BWV", on its line)
_QUESTION_AFTER_RE = re.compile(r"\s*\(?\s*\?|\s*[,;:-]\s*\(?\s*\?\s*\)?\s*(?=[;,.\n]|$)")  # ("BWV, ?MM": a question of the diagnosis)


# a doubt that follows the mention in a clause of its own: "BWV, possibly", "BWV; uncertain", "BWV like", "BWV or artefact",
# "veil ~" (a shorthand's "possible"). The white space before the doubt is possessive: three runs of "\s*" in a row tried
# every split of the spaces after a noun, a padded column's "BWV" + 2000 spaces took 40 s
_DOUBT_AFTER_RE = re.compile(
    r"\s*+[,;:]?\s*+\(?\s*+(?:possibly|probably|uncertain|equivocal|questionable|doubtful|unclear|not sure|tbc|to be confirmed"
    r"|unconfirmed|maybe|perhaps)\s*\)?\s*(?=[;,.)\n]|$)|\s*+-?\s*+like(?![\w-])|\s+or\s+(?:artefact|artifact|not)(?![\w-])"
    r"|[ \t]*+:?[ \t]*+~[ \t]*(?=[;,.)\n]|$)"
)


# the nouns and separators of a list up to a mention: "network, streaks or " in "cannot assess network, streaks or BWV"
_NOUN_LIST_TAIL_RE = re.compile(r"(?:[ \t]*(?:" + _ANY_NOUN + r")[ \t]*(?:,|/|(?:or|and|nor)(?![\w-]))?)*[ \t]*")


# ... or that names the criteria it checked, in any abbreviations: "Other criteria: absent (checked PN, DG, BWV, RS, VS,
# PIG)" (before: the veil read PRESENT)
_CHECKED_LIST_HEAD_RE = re.compile(r"(?<![\w-])(?:checked|assessed|evaluated|screened)(?:[ \t]+for)?(?![\w-])")
_SHORT_LIST_TAIL_RE = re.compile(r"(?:[ \t]*[a-z/]{1,4}\.?[ \t]*(?:,|/|(?:or|and|nor)(?![\w-])))*[ \t]*")


def _not_assessed_list(lowered: str, sentence_start: int, start: int) -> bool:
    """Whether the bare noun at ``start`` is an item of a list that a not-assessed or doubting word heads in its sentence
    ("image quality too poor to judge network, streaks or BWV", "cannot assess PN, BWV": before, the veil read PRESENT;
    the clause of the last item holds only "streaks or BWV")."""
    for heads, tail in ((_NOT_ASSESSED, _NOUN_LIST_TAIL_RE), (_CHECKED_LIST_HEAD_RE, _SHORT_LIST_TAIL_RE)):
        head = None
        for head in heads.finditer(lowered, sentence_start, start):
            pass  # (the last head before the mention)
        if head is not None and tail.fullmatch(lowered, head.end(), start) is not None:
            return True
    return False


def _questioned(lowered: str, start: int, end: int) -> bool:
    """Whether the mention ``lowered[start:end]`` is put in doubt where it stands: a question mark at it, or a doubt
    right after it in a clause of its own."""
    return bool(_QUESTION_BEFORE_RE.search(lowered, max(0, start - 16), start) or _QUESTION_AFTER_RE.match(lowered, end)
                or _DOUBT_AFTER_RE.match(lowered, end))


# a present or graded phrasing with a value after a colon ("BWV: 0", "atyp. PN: ?", "irregular streaks: -"): the
# value says what it is, and only "yes" / "present" / "seen" / "+" confirm it (before: "BWV: 0", "BWV: -ve" read
# PRESENT; a value training writes, "BWV: present", is a phrasing of its own; a checklist's score, 1 or 2, states it)
_STATED_VALUE_RE = re.compile(r"\s*[:=]\s*(?=[^\s;,.])")
_PRESENT_VALUE_RE = re.compile(r"(?:yes|y|present|seen|\+|[12]|[✓✔☑]\ufe0f?|\[[ \t]*[x✓✔][ \t]*\])\s*(?=[;,.)\n]|$)")  # (a checklist's score: "BWV: 2", "Irregular streaks: 1")
# the clause a mention belongs to: up to ';', ',', a line end, or a sentence's '. ' (not "pigm. ", an abbreviation)
_CLAUSE_END = re.compile(r"[;,\n]|(?<!pigm)(?<!prev)(?<!poss)(?<!prob)\.(?:\s|$)")  # "prev. BWV", "poss. BWV" are one clause


def _clause_bounds(lowered: str, start: int, end: int) -> tuple[int, int]:
    """Where the clause of the mention ``lowered[start:end]`` starts and ends: the clause end before it, the one after it,
    each at most :data:`SENTENCE_REACH` characters away."""
    window = max(0, start - SENTENCE_REACH)
    before = [m.end() for m in _CLAUSE_END.finditer(lowered, window, start)]
    reach = min(len(lowered), end + SENTENCE_REACH)
    after = _CLAUSE_END.search(lowered, end, reach)
    return (before[-1] if before else window), (after.start() if after else reach)


def recognised_findings(text: str) -> tuple[str, ...]:
    """The 7-point criteria (:data:`CRITERIA` keys, in that order) that ``text`` states in the words of the
    training texts, present or absent ("no streaks" is a finding): the keys of :func:`read_findings`.

    The network's findings gate (:class:`~monai_cir.networks.ComposedRetrievalNet`, ``text_gate="findings"``)
    composes a query with its text only when this is not empty: a text with no finding the network
    can read (age and sex only, or findings in words it was never trained on) would move the query
    without telling it anything about the lesion, so the query falls back to the image alone
    (issue 13: "text never hurts")."""
    return tuple(key for key, _ in read_findings(text))


# the template's context (elevation, location, sex) as any training style writes it, in a text's first sentence:
# "Palpable lesion on the upper limbs of a female patient.", "sex: female, site: upper limbs, elevation: palpable",
# "45y F, upper limbs, palpable.", "Female patient aged 45 with a palpable lesion on the back."
_ELEVATIONS = ("flat", "palpable", "nodular")
_LOCATIONS = tuple(DERM7PT_LOCATION_TO_SITE)  # Derm7pt's location values
_LOCATION_OF_PHRASE = {_LOCATION_PHRASE.get(loc, loc): loc for loc in _LOCATIONS} | {loc: loc for loc in _LOCATIONS}
_LOCATION_RE = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, _longest_first(_LOCATION_OF_PHRASE))) + r")(?![\w-])")
_ELEVATION_RE = re.compile(r"(?<![\w-])(" + "|".join(_ELEVATIONS) + r")(?![\w-])")
_SEX_RE = re.compile(r"(?<![\w-])(female|male|f|m)(?![\w-])")
# the only words a context sentence is made of (besides numbers and ages such as "45y"): a first sentence with any
# other word ("r/o nodular melanoma", "review when she comes back") is not read as context
_CONTEXT_WORDS = frozenset(
    "lesion on the of a an patient aged age about years year old with sex site elevation f m female male".split()
    + list(_ELEVATIONS) + [w for phrase in _LOCATION_OF_PHRASE for w in phrase.split()]
)
_FIRST_SENTENCE_RE = re.compile(r"[^\n]*?(?:\.(?=\s|$)|\n|$)")


def _read_context(text: str) -> dict[str, str | None]:
    """The template's context fields (elevation, location, sex) stated in a text's first sentence when that sentence
    is a context sentence of a training style (only context words, no finding); each None unless stated once."""
    first = _FIRST_SENTENCE_RE.match(text.lstrip()).group(0).lower()
    words = re.findall(r"[a-z]+", re.sub(r"\b\d+y\b|\d+", " ", first))
    if not words or any(w not in _CONTEXT_WORDS for w in words) or read_by_rules(first):
        return {"elevation": None, "location": None, "sex": None}

    def one(values: set[str]) -> str | None:
        return values.pop() if len(values) == 1 else None

    return {"elevation": one(set(_ELEVATION_RE.findall(first))),
            "location": one({_LOCATION_OF_PHRASE[m] for m in _LOCATION_RE.findall(first)}),
            "sex": one({"female" if m in ("female", "f") else "male" for m in _SEX_RE.findall(first)})}


def query_text(text: str) -> str:
    """What the network reads of a query text with the findings gate: its findings (:func:`read_findings`) and
    their context (elevation, location, sex, in any training style's words) written as :func:`meta_report` writes a
    case, in the template's words. A template text is returned as it is; a text in another training style
    (abbreviations, a list, prose, coded SR lines) reaches the network as the template states the same findings, and
    the words that are not findings or their context (a diagnosis, a plan, filler) do not reach it: the model reads
    the findings the app says it read, and nothing else. A text naming no finding is returned as it is (the gate
    leaves it out of the query)."""
    findings = read_findings(text)
    if not findings:
        return text
    return meta_report({**dict(findings), **_read_context(text)})


TEXT_NOT_USED_NOTICE = (
    "the query text was not used: it names no 7-point checklist finding (such as pigment network, streaks, "
    "blue-whitish veil) in words the model was trained on, or only findings it doubts or denies in other words "
    "(\"?BWV\", \"absence of BWV\"), so the similar cases were found from the image alone"
)
"""What the app tells the clinician when the findings gate left a non-empty text out of the query."""
SEVERAL_LESIONS_NOTICE = (
    "the query text was not used: it describes several lesions (\"lesion 1 ... lesion 2\", \"lesion A ... lesion B\") and does "
    "not say which one the image shows, so the similar cases were found from the image alone; write the findings of "
    "the imaged lesion only"
)
"""... when that text is about several lesions (:func:`describes_several_lesions`): none of its findings is read."""


def describes_several_lesions(text: str) -> bool:
    """Whether ``text`` is about several lesions: it names two lesion labels ("Lesion 1: BWV; lesion 2: no BWV",
    "lesion A has BWV, lesion B does not", "L1: ... L2: ...", an audit's "Case 1: ... Case 2: ...", a log's "Pt 1: ...
    Pt 2: ...", a plan's "Site 1 - ... Site 2 - ..."), counts a series ("audit of 2WW referrals (n=42)") or says several
    lesions were imaged ("dermoscopy done on both", "lesions 1-4"). :func:`read_findings` reads none of its findings, since it
    does not say which lesion the image shows."""
    lowered = text.lower().translate(_DASHES)
    labels = {next(label for label in m.groups() if label) for m in _LESION_LABEL_RE.finditer(lowered)}
    return (len(labels) > 1 or _SERIES_RE.search(lowered) is not None or _SEVERAL_IMAGED_RE.search(lowered) is not None
            or (_SEVERAL_NAMED_RE.search(lowered) is not None and _INDEX_NAMED_RE.search(lowered) is None))


def finding_names(findings: Sequence[str] | Sequence[tuple[str, str]]) -> str:
    """Findings in the report's words, comma-separated: :func:`recognised_findings` keys by name ("pigment network,
    streaks"), :func:`read_findings` pairs as the template states them ("atypical pigment network, no streaks")."""
    names = dict(CRITERIA)
    return ", ".join(_criterion(f[1], names[f[0]]) if isinstance(f, tuple) else names.get(f, f) for f in findings)


def text_use_notice(weight: float, findings: Sequence[str] | Sequence[tuple[str, str]], prior: bool = False) -> str:
    """What the app tells the clinician of a text the query composed (``weight`` > 0): which findings the model
    read in it (:func:`read_findings` pairs, stated as the template states them, so "streaks -" shows as "no
    streaks"; or :func:`recognised_findings` keys, named) and how much the text counted
    (``ComposedRetrievalNet.full_text_findings``): the findings are what the text adds, so a clinician who wrote
    five and sees one read knows the other four were not, and one who wrote "BWV -" sees it read as absent.
    ``prior``: the network has a diagnosis prior, which weighs the diagnosis the findings point to by the same share
    (``S + λ w log p``): at λ 10 even a small share can decide the order, and "the image alone for the rest" must not
    read as if the text hardly mattered."""
    read = f"{len(findings)} of the 7 checklist findings ({finding_names(findings)})"
    if weight >= 1.0:
        return f"findings read in the query text: {read}; the text counted fully in the query"
    return (
        f"findings read in the query text: {read}, so it counted for {weight:.0%} of the query and the image alone for "
        "the rest; naming more of the findings (present or absent) gives the text more weight"
        + ("; the same share weighs the diagnosis these findings point to in the order (the diagnosis prior), which can "
           "decide the order even at a small share" if prior else "")
    )
