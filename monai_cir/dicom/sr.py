"""The answer as a TID 1500 Measurement Report (highdicom templates), and reading it back.

The IHE AI Results profile builds on TID 1500 and SR-aware systems read it, so the similar cases are
measurement groups of a Measurement Report (codes in :mod:`monai_cir.dicom.codes`; ``.N`` below is a
project concept, the OID ``CONCEPT_ROOT + N`` in the ``ISO_OID`` scheme). OHIF 3.13 draws none of it
(its SR viewport wants image coordinates; docs/dicom.md "Viewer"): the clinician reads the PDF::

    CONTAINER (126000, DCM, "Imaging Measurement Report")            TID 1500
      HAS CONCEPT MOD Language; HAS OBS CONTEXT observer = the algorithm as a device (TID 1004)
      HAS CONCEPT MOD Procedure reported = (446078004, SCT, "Dermoscopic photography")
      CONTAINS Image Library (111028, DCM)  -> the query image
      CONTAINS Imaging Measurements (126010, DCM)
        Measurement Group (125007, DCM), TID 1501, one per similar case, in the order shown (similarity, or with the diagnosis prior: the coded ranking method says which)
          Tracking Identifier = the library case id; Tracking Unique Identifier (derived, stable)
          Algorithm Name / Version (TID 4019)
          NUM (.1) Retrieval rank, unit (1, UCUM)
          NUM (.2) Similarity score S of the network (Eq. 9 [+ late fusion]), unit (1, UCUM), with its possible range as
              Minimum / Maximum (SCT) measurement statistical properties (TID 311)
          CODE (.11) Similar case's recorded diagnosis = the case's diagnosis (SNOMED CT)
          CODE (.12) Similar case's anatomic site = the case's site (SNOMED CT)   [when known]
              (another patient's: not the standard Diagnosis / Finding Site, which would read as this lesion's; the
              answers before wrote those, and read_similar_cases_sr reads both)
          CODE (.7) Diagnosis confirmation method = histopathology (SCT) | follow-up | expert | unknown
          CODE (.10) Similar cases ranking method = by similarity (.40.1) | by similarity and diagnosis likelihood (.40.2)  [when given]
          TEXT (.4) Case library collection; TEXT (121106, DCM, Comment) = explanation [optional]
          IMAGE Source (TID 1501) -> the query image (frame), and the library image [when it has UIDs]
        Measurement Group, Finding type (.5) "Retrieval-based evidence summary"   [optional]
          one group per diagnosis: CODE Diagnosis, NUM (122157, DCM) Probability when the vote is calibrated,
          else NUM (.9) Similarity-weighted share, NUM (111406, DCM)
          Number of similar findings (cases with that diagnosis among the k that voted), CODE (.6)
          suggestion = Yes on the most probable one, CODE (.8) calibrated Yes/No, TEXT Comment = method
      CONTAINS Qualitative Evaluations (C0034375, UMLS)
        TEXT (55752-0, LN, "Clinical Information") = the query text  [when not empty]
        TEXT (121106, DCM, "Comment") = "Decision support, not a diagnosis ...", then one per notice

The library instances belong to other patients and studies: they are listed in the Pertinent Other
Evidence Sequence (a Key Object Selection may reference one patient only, PS3.3 C.17.6). The producer
follows IHE AI Results: Contributing Equipment with purpose (Newcode1, 99IHE, "Processing Algorithm"),
Manufacturer, Model Name, Software Versions and Device UID; Verification Flag UNVERIFIED.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from ..evidence import EvidenceSummary
from . import codes as C
from .reader import image_label

if TYPE_CHECKING:  # highdicom is imported when an SR is written or read
    import highdicom as hd

__all__ = [
    "DECISION_SUPPORT_NOTE",
    "NO_MATCH_NOTICE",
    "SimilarCase",
    "SimilarCasesReport",
    "answer_time",
    "container",
    "read_similar_cases_sr",
    "similar_cases_sr",
    "similarity_percent",
]

DECISION_SUPPORT_NOTE = (
    "Decision support, not a diagnosis: library cases that look similar to the query image, and to its text where the "
    "text counted (the notes say whether it did). The diagnosis of a similar case is not the diagnosis of this patient; "
    "each case states how its diagnosis was confirmed."
)
# the note as earlier versions wrote it ("by image and text", also of an image-only query): read back as the note, not a notice
_EARLIER_DECISION_SUPPORT_NOTES = (
    "Decision support, not a diagnosis: library cases that look similar by image and text. The diagnosis "
    "of a similar case is not the diagnosis of this patient; each case states how its diagnosis was confirmed.",
)
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
FINDING_SITE = Code("363698007", "SCT", "Finding site")
# the notice of an answer without a case (the deploy app adds why after a colon)
NO_MATCH_NOTICE = "no similar case was found"
ALGORITHM_NAME = Code("111001", "DCM", "Algorithm Name")  # TID 4019, written by highdicom
ALGORITHM_VERSION = Code("111003", "DCM", "Algorithm Version")
ALGORITHM_PARAMETERS = Code("111002", "DCM", "Algorithm Parameters")


def container(name, items: Sequence[Any], relationship_type=None):
    """A highdicom CONTAINER content item (SEPARATE continuity) holding ``items``."""
    from highdicom.sr import ContainerContentItem, ContentSequence

    item = ContainerContentItem(name=name, is_content_continuous=False, relationship_type=relationship_type)
    item.ContentSequence = ContentSequence(list(items))
    return item


def similarity_percent(score: float, score_range: tuple[float, float]) -> float:
    """The score as a percentage of the best possible score (what the PDF shows a clinician), rounded to a whole
    percent; a score that rounds to 0 is 0, not "-0". ``score_range``: the model's lowest and highest score
    (:attr:`~monai_cir.networks.ComposedRetrievalNet.score_range`; no default: ±3 for Eq. 9 over three levels, ±2
    for the release network, and a percentage against another model's range reads 53% for its 80%)."""
    return float(round(100.0 * float(score) / float(score_range[1]))) + 0.0


@dataclass
class SimilarCase:
    """One rank of a similar-cases SR, as read back."""

    rank: int
    score: float
    diagnosis: str | None
    confirmation: str = "unknown"
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
    algorithm_parameters: list[str] = field(default_factory=list)  # which model and library answered (the app's)
    score_range: tuple[float, float] | None = None
    template: str | None = None
    ranking: str | None = None  # how the matches are ordered (monai_cir.prior_ranking.RANKINGS); None: not stated
    differential_rank: int | None = None  # the rank the differential slot placed a case of another diagnosis at


# ------------------------------------------------------------------------------------------------
def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _query_dataset(query: Any) -> tuple[Dataset, int | None, str, list[str]]:
    """(dataset, frame_number, text, notices) of a DermoscopyQuery or a plain dataset; the dataset's text decoded from its
    character set (in place: the same values): the answers are written in UTF-8, and the items of a sequence copied as
    read kept their bytes ("Clinique Rhône" of an Other Patient IDs item, in Latin-1, read "Rh\ufffdne" in the SR)."""
    if isinstance(query, Dataset):
        query.decode()
        return query, None, "", []
    ds = getattr(query, "dataset", None)
    if not isinstance(ds, Dataset):
        raise TypeError(f"query must be a DermoscopyQuery or a pydicom Dataset, got {type(query).__name__}")
    ds.decode()
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


def _site_code(site: str | None) -> Code | None:
    if not site or site == "unknown":
        return None
    from ..data.sites import SITE_CODES

    code = SITE_CODES.get(site)
    return None if code is None else Code(code.code_value, code.coding_scheme, code.code_meaning)


def _source_image(sop_class: str, sop_uid: str, frame: int | None = None):
    from highdicom.sr import SourceImageForMeasurementGroup

    return SourceImageForMeasurementGroup(sop_class, sop_uid, referenced_frame_numbers=[frame] if frame else None)


def similar_cases_sr(
    query: Any,
    hits: Sequence[Any],
    *,
    query_text: str | None = None,
    notices: Sequence[str] | None = None,
    evidence_summary: EvidenceSummary | Mapping[str, Any] | None = None,
    explanations: Mapping[int, str] | None = None,
    ranking: str | None = None,
    differential_rank: int | None = None,
    score_range: tuple[float, float],
    algorithm_name: str = "monai-cir composed vision-language retrieval",
    algorithm_version: str | None = None,
    algorithm_parameters: Sequence[str] | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_number: int = 99,
    instance_number: int = 1,
    institution_name: str | None = None,
    plain_highdicom: bool = False,
) -> hd.sr.ComprehensiveSR:
    """The similar-cases answer to one query as a TID 1500 :class:`highdicom.sr.ComprehensiveSR`.

    Args:
        query: a :class:`~monai_cir.dicom.reader.DermoscopyQuery` (its dataset, frame, text and
            notices are used) or the query image's pydicom dataset. The SR joins its patient and study.
        hits: ranked results, objects (or mappings) with ``rank, case_id, score, metadata``; metadata
            with ``diagnosis, confirmation, study_uid, series_uid, sop_instance_uid, sop_class_uid,
            collection, site`` (:class:`monai_cir.index.SearchHit`). A hit without all four UIDs gets
            no library image reference (library built from plain image files).
        query_text / notices: override the query's text and notices.
        evidence_summary: a :class:`monai_cir.evidence.EvidenceSummary` (or its ``to_dict()``).
        explanations: rank -> short text explaining the match, optional.
        ranking: how ``hits`` are ordered (:data:`monai_cir.prior_ranking.RANKINGS`), coded in each case's
            group (:data:`~monai_cir.dicom.codes.RANKING_METHOD`); None: not stated.
        differential_rank: the rank of the differential slot's case (:mod:`monai_cir.differential`), coded as placed
            there ("differential"), not as ranked by ``ranking``.
        score_range: the lowest and highest score the model can give (``-L, L`` for ``L`` levels).
        plain_highdicom: assemble the document with highdicom's own ``ComprehensiveSR`` constructor
            (it deep-copies, re-parses and searches the whole content tree: about 3x the time of the
            default, :func:`_assembled_comprehensive_sr`). Same dataset; the reference the tests hold
            the default to.
    """
    import highdicom as hd
    from highdicom.sr import (
        AlgorithmIdentification,
        DeviceObserverIdentifyingAttributes,
        Measurement,
        MeasurementProperties,
        MeasurementReport,
        MeasurementsAndQualitativeEvaluations,
        MeasurementStatisticalProperties,
        NumContentItem,
        ObservationContext,
        ObserverContext,
        QualitativeEvaluation,
        RelationshipTypeValues,
        TextContentItem,
        TrackingIdentifier,
    )

    contains = RelationshipTypeValues.CONTAINS
    ds, frame, text, query_notices = _query_dataset(query)
    for keyword in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not str(ds.get(keyword, "") or ""):
            raise ValueError(f"the query dataset has no {keyword}: cannot write the similar-cases SR")
    low, high = (float(v) for v in score_range)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"score_range must be two finite numbers, low < high, got {score_range}")
    if ranking is not None:
        C.ranking_code(ranking)  # an unknown ranking is refused before anything is built
    text = (query_text if query_text is not None else text).strip()
    notices = [str(n) for n in (query_notices if notices is None else notices) if str(n).strip()]
    if not hits and not any(n.startswith(NO_MATCH_NOTICE) for n in notices):  # said once (the app says why)
        notices.append(NO_MATCH_NOTICE)
    version = algorithm_version or C.software_version()
    # which model and library answered (the app: the network's fingerprint and the index's digest), in TID 4019's Algorithm
    # Parameters: the package version alone told two checkpoints or two libraries apart nowhere in the PACS
    algorithm = AlgorithmIdentification(name=algorithm_name, version=version, parameters=[str(p)[:1024] for p in algorithm_parameters or ()] or None)
    query_source = _source_image(str(ds.SOPClassUID), str(ds.SOPInstanceUID), frame)

    def num(name, value: float | int, unit=C.NO_UNITS, properties=None):
        return Measurement(name=name, value=value, unit=unit, properties=properties)

    score_properties = MeasurementProperties(
        measurement_statistical_properties=MeasurementStatisticalProperties(
            values=[
                NumContentItem(C.MINIMUM, low, C.NO_UNITS, relationship_type=RelationshipTypeValues.HAS_PROPERTIES),
                NumContentItem(C.MAXIMUM, high, C.NO_UNITS, relationship_type=RelationshipTypeValues.HAS_PROPERTIES),
            ],
            description="possible range of the similarity score S of the network; higher is more similar",
        )
    )

    groups = []
    evidence: list[Dataset] = [ds]
    seen_ranks: set[int] = set()
    for hit in hits:
        rank, score, meta = _get(hit, "rank"), _get(hit, "score"), _get(hit, "metadata")
        case_id = str(_get(hit, "case_id") or _get(meta, "case_id") or "")
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1 or rank in seen_ranks:
            raise ValueError(f"hit rank must be a unique integer >= 1, got {rank!r}")
        seen_ranks.add(rank)
        score = float(score)
        if not math.isfinite(score):
            raise ValueError(f"hit score of rank {rank} must be finite, got {score}")
        if not case_id:
            raise ValueError(f"hit of rank {rank} has no case id")
        collection = str(_get(meta, "collection") or "")
        confirmation = str(_get(meta, "confirmation") or "unknown")
        # the case's diagnosis and site in project concepts: the group's subject is this patient's lesion, and the
        # standard Diagnosis / Finding Site would record another patient's as its (found by the viewer review)
        qualitative = [QualitativeEvaluation(C.CASE_DIAGNOSIS, C.diagnosis_code(str(_get(meta, "diagnosis") or "unknown")))]
        qualitative.append(QualitativeEvaluation(C.DIAGNOSIS_CONFIRMATION, C.confirmation_code(confirmation)))
        site = _site_code(_get(meta, "site"))
        if site is not None:
            qualitative.append(QualitativeEvaluation(C.CASE_SITE, site))
        if differential_rank is not None and rank == differential_rank:
            qualitative.append(QualitativeEvaluation(C.RANKING_METHOD, C.ranking_code("differential")))
        elif ranking is not None:
            qualitative.append(QualitativeEvaluation(C.RANKING_METHOD, C.ranking_code(ranking)))
        sources = [query_source]
        ref = _hit_reference(meta)
        if ref is not None:
            sources.append(_source_image(ref.SOPClassUID, ref.SOPInstanceUID))
            evidence.append(ref)
        group = MeasurementsAndQualitativeEvaluations(
            # one tracked finding per query image and case: a tracking UID of the case alone would join the answers of
            # every patient whose lesion matched it (TID 1500: a tracking UID follows one finding of one patient)
            tracking_identifier=TrackingIdentifier(uid=C.derived_uid("similar-case", str(ds.SOPInstanceUID), str(frame or ""), collection, case_id),
                                                   identifier=case_id[:64]),
            algorithm_id=algorithm,
            measurements=[num(C.RETRIEVAL_RANK, int(rank)), num(C.SIMILARITY_SCORE, score, properties=score_properties)],
            qualitative_evaluations=qualitative,
            source_images=sources,
        )
        extra = []
        if collection:
            extra.append(TextContentItem(name=C.CASE_COLLECTION, value=collection[:1024], relationship_type=contains))
        if explanations and explanations.get(rank):
            extra.append(TextContentItem(name=C.COMMENT, value=str(explanations[rank])[:65000], relationship_type=contains))
        group[0].ContentSequence.extend(extra)
        groups.append(group)

    if evidence_summary is not None:
        summary = EvidenceSummary.coerce(evidence_summary)
        for diagnosis, share in summary.distribution.items():
            qualitative = [QualitativeEvaluation(C.DIAGNOSIS, C.diagnosis_code(diagnosis))]
            if diagnosis == summary.predicted:
                qualitative.append(QualitativeEvaluation(C.PREDICTED_DIAGNOSIS, C.YES))
            qualitative.append(QualitativeEvaluation(C.CALIBRATED, C.YES if summary.calibrated else C.NO))
            group = MeasurementsAndQualitativeEvaluations(
                tracking_identifier=TrackingIdentifier(uid=C.new_uid(), identifier=f"evidence: {diagnosis}"[:64]),
                finding_type=C.EVIDENCE_SUMMARY,
                algorithm_id=algorithm,
                measurements=[
                    # a viewer shows the concept's name: "Probability" only when the vote was calibrated
                    num(C.PROBABILITY if summary.calibrated else C.WEIGHTED_SHARE, min(1.0, float(share))),
                    num(C.NUMBER_OF_SIMILAR_FINDINGS, int(summary.counts.get(diagnosis, 0))),
                ],
                qualitative_evaluations=qualitative,
                source_images=[query_source],
            )
            group[0].ContentSequence.append(
                TextContentItem(name=C.COMMENT, value=f"{summary.label}. {summary.method}"[:65000], relationship_type=contains)
            )
            groups.append(group)

    if not groups:  # TID 1500 needs one measurement group: say that nothing was found, about the query
        groups.append(
            MeasurementsAndQualitativeEvaluations(
                tracking_identifier=TrackingIdentifier(uid=C.new_uid(), identifier="no similar case"),
                algorithm_id=algorithm,
                source_images=[query_source],
            )
        )

    observer = ObserverContext(
        observer_type=Code("121007", "DCM", "Device"),
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=C.DEVICE_UID, name=algorithm_name[:64], manufacturer_name=C.MANUFACTURER, model_name=C.MODEL_NAME
        ),
    )
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=C.DERMOSCOPIC_PHOTOGRAPHY,
        imaging_measurements=groups,
        title=C.IMAGING_MEASUREMENT_REPORT,
    )
    evaluations = []
    if text:
        evaluations.append(TextContentItem(name=C.CLINICAL_INFORMATION, value=text[:65000], relationship_type=contains))
    evaluations += [TextContentItem(name=C.COMMENT, value=n[:65000], relationship_type=contains) for n in [DECISION_SUPPORT_NOTE, *notices]]
    report[0].ContentSequence.append(container(QUALITATIVE_EVALUATIONS, evaluations, contains))

    # highdicom accepts only DCM purposes here; IHE AI Results' own purpose replaces it below
    equipment = hd.ContributingEquipment(
        manufacturer=C.MANUFACTURER,
        purpose_of_reference=Code("109103", "DCM", "Processing Equipment"),
        manufacturer_model_name=C.MODEL_NAME,
        software_versions=version,
        contribution_description=algorithm_name[:1024],
    )
    sr = (hd.sr.ComprehensiveSR if plain_highdicom else _assembled_comprehensive_sr)(
        evidence=evidence,
        content=report,
        series_instance_uid=series_uid or C.new_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or C.new_uid(),
        instance_number=instance_number,
        manufacturer=C.MANUFACTURER,
        manufacturer_model_name=C.MODEL_NAME,
        software_versions=version,
        device_serial_number="0",
        institution_name=institution_name,
        # which image of the study this answers (several images: several answers), as the PDF's header says
        series_description=f"Similar cases, {image_label(ds, frame)} (decision support)"[:64],
        is_complete=True,
        is_verified=False,  # VerificationFlag UNVERIFIED (IHE AI Results)
        contributing_equipment=[equipment],
        # UTF-8 whatever the query's character set: the SR carries texts of other instances (the
        # report's SR, the library's cases) that the query's set may not cover, or that highdicom
        # cannot write (ISO 2022 code extensions)
        specific_character_set=C.OUTPUT_CHARACTER_SET,
    )
    _dated_series(sr)
    # the answer's time in its description: OHIF's study browser shows a series' description and number, not its date, so
    # two answers to one image (a study answered again) looked the same there
    suffix = " (decision support)"  # kept whole: a long image label is what gets cut
    sr.SeriesDescription = f"Similar cases {answer_time(sr)}, {image_label(ds, frame)}"[: 64 - len(suffix)] + suffix
    for item in sr.ContributingEquipmentSequence:  # ours, not the query's acquisition equipment
        if item.PurposeOfReferenceCodeSequence[0].CodeValue == "109103" and item.get("ManufacturerModelName") == C.MODEL_NAME:
            item.DeviceUID = C.DEVICE_UID
            item.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept.from_code(C.PROCESSING_ALGORITHM)]
    return sr


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def answer_time(ds: Dataset) -> str:
    """An answer's Series Date / Time as its descriptions name it, "08 Dec 14:05" (the host's local time, as the dates:
    :func:`_dated_series`), short enough for a 64-character description; empty without them."""
    date, time = str(ds.get("SeriesDate", "") or ""), str(ds.get("SeriesTime", "") or "")
    if len(date) < 8 or len(time) < 4 or not (date[:8] + time[:4]).isdigit() or not 1 <= int(date[4:6]) <= 12:
        return ""
    return f"{date[6:8]} {_MONTHS[int(date[4:6]) - 1]} {time[:2]}:{time[2:4]}"


def _dated_series(ds: Dataset) -> None:
    """Series Date / Time (a viewer lists a study's answers by them: a study answered twice has two) and the
    Timezone Offset From UTC of the instance's dates and times, which are this host's local time (highdicom's, and
    the PDF's): within a study whose images carry another offset, they would read hours off."""
    import datetime

    now = datetime.datetime.now().astimezone()
    ds.SeriesDate = str(ds.get("ContentDate", "") or "") or now.strftime("%Y%m%d")
    ds.SeriesTime = str(ds.get("ContentTime", "") or "") or now.strftime("%H%M%S")
    ds.TimezoneOffsetFromUTC = now.strftime("%z")


def _assembled_comprehensive_sr(*, evidence: Sequence[Dataset], content: hd.sr.MeasurementReport, **kwargs: Any) -> hd.sr.ComprehensiveSR:
    """``highdicom.sr.ComprehensiveSR(evidence=evidence, content=content, **kwargs)``, the same dataset,
    without the constructor's three walks over the content tree (most of an SR's build time for
    ~440 content items): a deep copy, its re-parse into content items (``sr.content``) and two
    ``find_content_items`` searches (IMAGE, COMPOSITE) that build a ContentItem per node.

    highdicom's constructor runs as is (patient / study / series / equipment attributes, flags, and
    the evidence sequences from ``collect_evidence`` over ``evidence``) on a stand-in root container
    that has the root's own attributes but no children; the real root's attributes then replace the
    stand-in's, as the constructor itself copies them. What its tree walks checked is checked here by
    one plain walk: every referenced instance is in ``evidence`` and no item is SCOORD3D.
    ``sr.content`` is ``content`` itself (a MeasurementReport, as ``srread`` gives), not a parsed copy:
    the content items were built by highdicom and are already of its classes.
    """
    import highdicom as hd

    root = content[0]
    referenced, value_types = _referenced_instances(root)
    if "SCOORD3D" in value_types:  # the check ComprehensiveSR.__init__ makes
        raise ValueError("Comprehensive SR does not support content items with SCOORD3D value type.")
    missing = referenced - {str(e.SOPInstanceUID) for e in evidence}
    if missing:  # the check collect_evidence makes
        raise ValueError(f"no evidence was provided for instances referenced in the SR content: {sorted(missing)}")
    stand_in = Dataset()
    for tag, element in root.items():
        if element.keyword != "ContentSequence":
            stand_in[tag] = element
    stand_in.ContentSequence = []
    sr = hd.sr.ComprehensiveSR(evidence=evidence, content=stand_in, **kwargs)
    for tag, element in root.items():  # what the constructor does with the content it is given
        sr[tag] = element
    sr._content = content  # noqa: SLF001 (what the `content` property returns; the constructor's is a parsed deep copy)
    return sr


def _referenced_instances(root: Dataset) -> tuple[set[str], set[str]]:
    """(SOP Instance UIDs referenced by IMAGE / COMPOSITE items, value types) of the tree under ``root``."""
    uids: set[str] = set()
    value_types: set[str] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        for item in node.get("ContentSequence", ()):
            value_type = str(item.ValueType)
            value_types.add(value_type)
            if value_type in ("IMAGE", "COMPOSITE"):
                uids.add(str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
            if "ContentSequence" in item:
                stack.append(item)
    return uids, value_types


# ------------------------------------------------------------------------------------------------
def _code_key(code: Any) -> tuple[str, str]:
    return str(code.scheme_designator), str(code.value)


def _is(code: Any, wanted: Code) -> bool:
    """``code`` is ``wanted``, or the legacy private code of the same concept (SRs of earlier releases)."""
    return code is not None and C.same_concept(str(code.scheme_designator), str(code.value), wanted)


def _qualitative(group, name: Code):
    for alias in C.aliases(name):
        values = group.get_qualitative_evaluations(name=alias)
        if values:
            return values[0].value
    return None


def _measurements(group, name: Code) -> list:
    for alias in C.aliases(name):
        values = group.get_measurements(name=alias)
        if values:
            return values
    return []


def _measurement(group, name: Code) -> float | None:
    values = _measurements(group, name)
    return float(values[0].value) if values else None


def _group_texts(group, name: Code) -> list[str]:
    return [str(item.TextValue) for item in group[0].ContentSequence if item.ValueType == "TEXT" and _is(item.name, name)]


def read_similar_cases_sr(path_or_dataset: str | Path | Dataset) -> SimilarCasesReport:
    """Read a similar-cases SR written by :func:`similar_cases_sr` back through highdicom's TID 1500
    classes (:class:`highdicom.sr.MeasurementReport`).

    Raises ``ValueError`` when the document is not a monai-cir similar-cases report."""
    import highdicom as hd

    sr = hd.sr.ComprehensiveSR.from_dataset(path_or_dataset) if isinstance(path_or_dataset, Dataset) else hd.sr.srread(path_or_dataset)
    content = sr.content
    if not isinstance(content, hd.sr.MeasurementReport) or str(sr.get("Manufacturer", "")) != C.MANUFACTURER:
        raise ValueError("not a monai-cir similar-cases SR (expected a TID 1500 Measurement Report by monai-cir)")
    where = {sop: (study, series) for study, series, sop, _ in sr.get_evidence()}
    report = SimilarCasesReport(
        sop_instance_uid=str(sr.SOPInstanceUID),
        study_uid=str(sr.StudyInstanceUID),
        patient_id=str(sr.PatientID),
        query_sop_instance_uid=None,
        query_sop_class_uid=None,
        query_text="",
        template=str(sr.ContentTemplateSequence[0].TemplateIdentifier) if "ContentTemplateSequence" in sr else None,
    )
    from ..data.sites import SITE_CODES

    site_names = {(c.coding_scheme, c.code_value): n for n, c in SITE_CODES.items() if c is not None}
    distribution: dict[str, float] = {}
    counts: dict[str, int] = {}
    predicted, method, calibrated = None, "", False
    for group in content.get_image_measurement_groups():
        for name, version in zip(_group_texts(group, ALGORITHM_NAME), _group_texts(group, ALGORITHM_VERSION)):
            report.algorithm_name, report.algorithm_version = name, version
            report.algorithm_parameters = _group_texts(group, ALGORITHM_PARAMETERS)
        sources = [(str(s.referenced_sop_class_uid), str(s.referenced_sop_instance_uid)) for s in group.source_images]
        if sources and report.query_sop_instance_uid is None:
            report.query_sop_class_uid, report.query_sop_instance_uid = sources[0]
        diagnosis_code = _qualitative(group, C.CASE_DIAGNOSIS) or _qualitative(group, C.DIAGNOSIS)  # (earlier answers: Diagnosis)
        diagnosis = C.diagnosis_from_code(diagnosis_code.scheme_designator, diagnosis_code.value, diagnosis_code.meaning) if diagnosis_code else None
        if _is(group.finding_type, C.EVIDENCE_SUMMARY):
            share = _measurement(group, C.PROBABILITY)
            distribution[diagnosis] = share if share is not None else _measurement(group, C.WEIGHTED_SHARE)
            counts[diagnosis] = int(round(_measurement(group, C.NUMBER_OF_SIMILAR_FINDINGS) or 0))
            if _is(_qualitative(group, C.PREDICTED_DIAGNOSIS), C.YES):
                predicted = diagnosis
            calibrated = _is(_qualitative(group, C.CALIBRATED), C.YES)
            method = next(iter(_group_texts(group, C.COMMENT)), "").removeprefix(f"{EvidenceSummary.label}. ")
            continue
        rank = _measurement(group, C.RETRIEVAL_RANK)
        if rank is None:  # the "no similar case" group
            continue
        score_item = _measurements(group, C.SIMILARITY_SCORE)[0]
        if report.score_range is None:
            bounds = {}
            for prop in score_item[0].get("ContentSequence", []):  # TID 311 Minimum / Maximum
                if prop.ValueType == "NUM":
                    name = prop.ConceptNameCodeSequence[0]
                    bounds[(str(name.CodingSchemeDesignator), str(name.get("CodeValue", "")))] = float(prop.MeasuredValueSequence[0].NumericValue)
            low, high = bounds.get(_code_key(C.MINIMUM)), bounds.get(_code_key(C.MAXIMUM))
            report.score_range = (low, high) if low is not None and high is not None else None
        confirmation_code = _qualitative(group, C.DIAGNOSIS_CONFIRMATION)
        ranking_code = _qualitative(group, C.RANKING_METHOD)
        named = C.ranking_from_code(ranking_code.scheme_designator, ranking_code.value) if ranking_code is not None else None
        if named == "differential":  # the case placed, not the list's order
            report.differential_rank = int(round(rank))
        elif named is not None:
            report.ranking = named
        case = SimilarCase(
            rank=int(round(rank)),
            score=float(score_item.value),
            diagnosis=diagnosis,
            confirmation=C.confirmation_from_code(confirmation_code.scheme_designator, confirmation_code.value) if confirmation_code else "unknown",
            case_id=group.tracking_identifier,
            collection=next(iter(_group_texts(group, C.CASE_COLLECTION)), None),
            explanation=next(iter(_group_texts(group, C.COMMENT)), None),
        )
        site_code = _qualitative(group, C.CASE_SITE) or (group.finding_sites[0].value if group.finding_sites else None)  # (earlier answers: Finding Site)
        if site_code is not None:
            case.site = site_names.get((site_code.scheme_designator, site_code.value), site_code.meaning)
        library = sources[1:]  # written [query, library image]; both are the same instance when the query is in the library
        if library:
            case.sop_class_uid, case.sop_instance_uid = library[0]
            if case.sop_instance_uid in where:
                case.study_uid, case.series_uid = (str(u) for u in where[case.sop_instance_uid])
        report.matches.append(case)

    root = content[0]
    for item in root.ContentSequence:
        if item.ValueType == "CONTAINER" and _is(item.name, QUALITATIVE_EVALUATIONS):
            for sub in item.ContentSequence:
                if _is(sub.name, C.CLINICAL_INFORMATION):
                    report.query_text = str(sub.TextValue)
                elif _is(sub.name, C.COMMENT) and str(sub.TextValue) not in (DECISION_SUPPORT_NOTE, *_EARLIER_DECISION_SUPPORT_NOTES):
                    report.notices.append(str(sub.TextValue))
    if distribution and predicted is not None:
        report.evidence_summary = EvidenceSummary(
            k=sum(counts.values()),
            distribution=distribution,
            predicted=predicted,
            confidence=distribution[predicted],
            counts=counts,
            calibrated=calibrated,
            method=method,
        )
    report.matches.sort(key=lambda m: m.rank)
    return report
