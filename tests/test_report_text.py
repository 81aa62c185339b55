"""Report text forms (evaluation) and augmentation (training) on all Derm7pt and ISIC UDA-1 records:
no form leaks the label, the template is unchanged, held-out wording never reaches training."""

from __future__ import annotations

import re

import numpy as np
import pytest

from monai_cir.data import load_collection, meta_report
from monai_cir.data.report import (
    CRITERIA,
    FORBIDDEN_WORDS,
    HELD_OUT_STYLES,
    TEXT_FORMS,
    TRAINING_STYLES,
    augment_report,
    render_report,
    render_reports,
    report_fields,
)

AUGMENTATIONS_PER_CASE = 12


@pytest.fixture(scope="module")
def derm7pt(shared_data):
    return load_collection("derm7pt", shared_data)


@pytest.fixture(scope="module")
def isic(shared_data):
    return load_collection("isic-uda1", shared_data)


@pytest.fixture(scope="module")
def training_texts(derm7pt, isic):
    """Every training text the augmentation draws for all cases (12 seeds each), and each training
    style's full rendering of every Derm7pt case."""
    texts = [augment_report(r, np.random.default_rng((seed, i))) for i, r in enumerate(derm7pt + isic) for seed in range(AUGMENTATIONS_PER_CASE)]
    texts += [style.render(report_fields(r)) for r in derm7pt for style in TRAINING_STYLES.values()]
    return texts


@pytest.fixture
def rules_alone(monkeypatch):
    """read_findings as the rules read (its learned check keeps everything): for tests of what is done with the
    readings, whichever readings the shipped check keeps (tests/test_finding_check.py tests the check)."""
    from monai_cir.data import finding_check
    from monai_cir.data.report import read_findings

    keeps_all = finding_check.FindingCheck(np.zeros(finding_check.DIMENSIONS, dtype=np.float32), 0.0, 0.0)
    monkeypatch.setattr(finding_check, "default_check", lambda: keeps_all)
    read_findings.cache_clear()
    yield
    read_findings.cache_clear()


def _forms(record, index: int) -> dict[str, str]:
    return {form: render_report(record, form, np.random.default_rng((7, index))) for form in TEXT_FORMS}


def test_template_form_is_the_unchanged_template(derm7pt, isic):
    for r in derm7pt:
        assert render_report(r, "template", 0) == r.text == meta_report(r.metadata)
    for r in isic:
        assert render_report(r, "template", 0) == r.text
    row = dict(derm7pt[0].metadata)
    assert render_report(row, "template", 0) == meta_report(row)


def test_no_form_and_no_augmentation_leaks_the_label(derm7pt, isic, training_texts):
    pattern = re.compile("|".join(re.escape(w) for w in FORBIDDEN_WORDS), re.IGNORECASE)
    for i, r in enumerate(derm7pt + isic):
        # the label and what reveals it: ISIC's confirmation type is histopathology for every melanoma
        raw = {str(r.metadata.get(k, "")).lower() for k in ("diagnosis", "management", "benign_malignant", "diagnosis_confirm_type")} - {"", "none"}
        texts = list(_forms(r, i).values()) + [augment_report(r, np.random.default_rng((1, i))) for _ in range(1)]
        for text in texts:
            assert not pattern.search(text), (r.case_id, text)
            assert not any(word in text.lower() for word in raw), (r.case_id, text)
    leaking = [t for t in training_texts if pattern.search(t)]
    assert not leaking, leaking[:3]


def test_forms_and_augmentation_are_deterministic_given_the_seed(derm7pt):
    for i, r in enumerate(derm7pt[:50]):
        assert _forms(r, i) == _forms(r, i)
        assert [augment_report(r, np.random.default_rng(s)) for s in range(5)] == [augment_report(r, s) for s in range(5)]
    # ... and the seed matters: one case gets many different training texts and partial reports
    case = derm7pt[0]
    assert len({augment_report(case, s) for s in range(60)}) > 30
    assert len({render_report(case, "partial", s) for s in range(30)}) > 5


def test_training_and_held_out_styles_are_disjoint(derm7pt, training_texts):
    assert not set(TRAINING_STYLES) & set(HELD_OUT_STYLES)
    assert not set(TEXT_FORMS) & set(TRAINING_STYLES)
    # the held-out vocabulary: criterion nouns, negations, context words
    held_out = sorted({noun for style in HELD_OUT_STYLES.values() for noun in style.names.values()}
                      | {"not seen", "negative for", "observed", "woman", "man", "macular", "raised", "presenting", "located at"})
    held_out_pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in held_out) + r")\b", re.IGNORECASE)
    seen = [t for t in training_texts if held_out_pattern.search(t)]
    assert not seen, seen[:3]
    # the training nouns (template, full names, abbreviations) never appear in a reworded text
    trained = {noun for style in TRAINING_STYLES.values() for noun in style.names.values()} | {phrase for _, phrase in CRITERIA} | {"7PCL"}
    trained_pattern = re.compile(r"(?<!\w)(" + "|".join(re.escape(w) for w in sorted(trained)) + r")(?!\w)", re.IGNORECASE)
    for i, r in enumerate(derm7pt):
        reworded = render_report(r, "reworded", i)
        assert held_out_pattern.search(reworded), reworded
        assert not trained_pattern.search(reworded), (reworded, trained_pattern.search(reworded))
    # both held-out styles are drawn
    assert len({render_report(derm7pt[0], "reworded", s).split(":")[0] for s in range(20)}) == 2


def _template_findings(text: str) -> list[str]:
    return text.split("Dermoscopy: ", 1)[1].rstrip(".").split("; ") if "Dermoscopy: " in text else []


def test_partial_keeps_one_to_four_of_the_recorded_criteria(derm7pt):
    sizes = set()
    for i, r in enumerate(derm7pt):
        full = _template_findings(r.text)
        kept = _template_findings(render_report(r, "partial", i))
        assert 1 <= len(kept) <= 4 and set(kept) <= set(full), (r.text, kept)
        assert render_report(r, "partial", i).split(" Dermoscopy:")[0] == r.text.split(" Dermoscopy:")[0]
        sizes.add(len(kept))
    assert sizes == {1, 2, 3, 4}


def test_findings_only_keeps_one_to_four_of_the_recorded_criteria_and_no_context(derm7pt, isic):
    """``findings_only``: what a clinician's "BWV present, irregular streaks" reaches the network as: 1-4 recorded
    findings in the template's words after "Lesion." (no elevation, site, sex or age), read back unchanged by the
    findings gate; a case whose record states no finding gives no text."""
    from monai_cir.data.report import findings_report, query_text, read_findings

    sizes = set()
    for i, r in enumerate(derm7pt):
        text = render_report(r, "findings_only", i)
        kept = _template_findings(text)
        assert 1 <= len(kept) <= 4 and set(kept) <= set(_template_findings(r.text)), (r.text, text)
        assert text.startswith("Lesion. Dermoscopy: ") and query_text(text) == text, text
        assert set(read_findings(text)) <= set(report_fields(r).criteria) and len(read_findings(text)) == len(kept), text
        sizes.add(len(kept))
    assert sizes == {1, 2, 3, 4}
    assert findings_report(report_fields(derm7pt[0]).criteria) == "Lesion. " + derm7pt[0].text.split(". ", 1)[1]
    assert all(render_report(r, "findings_only", 0) == "" for r in isic[:50])  # ISIC records state no finding


def test_demographics_form_has_age_sex_site_only(derm7pt, isic):
    nouns = re.compile("|".join(re.escape(p) for _, p in CRITERIA) + "|flat|palpable|nodular", re.IGNORECASE)
    for i, r in enumerate(derm7pt):
        text = render_report(r, "demographics", i)
        assert not nouns.search(text), text
        assert r.metadata["sex"] in text
    text = render_report(isic[0], "demographics", 0)
    assert "female" in text and "55" in text
    assert render_report(isic[0], "empty", 0) == render_report(derm7pt[0], "empty", 0) == ""
    with pytest.raises(ValueError, match="unknown text form 'free'"):
        render_report(derm7pt[0], "free", 0)


def test_augmentation_covers_orders_subsets_styles_and_empty(derm7pt):
    # a case with findings present and absent, so that every way of writing a negation applies
    case = next(r for r in derm7pt if 2 <= sum(v == "absent" for _, v in report_fields(r).criteria) <= 5)
    texts = [augment_report(case, s) for s in range(400)]
    assert "" in texts
    assert any("BWV" in t or "7PCL" in t for t in texts)
    assert any(t.startswith("Pigment network: ") and t.count("\n") == 6 for t in texts)  # the SR reader's coded lines
    assert any("without " in t for t in texts)  # negations written differently
    assert any(t == render_report(case, "demographics", 0) for t in texts)  # demographics only
    # random order: some text names streaks before the pigment network
    lowered = [t.lower() for t in texts]
    assert any(0 <= t.find("streaks") < t.find("pigment network") for t in lowered)
    # random subsets: some template text keeps fewer than all criteria
    assert any(0 < len(_template_findings(t)) < len(report_fields(case).criteria) for t in texts)
    assert case.text in texts  # today's template too
    # the mix is the caller's: all text dropped, or the template only
    assert {augment_report(case, s, mix={"empty": 1.0}) for s in range(20)} == {""}
    assert {augment_report(case, s, mix={"template": 1.0}) for s in range(20)} == {case.text}
    with pytest.raises(ValueError, match="summing to 1"):
        augment_report(case, 0, mix={"empty": 0.5, "dropout": 0.5})


def test_render_reports_seeds_each_case_by_its_id(derm7pt):
    every = render_reports(derm7pt, "partial", seed=3)
    # the same case gets the same text in a subset, in another order; another seed changes texts
    subset = list(reversed(derm7pt[100:200]))
    assert render_reports(subset, "partial", seed=3) == list(reversed(every[100:200]))
    assert sum(a != b for a, b in zip(every, render_reports(derm7pt, "partial", seed=4))) > 300


def test_sr_coded_style_is_what_the_sr_reader_writes(derm7pt):
    """The training style ``sr_coded`` reproduces the text :func:`read_sr_text` makes of coded findings."""
    from pydicom.dataset import Dataset

    from monai_cir.dicom.reader import read_sr_text

    def code(value: str, meaning: str) -> Dataset:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "99TEST", meaning
        return item

    fields = report_fields(derm7pt[0])
    items = []
    for n, (key, value) in enumerate(fields.criteria):
        item = Dataset()
        item.RelationshipType, item.ValueType = "CONTAINS", "CODE"
        item.ConceptNameCodeSequence = [code(f"C{n}", TRAINING_STYLES["sr_coded"].names[key])]
        item.ConceptCodeSequence = [code(f"V{n}", value)]
        items.append(item)
    sr = Dataset()
    sr.SOPInstanceUID, sr.StudyInstanceUID, sr.SOPClassUID = "1.2.3", "1.2", "1.2.840.10008.5.1.4.1.1.88.33"
    sr.ContentSequence = items
    assert read_sr_text(sr).text == TRAINING_STYLES["sr_coded"].render(fields, with_context=False)


# the criteria a held-out style names in the checklist's own words, which the reader reads (Argenziano's definitions:
# irregular streaks are "pseudopods and radial streaming", irregular pigmentation "blotches"; the consensus's "bluish-white
# veil"); the other held-out nouns ("reticular pattern", "regressive areas", "globular elements", "vasculature") it does not
HELD_OUT_WORDS_READ = ("streaks", "pigmentation", "blue_whitish_veil")


def test_findings_gate_reads_exactly_the_recorded_criteria_in_training_words(derm7pt, isic):
    """recognised_findings names each recorded criterion of every training style's and the template's
    rendering, nothing in age / sex / site text (the gate's contract), and in held-out wording only the criteria
    :data:`HELD_OUT_WORDS_READ`, each with its recorded value (read_findings) for nearly every rendering."""
    from monai_cir.data.report import read_findings, recognised_findings

    checked, held_out_read, held_out_stated = 0, 0, 0
    for i, record in enumerate(derm7pt):
        fields = report_fields(record)
        recorded = tuple(key for key, _ in fields.criteria)
        if not recorded:
            continue
        assert recognised_findings(record.text) == recorded, record.text
        for style in TRAINING_STYLES.values():
            assert recognised_findings(style.render(fields)) == recorded, style.name
        for style in HELD_OUT_STYLES.values():
            text = style.render(fields)
            read = read_findings(text)
            assert set(read) <= set(fields.criteria), (text, read)  # never a wrong value, never a criterion not recorded
            assert {key for key, _ in read} <= set(HELD_OUT_WORDS_READ), (text, read)
            held_out_read += len(read)
            held_out_stated += sum(key in HELD_OUT_WORDS_READ for key in recorded)
        assert recognised_findings(render_report(record, "demographics", i)) == ()
        checked += 1
    assert checked == len(derm7pt) == 888  # every Derm7pt case records its criteria
    assert held_out_read >= 0.95 * held_out_stated, (held_out_read, held_out_stated)  # measured: 5246 of 5328
    assert all(recognised_findings(r.text) == () for r in isic)  # ISIC texts are age and sex only
    # whole words: a word that merely contains a training noun is not a finding
    assert recognised_findings("regressive areas, radial streaming, vasculature, apnoea") == ()  # ("APN" alone is the checklist's atypical network)
    assert recognised_findings("BWV +, D/G irregular; pigm. diffuse irreg.") == ("pigmentation", "dots_and_globules", "blue_whitish_veil")
    # a criterion with a value Derm7pt never records is not read ("diffuse" alone: regular or irregular?)
    assert recognised_findings("pigm. diffuse; streaks +") == ()


def test_the_findings_are_read_with_their_values_and_given_to_the_model_in_the_templates_words(derm7pt, training_texts):
    """read_findings reads each recorded (criterion, value) of every case in every training style (and nothing
    else); query_text gives the model those findings and their context as the template writes them: a template text
    unchanged (so every Derm7pt text, and the partial / demographics forms, reach the encoder as before; a reworded text
    as the template states what was read of it), any other training style's text as the case's template text, and what
    it reads back is what was read."""
    from monai_cir.data.report import FORBIDDEN_WORDS, query_text, read_findings, render_reports

    for record in derm7pt:
        fields = report_fields(record)
        assert read_findings(record.text) == fields.criteria, record.text
        assert query_text(record.text) == record.text
        for name, style in TRAINING_STYLES.items():
            text = style.render(fields, with_context=name != "sr_coded")
            assert read_findings(text) == fields.criteria, (name, text)
            if fields.criteria:  # the template's text itself (coded SR lines carry no context: "Lesion." then the findings)
                assert query_text(text) == (meta_report(dict(fields.criteria)) if name == "sr_coded" else record.text), (name, text)
    for form in ("partial", "demographics", "empty"):
        assert [query_text(t) for t in render_reports(derm7pt, form, 0)] == render_reports(derm7pt, form, 0), form
    reworded_read = 0
    for text in render_reports(derm7pt, "reworded", 0):  # what was read, in the template's words; unread: as it is
        read = read_findings(text)
        assert read_findings(query_text(text)) == read and (query_text(text) != text) == bool(read), text
        reworded_read += bool(read)
    assert reworded_read > 0.9 * len(derm7pt), reworded_read
    for text in training_texts[::10]:  # augmented: any subset, order and style, read back the same through the template
        assert read_findings(query_text(text)) == read_findings(text), text
        if read_findings(text):
            assert not any(w in query_text(text).lower() for w in FORBIDDEN_WORDS)


@pytest.mark.parametrize(("text", "model_reads"), [
    # absent findings as the abbreviated style writes them, with or without the space (before: BWV- was not read,
    # and "BWV -" reached the diagnosis prior as words it had never seen, which read it as melanoma evidence)
    ("7PCL: PN -, streaks -, BWV -", "Lesion. Dermoscopy: no pigment network; no streaks; no blue-whitish veil."),
    ("BWV-, streaks-, PN-", "Lesion. Dermoscopy: no pigment network; no streaks; no blue-whitish veil."),
    # a diagnosis, a plan or filler never reaches the model
    ("irregular streaks; r/o melanoma", "Lesion. Dermoscopy: irregular streaks."),
    ("Irregular streaks.", "Lesion. Dermoscopy: irregular streaks."),
    ("Palpable lesion on the upper limbs of a female patient. Dermoscopy: irregular streaks; no blue-whitish veil. "
     "Likely melanoma, excise.", "Palpable lesion on the upper limbs of a female patient. Dermoscopy: irregular streaks; no blue-whitish veil."),
    ("Dermoscopy shows atypical pigment network, without streaks or BWV.",
     "Lesion. Dermoscopy: atypical pigment network; no streaks; no blue-whitish veil."),
    # the context in another style's words: the template's context sentence
    ("45y F, back, palpable. 7PCL: atyp. PN, BWV +", "Palpable lesion on the back of a female patient. Dermoscopy: atypical pigment network; blue-whitish veil present."),
    # not read: a contradiction, wording no training style writes (the gate leaves the text out; it goes as written)
    ("BWV present; no BWV", "BWV present; no BWV"),
    ("neg for streaks", "neg for streaks"),
    # a negation in the clause of a present or graded phrasing is not read present (before: "BWV absent" read as present;
    # a bare noun a denial word follows reads absent, below)
    ("BWV absent", "Lesion. Dermoscopy: no blue-whitish veil."),
    ("no irregular streaks; irregular streaks not seen", "no irregular streaks; irregular streaks not seen"),
    # ... but a negated list of nouns reads each noun absent, an abbreviation as a full noun (before: "Lesion. Dermoscopy:
    # no streaks.", the veil left out)
    ("no streaks or BWV", "Lesion. Dermoscopy: no streaks; no blue-whitish veil."),
    # a sign ends its clause: "Streaks - irregular" is not "streaks -" (it reads the streaks irregular, a dash between noun
    # and grade), "BWV +/-" and "BWV-positive" are no signs
    ("Streaks - irregular; BWV +/-; BWV-positive", "Lesion. Dermoscopy: irregular streaks."),
    # "without" gathers the nouns that follow it, and only them
    ("Atypical PN without streaks, irregular D/G, BWV +",
     "Lesion. Dermoscopy: atypical pigment network; no streaks; irregular dots and globules; blue-whitish veil present."),
    # context only from a first sentence of context words: not from a diagnosis, a name or an errand
    ("r/o nodular melanoma. irregular streaks", "Lesion. Dermoscopy: irregular streaks."),
    ("Non-palpable, back. Irregular streaks", "Lesion. Dermoscopy: irregular streaks."),
    ("Dr M Smith. irregular streaks. Review when she comes back.", "Lesion. Dermoscopy: irregular streaks."),
    # nouns clinicians write that no training style does (CLINICAL_SYNONYMS), given to the network in the template's
    # words (before: none read, the query fell back to the image)
    ("Atypical network, irregular globules and blue-white veil.",
     "Lesion. Dermoscopy: atypical pigment network; irregular dots and globules; blue-whitish veil present."),
    ("Typical network; regular dots; no blue white veil", "Lesion. Dermoscopy: typical pigment network; regular dots and globules; no blue-whitish veil."),
    ("no streaks or blue-white veil", "Lesion. Dermoscopy: no streaks; no blue-whitish veil."),
    # a regular network is the checklist's typical one, an irregular network its atypical one (CLINICAL_GRADE_SYNONYMS;
    # before: neither read)
    ("Regular pigment network, irregular streaks.", "Lesion. Dermoscopy: typical pigment network; irregular streaks."),
    ("Network irregular; BWV.", "Lesion. Dermoscopy: atypical pigment network; blue-whitish veil present."),
    ("Atypical PN. In 2020 this lesion had a delicate regular network.", "Lesion. Dermoscopy: atypical pigment network."),
    # a "+" between findings joins them (before: the finding before it was not read: "typical network + regular
    # globules" gave the globules only); "+/-", "+-" and "+?" after one still put it in doubt
    ("typical network + regular globules", "Lesion. Dermoscopy: typical pigment network; regular dots and globules."),
    ("atypical PN + BWV", "Lesion. Dermoscopy: atypical pigment network; blue-whitish veil present."),
    ("atypical PN +/-; BWV +?; irregular streaks +- ", "atypical PN +/-; BWV +?; irregular streaks +- "),
    # a bare noun a denial word follows reads the criterion absent (before: read neither way; 57 of the five reviews'
    # stated absences were written so), a graded one denies the grade only
    ("Streaks neg. BWV absent. Vessels nil.", "Lesion. Dermoscopy: no streaks; no blue-whitish veil; no vascular structures."),
    ("Finding    Value\nNetwork    typical\nStreaks    absent", "Lesion. Dermoscopy: typical pigment network; no streaks."),
    ("irregular streaks absent; ?BWV absent", "irregular streaks absent; ?BWV absent"),
])
def test_what_the_model_reads_of_a_clinicians_text(text, model_reads, rules_alone):
    from monai_cir.data.report import query_text

    assert query_text(text) == model_reads


_ABSENT = "absent"


@pytest.mark.parametrize(("text", "read"), [
    # the reported texts: an abbreviation in a negated list, in any position (before: the veil or the network left out)
    ("no streaks or BWV", (("streaks", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    ("no BWV or streaks", (("streaks", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    ("without PN, streaks or BWV", (("pigment_network", _ABSENT), ("streaks", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    ("no regression or BWV", (("regression_structures", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    # ... and their full nouns, which "no" lists did not read either
    ("no streaks or blue-whitish veil", (("streaks", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    ("No blue-whitish veil or streaks.", (("streaks", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    ("no regression structures or blue-whitish veil", (("regression_structures", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    # "no X, Y or Z": the middle noun was left out, and the last read as PRESENT (its comma clause had no "no")
    ("no PN, streaks or BWV", (("pigment_network", _ABSENT), ("streaks", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    ("no pigment network, streaks, or blue-whitish veil", (("pigment_network", _ABSENT), ("streaks", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    ("no PN, streaks, BWV or vessels", (("pigment_network", _ABSENT), ("streaks", _ABSENT), ("blue_whitish_veil", _ABSENT),
                                        ("vascular_structures", _ABSENT))),
    ("no PN, streaks and BWV", (("pigment_network", _ABSENT), ("streaks", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    # a structure the checklist does not name is an item too, and the list goes on past it (before: it ended the list,
    # and the veil after it read PRESENT)
    ("no ovoid nests, BWV or streaks", (("streaks", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    ("No vascular structures, ovoid nests, blue-whitish veil or streaks appreciated.",
     (("streaks", _ABSENT), ("blue_whitish_veil", _ABSENT), ("vascular_structures", _ABSENT))),
    # ... and blotches are the checklist's pigmentation (its own word for irregular pigmentation: before, not read)
    ("no blotches, BWV or streaks", (("streaks", _ABSENT), ("pigmentation", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    # ... and other lesions' structures in the consensus terminology are items too (before: the list ended at the
    # unknown noun and the denied veil read PRESENT)
    ("no rosettes, BWV or streaks", (("streaks", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    ("Negative for white circles, fissures and ridges, BWV or streaks.", (("streaks", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    ("no fingerprint-like structures, streaks or BWV", (("streaks", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    ("No rosettes. BWV present.", (("blue_whitish_veil", "present"),)),
    # other separators and nouns: "nor", "and", "pigm." (its "." is no sentence end), "dots and globules" (one noun)
    ("no streaks nor BWV", (("streaks", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    ("no streaks and BWV", (("streaks", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    ("no streaks or pigm.", (("streaks", _ABSENT), ("pigmentation", _ABSENT))),
    ("no dots and globules or BWV", (("dots_and_globules", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    ("no streaks or BWV seen", (("streaks", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    # inside a text: the list ends its clause, the findings around it are read as before
    ("7PCL: atyp. PN, no streaks or BWV, irreg. D/G",
     (("pigment_network", "atypical"), ("streaks", _ABSENT), ("dots_and_globules", "irregular"), ("blue_whitish_veil", _ABSENT))),
    ("Atypical pigment network. No streaks or BWV.", (("pigment_network", "atypical"), ("streaks", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    # a contradiction is still dropped
    ("no streaks or BWV; BWV present", (("streaks", _ABSENT),)),
    # a list item with its own value ends the list (before: "without" swallowed "BWV +" and "BWV present" as absent)
    ("without streaks, BWV +", (("streaks", _ABSENT), ("blue_whitish_veil", "present"))),
    ("without streaks, BWV present", (("streaks", _ABSENT), ("blue_whitish_veil", "present"))),
    ("without BWV+", ()),
    ("no streaks or BWV +", (("streaks", _ABSENT),)),  # "BWV +" in a negated clause: read neither way
    ("no streaks or BWV +/-", (("streaks", _ABSENT),)),
    ("without streaks or BWV positive", (("streaks", _ABSENT),)),  # read neither way (before: the veil read absent)
    ("without BWV positive", ()),
    ("no streaks or BWV +ve", (("streaks", _ABSENT),)),
    # after "no", a comma without a conjunction ends the clause: a findings list goes on (as before)
    # a bare noun after a negated list's first item, no "or" joining it, is ambiguous ("no streaks, [no] BWV"?): not read
    ("no streaks, BWV, atyp. PN", (("pigment_network", "atypical"), ("streaks", _ABSENT))),
    # "without" negates a graded phrasing after it in its clause (before: "without irregular streaks" read irregular streaks)
    ("without irregular streaks", ()),
    ("without streaks or irregular D/G", (("streaks", _ABSENT),)),
    ("Atypical PN without streaks", (("pigment_network", "atypical"), ("streaks", _ABSENT))),
    # "neither ... nor" is a negation: read neither way, not as present (before: "neither streaks nor BWV" read BWV present)
    ("neither streaks nor BWV", ()),
    ("no streaks nor irregular D/G", (("streaks", _ABSENT),)),
    # a list item named as not assessed is not a finding, the other items are (before: "without streaks or BWV n/a" read
    # both absent)
    ("without streaks or BWV n/a", (("streaks", _ABSENT),)),
    ("no streaks or BWV n/a", (("streaks", _ABSENT),)),
    ("without streaks or PN unclear", (("streaks", _ABSENT),)),
    ("without streaks, BWV or PN unclear", (("streaks", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    # "/" between two nouns joins them as "or" does ("no streaks/BWV" read nothing); "D/G" stays one noun
    ("no streaks/BWV", (("streaks", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    ("no streaks / BWV", (("streaks", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    ("without PN/streaks/BWV", (("pigment_network", _ABSENT), ("streaks", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    ("no streaks/D/G", (("streaks", _ABSENT), ("dots_and_globules", _ABSENT))),
    ("atyp. PN, no streaks/BWV, irreg. D/G",
     (("pigment_network", "atypical"), ("streaks", _ABSENT), ("dots_and_globules", "irregular"), ("blue_whitish_veil", _ABSENT))),
    ("no streaks/BWV +", ()),  # a sign after the last noun: the list ends before "BWV +", and "streaks/" alone is no phrasing
    # "without" negates what its list's "or" / "nor" joins, not what follows the list ("but") or "and" (which may say
    # what the lesion has): the findings after them are read
    ("without streaks but with BWV", (("streaks", _ABSENT), ("blue_whitish_veil", "present"))),
    ("without regression but atypical PN", (("pigment_network", "atypical"), ("regression_structures", _ABSENT))),
    ("symmetric without streaks and typical PN", (("pigment_network", "typical"), ("streaks", _ABSENT))),
    ("lesion without streaks but with irregular dots and globules", (("streaks", _ABSENT), ("dots_and_globules", "irregular"))),
    # a series that "or" / "nor" joins after a list head denies each of its items, graded ones too (before: the items
    # after a graded first one read PRESENT); without "or" / "nor" a graded item may be what the lesion has, a bare
    # noun says nothing of its own
    ("no atypical PN, irregular streaks or BWV", ()),
    ("no evidence of atypical PN, streaks or BWV", ()),
    ("without atypical PN, streaks or BWV", ()),
    ("no atypical PN nor BWV", ()),
    ("no streaks, BWV, PN", (("streaks", _ABSENT),)),
    ("No streaks, atypical PN", (("pigment_network", "atypical"), ("streaks", _ABSENT))),
    ("No streaks, BWV present", (("streaks", _ABSENT), ("blue_whitish_veil", "present"))),
    ("No streaks, atypical PN and BWV.", (("pigment_network", "atypical"), ("streaks", _ABSENT), ("blue_whitish_veil", "present"))),
    ("no streaks, BWV present - ?melanoma.", (("streaks", _ABSENT), ("blue_whitish_veil", "present"))),
    ("No atypical PN or irregular streaks; BWV present", (("blue_whitish_veil", "present"),)),
    ("without streaks, BWV, pigm. n/a", (("streaks", _ABSENT), ("blue_whitish_veil", _ABSENT))),
])
def test_a_negated_list_reads_each_of_its_nouns_absent(text, read):
    """"no streaks or BWV" read "no streaks" and left the veil out: a list after "no" was read only through its first
    noun's "no X" phrasing, so the last noun of "no PN, streaks or BWV" even read as present. A negated list ("no" or
    "without", joined by commas, "or", "nor", "and") reads each of its nouns absent, abbreviation or full noun, up to an
    item that states its own value."""
    from monai_cir.data.report import read_by_rules

    assert read_by_rules(text) == read


def test_every_negated_list_of_training_nouns_reads_absent():
    """Every pair and triple of criteria, in every noun the reader reads for them (the training texts' full nouns and
    abbreviations, derived from TRAINING_STYLES, and clinicians' synonyms), in any order, after "no" or "without", with
    every separator: a pair in every combination of its nouns, a triple with each of its nouns in each place (all the
    combinations of three outgrew what CI's time allows once the clinicians' shorthand came in)."""
    import itertools

    from monai_cir.data.report import _training_vocabulary, read_findings

    nouns = _training_vocabulary()
    order = [key for key, _ in CRITERIA]
    pairs = ("no {} or {}", "No {} or {}.", "without {} or {}", "no {} nor {}", "no {} and {}", "without {}, {}",
             "no {}, or {}", "Atypical PN. No {} or {}.")
    triples = ("no {}, {} or {}", "no {}, {}, or {}", "without {}, {} or {}", "no {}, {} nor {}", "no {} or {} or {}")
    checked = 0
    for size, forms in ((2, pairs), (3, triples)):
        for keys in itertools.permutations(order, size):
            expected = tuple((key, "absent") for key in order if key in keys)
            if size == 2:
                combinations = itertools.product(*(nouns[k] for k in keys))
            else:  # each noun of each criterion at least once, the others' nouns cycling beside it two ways
                width = max(len(nouns[k]) for k in keys)
                combinations = {tuple(nouns[k][(i + shift * j) % len(nouns[k])] for j, k in enumerate(keys))
                                for i in range(width) for shift in range(2)}
            for words in combinations:
                for form in forms:
                    if form.startswith("Atypical PN"):  # after a sentence with a finding of its own
                        if "pigment_network" not in keys:
                            assert read_findings(form.format(*words)) == tuple(
                                sorted((("pigment_network", "atypical"),) + expected, key=lambda f: order.index(f[0]))), form.format(*words)
                            checked += 1
                        continue
                    assert read_findings(form.format(*words)) == expected, form.format(*words)
                    checked += 1
    assert checked > 5000


@pytest.mark.parametrize(("text", "read"), [
    ("PN n/a", ()),
    ("pigment network: not assessable", ()),
    ("streaks: unknown; regression unclear", ()),
    ("7PCL: atyp. PN, streaks -, BWV +, pigm. n/a", ("pigment_network", "streaks", "blue_whitish_veil")),
    ("Blue-whitish veil cannot be assessed. Irregular streaks.", ("streaks",)),
    ("streaks n/a, irregular streaks", ("streaks",)),  # named once as assessed: a finding
    ("pigm. diffuse irregular; no streaks", ("streaks", "pigmentation")),  # "pigm. " is an abbreviation, not a sentence's end
])
def test_a_criterion_named_as_not_assessed_is_not_a_finding(text, read, rules_alone):
    """"PN n/a" says nothing about the lesion: counted as a finding, it gave the text weight and let the diagnosis
    prior read a guess into it (a nevus answered with melanomas). A mention counts when its clause states the
    criterion, not that it could not be assessed: the rules' part (the learned check, retrained with each review, may
    drop a reading as unlike a stated one, "streaks n/a, irregular streaks" at 0.48 since review u)."""
    from monai_cir.data.report import recognised_findings

    assert recognised_findings(text) == read


@pytest.mark.parametrize(("text", "read"), [
    # negated in words no training text writes: read neither way (before: each read the veil PRESENT, the bare noun)
    ("absence of blue-whitish veil", (("blue_whitish_veil", _ABSENT),)),  # (a list's head, as "without")
    ("absence of streaks and BWV", (("streaks", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    ("lacking streaks, BWV", (("streaks", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    ("BWV excluded", ()),
    ("BWV ruled out", ()),
    ("lacks BWV", (("blue_whitish_veil", _ABSENT),)),
    ("missing BWV", ()),
    ("BWV -ve", (("blue_whitish_veil", _ABSENT),)),  # a bare noun and a denial word: absent (before: neither way)
    ("BWV: -ve", (("blue_whitish_veil", _ABSENT),)),
    # in doubt: read neither way, absent included (before: PRESENT)
    ("?BWV", ()),
    ("BWV?", ()),
    ("possible BWV", ()),
    ("questionable BWV", ()),
    ("suspicious for BWV", ()),
    ("r/o BWV", ()),
    ("cannot exclude BWV", ()),
    ("BWV cannot be ruled out", ()),
    ("streaks: irregular?", ()),
    ("regular streaks (?)", ()),
    ("no streaks or BWV?", (("streaks", _ABSENT),)),
    # a question mark elsewhere in the clause puts nothing in doubt
    ("BWV present (biopsy: melanoma?)", (("blue_whitish_veil", "present"),)),
    # a value after a colon: only a confirming one is read (before: "BWV: 0" and "atyp. PN: ?" read as present)
    ("BWV: 0", ()),
    ("atyp. PN: ?", ()),
    ("irregular streaks: -", ()),
    ("Streaks: no; BWV: yes", (("streaks", _ABSENT), ("blue_whitish_veil", "present"))),  # ("no" answers the streaks: absent)
    # words between "no" / "without" and the nouns (before: "without evidence of BWV" read PRESENT)
    ("without evidence of BWV", (("blue_whitish_veil", _ABSENT),)),
    ("no evidence of streaks or BWV", (("streaks", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    ("no signs of regression", (("regression_structures", _ABSENT),)),
    ("without any signs of streaks, BWV +", (("streaks", _ABSENT), ("blue_whitish_veil", "present"))),
    ("no evidence of irregular streaks", ()),
    # "without" negates what "or" joins after a graded phrasing too (before: "without irregular streaks or BWV" read
    # the veil PRESENT)
    ("without irregular streaks or BWV", (("blue_whitish_veil", _ABSENT),)),
    ("without irregular streaks and BWV", (("blue_whitish_veil", "present"),)),  # "and" after a graded item: may say what it has
    # a typographic dash is the abbreviated style's sign (before: "BWV –" read PRESENT)
    ("BWV \u2013", (("blue_whitish_veil", _ABSENT),)),
    ("7PCL: atyp. PN, streaks \u2212, BWV +", (("pigment_network", "atypical"), ("streaks", _ABSENT), ("blue_whitish_veil", "present"))),
])
def test_a_finding_the_text_denies_or_doubts_is_never_read_present(text, read):
    """What a clinician writes to deny or doubt a finding, in words of their own, read a bare "BWV" as a present veil:
    the query was composed towards melanoma on a text that says the opposite. Such a finding is read neither way (or,
    after "no" / "without", absent)."""
    from monai_cir.data.report import read_by_rules

    assert read_by_rules(text) == read


@pytest.mark.parametrize(("text", "read"), [
    # a denial or a blank right after the mention, or an empty box before it
    ("BWV (-)", ()),
    ("BWV, absent", ()),
    ("BWV N", ()),
    ("BWV \u207b", (("blue_whitish_veil", _ABSENT),)),  # a superscript minus: the abbreviated style's sign
    ("[ ] BWV", ()),
    ("Template:\n[x] atypical PN\n[ ] BWV\n[ ] irregular streaks", (("pigment_network", "atypical"),)),
    ("BWV: ___", ()),
    # a section header that negates its section, one denial after several nouns, a grade before an absent sign
    ("Absent: streaks, BWV", ()),
    ("Pertinent negatives: streaks, BWV", ()),
    ("BWV and streaks -", (("streaks", _ABSENT),)),
    ("BWV, streaks, regression - absent", (("regression_structures", _ABSENT),)),  # the last noun, as "BWV, streaks: absent" reads
    ("atyp. PN -", ()),
    ("7PCL: atyp. PN, irreg. streaks -, BWV -", (("pigment_network", "atypical"), ("blue_whitish_veil", _ABSENT))),
    # the past, a plan, a hedge, another lesion or person, a checklist's score
    ("Previous dermoscopy showed BWV; today atypical PN, no streaks.", (("pigment_network", "atypical"), ("streaks", _ABSENT))),
    ("BWV resolved.", ()),
    ("Plan: excise if BWV develops.", ()),
    ("Monitor for new BWV or irregular streaks in 3 months.", ()),
    ("Blue-grey area, maybe BWV vs regression.", ()),
    ("BWV-like area", ()),
    ("BWV \u00b1", ()),
    ("Mother's lesion had BWV.", ()),
    ("7-point checklist: BWV (2 points)", ()),
    # ... and the same said after the mention, in a clause of its own, or by a header that names criteria only
    ("BWV, possibly", ()),
    ("BWV like area", ()),
    ("irregular streaks or artefact", ()),
    ("BWV, now resolved", ()),
    ("atyp. PN seen before", ()),
    ("should BWV develop", ()),
    ("BWV would prompt excision", ()),
    ("BWV in the other lesion", ()),
    ("Please comment on BWV.", ()),
    ("Assessed: PN, streaks, BWV", ()),
    ("BWV is a major criterion", ()),
    # the past in the forms that say nothing else ("in 2019", "earlier", "past", "referral" head today's findings too:
    # guards below)
    ("BWV (old)", ()),
    ("prev. BWV", ()),
    ("prev. BWV; today atypical PN", (("pigment_network", "atypical"),)),
    ("s/p BWV", ()),
    ("PMH: lesion with BWV", ()),
    # a denial or a question in a clause or sentence of its own right after the mention, an abbreviated denial
    ("BWV; not seen", ()),
    ("atypical PN. Absent.", ()),
    ("BWV, ?", ()),
    ("irregular streaks - ?", ()),
    ("BWV ND", ()),
    ("BWV NAD", ()),
    ("BWV WNL", ()),
    ("BWV ve-", ()),
    # a text about several lesions (two labels): which one the image shows it does not say
    ("Lesion 1: BWV; lesion 2: no BWV", ()),
    ("Lesion A has BWV, lesion B does not.", ()),
    ("L1: BWV present; L2: no BWV", ()),
    # ... while what a clinician writes of the lesion in front of them is read as before
    ("Irregular streaks were seen. BWV is present.", (("streaks", "irregular"), ("blue_whitish_veil", "present"))),
    ("[x] BWV", (("blue_whitish_veil", "present"),)),
    ("BWV (+)", (("blue_whitish_veil", "present"),)),
    ("7PCL criteria: atyp. PN, BWV +", (("pigment_network", "atypical"), ("blue_whitish_veil", "present"))),
    ("BWV, which would favour melanoma", (("blue_whitish_veil", "present"),)),
    ("BWV present; may represent melanoma", (("blue_whitish_veil", "present"),)),
    ("Impression: atypical PN, BWV. Plan: excise.", (("pigment_network", "atypical"), ("blue_whitish_veil", "present"))),
    ("62-year-old man: BWV present", (("blue_whitish_veil", "present"),)),
    ("Past history unremarkable; BWV present.", (("blue_whitish_veil", "present"),)),
    ("Prev. excision elsewhere. Today BWV present.", (("blue_whitish_veil", "present"),)),
    ("Irregular streaks; old scar nearby", (("streaks", "irregular"),)),
    ("BWV present. No further findings.", (("blue_whitish_veil", "present"),)),
    ("BWV; none of the other criteria", (("blue_whitish_veil", "present"),)),
    ("Atypical PN. Nd:YAG laser planned.", (("pigment_network", "atypical"),)),
    ("Lesion 2 mm with BWV", (("blue_whitish_veil", "present"),)),
    ("lesion 2.5 cm, BWV", (("blue_whitish_veil", "present"),)),
    ("BWV present. Biopsy in 2019 of another lesion.", (("blue_whitish_veil", "present"),)),
    # ... and what a review of 675 more clinicians' texts found a first version of these rules dropping: a current year, a
    # referral, the past year, a size or duration after "lesion", a mole map's one label, a diagnosis in question after
    # the findings, a note after a full stop
    ("Seen in 2026: atypical pigment network and blue-whitish veil.", (("pigment_network", "atypical"), ("blue_whitish_veil", "present"))),
    ("Urgent referral - BWV and atypical PN on dermoscopy.", (("pigment_network", "atypical"), ("blue_whitish_veil", "present"))),
    ("Changed over the past year: atypical PN, irregular streaks.", (("pigment_network", "atypical"), ("streaks", "irregular"))),
    ("Lesion 3 (left scapula): atypical PN, BWV.", (("pigment_network", "atypical"), ("blue_whitish_veil", "present"))),
    ("Lesion 7 by 5 mm: atypical PN.", (("pigment_network", "atypical"),)),
    ("Changing mole 2 years, BWV present.", (("blue_whitish_veil", "present"),)),
    ("BWV present, ?melanoma.", (("blue_whitish_veil", "present"),)),
    ("Atypical PN; ?dysplastic naevus.", (("pigment_network", "atypical"),)),
    ("Atypical PN. N.B. patient anxious.", (("pigment_network", "atypical"),)),
    ("BWV; 0.5 cm area centrally.", (("blue_whitish_veil", "present"),)),
    ("No BWV at first visit. BWV present; no BWV.", ()),  # two values: a contradiction, not read (not "absent")
    ("No BWV at first visit; BWV present in 2026.", (("blue_whitish_veil", "present"),)),  # the first visit's is the past's
    # a grade after "non" (before: read as that grade, the opposite of what is meant), a yes / no field answered no or
    # left blank, a sentence that a negating word and a dash start, a sentence about the checklist
    ("non typical PN", ()),
    ("Non regular streaks, BWV present.", (("blue_whitish_veil", "present"),)),
    ("BWV Y/N: N", ()),
    ("BWV (y/n) - n", ()),
    ("BWV Y/N:\nAtypical PN", (("pigment_network", "atypical"),)),
    ("BWV non present", ()),
    ("Negatives - BWV, irregular streaks", ()),
    ("Atypical PN.\nPertinent negatives - BWV, irregular D/G", (("pigment_network", "atypical"),)),
    ("The 7PCL includes BWV, atypical PN and atypical vessels.", ()),
    ("Atypical PN. The seven-point checklist covers BWV and irregular streaks.", (("pigment_network", "atypical"),)),
    # ... while these read as before: what a review of 375 texts written for these rules found their first version
    # dropping (a line ending in "0" or "non", a "Negatives - " line's next lines, "Criteria are met: ...", a teaching
    # header, "something like" a size), and a yes / no field answered yes
    ("BWV Y/N: Y", (("blue_whitish_veil", "present"),)),
    # a phrasing does not run across a line: "no" ending one line and "PN" starting the next are no "no PN" (before:
    # the network read ABSENT, the stated atypical one lost)
    ("BWV (yes/no): no\nPN: atypical", (("pigment_network", "atypical"),)),
    ("Ulceration: no\nBWV", (("blue_whitish_veil", "present"),)),
    ("Ulceration: non\nBWV present centrally.", (("blue_whitish_veil", "present"),)),
    ("Pain score 0\nBWV present", (("blue_whitish_veil", "present"),)),
    ("Atypical PN 2\nIrregular streaks 0\nIrregular D/G 1\nBWV 2",
     (("pigment_network", "atypical"), ("dots_and_globules", "irregular"), ("blue_whitish_veil", "present"))),
    ("Negatives - BWV, regression\nPositives - atypical PN, irregular streaks", (("pigment_network", "atypical"), ("streaks", "irregular"))),
    ("Relevant negatives - no BWV\nIrregular streaks noted at 6 o'clock", (("streaks", "irregular"), ("blue_whitish_veil", "absent"))),
    ("Criteria are met: atypical PN, irregular streaks, BWV.",
     (("pigment_network", "atypical"), ("streaks", "irregular"), ("blue_whitish_veil", "present"))),
    ("Teaching: discussed with registrar.\nBWV present centrally, atypical PN.", (("pigment_network", "atypical"), ("blue_whitish_veil", "present"))),
    ("BWV over something like a third of the lesion; atypical PN.", (("pigment_network", "atypical"), ("blue_whitish_veil", "present"))),
    ("Non-pigmented rim; BWV present.", (("blue_whitish_veil", "present"),)),
    ("7PCL: atypical PN, BWV present", (("pigment_network", "atypical"), ("blue_whitish_veil", "present"))),
    # the clinical synonyms keep the denials and blanks of the words they stand beside
    ("negative network", ()),
    ("black dots", ()),
    ("?blue-white veil", ()),
    ("no atypical network or irregular globules", ()),  # as "no atypical PN or irregular D/G": denied, not read absent
    # a sentence that starts in the past or in another's words holds no finding of today up to a word of today; a plan
    # runs to its sentence's end (the held-out review 2026-12-06c's wrong readings, before: every item after the
    # sentence's first comma was read as today's)
    ("This lesion was biopsied in 2019. At that time dermoscopy showed irregular globules. Today: typical network.",
     (("pigment_network", "typical"),)),
    ("Dermoscopy at baseline (2020): typical network, regular globules.", ()),
    ("Hx: MM excised from R shoulder 2017 (BWV, atypical network on dermoscopy). Routine skin check.", ()),
    ("Original lesion had regular globules. Today: localized irregular pigmentation.", (("pigmentation", "localized irregular"),)),
    ("Had irregular D/G at the first visit; stable since.", ()),
    ("Referral said 'irregular streaks'. I see a typical network.", (("pigment_network", "typical"),)),
    ("GP reported BWV.", ()),
    ("SDDI in 3/12 - look for asymmetric enlargement, new irregular dots or an atypical network.", ()),
    ("Her daughter's naevus has regular globules.", ()),
    ("The pigmented lesion next to it has irregular streaks.", ()),
    ("Reminder to trainees: hairpin vessels with a white halo suggest keratinising tumours.", ()),
    ("Poss. BWV. Definite atypical PN.", (("pigment_network", "atypical"),)),
    ("BWV +\natyp PN -", (("blue_whitish_veil", "present"),)),  # (before: the network read ABSENT)
    # a text that says nothing was imaged today; another's words, a plan, a hedge, a family history (review 2026-12-06d)
    ("Nothing imaged today. Old notes (2019) list: PN atypical; BWV +; streaks irregular.", ()),
    ("Teledermatology: awaiting images. Referral text mentions 'irregular streaks and BWV seen by nurse'.", ()),
    ("Practice nurse comment (not verified): 'BWV +, PN atypical'.", ()),
    ("Plan - short-term digital monitoring. Criteria for excision at review: new irregular streaks, atypical network, BWV.", ()),
    ("Next steps: (1) check network pattern; (2) exclude BWV; (3) photograph.", ()),
    ("There seem to be irregular globules at the edge, though I'm not confident.", ()),
    ("FHx of melanoma in 2 first-degree relatives (both with BWV per reports). Patient: BWV absent.", (("blue_whitish_veil", _ABSENT),)),
    ("Teledermatology: dermoscopic image blurred; cannot assess network or BWV.", ()),
    ("Incidental lesion on the arm has irregular dots. Index lesion: typical PN.", (("pigment_network", "typical"),)),
    ("Previous dermoscopy (2024): PN atypical, BWV present\nCurrent dermoscopy: PN typical", (("pigment_network", "typical"),)),
    # a note copied forward, an earlier state, a trainee's reading, a blank template, a dictation test (review 2026-12-06e)
    ("[Copied from 12/03/2026]: Dermoscopy: atypical network, irregular streaks, BWV. Plan: excise.", ()),
    ("Was: BWV present (photos 2025). Now: no BWV seen.", (("blue_whitish_veil", _ABSENT),)),
    ("Had BWV in 2019.", ()),
    ("Registrar: BWV present. Consultant review: no BWV - the blue area is a haemorrhage.", ()),
    ("Template (unfilled): BWV: present / absent; irregular streaks.", ()),
    ("Microphone test please disregard colon atypical net work comma blue white veil", ()),
    ("Dermoscopy was not possible today. Clinically symmetrical.\nBWV, irregular streaks on the GP's photo.", ()),
    ("D: PN abs, BWV abs.", (("pigment_network", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    ("? subtle BWV centrally.", ()),
    ("Check BWV next time", ()),
    # a checklist item's weight and score, another lesion named not imaged, another's reading (review 2026-12-06f)
    ("Blue-white veil (2): 0\nAtypical pigment network (2): 2 - thickened lines\nIrregular streaks (1): 0 (none)",
     (("pigment_network", "atypical"), ("blue_whitish_veil", _ABSENT))),
    ("1) central chest (not imaged): focal irregular blotch, irregular D/G, atypical network.\n2) left flank (imaged today): regular streaks.",
     (("streaks", "regular"),)),
    ("Your letter described a blue-white veil; I could not see one on dermoscopy today.", ()),
    ("MDT: consensus that irregular streaks are present. Disagreement about whether there is a BWV.", (("streaks", "irregular"),)),
    ("The consultant felt there were linear irregular vessels; I am not convinced.", ()),
    # ... while these read as before: another lesion "not imaged", a question on the line above
    ("Left forearm (imaged today): typical network, no BWV. Right forearm (not imaged): a mole with 'blue areas'.",
     (("pigment_network", "typical"), ("blue_whitish_veil", _ABSENT))),
    ("Is it changing? non\natypical PN", (("pigment_network", "atypical"),)),
    # ... while these read as before: today's words after the past's, a patient's symptoms, a teaching header
    ("Previous biopsy benign, BWV present today.", (("blue_whitish_veil", "present"),)),
    ("Dermoscopy: atypical PN, BWV. No dermoscopy of the other lesions.", (("pigment_network", "atypical"), ("blue_whitish_veil", "present"))),
    ("Previously typical network, now atypical network with BWV.", (("pigment_network", "atypical"), ("blue_whitish_veil", "present"))),
    ("History: changing for 3 months, today BWV present.", (("blue_whitish_veil", "present"),)),
    ("Patient mentions itching, atypical PN, irregular streaks and BWV.",
     (("pigment_network", "atypical"), ("streaks", "irregular"), ("blue_whitish_veil", "present"))),
    ("Teaching: registrar-led consult. Atypical PN, irregular streaks.", (("pigment_network", "atypical"), ("streaks", "irregular"))),
    # another's words in quotation marks (unless agreed with), an earlier visit, a trainee's or another reader's reading,
    # a teaching text, images nobody reviewed, check marks that lead or follow their items (review 2026-12-06g)
    ("The nurse's note says 'hairpin vessels'. Not yet reviewed.", ()),
    ("You wrote 'BWV and atypical network'. I agree with the atypical network; there is no BWV.",
     (("pigment_network", "atypical"), ("blue_whitish_veil", _ABSENT))),
    ("TD reply: agree with your assessment of 'typical network'.", (("pigment_network", "typical"),)),
    ("At that visit dermoscopy showed irregular globules. Today: typical network.", (("pigment_network", "typical"),)),
    ("Seen 14/03/2026: typical network. Today: atypical network.", (("pigment_network", "atypical"),)),
    ("Last visit the score was 4 (atypical network, irregular streaks).", ()),
    ("During pregnancy (Feb 2026) the naevus had regular globules.", ()),
    ("Known naevus, first seen in 2024 when it had dotted vessels.", ()),
    ("NP: Patient's previous dermoscopy documented irregular streaks.", ()),
    ("Findings (trainee, Dr A. Kowalski): irregular dots/globules.", ()),
    ("Second opinion: Dr K. described regular globules.", ()),
    ("Reader A said hairpin vessels; Reader B said dotted.", ()),
    ("Dermoscopy tutorial: melanoma with blue-whitish veil.", ()),
    ("The 7-point checklist gives 2 points for BWV.", ()),
    ("Action points:\n(1) review case 5 for BWV.", ()),
    ("I did not review the images myself. First report: BWV, irregular streaks.", ()),
    ("Pink nodule: looks like arborizing vessels.", ()),
    ("R back: ✓ atypical network ✗ BWV ✗ irregular streaks", (("pigment_network", "atypical"), ("blue_whitish_veil", _ABSENT))),
    ("Blue-white veil ✗   Streaks ✗   Typical network ✓", (("pigment_network", "typical"), ("streaks", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    # ... while these read as before or more: a denial after "is" / "still", "vessels within regression" (no regression noun)
    ("Streaks still absent; BWV is not seen.", (("streaks", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    ("Vessels within regression are not present.", ()),
])
def test_a_finding_the_text_places_elsewhere_or_leaves_blank_is_not_read(text, read):
    """A review of clinicians' phrasings (about 2,200 texts: templates, 7-point checklist notes, history, plans,
    hedges) found a bare "BWV" read as a present veil wherever no negation word shared its clause: a denial after it
    ("BWV (-)"), an empty box, a negating header, the past, a plan, a hedge. Such a mention is not read."""
    from monai_cir.data.report import read_by_rules

    assert read_by_rules(text) == read


@pytest.mark.parametrize(("text", "read"), [
    # what review 2026-12-06g stated and the reader missed: a dash or a copula between noun and grade, the checklist's
    # abbreviations without their period, a score after a colon, "none seen", the empty-set sign, "vv"
    ("Network - atypical", (("pigment_network", "atypical"),)),
    ("The network is atypical; the globules are regular.", (("pigment_network", "atypical"), ("dots_and_globules", "regular"))),
    ("typ PN, reg D/G, irreg streaks", (("pigment_network", "typical"), ("streaks", "irregular"), ("dots_and_globules", "regular"))),
    ("Dotted vessels (regular distribution), no pigment network.", (("pigment_network", _ABSENT), ("vascular_structures", "dotted"))),
    ("Atypical pigment network: 2\nBlue-whitish veil: 2\nIrregular streaks: 0",
     (("pigment_network", "atypical"), ("blue_whitish_veil", "present"))),
    ("Vessels: none seen", (("vascular_structures", _ABSENT),)),
    ("Ø BWV, PN ⊖", (("pigment_network", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    ("Derm: dotted vv +", (("vascular_structures", "dotted"),)),
    # regression's colours in the words clinicians use; both colours are the checklist's combinations
    ("White scar-like areas centrally; blue-grey peppering at the edge.", (("regression_structures", "combinations"),)),
    ("White areas of regression; atypical network.", (("pigment_network", "atypical"), ("regression_structures", "white areas"))),
    ("Regression - blue + white", (("regression_structures", "combinations"),)),
    ("Vessels within regression, white scar-like area.", (("regression_structures", "white areas"), ("vascular_structures", "within regression"))),
    ("No white scar-like areas.", ()),
    ("The lower lesion has peppering.", ()),  # (another lesion's)
    ("Blue-grey peppering; white structureless areas.", ()),  # (the other colour in words not read: maybe both)
    # "veil" alone is the checklist's veil; "bluish-white veil" too (before: not read), and a "bluish veil" is no term;
    # "arborising"; a list that a not-assessed word heads (before: its last bare noun read PRESENT)
    ("No veil. Network typical.", (("pigment_network", "typical"), ("blue_whitish_veil", _ABSENT))),
    ("Veil: none", (("blue_whitish_veil", _ABSENT),)),
    ("bluish-white veil seen", (("blue_whitish_veil", "present"),)),
    ("bluish veil", ()),
    # the checklist's own words for irregular streaks and "negative for" (before: neither read)
    ("Pseudopods irregular at the periphery; negative for BWV.", (("streaks", "irregular"), ("blue_whitish_veil", _ABSENT))),
    ("irregular radial streaming", (("streaks", "irregular"),)),
    ("Negative for streaks or blotches.", (("streaks", _ABSENT), ("pigmentation", _ABSENT))),
    # a printed form's dot leaders as the colon they stand for (before: nothing read); not an ellipsis; a value the legend
    # says the system pre-filled is not read
    ("Dermoscopic structures\n  pigment network ........ typical\n  dots/globules .......... regular\n  streaks ................ none",
     (("pigment_network", "typical"), ("streaks", _ABSENT), ("dots_and_globules", "regular"))),
    ("P16: Network... typical, I think. INT: final answer? P16: I'll change it to atypical.", ()),
    ("  Network ........ atypical\n  Streaks ........ absent*\n  Veil ........... present\n* = value pre-filled by the system, not changed",
     (("pigment_network", "atypical"), ("blue_whitish_veil", "present"))),
    # clinicians' shorthand for the nouns (before: not read)
    ("DS: BWV+, irreg globs, atyp ntwk.", (("pigment_network", "atypical"), ("dots_and_globules", "irregular"), ("blue_whitish_veil", "present"))),
    ("derm: atypical netwk, no regr, vsls absent, dots+globs regular",
     (("pigment_network", "atypical"), ("regression_structures", _ABSENT), ("dots_and_globules", "regular"), ("vascular_structures", _ABSENT))),
    ("not negative for BWV", ()),
    # a "+" written close to its noun, then a word: the noun's sign (before: "BWV+ irregular streaks" lost the veil, "BWV+
    # streaks+" read nothing); a sign in doubt is still none
    ("BWV+ irregular streaks", (("streaks", "irregular"), ("blue_whitish_veil", "present"))),
    ("BWV+ atypical PN", (("pigment_network", "atypical"), ("blue_whitish_veil", "present"))),
    ("bwv+ streaks+", (("blue_whitish_veil", "present"),)),
    ("BWV+- irregular streaks", (("streaks", "irregular"),)),
    ("BWV +? irregular streaks", ()),
    # ... and after a finding that names its grade (before: "atyp PN+" not read); a negated list still ends at an item
    # with a sign of its own
    ("atyp PN+ BWV+", (("pigment_network", "atypical"), ("blue_whitish_veil", "present"))),
    ("irreg D/G+, BWV+", (("dots_and_globules", "irregular"), ("blue_whitish_veil", "present"))),
    ("atyp PN+/-; irreg streaks+?", ()),
    ("no streaks, BWV+ atyp PN+", (("pigment_network", "atypical"), ("streaks", _ABSENT), ("blue_whitish_veil", "present"))),
    # a form's mark after a colon, or a ticked box after its item: a tick is the finding, a cross its absence, as written
    # without the colon (before: "BWV: ✓", "Veil: ✗", "BWV [x]" read nothing); a blank box, "(x)" and a crossed grade still none
    ("Blue-whitish veil: ✓\nIrregular streaks: ✗", (("blue_whitish_veil", "present"),)),
    ("Atypical network: ✓, BWV: ✗", (("pigment_network", "atypical"), ("blue_whitish_veil", _ABSENT))),
    ("Veil: ✗", (("blue_whitish_veil", _ABSENT),)),
    ("BWV: ☑; irregular streaks: ✔️", (("streaks", "irregular"), ("blue_whitish_veil", "present"))),
    ("Irregular streaks [x]  BWV [ ]", (("streaks", "irregular"),)),
    ("BWV: [x]", (("blue_whitish_veil", "present"),)),
    ("BWV (x)", ()),
    ("BWV: [ ]", ()),
    # a denial after a dash, as after a colon, and "none detected" (before: "Streaks - none", "Vessels - none", "vascular
    # structures: none detected" read nothing); a denied grade, a doubt and a form's options still none
    ("Network - typical; Streaks - none; Veil - absent; Vessels - none.",
     (("pigment_network", "typical"), ("streaks", _ABSENT), ("blue_whitish_veil", _ABSENT), ("vascular_structures", _ABSENT))),
    ("vascular structures: none detected", (("vascular_structures", _ABSENT),)),
    ("Streaks – not detected", (("streaks", _ABSENT),)),
    ("Irregular streaks - none", ()),
    ("streaks - none? check again", ()),
    ("BWV - absent/present", ()),
    # ... and a line that earlier findings head is theirs to its end (before: its second clause read, "vessels - none" absent)
    ("Previous findings (copied): regression - white; vessels - none.\nCurrent findings: BWV present.", (("blue_whitish_veil", "present"),)),
    # regression's colour as one word and Derm7pt's own "combinations" (before: "regression: white", "regression (white)",
    # "combined regression", "regression structures: combinations" read nothing); a colour named beside the other, a hedge
    # ("raised the possibility of") still none
    ("regr: white; BWV present", (("regression_structures", "white areas"), ("blue_whitish_veil", "present"))),
    ("regression (blue)", (("regression_structures", "blue areas"),)),
    ("combined regression, atypical network", (("pigment_network", "atypical"), ("regression_structures", "combinations"))),
    ("{regression structures: combinations}", (("regression_structures", "combinations"),)),
    ("a zone of regression with white colour and blue colour both", ()),
    ("Dr V raised the possibility of blue regression structures; I am not convinced.", ()),
    # the vessels' place in clinicians' words, and "no" answering a named criterion (before: "vessels within the regression
    # area", "Streaks: no", "Veil: no" read nothing); "no" after another structure's name, a denied grade and "BWV N" still none
    ("Dermoscopy: vessels within the regression area; white scar-like areas.",
     (("regression_structures", "white areas"), ("vascular_structures", "within regression"))),
    ("fine vessels in the regression zone", (("vascular_structures", "within regression"),)),
    ("Streaks: no. Veil: no. Network: typical.", (("pigment_network", "typical"), ("streaks", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    ("Shiny white structures: no. Negative network: no. Ulcer: no.", ()),
    ("Irregular streaks: no", ()),
    ("BWV N", ()),
    # a writer who did not see them (before: read nothing); a denied grade still none
    ("On dermoscopy I saw an atypical pigment network. I could not see any vessels or streaks.",
     (("pigment_network", "atypical"), ("streaks", _ABSENT), ("vascular_structures", _ABSENT))),
    ("I don't see any veil.", (("blue_whitish_veil", _ABSENT),)),
    ("I did not see any irregular streaks", ()),
    # the negative (inverse) network is another structure: nothing said of it is the pigment network's, and its "negative"
    # heads no negated section (before: "Negative network: absent" read the pigment network ABSENT, and the lines after it
    # were not read)
    ("Negative network: absent. Pigment network: atypical", (("pigment_network", "atypical"),)),
    ("Negative network: absent\nBWV: present", (("blue_whitish_veil", "present"),)),
    ("Inverse network absent; streaks absent", (("streaks", _ABSENT),)),
    ("no negative network, BWV or streaks", (("streaks", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    ("Pigment network: absent", (("pigment_network", _ABSENT),)),
    # a finding dated by a year the text then contrasts with today, and a colour of regression denied (before: the veil
    # read PRESENT; regression read ABSENT beside the white areas); today's kept finding is still read
    ("BWV noted in 2019; not seen today.", ()),
    ("Blue-whitish veil seen at the 2019 visit; absent today.", ()),
    ("BWV noted in 2019, still present today.", (("blue_whitish_veil", "present"),)),
    ("Irregular streaks noted in 2019.", (("streaks", "irregular"),)),
    ("no blue regression", ()),
    ("no regression", (("regression_structures", _ABSENT),)),
    # "N" in a yes/no form (its legend, or a noun answered "Y"), a braced field, and words between a noun and its grade
    # (before: read nothing); "BWV N" alone still none
    ("Checklist (Y/N)\nStreaks: N\nBWV: N", (("streaks", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    ("Red flags - streaks Y, BWV N, regression N.", (("regression_structures", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    ("Pigment network: {Typical}\nStreaks: {Absent}", (("pigment_network", "typical"), ("streaks", _ABSENT))),
    ("Network unchanged - typical. Streaks: clearly irregular", (("pigment_network", "typical"), ("streaks", "irregular"))),
    ("Network: peripheral, delicate, regular", (("pigment_network", "typical"),)),
    ("network mostly typical", ()),
    # shorthand for dots and globules ("DG", "D/G") and pigmentation ("pigm"; before a network it is the network's), and
    # pigmentation's grades after "but" or a comma (before: read nothing; "no pigm network" would read pigmentation ABSENT)
    ("Nv. DG reg, no BWV", (("dots_and_globules", "regular"), ("blue_whitish_veil", _ABSENT))),
    ("Irreg D/G: present", (("dots_and_globules", "irregular"),)),
    ("diffuse reg pigm", (("pigmentation", "diffuse regular"),)),
    ("dotted vessels, no pigm network", (("pigment_network", _ABSENT), ("vascular_structures", "dotted"))),
    ("the pigmentation is diffuse but regular", (("pigmentation", "diffuse regular"),)),
    ("blue-black pigmentation, diffuse and regular, no structures", (("pigmentation", "diffuse regular"),)),
    ("no pigmentation, regular dots", (("pigmentation", _ABSENT), ("dots_and_globules", "regular"))),
    # a colon with no space, a grade in square brackets, "in fact" before a grade, and the checklist's "APN" (before: read
    # nothing); a tick box and a redaction in brackets, a denied APN and the advanced practice nurse still none
    ("NETWORK:ATYPICAL;;STREAKS:ABSENT", (("pigment_network", "atypical"), ("streaks", _ABSENT))),
    ("PN: [atypical]", (("pigment_network", "atypical"),)),
    ("the network is in fact atypical at the periphery", (("pigment_network", "atypical"),)),
    ("Scoring: APN=2, BWV=2", (("pigment_network", "atypical"), ("blue_whitish_veil", "present"))),
    ("PN: [x]. BWV: [REDACTED]", ()),
    ("APN 0", ()),
    ("Seen by the APN today.", ()),
    # a two-cell table row's grade, and a count or a "Y" between a noun and its grade (before: read nothing); a "Y" before
    # another noun's grade is the first noun's answer
    ("| Criterion | Finding |\n|---|---|\n| Dots/globules | Regular |", (("dots_and_globules", "regular"),)),
    ("DG: a few, regular", (("dots_and_globules", "regular"),)),
    ("Dots/globules: Y, regular", (("dots_and_globules", "regular"),)),
    ("BWV: Y, irregular streaks", (("streaks", "irregular"), ("blue_whitish_veil", "present"))),
    # a pigmentation's two grade words either way round, and a hyphenated colour between grade and noun (before: read nothing)
    ("Pigmentation: irregular, localised (lower pole)", (("pigmentation", "localized irregular"),)),
    ("diffuse and regular pigmentation", (("pigmentation", "diffuse regular"),)),
    ("diffuse regular light-brown pigmentation", (("pigmentation", "diffuse regular"),)),
    ("Streaks: regular, diffuse pigmentation", (("streaks", "regular"),)),
    ("Dermoscopy: arborising vessels.", (("vascular_structures", "arborizing"),)),
    ("cannot assess network, streaks or BWV.", ()),
    ("Image quality too poor to judge network, streaks or veil.", ()),
    ("Compare 02/2026, where there was no veil.", ()),
    ("Possible streaks, BWV present", (("blue_whitish_veil", "present"),)),
    # review h's (now tuned on): a copied block, dictated punctuation ("full stop", "colon"; not "comma": "comma vessels"), a
    # two-cell table row (a row of more cells is not read), a trainee's findings a supervisor's heading corrects, a form's
    # "[ ] 0", a partner's lesion, an explanation of the checklist
    ("---- copied from note 12/01/2024 ----\nDermoscopy: typical network.\n---- end of copied text ----\nToday: atypical network.", (("pigment_network", "atypical"),)),
    ("at that visit there were irregular streaks full stop today typical network full stop", (("pigment_network", "typical"),)),
    ("pigment network colon atypical full stop", (("pigment_network", "atypical"),)),
    ("| Pigment network | absent |\n| BWV | present |", (("pigment_network", _ABSENT), ("blue_whitish_veil", "present"),)),
    ("| criterion | today | 2024 |\n| BWV | absent | present |", ()),
    ("Fellow: arborizing vessels.\nConsultant: the vessels are dotted.", (("vascular_structures", "dotted"),)),
    ("Training set annotation (not a patient visit): irregular streaks and BWV.", ()),
    ("Score sheet:\nmajor - atypical network  [ ] 0\nmajor - BWV  [x] 2", (("blue_whitish_veil", "present"),)),
    ("Partner himself had a naevus with atypical network. Patient: BWV present.", (("blue_whitish_veil", "present"),)),
    ("I explained that the major criteria (atypical network, blue-white veil) score 2 each.", ()),
    ("Some comma vessels full stop no network full stop", (("pigment_network", _ABSENT), ("vascular_structures", "comma"),)),
    # ... and what stays unread: a teaching note, a blank form's row (before: the veil read PRESENT), two grades
    ("Teaching note: wreath vessels are typical of sebaceous hyperplasia.", ()),
    ("BWV [ ]   irreg streaks [ ]", ()),
    ("PN: typical, focally atypical", ()),
])
def test_findings_in_clinicians_shorthand_and_score_sheets_are_read(text, read):
    """The held-out review 2026-12-06g read 692 of its 920 stated findings: a finding written "Network - atypical",
    "the network is atypical", "typ PN", "BWV: 2" or "Vessels: none seen" was not read, and fell back to the image."""
    from monai_cir.data.report import read_by_rules

    assert read_by_rules(text) == read


@pytest.mark.parametrize(("text", "read"), [
    # what review 2026-12-06i (held out until review j was written) stated and the reader missed: a describing word between
    # the grade and the noun, "comma-shaped" / "wreath-like" / "irregular linear" vessels, telangiectasia, peppering, a
    # placed irregular blotch, a negation that a conjunction gives the next item, two swapped letters, one grade twice
    ("Dermoscopy: comma-shaped vessels, no pigment network.", (("pigment_network", _ABSENT), ("vascular_structures", "comma"))),
    ("Globular pattern, regular brown globules evenly spaced.", (("dots_and_globules", "regular"),)),
    ("Dermoscopy shows a typical network and no dots or globules.", (("pigment_network", "typical"), ("dots_and_globules", _ABSENT))),
    ("Dermoscopy: short fine arborising telangiectasia, no pigment.", (("vascular_structures", "arborizing"),)),
    ("Wreath-like vessels around yellowish lobules.", (("vascular_structures", "wreath"),)),
    ("Revealed irregular linear vessels.", (("vascular_structures", "linear irregular"),)),
    ("Grey peppering centrally.", (("regression_structures", "blue areas"),)),
    ("Blue-white veil, an eccentric irregular dark blotch.", (("pigmentation", "localized irregular"), ("blue_whitish_veil", "present"))),
    ("Dotted vessels, no pigment netwrok.", (("pigment_network", _ABSENT), ("vascular_structures", "dotted"))),
    ("The lesion has a regular reticular network (typical).", (("pigment_network", "typical"),)),
    ("White regression area centrally; grey peppering elsewhere.", (("regression_structures", "combinations"),)),
    ("Panel asked whether vessels within regression were present - Dr Osei, re-reviewing the images, confirmed vessels within regression.",
     (("vascular_structures", "within regression"),)),
    ("Her twin sister, also seen today, has a lesion with blue-grey peppering. This patient's lesion: regular globules only.",
     (("dots_and_globules", "regular"),)),
    ("Agree, dermal naevus.\n\n> From GP: comma vessels on my dermatoscope, no network.", (("pigment_network", _ABSENT), ("vascular_structures", "comma"))),
    # ... and what it read wrong, now not read: the pluperfect, another's note, a general statement or a definition, an
    # audit's cases or counts, a reply that does not take an email's quoted finding, a doubt past a comma, an earlier
    # visit later in the sentence; a bare "irregular blotch" (where in the lesion it does not say) stays unread, and so do the
    # guards' exceptions: a doubt answered, an email quote agreed with, "(this image)", a year after a finding
    ("The dermoscopy in March had shown a typical network.", ()),
    ("Stage IB (2022, L arm - irregular streaks had been documented before excision).", ()),
    ("The treating dermatologist's pre-excision note records a blue-white veil.", ()),
    ("Features commonly found in a melanoma of this thickness include an atypical network and irregular streaks.", ()),
    ("Arborizing vessels are typical of BCC.", ()),
    ("Blue-grey peppering corresponds to regression.", ()),
    ("2WW referrals (n=42): atypical network + BWV on referral.", ()),
    ("Case 1: atypical network + BWV. Case 2: regular globules.", ()),
    ("A - new irregular streaks at 6 months -> MIS\nB - new dotted vessels -> naevus", ()),
    ("Arborizing vessels were documented in 88% of BCCs.", ()),
    ("Retrospective review: diffuse irregular pigmentation 4/6, BWV 2/6.", ()),
    ("Historical cases: network atypical in 3, BWV in 2.", ()),
    ("Hi Sam - I don't think that's a blue-white veil. Not veil.\n\n> The lesion has a BWV I think", ()),
    ("Panel could not agree on whether there is fine, typical network.", ()),
    ("Irregular streaks when I saw him in January.", ()),
    ("BWV present centrally, irregular blotch.", (("blue_whitish_veil", "present"),)),
    ("The lower one has blue-grey peppering; the upper one (this image) has a typical network.", (("pigment_network", "typical"),)),
    ("No BWV at first visit; BWV present in 2026.", (("blue_whitish_veil", "present"),)),  # (a year is no count)
])
def test_review_i_findings_are_read_and_its_wrong_readings_are_not(text, read):
    """The held-out review 2026-12-06i read 405 of its 589 stated findings and 10 of its 400 texts wrong; the rules
    written from it read 458 and 0 (and the then held-out review j: 295 -> 322 of 648 read, 17 texts wrong before and
    after)."""
    from monai_cir.data.report import read_by_rules

    assert read_by_rules(text) == read


@pytest.mark.parametrize(("text", "read"), [
    # what review 2026-12-06j (held out until review k was written) read wrong: a first read an addendum corrects, a
    # questioner's lines, general statements and a slide's weights, another case, a question, a form's options, earlier
    # visits, a table's header row, "described as"
    ("Report: Benign pattern. Regular globules, typical network.\nAddendum: second read by RT - a blue-white veil at the lower pole. "
     "The globules are not regular.", (("blue_whitish_veil", "present"),)),
    ("First report: blue-white veil.\nAddendum: what is described as veil is a homogeneous steel-blue area. Not a veil.", ()),
    ("Q. Counsel: the lesion showed irregular dots and globules.\nA. The dots are regular.", (("dots_and_globules", "regular"),)),
    ("A blue-white veil is a sign of melanoma.", ()),
    ("Dotted vessels can be seen in Bowen's disease and psoriasis.", ()),
    ("Today I learned that irregular streaks and the blue-whitish veil are major criteria.", ()),
    ("Major criteria (2 points): atypical network, blue-whitish veil, atypical vascular pattern", ()),
    ("Contrast (next case): arborizing vessels crossing the lesion", ()),
    ("Eli: was there a veil on the shoulder one, cant remember", ()),
    ("Pigmentation: absent / diffuse reg / local reg / diffuse irreg / local irreg", ()),
    ("Visit 1: blue-white veil present, irregular dots.\nVisit 2: dots regular.\nVisit 3 (current): regular dots, no veil.",
     (("dots_and_globules", "regular"), ("blue_whitish_veil", _ABSENT))),
    ("Visit | PN | Streaks | Veil\n1 | typical | absent | absent", ()),
    # ... what it missed: "still" / "now" between a noun and its grade; and the guards' exceptions: an undated pluperfect
    # is the imaged lesion's dermoscopy, a last visit "unchanged" carries the earlier ones, "no" heads no form option
    ("Network still typical.", (("pigment_network", "typical"),)),
    # ... an unpunctuated dictation's "no" that heads the next noun (not right after the mention), British "localised",
    # "irreg" without its period in a two-word grade, "scar like" written apart, "linear-irregular"
    ("there is an atypical pigment network thickened with irregular streaks at about four o clock no blue white veil seen next patient",
     (("pigment_network", "atypical"), ("streaks", "irregular"), ("blue_whitish_veil", _ABSENT))),
    ("BWV no streaks", (("streaks", _ABSENT),)),
    ("DERMOSCOPY (DR): LOCALISED IRREG PIGMENTATION. ?LENTIGO MALIGNA.", (("pigmentation", "localized irregular"),)),
    ("DR COMMENTS: ATYPICAL NETWORK, WHITE SCAR LIKE AREA CENTRE.", (("pigment_network", "atypical"), ("regression_structures", "white areas"))),
    ("Short, fine, linear-irregular vessels on a milky-red background.", (("vascular_structures", "linear irregular"),)),
    ("Histo = compound naevus (dermoscopy had shown regular globules + typical network btw)",
     (("pigment_network", "typical"), ("dots_and_globules", "regular"))),
    ("Visit 1: blue-white veil present, irregular dots. Visit 2: unchanged. Visit 3 (most recent): all features unchanged from visit 2.",
     (("dots_and_globules", "irregular"), ("blue_whitish_veil", "present"))),
    ("no BWV / no RS / no str", (("blue_whitish_veil", _ABSENT),)),
])
def test_review_j_wrong_readings_are_not_read_and_its_missed_findings_are(text, read):
    """The held-out review 2026-12-06j had 17 of its 400 texts read wrong (before and after the rules from review i); the
    rules written from it leave 1 (and the then held-out review k: 13 texts read wrong and 385 of 619 stated findings
    read, before and after)."""
    from monai_cir.data.report import read_by_rules

    assert read_by_rules(text) == read


@pytest.mark.parametrize(("text", "read"), [
    # what review 2026-12-06k (held out until review l was written) read wrong: a corrected statement, a double read's
    # first reader and a second one a final reading restates, an algorithm's output the clinician reads after, a checklist
    # described on a form nobody filled, a comparison lesion, "no network centrally", the criteria a log says it checked
    ("Left thigh. Network atypical. Correction: network typical on the non-glare image.", (("pigment_network", "typical"),)),
    ("Veil present. EDIT 09:40: on review the blue was glare.", ()),
    ("Dots irregular, streaks absent, veil present... sorry, I meant peppering, not veil.",
     (("streaks", _ABSENT), ("regression_structures", "blue areas"), ("dots_and_globules", "irregular"))),
    ("Localized irregular pigmentation. No wait, it is central and symmetric.", ()),
    ("Localized irregular pigmentation; scratch that: localized regular pigmentation.", (("pigmentation", "localized regular"),)),
    ("Audit 17. R1: hairpin vessels. R2: I read comma vessels, no loops.", (("vascular_structures", "comma"),)),
    ("Reader 1: atypical network. Reader 2: typical network.\nAdjudicator: the network is atypical - thickened lines.", ()),
    ("AI output (v4): irregular streaks, blue-white veil.\nClinician: I see no streaks. Atypical network.",
     (("pigment_network", "atypical"), ("streaks", _ABSENT))),
    ("This intake form lists the 7-point features (atypical network, irregular streaks, veil) for ticking. No boxes ticked.", ()),
    ("Image 2 is a comparison naevus from the other arm (regular network), for reference only.", ()),
    ("Globular pattern; no network centrally but a regular network at the rim.", (("pigment_network", "typical"),)),
    ("Streaks: regular. Rest absent (checked PN, DG, BWV, VS).", (("streaks", "regular"),)),
    # ... and the guards: a second reader who agrees keeps the first's, a final reading with no finding of its own keeps
    # the second reader's, a denial at the rim is the criterion's absence, "checked" with a finding states it
    ("R1: dotted vessels. R2: agree, uniform.", (("vascular_structures", "dotted"),)),
    ("R1: typical network. R2: atypical network, BWV present. Final: as R2.", (("pigment_network", "atypical"), ("blue_whitish_veil", "present"))),
    ("No streaks at the periphery.", (("streaks", _ABSENT),)),
    ("Checked under polarised light: BWV present.", (("blue_whitish_veil", "present"),)),
    ("No streaks but irregular dots.", (("streaks", _ABSENT), ("dots_and_globules", "irregular"))),
])
def test_review_k_wrong_readings_are_not_read(text, read):
    """The held-out review 2026-12-06k had 13 of its 400 texts read wrong (before and after the rules from review j); the
    rules written from it leave 1 (a parent's lesion the text names by a pronoun)."""
    from monai_cir.data.report import read_by_rules

    assert read_by_rules(text) == read


@pytest.mark.parametrize(("text", "read"), [
    # what review 2026-12-06l (held out until review m was written) read wrong: a scribe's unreviewed draft, several lesions
    # imaged, codes' and fields' labels, a template's defaults, "no network abnormality", a year's or a date's earlier image,
    # the checklist taught, a disagreement, an image not available, ungraded criteria, a quote beside a bare "veil"
    ("Visit summary (AutoScribe, DRAFT - not yet reviewed). The doctor saw an irregular network.", ()),
    ("Dermoscopy done on both. One has a veil, the other a typical network.", ()),
    ("Pt 1: typical network. Pt 2: irregular streaks, BWV present.", ()),
    ("Captures: back, arm. Atypical network. Dermoscopy images saved for all three.", ()),
    ("OBX|2|CWE|BWV^Veil^L||ABS||N|||F", (("blue_whitish_veil", _ABSENT),)),  # (refused as a label until HL7 v2 was parsed)
    ('{"code":{"text":"Blue-whitish veil"},"dataAbsentReason":{"text":"not asked"}}', ()),
    ("PN: {{pigment_network}} / BWV: {{bwv}}", ()),
    ("Network: atypical\nStreaks: absent [default]\nVessels: absent (default, unchanged)", (("pigment_network", "atypical"),)),
    ("Network: typical*\nVeil: present\n(* template default, not changed)", (("blue_whitish_veil", "present"),)),
    ("EPR block - NOTE: default values not reviewed\nNetwork: typical\nFree-text findings (clinician): hairpin vessels.",
     (("vascular_structures", "hairpin"),)),
    ("Today no network abnormality; typical network; no dots.", (("pigment_network", "typical"), ("dots_and_globules", _ABSENT))),
    ("Her 2023 melanoma showed a blue-white veil. Today's lesion: typical network.", (("pigment_network", "typical"),)),
    ("On re-review of that March 2025 image there was an irregular blotch at the periphery.", ()),
    ("We covered the 7-point checklist: atypical network, irregular streaks and the veil.", ()),
    ("Reflection on dermoscopy teaching: atypical network; irregular streaks.", ()),
    ("The discussant disagreed about a veil; the panel left it unresolved.", ()),
    ("The repeat dermoscopy this month is not available. Earlier: typical network.", ()),
    ("Network: atypical (visible). Colour-dependent features (veil, regression) not graded.", (("pigment_network", "atypical"),)),
    ('Thanks for your letter, which described "an irregular blotch and a veil". Dermoscopy today: typical network.',
     (("pigment_network", "typical"),)),
    # ... and the guards: "two lesions examined" with the imaged one named is read, a year is not the past on its own, a
    # clinician's text that overrides a default is read, a dated excision after a dermoscopy of the lesion is the image's
    ("Two lesions examined. The imaged lesion (L thigh) shows regular globules.", (("dots_and_globules", "regular"),)),
    ("Lesion excised in 2026 after dermoscopy showed BWV.", (("blue_whitish_veil", "present"),)),
    ("Pattern: [DEFAULT: benign]\nClinician free text overriding the default: network is atypical.", (("pigment_network", "atypical"),)),
    ("2019 photo showed no network; an atypical network has now developed.", (("pigment_network", "atypical"),)),
])
def test_review_l_wrong_readings_are_not_read(text, read):
    """The held-out review 2026-12-06l had 31 of its 400 texts read wrong (32 before the rules from review k); the rules
    written from it leave 1 (a lesion the text places by "the one on her back")."""
    from monai_cir.data.report import read_by_rules

    assert read_by_rules(text) == read


@pytest.mark.parametrize(("text", "read"), [
    # what review 2026-12-06m (held out until review n was written) read wrong: a delimited export's header, a dsrdump
    # content tree, an algorithm's output awaiting review, a CDA section's earlier visit, a dated visit, records from
    # elsewhere, an earlier dermoscopy mid-sentence, "then", a pre-filled default, a legend's line, "~", lesions in a range
    # or all alike or left open, numbered sites, an alert a clinician overrides, another lesion as a sentence's subject
    ("ID;Site;Network;Streaks;Veil;Dots\n9;R arm;atypical;none;no;irregular",
     (("pigment_network", "atypical"), ("streaks", _ABSENT), ("dots_and_globules", "irregular"), ("blue_whitish_veil", _ABSENT))),
    ("lesion,network,veil\nA,typical,absent\nB,atypical,present", ()),
    ("case,pn,st,bwv,dg\nC-2,,,,", ()),
    ("id,loc,PN,Streaks,BWV\n77,back,typical,?irregular,absent", (("pigment_network", "typical"), ("blue_whitish_veil", _ABSENT))),
    ('<CONTAINS:CODE:(PN,99X,"Pigment network")=(AT,99X,"Atypical")>\n<CONTAINS:CODE:(BWV,99X,"Blue-whitish veil")=(AB,99X,"Absent")>',
     (("pigment_network", "atypical"), ("blue_whitish_veil", _ABSENT))),
    ('<CONTAINS:CODE:(PN,99X,"Pigment network")=(TY,99X,"Typical")>\n  <HAS CONCEPT MOD:TEXT:(M,99X,"Entry status")="[default] not reviewed">\n'
     '<CONTAINS:CODE:(VS,99X,"Vascular structures")=(HP,99X,"Hairpin")>', (("vascular_structures", "hairpin"),)),
    ('<CONTAINS:CODE:(BWV,99X,"Blue-whitish veil")=(P,99X,"Present")>\n<CONTAINS:TEXT:(S,99X,"Status")="unverified - awaiting clinician review">', ()),
    ("<section>\n<text>At the clinic visit of 2024-02-11 dermoscopy showed an atypical network.</text>\n<text>Today: typical network.</text>\n</section>",
     (("pigment_network", "typical"),)),
    ("At her visit on 9 May the dermoscopy showed irregular streaks; excised 20 May.", ()),
    ("Records from Dr K. Osei (2022) describe a blue-white veil on a lesion of the back.", ()),
    ("Dermoscopy: regular dots; the earlier dermoscopy from the referral had shown hairpin vessels, but these are not visible today.",
     (("dots_and_globules", "regular"),)),
    ("The photo she sent is from last year. It showed an atypical network then.", ()),
    ("Streaks: absent*\n(* pre-filled default value, not reviewed)", ()),
    ("Legend: D-irr-pig = diffuse irregular pigmentation; BWV = blue-whitish veil\nLesion: typical network.", (("pigment_network", "typical"),)),
    ("Globules irregular, BWV ~", (("dots_and_globules", "irregular"),)),
    ("Lesions 1-3 (back): arborizing vessels in 1 and 2.", ()),
    ("Four naevi on the legs examined; all showed a typical network.", ()),
    ("Two moles on the chest. One has an atypical network, the other irregular dots; I'll work out which is which from the photos.", ()),
    ("Multiple pink papules; no single lesion was singled out for photography. Arborizing vessels.", ()),
    ("Site 1 - nose: arborizing vessels. Site 2 - cheek: no vessels, atypical network.", ()),
    ("ALERT: flagged by classifier (score 0.7). Detected: irregular streaks, blue-whitish veil.\nOverride reason (Dr A. Ito): regular globules only.",
     (("dots_and_globules", "regular"),)),
    ("Two moles on the back, both examined. The lower one, uh, has irregular streaks. The upper one - the one I imaged - is bland.", ()),
    # ... and the guards: the imaged one of several named (by "index", by "marked for biopsy") is read, a size range is no
    # range of lesions, an angle-bracketed value with no markup around it is no tag
    ("Upper lesion: atypical network, left alone. Lower lesion (marked for biopsy): regular dots.", (("dots_and_globules", "regular"),)),
    ("Lesions 1-4 photographed; lesion 4 (the index lesion): irregular streaks.", (("streaks", "irregular"),)),
    ("Satellite lesions 2-3 mm around it. Typical network.", (("pigment_network", "typical"),)),
    ("BWV <absent>", ()),
])
def test_review_m_wrong_readings_are_not_read(text, read):
    """The held-out review 2026-12-06m had 29 of its 400 texts read wrong (30 before the rules from review l); the rules
    written from it leave 1 (two lesions placed on the ear, each line a site's, with no word of which was imaged)."""
    from monai_cir.data.report import read_by_rules

    assert read_by_rules(text) == read


@pytest.mark.parametrize(("text", "read"), [
    # what review 2026-12-06n (held out until review p was written) read wrong: a session named by its month or week, a
    # referral that does not say which lesion, a mark scheme, "as a feature of", a first report's dermoscopy, a drug's
    # typical picture, an AI's suggestion in an export, a YAML value left at its default or corrected below, a chat's
    # assistant turns, "are considered", "In 2023 there were", a dated dermoscopy without its year, a definition
    ("At the March session the image showed regular globules. Today: typical network.", (("pigment_network", "typical"),)),
    ("Image 1 (arm) and image 2 (leg) sent; the letter does not say which lesion is the concern. Image 1: irregular streaks. Image 2: regular globules.", ()),
    ("Candidates should comment on: network, streaks, veil, vessels.", ()),
    ("Candidate listed arborizing vessels as a feature of BCC.", ()),
    ("The first report's dermoscopy (taken 3 May) described a blue-white veil.", ()),
    ("Class effect: the typical dermoscopy is a globular pattern with regular globules.", ()),
    ("ai_suggestion:\n  vascular: arborizing\n  network: absent\nclinician:\n  note: not yet reviewed", ()),
    ("dermoscopy:\n  network: typical   # default\n  streaks: irregular", (("streaks", "irregular"),)),
    ("streaks: regular   # corrected below\nveil: present", (("blue_whitish_veil", "present"),)),
    ("User: Describe the image.\nAssistant: I see arborizing vessels and no pigment network.\nUser: Thanks, I will check.", ()),
    ("User: Explain why comma vessels are considered benign.", ()),
    ("In 2023 there were regular globules. Now a typical network only.", (("pigment_network", "typical"),)),
    ("Summary: GP dermoscopy on 03/02 recorded irregular streaks; excised 04/04.", ()),
    ("Last week's image: regular globules. Today's image: typical network.", (("pigment_network", "typical"),)),
    ("The paper defines the blue-whitish veil as a structureless blue area.", ()),
    ("Two lesions, images 1 and 2. Image 1 had irregular streaks. Which image was sent for review was not recorded.", ()),
    # ... and the guards: the writer's own note quoted is read, "to define the margin" is no definition, an assistant's
    # line with no user's turn is no chat
    ("User: Convert my note: 'no network, arborizing vessels'.\nAssistant: Pigment network: absent; Vascular: arborizing.",
     (("pigment_network", _ABSENT), ("vascular_structures", "arborizing"))),
    ("Dermoscopy used to define the margin: the atypical network extends 2 mm beyond the edge.", (("pigment_network", "atypical"),)),
    ("Assistant: irregular streaks.", (("streaks", "irregular"),)),
])
def test_review_n_wrong_readings_are_not_read(text, read):
    """The held-out review 2026-12-06n had 17 of its 400 texts read wrong; the rules written from it leave none (and 443 of
    its 642 stated findings read, as before)."""
    from monai_cir.data.report import read_by_rules

    assert read_by_rules(text) == read


@pytest.mark.parametrize(("text", "read"), [
    # what review 2026-12-06o (held out until review q was written) read wrong: an SBAR note's Background, a vendor's
    # synthetic test image, another's reading told in the third person
    ("S: 58F, changing mole left shin.\nB: Melanoma removed 2018 from the back; dermoscopy of that one showed irregular streaks.\n"
     "A: Dermoscopy today of the shin lesion - typical network, no veil.\nR: routine review.",
     (("pigment_network", "typical"), ("blue_whitish_veil", _ABSENT))),
    ("Situation: new lesion R cheek\nBackground: BCC on the nose treated 2021, dermoscopy of that one showed arborizing vessels\n"
     "Assessment: dermoscopy today shows regular globules\nRecommendation: review 3/12", (("dots_and_globules", "regular"),)),
    ("Demo image from the manufacturer's demo set: irregular streaks and a blue-white veil.", ()),
    ("MDT minutes, item 2: the consultant present restated his reading - atypical network and regular globules.", ()),
    # ... and the guards: lines lettered "a:" and "b:" with no Situation are no SBAR, "not a patient" said of a companion
    # leaves the patient's lesion read, the writer's own reading and the patient's images are read
    ("Dermoscopy, two views of the same lesion:\na: polarised - atypical network\nb: non-polarised - irregular dots",
     (("pigment_network", "atypical"), ("dots_and_globules", "irregular"))),
    ("Attends with her son (not a patient). Patient's lesion, L arm: atypical network.", (("pigment_network", "atypical"),)),
    ("I confirmed my reading: atypical network.", (("pigment_network", "atypical"),)),
    ("She shared her images: atypical network, no streaks.", (("pigment_network", "atypical"), ("streaks", _ABSENT))),
])
def test_review_o_wrong_readings_are_not_read(text, read):
    """The held-out review 2026-12-06o had 3 of its 400 texts read wrong; the rules written from it leave none (and 567 of
    its 705 stated findings read, as before)."""
    from monai_cir.data.report import read_by_rules

    assert read_by_rules(text) == read


@pytest.mark.parametrize(("text", "read"), [
    # the last wrong readings of reviews ruled on before (l: "the one on her back" beside the one photographed; m: two
    # lesions on the ear, a line each, both to be excised)
    ("The one on his arm is fine (typical network). The one I imaged is on the shin: irregular streaks.", (("streaks", "irregular"),)),
    ("Three moles on the back today.\nUpper: regular globules.\nMiddle: typical network.\nLower: no streaks.\nAll three to be excised.", ()),
    # ... and the guards: "the one on her back" with no other named as imaged is the lesion; lesions counted, both to be
    # excised, with the index named
    ("The one on her back has an atypical network; excise.", (("pigment_network", "atypical"),)),
    ("Two lesions on the back; the index lesion: atypical network. Both to be excised.", (("pigment_network", "atypical"),)),
])
def test_ruled_reviews_last_wrong_readings_are_not_read(text, read):
    """Reviews l and m kept one wrong reading each after the rules written from them; these rules leave none."""
    from monai_cir.data.report import read_by_rules

    assert read_by_rules(text) == read


@pytest.mark.parametrize(("text", "read"), [
    # what review 2026-12-06p (held out until review r was written) read wrong: a pronoun's or an algorithm's dermoscopy,
    # lesions counted and treated alike or looked at together, a quote holding an apostrophe, an absence within the areas
    # just named, a patch test's earlier reading day, a dated admission, "sorry pls read:", a dermoscopy some time ago,
    # a specialist's letter
    ("Phone call from the derm SHO about a new back lesion seen in their clinic. They said dermoscopy showed irregular streaks "
     "and they will biopsy.", ()),
    ("The AI report lists a blue-whitish veil. On my own look: typical network, no veil.",
     (("pigment_network", "typical"), ("blue_whitish_veil", _ABSENT))),
    ("Three new naevi since the last cycle - chest, back and thigh.\nDermatoscope: atypical network and blue-white veil.\nRefer all to derm.", ()),
    ("Specimen with two small lesions, A and B.\nEx vivo dermoscopy: regular globules.\nEach lesion submitted separately.", ()),
    ("Two lesions shielded today - both were scoped last month and showed a regular network.", ()),
    ("Multiple CALMs on the trunk. Dermoscopy of these: diffuse regular pigmentation.", ()),
    ("Many naevi on the legs. Looked at them with the dermatoscope: a few show irregular dots.", ()),
    ("Numerous naevi on the back. Several scoped; most with a typical network.", ()),
    ('Derm SpR note says "hairpin vessels, ?SK\'s" - biopsy booked.', ()),
    ("Dermoscopy: white scar-like areas with blue-grey peppering, no vessels within them.", (("regression_structures", "combinations"),)),
    ("D2: dotted vessels around the seb K.\nD4 today: milia-like cysts only.", ()),
    ("Readmitted. During the 2024 admission the lesion had irregular dots.\nToday's dermoscopy: regular dots only.", (("dots_and_globules", "regular"),)),
    ("Dermoscopy: typical network (sorry pls read: atypical network, thick lines).", (("pigment_network", "atypical"),)),
    ("Dermoscopy of the R arm lesion 2 years ago: comma vessels. Today: excised, scar only, nothing to scope.", ()),
    ("Oncologist's letter: primary R shin (atypical network, irregular dots). Plan: start letrozole.", ()),
    # ... and the guards: a pronoun's "said" that is not of a dermoscopy, a lesion noticed some time ago, "no vessels within
    # it" (the lesion), lesions counted with the index named, a specialist's note (it may head the writer's own entry)
    ("She said it itches and dermoscopy shows an atypical network.", (("pigment_network", "atypical"),)),
    ("Dermoscopy of the lesion noticed 3 months ago: atypical network.", (("pigment_network", "atypical"),)),
    ("Dermoscopy: pink lesion, no vessels within it.", (("vascular_structures", _ABSENT),)),
    ("Two lesions on the back; the index lesion: atypical network. Both were scoped.", (("pigment_network", "atypical"),)),
    ("Dermatologist's note: atypical network, irregular dots.", (("pigment_network", "atypical"), ("dots_and_globules", "irregular"))),
])
def test_review_p_wrong_readings_are_not_read(text, read):
    """The held-out review 2026-12-06p had 20 of its 400 texts read wrong; the rules written from it leave 2 (a mole
    examined on the patient's husband, told as "it"; a requester's photo beside an ex vivo look that cannot judge the
    veil), and 417 of its 500 stated findings read, as before."""
    from monai_cir.data.report import read_by_rules

    assert read_by_rules(text) == read


@pytest.mark.parametrize(("text", "read"), [
    # what review 2026-12-06q (held out until review s was written) read wrong: corrections and amendments, a quoted
    # value replaced by another, an audit trail's suggestion, lesions or patients listed, a dated dermoscopy and a past
    # history, a dated excision's pluperfect, rules of thumb, what a condition classically shows, requests and plans, a
    # criterion doubted later, white areas named as not regression, a definition of the checklist's criteria
    ("L arm naevus, dermoscopy: typical network; dots irregular.\nCORRECTION (later, Dr Osei): dots are regular; 'irregular' was a slip.",
     (("pigment_network", "typical"), ("dots_and_globules", "regular"))),
    ("Network: atypical. Amended to typical by Dr Ng after review.", ()),
    ("Notes: dermoscopy - streaks irregular, network typical.\n[Edited 10:05 by Dr Park: 'streaks irregular' -> 'streaks regular']",
     (("pigment_network", "typical"), ("streaks", "regular"))),
    ("Erratum: the report stated `atypical network'; this should read `typical network'.", ()),  # ("should" is a plan's word)
    ("10:02 | AI-ASSIST | SUGGEST | Dermoscopy.BWV | value: present | status: suggested\n10:04 | dr.x | REJECT | Dermoscopy.BWV "
     "| suggestion rejected\n10:04 | dr.x | UPDATE | Dermoscopy.BWV | new: absent", ()),
    ("Three moles on the back looked at with the dermatoscope: one has irregular dots, the others are bland.", ()),
    ("Lesion list (current):\n1. R arm - dermoscopy today: typical network\n2. L leg - dermoscopy today: regular globules\n"
     "Both to be reviewed by the new team.", ()),
    ("Clinic log. Pt 1 (Ana) - cryo for AKs. Pt 2 (Ben) - nodule, arborizing vessels, refer.", ()),
    ("09:00 Mrs D - SK, hairpin vessels\n09:15 Mr E - naevus, typical network", ()),
    ("In 2022 dermoscopy of his R arm mole showed irregular dots. Today: new lesion with a typical network.", (("pigment_network", "typical"),)),
    ("Past medical history: melanoma L calf 2020 (BWV, irregular streaks). No recurrence.", ()),
    ("Nodule excised 2023 had shown a blue-white veil. Today: scar only.", ()),
    ("CHW session: arborizing vessels = think BCC; hairpin vessels with a white halo = think keratinising tumour.", ()),
    ("The differential included Reed naevus, which classically shows regular streaks.", ()),
    ("Please arrange dermoscopy and report the network, streaks and veil.", ()),
    ("Recommendations: dermoscopy yearly, particularly looking for irregular streaks.", ()),
    ("Dermoscopy shows a blue-whitish veil.\n[Comment: not sure about the veil - may be gel glare.]", ()),
    ("Dermoscopy: dotted vessels. The white scar-like areas are the old scar, not regression.", (("vascular_structures", "dotted"),)),
    ("A blue-whitish veil is one of the three major criteria of the 7-point checklist.", ()),
    # ... and the guards: a filled checklist's "major criteria", criteria "present", an undated "had shown" (the imaged
    # lesion before its excision), a log that names the lesion photographed today, a doubt that leaves an absence read
    ("7PCL: major criteria: atypical network 2, BWV 0.", (("pigment_network", "atypical"),)),
    ("2 major criteria are present: atypical network and BWV.", (("pigment_network", "atypical"), ("blue_whitish_veil", "present"))),
    ("The dermoscopy had shown an atypical network; histology: melanoma in situ.", (("pigment_network", "atypical"),)),
    ("Pt 1 (Mr J): results only. Pt 2 (Mrs K): the lesion photographed today: typical network.", (("pigment_network", "typical"),)),
    ("Not sure about the veil at first; no veil on the polarised image.", (("blue_whitish_veil", _ABSENT),)),
])
def test_review_q_wrong_readings_are_not_read(text, read):
    """The held-out review 2026-12-06q had 21 of its 400 texts read wrong; the rules written from it leave 1 (an addendum
    that says the earlier entry was wrong without a correction's word), and 386 of its 545 stated findings read (385
    before)."""
    from monai_cir.data.report import read_by_rules

    assert read_by_rules(text) == read


@pytest.mark.parametrize(("text", "read"), [
    # what review 2026-12-06r (held out until review t was written) read wrong: what another "tells me", what is
    # "reportedly" so, lesions counted and dermoscoped together or annotated "against each", tables and numbered lists of
    # patients, a dated look beside today's, a rule for any lesion, white areas at a treated site, a kind or a place said of
    # an absence, poor lighting, a trial's site reading under an adjudication, auto-filled and redacted values
    ("I saw her in the neurology clinic. She saw Dr Lee last month, who tells me the mole on her back has an atypical network.", ()),
    ("FH: melanoma in an uncle; his primary reportedly showed a blue-white veil. Patient's lesion: no BWV, typical network.",
     (("pigment_network", "typical"), ("blue_whitish_veil", _ABSENT))),
    ("Three naevi dermoscoped: back - typical network; thigh - regular globules; arm - a few dots.", ()),
    ("Two new macules on the cheek examined dermoscopically: one has an atypical network, the other regular dots.", ()),
    ("My 2 moles (back, arm) - notes against each: back - typical network; arm - SK.", ()),
    ("Pt | Lesion | Dermoscopy\nAB | R shin | comma vessels, no network\nCD | L back | cyst", ()),
    ("Huddle list:\n1) Mrs A - biopsy result\n2) Mr K - SDDI, atypical network on the back lesion\n3) Ms L - new referral", ()),
    ("Late effects clinic.\nDermoscopy 2022: atypical network, irregular dots.\nDermoscopy today: typical network, regular dots.",
     (("pigment_network", "typical"), ("dots_and_globules", "regular"))),
    ("Cryo list today. Do not freeze any lesion with an irregular pigment network, streaks or a veil.", ()),
    ("Dermoscopy today: white scar-like areas at the treated site (post-cryo scarring) and a few dotted vessels.", (("vascular_structures", "dotted"),)),
    ("Dermoscopy: red homogeneous area, white collarette, no vessels of the melanoma type.", ()),
    ("Dermoscopy: pigment network absent; blue-grey peppering; no dots or globules of brown colour.",
     (("pigment_network", _ABSENT), ("regression_structures", "blue areas"))),
    ("Dermoscopy of the sole: parallel furrow pattern; no dots or globules off the furrows; no streaks.", (("streaks", _ABSENT),)),
    ("Dermoscopy: multicomponent, blue-white veil centrally, no network in most of it.", (("blue_whitish_veil", "present"),)),
    ("Dermoscopy: there is a veil but the lighting is poor; irregular dots.", (("dots_and_globules", "irregular"),)),
    ("Site reading: dots regular\nCentral reader: irregular\nAdjudicated (final): irregular", ()),
    ("Problem: pigmented lesion\nDermoscopy network: typical\nDermoscopy veil: absent (auto-filled)", (("pigment_network", "typical"),)),
    ("Dermoscopy: atypical network; blue-white veil [REDACTED].", (("pigment_network", "atypical"),)),
    # ... and the guards: a dated look alone is the image's, "previously reported" and "I think" are the writer's
    # reading, lesions counted with the one imaged named
    ("Dermoscopy (2026): atypical network, BWV.", (("pigment_network", "atypical"), ("blue_whitish_veil", "present"))),
    ("As previously reported, the lesion shows atypical PN.", (("pigment_network", "atypical"),)),
    ("I think the blue area is a blue-whitish veil.", (("blue_whitish_veil", "present"),)),
    ("3 moles checked, only the one on the back imaged: no BWV.", (("blue_whitish_veil", _ABSENT),)),
])
def test_review_r_wrong_readings_are_not_read(text, read):
    """The held-out review 2026-12-06r had 28 of its 400 texts read wrong; the rules written from it leave 8: seven read
    the checklist's words said of a condition that is not a pigmented lesion (a psoriasis plaque, a mycosis fungoides
    patch, ABNOM...), which reviews q and r label in neither list and earlier reviews (g, h, i, p) as the findings
    (LABELLING.md), and a mole on the patient's mother told in the next clause; 375 of its 599 stated findings read
    (374 before)."""
    from monai_cir.data.report import read_by_rules

    assert read_by_rules(text) == read


@pytest.mark.parametrize(("text", "read"), [
    # what review 2026-12-06s (held out until review u was written) read wrong: a relative's lesion "when it was imaged in
    # 2020", lesions counted and dermoscoped together or named a line each, a month and year's visit, a dated photograph
    # beside today's look, an RTF source, an addendum that reviews the image again and an author's "no", an HTML form's
    # unchecked box, a plan for the next appointment, a relative's path in a flat export, "dermoscopy of both showed", a
    # checklist's weight taught, "back in March", a colleague who "imaged it ... and found", a leaflet's examples
    ("Her brother had a BIMT excised; it showed irregular dots when it was imaged in 2020. Today I imaged her new papule: dotted vessels.",
     (("vascular_structures", "dotted"),)),
    ("Three new pink papules since spring. All three dermoscoped: each has dotted vessels.", ()),
    ("I dermoscoped the 4 most changed naevi: all with regular networks and regular globules.", ()),
    ("<ol><li>L arm: dermoscopy - comma vessels</li><li>R arm: dermoscopy - typical network</li></ol>", ()),
    ("Two lesions were examined, one on each forearm. Dermoscopy of both showed a regular network.", ()),
    ("Follow-up.\nAt the March 2024 visit this lesion had a typical network.\nToday: atypical network.", (("pigment_network", "atypical"),)),
    ("Skin photographs 2021 (scanned): back naevus showed a regular network.\nDermoscopy today: irregular streaks.", (("streaks", "irregular"),)),
    ("{\\rtf1\\ansi\n\\b Previous dermoscopy (clinic 2023):\\b0  atypical network, no veil.\\par\n\\b Today:\\b0  clinical photograph only.\\par}", ()),
    ("Dermoscopy: localized irregular pigmentation.\nAddendum (Dr Farouk): on review of the full image, the pigmentation is regular.", ()),
    ("Draft\nDermoscopy: diffuse regular pigmentation.\n[AUTHOR COMMENT: no - it's localised to the upper pole.]", ()),
    ('<p>Veil: <input type="checkbox"> present</p>', ()),
    ("plan/activity=Dermoscopy at next appointment for new globules or veil\ntoday/dermoscopy/network|value=Typical", ()),
    ("ctx/language=en\nfamily_hx.v1/relative:0/relationship=Mother\nfamily_hx.v1/relative:0/dermoscopy_reported=irregular streaks\n"
     "family_hx.v1/patient/lesion:0/site=R shin", ()),
    ("0:03:22 Dr Ellis: and irregular streaks, also two points.", ()),
    ("0:12:20 Sara: back in March this one had a typical network. We haven't re-imaged it yet.", ()),
    ("Our own clinician imaged it on Monday and found no veil and a typical network; please send your images.", ()),
    ("Taught ABCDE; gave the leaflet showing examples of irregular streaks and veil.", ()),
    # ... and the guards: another's declined dermoscopy leaves the text read, a nurse who found the lesion is not a reading
    ("Dermoscopy: atypical network. Her sister declined dermoscopy.", (("pigment_network", "atypical"),)),
    ("The practice nurse found a changing mole and I dermoscoped it: atypical network.", (("pigment_network", "atypical"),)),
])
def test_review_s_wrong_readings_are_not_read(text, read):
    """The held-out review 2026-12-06s had 19 of its 400 texts read wrong; the rules written from it leave 2 (a psoriasis
    plaque beside the pigmented lesion in one HTML list; a transcript's two readers who disagree, left unsettled), and 411
    of its 604 stated findings read (408 before)."""
    from monai_cir.data.report import read_by_rules

    assert read_by_rules(text) == read


@pytest.mark.parametrize("text, read", [
    # a word a PDF's text splits at a line's end is joined again (before: "ir-\nregular streaks" read regular)
    ("I reviewed the left calf lesion today. Dermo-\nscopy shows an atypical pig-\nment network with ir-\nregular streaks along the "
     "lateral edge and a\nblue-white veil centrally.",
     (("pigment_network", "atypical"), ("streaks", "irregular"), ("blue_whitish_veil", "present"))),
    ("There is diffuse irregular pig-\nmentation across the whole lesion.", (("pigmentation", "diffuse irregular"),)),
    # ... but a criterion's name or value before a line's last hyphen is a sign, whatever its case
    ("Streaks-\nveil-", (("streaks", _ABSENT),)),
    ("BWV-\nstreaks present", (("blue_whitish_veil", _ABSENT),)),
    # markdown's struck-through words are deleted (before: "regular" read; the rest is left unread here)
    ("# L forearm\n~~regular streaks~~ irregular streaks - re-looked at the image after clinic, they are only at 9 o'clock.", ()),
    ("Pigment network: ~~absent~~ typical", (("pigment_network", "typical"),)),
    # patients numbered in a note's headings or a teaching panel's parentheses are several lesions
    ("# clinic\n## Pt 1 - BCC nose\narborizing vessels, ulcer\n## Pt 2 - naevus back\ntypical network, nothing else", ()),
    ("a) typical network (patient 1), b) irregular streaks (patient 2), c) blue-white veil (patient 3).", ()),
    # several looked at, none recorded as the image's
    ("Several dermoscoped this morning: a typical network in all but one, which has irregular dots. No single lesion recorded "
     "as the index.", ()),
    ("Three naevi on the thigh reviewed with the dermatoscope; one with regular dots. None chosen for imaging.", ()),
    # guards: one patient's label, and an index named
    ("Pt 1 - typical network", (("pigment_network", "typical"),)),
    # the criteria named in a bare list, three or more with no value, state none (before: the bare "veil" read present)
    ("PIGMENTED LESION CLINIC - NETWORK / STREAKS / VEIL ASSESSMENT SHEET\nPatient declined dermoscopy today; not assessed.", ()),
    ("Clinical details: ___\nDermoscopy (network / streaks / BWV / vessels): ___", ()),
    ("The research nurse records network, streaks, pigmentation, regression, dots/globules, veil and vessels using the code list.", ()),
    ("Reminder: Network, Pigmentation, Regression, Veil, Vessels still [Select].", ()),
    # ... but a list a denial or a grade precedes, or a value follows, is read as before
    ("no sign of streaks, BWV or PN", (("pigment_network", _ABSENT), ("streaks", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    ("Dermoscopy: irreg dots & globules, vessels within regression, irreg network, BWV present",
     (("pigment_network", "atypical"), ("dots_and_globules", "irregular"), ("blue_whitish_veil", "present"),
      ("vascular_structures", "within regression"))),
    ("SELECT lesion_id, network, streaks, veil FROM dermoscopy WHERE lesion_id = 4410;\n lesion_id | network  | streaks   | veil\n"
     "-----------+----------+-----------+--------\n      4410 | atypical | irregular | present\n(1 row)", (("blue_whitish_veil", "present"),)),
    ("BWV, streaks and vessels present", (("blue_whitish_veil", "present"),)),
])
def test_review_t_wrong_readings_are_not_read(text, read):
    """The held-out review 2026-12-06t had 33 of its 400 texts read wrong by the rules (28 with the learned check); the
    rules written from it leave 24, and 323 of its 507 stated findings read (316 before)."""
    from monai_cir.data.report import read_by_rules

    assert read_by_rules(text) == read


@pytest.mark.parametrize(("text", "read"), [
    # lettered sites, each with a side: two lesions, none named as the image's
    ("(a) R forearm: punch; dermoscopy showed a typical network\n(b) L calf: excision; dermoscopy showed a blue-white veil", ()),
    ("A: L shoulder - dermoscopy: regular globules\nB: R shoulder - dermoscopy: irregular streaks", ()),
    # the checklist's weights and the seven points recited, not a lesion
    ("Major criteria (2 points each): atypical network; blue-whitish veil; atypical vascular pattern.", ()),
    ("Minor criteria (1 point each): irregular streaks; irregular dots/globules; regression structures.", ()),
    ("MOD: As a reminder, the seven points are atypical network, blue-whitish veil, irregular streaks and four more.", ()),
    # a poll's audience, a finding relayed in brackets after it, a header that dates its line
    ("Quiz results: 40 percent of you said there were irregular streaks.", ()),
    ("Audience poll result: most of you voted for a blue-white veil.", ()),
    ("Histology awaited; dermoscopy showed irregular globules (per referral summary).", ()),
    ("[typed letter, dictated last month] Dermoscopy showed regular globules.\n[today] Dermoscopy: irregular streaks at one pole.",
     (("streaks", "irregular"),)),
    # a dated look before a later one; another's lesion in brackets; a doubt written later; a bracketed correction
    ("Dermoscopy taken on 3 May showed a typical network. At today's visit the network is atypical at one edge.",
     (("pigment_network", "atypical"),)),
    ("Regular network, no streaks. (Wife's lesion, same clinic: veil seen - separate note.)",
     (("pigment_network", "typical"), ("streaks", _ABSENT))),
    ("Network typical, globules regular. Second reader: I'm not so sure about the globules, a few look larger.",
     (("pigment_network", "typical"),)),
    ("[typed] Dermoscopy: blue-white veil over the centre.\n[handwritten correction by the consultant] no veil.",
     (("blue_whitish_veil", _ABSENT),)),
    # several lesions given findings together or apart, or to be imaged all
    ("[note] All three: fine regular network, regular dots.", ()),
    ("We looked at both moles; one had a regular network and the other had irregular streaks.", ()),
    ("two had a typical network and one had irregular dots; we agreed to remove that one.", ()),
    ("Chest x2 scoped: regular network on both.", ()),
    ("cryo pt4: SK x3 back. dscopy pre-freeze ok x3 (cerebriform, no ntwk). LN2 done.", ()),  # (before: the network read absent)
    ("SKs on the back. Dermoscopy before cryo fine x2: no network.", ()),
    ("DERMOSCOPY IMAGES TAKEN X3 (L SHIN). DR REVIEWED: ARBORISING VESSELS, NO PIGMENT NETWORK.",  # three images, one lesion
     (("pigment_network", _ABSENT), ("vascular_structures", "arborizing"))),
    ("The one on your arm has a regular network. Let's photograph all three before deciding.", ()),
    ("Figure 2. Two lesions from the same patient: left, typical network; right, irregular streaks.", ()),
    # a reading nobody has verified yet (before: the check dropped the veil at 0.497, kept it at 0.503 once u was trained on)
    ("7PCL scored by medical student (not yet verified): APN 2, BWV 2 - total 4. Consultant to review images.", ()),
    ("Screening app result (not verified): BWV present, atypical network.", ()),
    ("BWV 2 (to be verified), total 2.", ()),
    # no look today, or not seen here yet
    ("LESION HISTORY\n2023 L CALF NETWORK TYPICAL\n(NO CURRENT EXAM ON FILE)", ()),
    ("Outside report: atypical network and irregular globules. Not yet seen by us - appointment booked.", ()),
    # guards: "both:" inside a sentence, another's word the writer did not see, a date with no later look
    ("R1 and R2 both: arborizing vessels, no pigment network.", (("pigment_network", _ABSENT), ("vascular_structures", "arborizing"))),
    ("Typical network, regular globules. R1 also wrote 'pseudopods?' - not seen by me.",
     (("pigment_network", "typical"), ("dots_and_globules", "regular"))),
    ("Dermoscopy taken on 3 May: typical network.", (("pigment_network", "typical"),)),
])
def test_review_u_wrong_readings_are_not_read(text, read):
    """The held-out review 2026-12-06u had 21 of its 400 texts read wrong by the rules (17 with the learned check);
    the rules written from it leave none, and 380 of its 548 stated findings read (379 before)."""
    from monai_cir.data.report import read_by_rules

    assert read_by_rules(text) == read


@pytest.mark.parametrize(("text", "read"), [
    # a grade after its noun and a comma, alone (before: read neither way; 25 stated findings of the trained reviews)
    ("Dermoscopy: reticular network, regular throughout, fading at the edges.", (("pigment_network", "typical"),)),
    ("Delicate peripheral network, regular, with a central white patch.", (("pigment_network", "typical"),)),
    ("Globules, irregular in size and spread.", (("dots_and_globules", "irregular"),)),
    ("Streaks, irregular, at the 3 o'clock edge; no veil.", (("streaks", "irregular"), ("blue_whitish_veil", _ABSENT))),
    # guards: a grade that heads a noun of its own is that noun's
    ("No streaks, regular dots.", (("streaks", _ABSENT), ("dots_and_globules", "regular"))),
    ("No network, regular fine globules.", (("pigment_network", _ABSENT), ("dots_and_globules", "regular"))),
    # dots and globules even in size and spread are regular; a thickened or broadened network is atypical
    ("Uniform brown globules at the periphery.", (("dots_and_globules", "regular"),)),
    ("The dots are evenly spaced; no streaks.", (("streaks", _ABSENT), ("dots_and_globules", "regular"))),
    ("Thickened network at the lateral edge.", (("pigment_network", "atypical"),)),
    # ... a comma between a grade and its describing word keeps them one: in doubt together, read together
    ("IMPRESSION: ?Melanoma; ?irregular, thickened pigment network.", ()),
    ("Irregular, broadened network.", (("pigment_network", "atypical"),)),
])
def test_a_grade_after_a_comma_or_in_clinical_words_is_read(text, read):
    from monai_cir.data.report import read_by_rules

    assert read_by_rules(text) == read


@pytest.mark.parametrize(("text", "read"), [
    # a form's criterion and its boxed options, one ticked: the ticked one (before: read neither way; 21 stated findings
    # of the trained reviews)
    ("Streaks: [x] irreg  [ ] reg  [ ] abs", (("streaks", "irregular"),)),
    ("PN        atypical [x]  typical [ ]  absent [ ]\nBWV       present [ ]  absent [x]",
     (("pigment_network", "atypical"), ("blue_whitish_veil", _ABSENT))),
    ("Pigment network: ☑ typical ☐ atypical ☐ absent\nDots/globules: ☐ absent ☑ regular ☐ irregular",
     (("pigment_network", "typical"), ("dots_and_globules", "regular"))),
    ("Regression structures: [ ] blue [x] white [ ] both", (("regression_structures", "white areas"),)),
    ("Veil: Yes [ ] No [x]", (("blue_whitish_veil", _ABSENT),)),
    ("Vessels: arborizing [ ] hairpin [ ] dotted [ ] none [X]", (("vascular_structures", _ABSENT),)),
    # guards: no box ticked, two ticked, or a word that is not one of the criterion's values: nothing
    ("Streaks: [ ] present [ ] absent", ()),
    ("Pigment network: [ ] typical [x] atypical [x] absent", ()),
    ("Streaks: [x] present [ ] absent", ()),
    ("Network: [x] not assessable [ ] typical", ()),
])
def test_a_forms_ticked_option_is_read(text, read):
    from monai_cir.data.report import read_by_rules

    assert read_by_rules(text) == read


_HL7_HEAD = "MSH|^~\\&|DERMCAM|CLINIC|EMR|HOSP|20261103101522||ORU^R01|MSG1|P|2.5.1\nPID|1||MRN1^^^H||DOE^JANE||19850214|F\n"


@pytest.mark.parametrize(("text", "read"), [
    # HL7 v2 OBX segments: each standing observation (status F, C) as "OBX-3's text: OBX-5's value"; a correction
    # replaces what it corrects, a preliminary or wrongly posted one is not read, several sub-IDs are several lesions
    (_HL7_HEAD + "OBX|1|CWE|PN^Pigment network^L||ATYP^Atypical^L|||A|||F\nOBX|2|CWE|BWV^Blue-whitish veil^L||N^Absent^HL70136|||N|||F",
     (("pigment_network", "atypical"), ("blue_whitish_veil", _ABSENT))),
    ("OBX|1|CWE|DG^Dots and globules^L||REG^Regular^L||||||F\nOBX|1|CWE|DG^Dots and globules^L||IRR^Irregular^L||||||C",
     (("dots_and_globules", "irregular"),)),
    ("OBX|1|CWE|BWV^Blue-whitish veil^L||Y^Present^HL70136|||A|||P\nOBX|2|CWE|PN^Pigment network^L||TYP^Typical^L||N|||F",
     (("pigment_network", "typical"),)),
    ("OBX|1|CWE|ST^Streaks^L||IRR^Irregular^L|||A|||F\nOBX|1|CWE|ST^Streaks^L||IRR^Irregular^L|||A|||W", ()),
    ("OBX|1|CWE|ST^Streaks^L|1|IRR^Irregular^L|||A|||F\nOBX|2|CWE|PN^Pigment network^L|2|TYP^Typical^L|||N|||F", ()),
    ("OBX|1|ST|VS^Vessels^L||Dotted vessels in clusters||||||F\nNTE|1||No network seen.",
     (("pigment_network", _ABSENT), ("vascular_structures", "dotted"))),
    # FHIR Observation JSON: its components' and its own values where its status stands, members' displays and notes
    ('{"resourceType":"Observation","status":"final","component":[{"code":{"text":"Pigment network"},"valueCodeableConcept":'
     '{"text":"atypical"}},{"code":{"text":"Blue-whitish veil"},"valueBoolean":true},{"code":{"text":"Regression structures"},'
     '"dataAbsentReason":{"text":"not assessed"}}]}', (("pigment_network", "atypical"), ("blue_whitish_veil", "present"))),
    ('{"resourceType":"Observation","status":"preliminary","component":[{"code":{"text":"Streaks"},"valueCodeableConcept":{"text":"irregular"}}]}', ()),
    ('{"resourceType":"Observation","status":"entered-in-error","valueString":"Irregular streaks."}', ()),
    ('{"resourceType":"Observation","status":"amended","valueString":"Dermoscopy: comma vessels, no streaks.",'
     '"hasMember":[{"display":"Regression: white scar-like areas"}]}',
     (("streaks", _ABSENT), ("regression_structures", "white areas"), ("vascular_structures", "comma"))),
])
def test_structured_messages_are_read_as_their_observations(text, read):
    """HL7 v2 and FHIR messages are read as the observations they carry (:func:`monai_cir.data.messages.message_text`):
    before, their criteria's names were refused as labels and nothing was read."""
    from monai_cir.data.report import read_by_rules

    assert read_by_rules(text) == read


def test_a_message_is_written_as_one_observation_a_line():
    from monai_cir.data.messages import message_text

    assert message_text(_HL7_HEAD + "OBX|1|CWE|PN^Pigment network^L||TYP^Typical^L|||N|||F\nNTE|1||Seen today.") == "Pigment network: Typical\nSeen today."
    assert message_text("Typical network, no streaks.") is None

def test_every_phrasing_is_matched_whole_by_the_factored_alternation():
    """The phrasings' alternation is factored by first word (:func:`_phrase_alternation`) and its groups are mapped
    back to phrasings by position: each phrasing, alone, must match whole and map to its own reading."""
    from monai_cir.data import report

    for phrase, reading in report._PHRASINGS.items():
        match = report._PHRASE_RE.match(phrase)
        assert match is not None and match.end() == len(phrase), phrase
        assert report._PHRASINGS[report._PHRASE_OF_GROUP[match.lastindex - 1]] == reading, phrase


@pytest.mark.parametrize(("text", "read"), [
    ("PN: typical, focally atypical", ()),
    ("D/G: regular and irregular", ()),
    ("regular D/G, some irregular", ()),
    ("PN typical / atypical", ()),
    ("pigm. diffuse irregular, localized regular; no streaks", (("streaks", _ABSENT),)),
    # a grade that starts the next finding's mention is that finding's
    ("atypical pigment network, irregular streaks", (("pigment_network", "atypical"), ("streaks", "irregular"))),
    ("PN atypical, streaks irregular. Regular D/G.", (("pigment_network", "atypical"), ("streaks", "irregular"), ("dots_and_globules", "regular"))),
])
def test_a_criterion_given_two_grades_is_not_read(text, read):
    """"PN: typical, focally atypical" read a typical network: the first grade, the second left out. A criterion the
    text gives a second grade with no noun of its own is read neither way."""
    from monai_cir.data.report import read_by_rules

    assert read_by_rules(text) == read


def test_text_use_notice_names_the_findings_read_and_the_weight():
    """The clinician who wrote five findings and sees one read knows the other four were not."""
    from monai_cir.data.report import recognised_findings, text_use_notice

    text = "Dermoscopy: atypical pigment network; radial streaming; regressive areas; blue-grey veil-like area"
    findings = recognised_findings(text)
    assert findings == ("pigment_network",)
    partial = text_use_notice(0.2, findings)
    assert partial.startswith("findings read in the query text: 1 of the 7 checklist findings (pigment network), so it counted for 20%")
    assert "diagnosis prior" not in partial
    # with a diagnosis prior the same share also weighs the diagnosis in the order: "the image alone for the rest" is not all
    assert text_use_notice(0.2, findings, prior=True).endswith(
        "the same share weighs the diagnosis these findings point to in the order (the diagnosis prior), which can decide the "
        "order even at a small share")
    assert "diagnosis prior" not in text_use_notice(1.0, findings, prior=True)
    full = text_use_notice(1.0, ("pigment_network", "streaks", "pigmentation", "regression_structures", "dots_and_globules"))
    assert full == ("findings read in the query text: 5 of the 7 checklist findings (pigment network, streaks, pigmentation, "
                    "regression structures, dots and globules); the text counted fully in the query")
    # as the app says it: the findings as read, so a clinician sees "BWV -" taken as absent
    from monai_cir.data.report import read_findings

    assert text_use_notice(0.6, read_findings("7PCL: PN -, streaks -, BWV -")).startswith(
        "findings read in the query text: 3 of the 7 checklist findings (no pigment network, no streaks, no blue-whitish veil), so it counted for 60%")


def test_reader_patterns_do_not_depend_on_the_hash_seed() -> None:
    # Several alternations are built from sets; with ties of length left in set order, the compiled patterns (and so
    # what a profile or a bisect sees) changed from one process to the next
    import os
    import subprocess
    import sys

    script = ("import hashlib, re, monai_cir.data.report as r; print(hashlib.sha1('\\n'.join(v.pattern for _, v in "
              "sorted(vars(r).items()) if isinstance(v, re.Pattern)).encode()).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONHASHSEED": seed},
                              capture_output=True, text=True, check=True).stdout for seed in ("0", "1", "2")}
    assert len(digests) == 1, digests


@pytest.mark.parametrize(("text", "denied", "read"), [
    ("I cannot see a blue-whitish veil.", "blue_whitish_veil", ()),
    ("cannot see BWV", "blue_whitish_veil", ()),
    ("I cannot see any BWV", "blue_whitish_veil", (("blue_whitish_veil", _ABSENT),)),
    ("cannot identify BWV", "blue_whitish_veil", ()),
    ("BWV cannot be seen", "blue_whitish_veil", (("blue_whitish_veil", _ABSENT),)),
    ("I was unable to identify a blue-white veil.", "blue_whitish_veil", ()),
    ("Unable to see any streaks or BWV.", "blue_whitish_veil", (("streaks", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    ("We cannot appreciate a blue-white veil", "blue_whitish_veil", ()),
    ("There was nothing to suggest a blue-white veil.", "blue_whitish_veil", ()),
    ("Nothing to suggest blue-whitish veil or regression.", "blue_whitish_veil", ()),
    ("The dermoscopy failed to show a blue-white veil.", "blue_whitish_veil", ()),
    ("fails to show BWV", "blue_whitish_veil", ()),
    ("Dermoscopy excludes BWV", "blue_whitish_veil", ()),
    ("Atypical network; free from BWV and streaks", "blue_whitish_veil",
     (("pigment_network", "atypical"), ("streaks", _ABSENT), ("blue_whitish_veil", _ABSENT))),
    ("Atypical network. BWV undetected.", "blue_whitish_veil", (("pigment_network", "atypical"), ("blue_whitish_veil", _ABSENT))),
    ("Without any evidence for BWV", "blue_whitish_veil", (("blue_whitish_veil", _ABSENT),)),
    ("zero BWV", "blue_whitish_veil", (("blue_whitish_veil", _ABSENT),)),
    ("cant see BWV", "blue_whitish_veil", ()),
    ("nothing like BWV", "blue_whitish_veil", ()),
    # guards: the words deny only their own clause, and a doubt stays unread
    ("irregular streaks; cannot exclude BWV", "blue_whitish_veil", (("streaks", "irregular"),)),
    ("BWV present; unable to assess streaks", "streaks", (("blue_whitish_veil", "present"),)),
    # ... and the failing or the "zero" of something else in the clause denies nothing (the diff review: these lost the veil)
    ("Lesion failed to respond to cryotherapy and shows blue-whitish veil.", "streaks", (("blue_whitish_veil", "present"),)),
    ("Blue-whitish veil present with zero regression structures.", "streaks",
     (("regression_structures", _ABSENT), ("blue_whitish_veil", "present"))),
    ("Blue-whitish veil present though patient cannot recall duration", "streaks", (("blue_whitish_veil", "present"),)),
    ("Blue-whitish veil present and lesion free from ulceration", "streaks", (("blue_whitish_veil", "present"),)),
    ("Blue-whitish veil which the patient failed to notice", "streaks", (("blue_whitish_veil", "present"),)),
])
def test_review_v_a_veil_the_writer_could_not_see_is_never_read_present(text, denied, read):
    """The reader review of 2026-12-08 (v): "I cannot see a blue-whitish veil", "unable to identify", "nothing to suggest",
    "failed to show", "free from", "undetected", "excludes" read the veil PRESENT, and the learned check kept it (0.67 to
    0.91), so the prior pulled the ranking to melanoma, the diagnosis the clinician ruled out. Rules and check, as the app
    reads: the denied finding is absent or not read, never present."""
    from monai_cir.data.report import read_findings

    found = read_findings(text)
    assert found == read
    assert all(value == _ABSENT for criterion, value in found if criterion == denied)
