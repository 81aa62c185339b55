"""The answer as a Comprehensive SR "similar cases" document (highdicom), and reading it back.

Content tree (codes in :mod:`monai_cir.dicom.codes`; ``99MONAICIR`` is the declared private scheme)::

    CONTAINER (CIR001, 99MONAICIR, "Similar cases retrieval report")
      CONTAINS TEXT (111001, DCM, "Algorithm Name") / (111003, DCM, "Algorithm Version")
      CONTAINS TEXT (121106, DCM, "Comment")  "Decision support, not a diagnosis. ..."
      CONTAINS CONTAINER (110112, DCM, "Query")
        CONTAINS IMAGE (121324, DCM, "Source image")  -> the query instance (frame)
        CONTAINS TEXT (CIR008, 99MONAICIR, "Query text")        [when not empty]
        CONTAINS TEXT (121106, DCM, "Comment")                  [one per notice]
      CONTAINS CONTAINER (CIR002, 99MONAICIR, "Similar case")    [one per rank]
        CONTAINS NUM  (CIR003, 99MONAICIR, "Retrieval rank")     unit (1, UCUM, "no units")
        CONTAINS NUM  (CIR004, 99MONAICIR, "Similarity score")   unit (1, UCUM, "no units")
        CONTAINS CODE (CIR005, 99MONAICIR, "Reference diagnosis") = SCT melanoma / private codes
        CONTAINS TEXT (CIR006 case id), (CIR007 collection)
        CONTAINS CODE (363698007, SCT, "Finding site") = the site's SNOMED CT code [when known]
        CONTAINS TEXT (CIR014, 99MONAICIR, "Explanation")        [optional, issue 7]
        CONTAINS IMAGE (121324, DCM, "Source image")  -> the library instance [when it has UIDs]
      CONTAINS CONTAINER (CIR010, 99MONAICIR, "Retrieval-based evidence summary")  [optional]
        CONTAINS TEXT (121106, DCM, "Comment")  decision-support label
        CONTAINS CODE (CIR012, "Retrieval-based diagnosis suggestion")
        CONTAINS NUM  (122157, DCM, "Probability")  confidence, unit (1, UCUM)
        CONTAINS CONTAINER (CIR011, "Score-weighted diagnosis share")  [one per diagnosis]
          CONTAINS CODE (CIR005 "Reference diagnosis"), NUM (122157 "Probability")

The library instances usually belong to other patients and studies: highdicom puts them in the
Pertinent Other Evidence Sequence (Comprehensive SR allows it; the Key Object Selection writer
would refuse more than one study).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from . import codes as C

__all__ = [
    "DECISION_SUPPORT_NOTE",
    "EvidenceSummary",
    "SimilarCase",
    "SimilarCasesReport",
    "container",
    "read_similar_cases_sr",
    "similar_cases_sr",
]

DECISION_SUPPORT_NOTE = (
    "Decision support, not a diagnosis: similar biopsy-confirmed cases retrieved by image and text "
    "similarity. The diagnosis of a similar case is not the diagnosis of this patient."
)
FINDING_SITE = ("363698007", "SCT", "Finding site")


def container(name, items: Sequence[Any], relationship_type=None):
    """A highdicom CONTAINER content item (SEPARATE continuity) holding ``items``."""
    from highdicom.sr import ContainerContentItem, ContentSequence

    item = ContainerContentItem(name=name, is_content_continuous=False, relationship_type=relationship_type)
    item.ContentSequence = ContentSequence(list(items))
    return item


@dataclass
class EvidenceSummary:
    """Retrieval-based evidence: the score-weighted diagnosis distribution among the top-k.

    Attributes:
        distribution: diagnosis -> share in [0, 1] (sums to about 1).
        prediction: the suggested diagnosis (usually the largest share).
        confidence: calibrated confidence of the suggestion in [0, 1].
        k: how many retrieved cases were used.
        method: how the distribution was made (free text).
    """

    distribution: Mapping[str, float]
    prediction: str
    confidence: float
    k: int
    method: str = "score-weighted vote over the top-k similar cases"

    def __post_init__(self) -> None:
        if not self.distribution:
            raise ValueError("EvidenceSummary.distribution must not be empty")
        for name, share in self.distribution.items():
            if not name or not (0.0 <= float(share) <= 1.0 + 1e-6):
                raise ValueError(f"EvidenceSummary.distribution[{name!r}] must be in [0, 1], got {share}")
        if not self.prediction:
            raise ValueError("EvidenceSummary.prediction must not be empty")
        if not (0.0 <= float(self.confidence) <= 1.0):
            raise ValueError(f"EvidenceSummary.confidence must be in [0, 1], got {self.confidence}")
        if int(self.k) < 1:
            raise ValueError(f"EvidenceSummary.k must be >= 1, got {self.k}")

    @classmethod
    def coerce(cls, value: Any) -> EvidenceSummary:
        if isinstance(value, cls):
            return value
        get = value.get if isinstance(value, Mapping) else (lambda key, default=None: getattr(value, key, default))
        return cls(
            distribution=dict(get("distribution")),
            prediction=str(get("prediction")),
            confidence=float(get("confidence")),
            k=int(get("k")),
            method=str(get("method", None) or cls.method),
        )


@dataclass
class SimilarCase:
    """One rank of a similar-cases SR, as read back."""

    rank: int
    score: float
    diagnosis: str | None
    case_id: str | None = None
    collection: str | None = None
    site: str | None = None
    explanation: str | None = None
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None


@dataclass
class SimilarCasesReport:
    """A similar-cases SR, as read back by :func:`read_similar_cases_sr`."""

    sop_instance_uid: str
    study_uid: str
    patient_id: str
    query_sop_instance_uid: str | None
    query_sop_class_uid: str | None
    query_text: str
    matches: list[SimilarCase] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    evidence_summary: EvidenceSummary | None = None
    algorithm_name: str | None = None
    algorithm_version: str | None = None


# ------------------------------------------------------------------------------------------------
def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _query_dataset(query: Any) -> tuple[Dataset, int | None, str, list[str]]:
    """(dataset, frame_number, text, notices) of a DermoscopyQuery or a plain dataset."""
    if isinstance(query, Dataset):
        return query, None, "", []
    ds = getattr(query, "dataset", None)
    if not isinstance(ds, Dataset):
        raise TypeError(f"query must be a DermoscopyQuery or a pydicom Dataset, got {type(query).__name__}")
    return ds, getattr(query, "frame_number", None), str(getattr(query, "text", "") or ""), list(getattr(query, "notices", []) or [])


def _hit_reference(meta: Any) -> Dataset | None:
    uids = {k: str(_get(meta, k, "") or "") for k in ("study_uid", "series_uid", "sop_instance_uid", "sop_class_uid")}
    if not all(uids.values()):
        return None
    ref = Dataset()
    ref.StudyInstanceUID = uids["study_uid"]
    ref.SeriesInstanceUID = uids["series_uid"]
    ref.SOPInstanceUID = uids["sop_instance_uid"]
    ref.SOPClassUID = uids["sop_class_uid"]
    return ref


def _site_code(site: str | None):
    if not site or site == "unknown":
        return None
    try:
        from ..data.sites import SITE_CODES
    except ImportError:  # pragma: no cover
        return None
    code = SITE_CODES.get(site)
    if code is None:
        return None
    from pydicom.sr.coding import Code

    return Code(code.code_value, code.coding_scheme, code.code_meaning)


def similar_cases_sr(
    query: Any,
    hits: Sequence[Any],
    *,
    query_text: str | None = None,
    notices: Sequence[str] | None = None,
    evidence_summary: Any = None,
    explanations: Mapping[int, str] | None = None,
    algorithm_name: str = "monai-cir composed vision-language retrieval",
    algorithm_version: str | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_number: int = 99,
    instance_number: int = 1,
    institution_name: str | None = None,
):
    """The similar-cases answer to one query as a :class:`highdicom.sr.ComprehensiveSR`.

    Args:
        query: a :class:`~monai_cir.dicom.reader.DermoscopyQuery` (its dataset, frame, text and
            notices are used) or the query image's pydicom dataset. The SR joins its patient and study.
        hits: ranked results, objects (or mappings) with ``rank, case_id, score, metadata``; metadata
            with ``diagnosis, study_uid, series_uid, sop_instance_uid, sop_class_uid, collection,
            site`` (:class:`monai_cir.index.SearchHit`). A hit without all four UIDs gets no image
            reference (library built from plain image files).
        query_text / notices: override the query's text and notices.
        evidence_summary: an :class:`EvidenceSummary` (or an object/mapping with its fields).
        explanations: rank -> short text explaining the match (issue 7), optional.
    """
    import highdicom as hd
    from highdicom.sr import (
        CodeContentItem,
        ImageContentItem,
        NumContentItem,
        RelationshipTypeValues,
        TextContentItem,
    )

    contains = RelationshipTypeValues.CONTAINS
    ds, frame, text, query_notices = _query_dataset(query)
    for keyword in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID"):
        if not str(ds.get(keyword, "") or ""):
            raise ValueError(f"the query dataset has no {keyword}: cannot write the similar-cases SR")
    text = (query_text if query_text is not None else text).strip()
    notices = list(query_notices if notices is None else notices)
    if not hits:
        notices.append("no similar case was found")

    def text_item(name, value: str):
        return TextContentItem(name=name, value=str(value)[:65000], relationship_type=contains)

    def num_item(name, value: float, unit=C.NO_UNITS):
        return NumContentItem(name=name, value=value, unit=unit, relationship_type=contains)

    def image_item(sop_class: str, sop_uid: str, frames: Sequence[int] | None = None):
        return ImageContentItem(
            name=C.SOURCE_IMAGE,
            referenced_sop_class_uid=sop_class,
            referenced_sop_instance_uid=sop_uid,
            referenced_frame_numbers=list(frames) if frames else None,
            relationship_type=contains,
        )

    query_items = [image_item(str(ds.SOPClassUID), str(ds.SOPInstanceUID), [frame] if frame else None)]
    if text:
        query_items.append(text_item(C.QUERY_TEXT, text))
    query_items += [text_item(C.COMMENT, n) for n in notices if str(n).strip()]

    items = [
        text_item(C.ALGORITHM_NAME, algorithm_name),
        text_item(C.ALGORITHM_VERSION, algorithm_version or C.software_version()),
        text_item(C.COMMENT, DECISION_SUPPORT_NOTE),
        container(C.QUERY, query_items, contains),
    ]
    evidence: list[Dataset] = [ds]
    seen_ranks: set[int] = set()
    for hit in hits:
        rank, score, meta = _get(hit, "rank"), _get(hit, "score"), _get(hit, "metadata")
        case_id = _get(hit, "case_id") or _get(meta, "case_id")
        if not isinstance(rank, (int,)) or isinstance(rank, bool) or rank < 1 or rank in seen_ranks:
            raise ValueError(f"hit rank must be a unique integer >= 1, got {rank!r}")
        seen_ranks.add(rank)
        score = float(score)
        if not math.isfinite(score):
            raise ValueError(f"hit score of rank {rank} must be finite, got {score}")
        case_items = [num_item(C.RETRIEVAL_RANK, rank), num_item(C.SIMILARITY_SCORE, score)]
        diagnosis = _get(meta, "diagnosis")
        if diagnosis:
            case_items.append(CodeContentItem(name=C.REFERENCE_DIAGNOSIS, value=C.diagnosis_code(str(diagnosis)), relationship_type=contains))
        if case_id:
            case_items.append(text_item(C.CASE_IDENTIFIER, case_id))
        if _get(meta, "collection"):
            case_items.append(text_item(C.CASE_COLLECTION, _get(meta, "collection")))
        site_code = _site_code(_get(meta, "site"))
        if site_code is not None:
            from pydicom.sr.coding import Code

            case_items.append(CodeContentItem(name=Code(*FINDING_SITE), value=site_code, relationship_type=contains))
        if explanations and explanations.get(rank):
            case_items.append(text_item(C.EXPLANATION, explanations[rank]))
        ref = _hit_reference(meta)
        if ref is not None:
            case_items.append(image_item(ref.SOPClassUID, ref.SOPInstanceUID))
            evidence.append(ref)
        items.append(container(C.SIMILAR_CASE, case_items, contains))

    if evidence_summary is not None:
        summary = EvidenceSummary.coerce(evidence_summary)
        summary_items = [
            text_item(C.COMMENT, f"Decision support, not a diagnosis. {summary.method} (k = {summary.k})."),
            CodeContentItem(name=C.PREDICTED_DIAGNOSIS, value=C.diagnosis_code(summary.prediction), relationship_type=contains),
            num_item(C.PROBABILITY, float(summary.confidence)),
        ]
        for name, share in summary.distribution.items():
            summary_items.append(
                container(
                    C.DIAGNOSIS_SHARE,
                    [
                        CodeContentItem(name=C.REFERENCE_DIAGNOSIS, value=C.diagnosis_code(name), relationship_type=contains),
                        num_item(C.PROBABILITY, min(1.0, float(share))),
                    ],
                    contains,
                )
            )
        items.append(container(C.EVIDENCE_SUMMARY, summary_items, contains))

    root = container(C.SIMILAR_CASES_REPORT, items)
    return hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=root,
        series_instance_uid=series_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=instance_number,
        manufacturer=C.MANUFACTURER,
        manufacturer_model_name=C.MODEL_NAME,
        software_versions=C.software_version(),
        device_serial_number="0",
        institution_name=institution_name,
        series_description="Similar cases (monai-cir)",
        is_complete=True,
        coding_schemes=[C.coding_scheme_item()],
    )


# ------------------------------------------------------------------------------------------------
def _code_tuple(item: Dataset, keyword: str) -> tuple[str, str, str] | None:
    seq = item.get(keyword)
    if not seq:
        return None
    code = seq[0]
    return str(code.get("CodingSchemeDesignator", "")), str(code.get("CodeValue", "")), str(code.get("CodeMeaning", ""))


def _is(key: tuple[str, str, str] | None, code: Any) -> bool:
    return key is not None and key[0] == code.scheme_designator and key[1] == code.value


def _num(item: Dataset) -> float:
    return float(item.MeasuredValueSequence[0].NumericValue)


def read_similar_cases_sr(path_or_dataset: str | Path | Dataset) -> SimilarCasesReport:
    """Read a similar-cases SR written by :func:`similar_cases_sr` (file or dataset), via highdicom.

    Raises ``ValueError`` when the document is not a monai-cir similar-cases report."""
    import highdicom as hd

    if isinstance(path_or_dataset, Dataset):
        sr = hd.sr.ComprehensiveSR.from_dataset(path_or_dataset)
    else:
        sr = hd.sr.srread(path_or_dataset)
    if not _is(_code_tuple(sr, "ConceptNameCodeSequence"), C.SIMILAR_CASES_REPORT):
        raise ValueError("not a monai-cir similar-cases SR (document title is not CIR001 of 99MONAICIR)")
    where = {sop: (study, series, cls) for study, series, sop, cls in sr.get_evidence()}
    report = SimilarCasesReport(
        sop_instance_uid=str(sr.SOPInstanceUID),
        study_uid=str(sr.StudyInstanceUID),
        patient_id=str(sr.PatientID),
        query_sop_instance_uid=None,
        query_sop_class_uid=None,
        query_text="",
    )
    site_names: dict[tuple[str, str], str] = {}
    try:
        from ..data.sites import SITE_CODES

        site_names = {(c.coding_scheme, c.code_value): n for n, c in SITE_CODES.items() if c is not None}
    except ImportError:  # pragma: no cover
        pass

    for item in sr.ContentSequence:
        name = _code_tuple(item, "ConceptNameCodeSequence")
        if item.ValueType == "TEXT" and _is(name, C.ALGORITHM_NAME):
            report.algorithm_name = str(item.TextValue)
        elif item.ValueType == "TEXT" and _is(name, C.ALGORITHM_VERSION):
            report.algorithm_version = str(item.TextValue)
        elif _is(name, C.QUERY):
            for sub in item.ContentSequence:
                sub_name = _code_tuple(sub, "ConceptNameCodeSequence")
                if sub.ValueType == "IMAGE":
                    ref = sub.ReferencedSOPSequence[0]
                    report.query_sop_instance_uid = str(ref.ReferencedSOPInstanceUID)
                    report.query_sop_class_uid = str(ref.ReferencedSOPClassUID)
                elif _is(sub_name, C.QUERY_TEXT):
                    report.query_text = str(sub.TextValue)
                elif _is(sub_name, C.COMMENT):
                    report.notices.append(str(sub.TextValue))
        elif _is(name, C.SIMILAR_CASE):
            case = SimilarCase(rank=0, score=float("nan"), diagnosis=None)
            for sub in item.ContentSequence:
                sub_name = _code_tuple(sub, "ConceptNameCodeSequence")
                if _is(sub_name, C.RETRIEVAL_RANK):
                    case.rank = int(round(_num(sub)))
                elif _is(sub_name, C.SIMILARITY_SCORE):
                    case.score = _num(sub)
                elif _is(sub_name, C.REFERENCE_DIAGNOSIS):
                    case.diagnosis = C.diagnosis_from_code(*_code_tuple(sub, "ConceptCodeSequence"))
                elif _is(sub_name, C.CASE_IDENTIFIER):
                    case.case_id = str(sub.TextValue)
                elif _is(sub_name, C.CASE_COLLECTION):
                    case.collection = str(sub.TextValue)
                elif _is(sub_name, C.EXPLANATION):
                    case.explanation = str(sub.TextValue)
                elif sub_name and (sub_name[0], sub_name[1]) == (FINDING_SITE[1], FINDING_SITE[0]):
                    value = _code_tuple(sub, "ConceptCodeSequence")
                    case.site = site_names.get((value[0], value[1]), value[2]) if value else None
                elif sub.ValueType == "IMAGE":
                    ref = sub.ReferencedSOPSequence[0]
                    case.sop_instance_uid = str(ref.ReferencedSOPInstanceUID)
                    case.sop_class_uid = str(ref.ReferencedSOPClassUID)
                    if case.sop_instance_uid in where:
                        case.study_uid, case.series_uid = (str(u) for u in where[case.sop_instance_uid][:2])
            report.matches.append(case)
        elif _is(name, C.EVIDENCE_SUMMARY):
            distribution: dict[str, float] = {}
            prediction, confidence, method = None, None, ""
            for sub in item.ContentSequence:
                sub_name = _code_tuple(sub, "ConceptNameCodeSequence")
                if _is(sub_name, C.PREDICTED_DIAGNOSIS):
                    prediction = C.diagnosis_from_code(*_code_tuple(sub, "ConceptCodeSequence"))
                elif _is(sub_name, C.PROBABILITY):
                    confidence = _num(sub)
                elif _is(sub_name, C.COMMENT):
                    method = str(sub.TextValue)
                    method = method.removeprefix("Decision support, not a diagnosis. ")
                elif _is(sub_name, C.DIAGNOSIS_SHARE):
                    dx, share = None, None
                    for leaf in sub.ContentSequence:
                        leaf_name = _code_tuple(leaf, "ConceptNameCodeSequence")
                        if _is(leaf_name, C.REFERENCE_DIAGNOSIS):
                            dx = C.diagnosis_from_code(*_code_tuple(leaf, "ConceptCodeSequence"))
                        elif _is(leaf_name, C.PROBABILITY):
                            share = _num(leaf)
                    if dx is not None and share is not None:
                        distribution[dx] = share
            k = len(report.matches) or 1
            if method and "(k = " in method:
                method, _, tail = method.rpartition(" (k = ")
                try:
                    k = int(tail.split(")")[0])
                except ValueError:
                    pass
            if prediction and confidence is not None and distribution:
                report.evidence_summary = EvidenceSummary(distribution, prediction, confidence, k, method)
    report.matches.sort(key=lambda m: m.rank)
    return report
