"""How often the findings reader reads a finding a clinician's text does not state -> ``bench/results/reader_safety.{json,md}``.

:func:`monai_cir.data.report.read_findings` reads only words the training texts write, and must never read a finding
the text denies, doubts, gives to the past, a plan, another lesion or person, or leaves blank: such a reading is
composed into the query and weighs the diagnosis prior (a "BWV" read present pushes the answer towards melanoma).
This benchmark runs the reader over clinicians' phrasings written for that review (hand-written texts by pattern:
negation forms, hedges, history, plans, check-box templates, tables, 7-point scores, multiple lesions...; and
generated ones: risky contexts around nine present or graded phrasings) and counts the texts with a wrong reading:
a (criterion, value) read that the case does not allow (most allow nothing; a denial may be read absent). A text
left unread is not counted there: a missing reading is the safe failure (the query falls back to the image). The
other side, ``stated``: texts that state findings of the lesion in front of the clinician, each to be read exactly
(a reader that refuses too much reads these short). The reader's rules were written from these texts' wrong
readings, so the figures say what the rules cover, not how they generalise to texts nobody has looked at.

    python bench/reader_safety.py [--out bench/results/reader_safety.json] [--list N]

The texts are synthetic (no record of any collection); the figures are what the reader does on them, pattern by
pattern, with the wrong readings listed (``--list``, per pattern, default 5) so the next rule has its cases.
``reviewed``: the texts reviews of the reader wrote (``bench/reader_texts/reviewed.json``), scored both ways: the
texts read with a finding they do not state, and the stated findings read; a held-out review (no rule written from it)
measures generalisation. Each review is also scored by the rules alone (``read_by_rules``, without the learned check
of :mod:`monai_cir.data.finding_check`), which says what the check adds on writing it was not trained on.
"""

from __future__ import annotations

import argparse
import collections
import sys
from collections.abc import Sequence
from pathlib import Path

from _common import begin, write_results

REPO = Path(__file__).resolve().parents[1]
OUT_JSON = REPO / "bench" / "results" / "reader_safety.json"
# texts two reviews wrote, each with the findings it states and the further readings it allows (a data file)
REVIEWED = REPO / "bench" / "reader_texts" / "reviewed.json"

A = "absent"
BWV, ST, PN, DG = "blue_whitish_veil", "streaks", "pigment_network", "dots_and_globules"
RG, PG, VS = "regression_structures", "pigmentation", "vascular_structures"


def hand_written() -> list[tuple[str, str, set]]:
    """``(pattern, text, allowed readings)``, written by hand."""
    cases: list[tuple[str, str, set]] = []

    def c(pat: str, text: str, *allowed: tuple[str, str]) -> None:
        cases.append((pat, text, set(allowed)))

    # conditional / instruction
    for t in ["If BWV develops, excise.", "if BWV appears, refer", "Excise if BWV present.", "Re-image; excise if irregular streaks appear.",
              "Monitor for BWV.", "watch for irregular streaks", "Look for BWV at next visit.", "Check for BWV", "Assess for BWV next time",
              "should BWV develop, biopsy", "in case of BWV, excise", "unless BWV is seen", "to exclude BWV", "Re-check streaks in 3 months",
              "Please comment on BWV.", "Please assess pigment network.", "Evaluate for atypical PN.", "Any BWV?", "Is there BWV",
              "Review for new irregular streaks.", "Rescan in 3 months to look for atypical pigment network.",
              "Features to watch: BWV, irregular streaks.", "Criteria for excision: BWV present.", "If atypical PN, excise."]:
        c('conditional/instruction', t)
    # history/prior
    for t in ["Previous biopsy showed BWV.", "Prior dermoscopy: BWV present.", "History: BWV on previous exam, now resolved.",
              "Last visit: atypical PN. Today: ", "Previously irregular streaks, now gone.", "BWV previously noted, no longer visible.",
              "Formerly atypical pigment network.", "Had BWV in 2019.", "Old images showed irregular streaks.",
              "In 2021 there was BWV.", "Initially BWV present, resolved.", "BWV at baseline, resolved at follow-up",
              "Referral letter mentions BWV.", "GP reported BWV.", "Patient reports previous lesion with BWV."]:
        c('history/prior', t)
    # comparison/change
    for t in ["BWV less prominent than before.", "BWV resolved.", "BWV has disappeared.", "BWV regressed", "BWV no longer seen",
              "BWV no longer present.", "streaks gone", "irregular streaks resolved", "BWV faded", "BWV decreased", "BWV less evident",
              "Resolution of BWV.", "BWV not seen anymore", "Disappearance of BWV", "BWV vanished", "BWV cleared"]:
        c('resolved/comparison', t)
    c('resolved/comparison', "BWV more prominent than before.", (BWV,'present'))
    # family / other lesion / attribution
    for t in ["Family history of melanoma with BWV.", "Mother's lesion had BWV.", "Sibling lesion: BWV present.",
              "Lesion 1: BWV; lesion 2: no BWV", "lesion A: BWV +; lesion B: BWV -", "Adjacent lesion shows BWV.", "BWV in the neighbouring naevus",
              "Other lesion on the back has BWV.", "Contralateral lesion: atypical PN.", "BWV seen in the satellite lesion only",
              "Index lesion without BWV; adjacent lesion with BWV."]:
        c('other lesion/attribution', t)
    # negation forms
    for t in ["BWV not present", "BWV: not present", "BWV: none", "BWV: nil", "BWV: N", "BWV: n", "BWV: No", "BWV: neg", "BWV: negative",
              "BWV: 0", "BWV 0", "BWV: x", "BWV: -", "BWV: ✗", "BWV ✗", "BWV: ×", "BWV : no", "BWV - no", "BWV — no", "BWV -- none",
              "BWV (-)", "BWV(-)", "BWV (neg)", "BWV (absent)", "BWV [-]", "BWV: (-)", "BWV (no)", "BWV=no", "BWV = 0", "BWV= -",
              "BWV: not seen", "BWV not seen", "BWV not observed", "BWV not identified", "BWV not detected", "BWV not visualised",
              "BWV not appreciated", "BWV not evident", "BWV not found", "BWV is not seen", "BWV isn't seen", "BWV wasn't seen",
              "BWV unseen", "BWV nonexistent", "BWV non-existent", "BWV: None seen", "There is no BWV", "There was no BWV",
              "no sign of BWV", "No features of BWV", "no obvious BWV", "no definite BWV", "No trace of BWV", "no hint of BWV",
              "no clear BWV", "no real BWV", "no true BWV", "no convincing BWV", "no appreciable BWV", "no significant BWV", "no frank BWV",
              "no suggestion of BWV", "without signs of BWV", "w/o BWV", "w/o streaks", "s/p BWV", "ø BWV", "Ø BWV", "0 BWV", "BWV Ø",
              "BWV: ø", "BWV not", "No BWV.", "not BWV", "BWV denied", "BWV absent", "Absent BWV", "BWV lacking", "devoid of BWV",
              "BWV, absent", "BWV - absent", "BWV – absent", "BWV—absent", "BWV (not present)", "BWV: not present", "BWV not really seen",
              "hardly any BWV", "barely any BWV", "minimal if any BWV", "BWV neither", "BWV nor streaks", "Never BWV", "BWV never seen",
              "BWV: nope", "BWV not demonstrable", "BWV: undetectable", "BWV undetectable", "BWV invisible", "BWV - not seen",
              "Streaks: not applicable", "BWV not applicable", "BWV: N/A", "BWV: NA", "BWV: n.a.", "BWV: na.", "BWV: NR", "BWV: ND", "BWV: nd",
              "BWV: NS", "BWV ND", "BWV: not done", "BWV: -/-", "BWV: - ", "BWV --", "BWV: no.", "BWV=N", "BWV:N", "BWV N",
              "BWV (N)", "BWV Y/N: N", "BWV (Y/N): N", "BWV yes/no: no", "BWV? No", "BWV? no.", "BWV - N", "BWV none", "BWV: nil seen",
              "BWV nil", "BWV neg.", "BWV negative", "BWV -neg", "BWV(neg)", "BWV: absent.", "BWV, not seen", "BWV; not seen",
              "BWV: 0/1", "BWV score 0", "BWV: 0 points", "BWV (0 points)", "BWV 0 pts", "BWV (0)", "BWV [0]", "BWV – 0",
              "BWV: false", "BWV: False", "BWV = false", "BWV: F", "BWV: no evidence", "BWV – none"]:
        c('negation-form', t, (BWV, A))
    # grades negated
    for t in ["PN: not atypical", "PN not atypical", "streaks not irregular", "irregular streaks: no", "atypical PN: N", "atypical PN: absent",
              "irregular streaks - absent", "irregular streaks absent", "atypical PN absent", "atypical PN: none", "no atypical PN", "non-atypical PN",
              "PN atypical: no", "PN atypical - no", "PN: atypical? no", "irregular D/G: 0", "irregular D/G 0", "atypical PN 0",
              "atypical PN (-)", "irreg. D/G -ve", "atypical PN not seen"]:
        c('negated-grade', t, (PN,A),(ST,A),(DG,A))
    # checkbox templates
    for t in ["[x] BWV [ ] streaks", "[ ] BWV [x] streaks", "[ ] BWV", "[ ] atypical PN", "☐ BWV ☑ streaks", "☐ BWV", "□ BWV", "( ) BWV",
              "BWV [ ]", "BWV: [ ]", "BWV: [ ] yes [x] no", "BWV: [x] no [ ] yes", "BWV ☐", "BWV: ☐", "BWV yes [ ] no [x]", "BWV: Y [ ] N [x]",
              "BWV: present [ ] absent [x]", "BWV  present ☐  absent ☒", "[ ] BWV present", "[ ] irregular streaks", "☐ irregular streaks ☐ regular streaks",
              "BWV: present / absent", "BWV: present/absent", "BWV present/absent", "BWV: yes/no", "BWV (present/absent):", "BWV present / absent: absent",
              "BWV: present or absent", "streaks: regular / irregular / absent", "PN: typical/atypical/absent", "PN (typical / atypical):",
              "7PCL: [ ] atyp. PN [ ] BWV [x] irreg. streaks", "- [ ] BWV\n- [x] irregular streaks", "* BWV: \n* streaks: irregular",
              "BWV: ___", "BWV: ____ ", "BWV: ...", "BWV: \nstreaks: irregular", "BWV:\n", "BWV: (yes/no)", "BWV: Y/N", "BWV Y/N", "BWV (Y/N)",
              "atypical PN: Y/N", "BWV: present/absent (circle)", "BWV: present | absent", "BWV present? ", "BWV present: no", "BWV present: N",
              "BWV present: ☐", "BWV present - no", "BWV present: false", "BWV present (no)", "BWV present = 0", "BWV present: 0"]:
        # (a form's option ticked states what it says, as the reviews' labelling guide reads a form,
        # bench/reader_texts/LABELLING.md, and as "[x] BWV" below: this set, written before the guide, counted the veil
        # read from a ticked "no" or a ticked "BWV" beside an unticked one as wrong)
        ticked_denial = t in ("BWV: [ ] yes [x] no", "BWV: [x] no [ ] yes", "BWV yes [ ] no [x]", "BWV: Y [ ] N [x]",
                              "BWV: present [ ] absent [x]", "BWV  present ☐  absent ☒")
        ticked = [(BWV, A)] if ticked_denial else [(BWV, 'present')] if t == "[x] BWV [ ] streaks" else []
        c('checkbox/template', t, (ST,'irregular'), *ticked)
    for t in ["[x] BWV", "☑ BWV", "☒ BWV", "BWV [x]", "BWV: [x]", "BWV ✓", "BWV: ✓", "BWV ✔"]:
        c('checkbox/template', t, (BWV,'present'))
    # hedges
    for t in ["BWV equivocal", "subtle BWV?", "questionable BWV", "possibly BWV", "maybe BWV", "BWV maybe", "perhaps BWV", "BWV-like area",
              "BWV-like structure", "BWV like area", "?? BWV", "BWV ??", "BWV (?)", "BWV (query)", "BWV - query", "query BWV", "Q BWV", "?BWV vs. regression",
              "could be BWV", "might be BWV", "may be BWV", "may represent BWV", "could represent BWV", "ddx BWV vs regression", "BWV vs regression",
              "BWV or regression", "BWV versus regression structures", "BWV / regression?", "pseudo-BWV", "pseudo BWV", "pseudoBWV", "mimicking BWV",
              "resembling BWV", "resembles BWV", "BWV-mimic", "BWV mimic", "BWV-ish", "something like BWV", "hint of BWV", "borderline BWV",
              "faint BWV?", "BWV vs artefact", "BWV (artefact?)", "BWV probably artefact", "BWV likely artefact", "BWV indeterminate",
              "BWV uncertain", "BWV unsure", "not sure about BWV", "not certain BWV", "unsure re BWV", "BWV: unsure", "BWV: ?", "BWV: (?)",
              "BWV: +/-", "BWV +/-", "BWV ±", "BWV: ±", "BWV (+/-)", "BWV (±)", "BWV +?", "BWV ?+", "BWV: +?", "BWV +-", "BWV -/+",
              "BWV: equivocal", "BWV: borderline", "BWV: indeterminate", "BWV: can't tell", "BWV: cannot tell", "BWV: difficult to assess",
              "BWV difficult to assess", "BWV hard to say", "BWV hard to assess", "BWV: not sure", "BWV inconclusive", "BWV: inconclusive",
              "BWV vs. blue-gray areas", "differential: BWV or blue nevus", "favour artefact over BWV", "favor regression over BWV",
              "rather regression than BWV", "more likely regression than BWV", "regression rather than BWV", "BWV? regression?",
              "atypical PN?", "? atypical PN", "atypical? PN", "PN atypical (?)", "PN possibly atypical", "PN ?atypical", "PN: ?atypical",
              "PN: atypical vs typical", "PN: typical/atypical?", "PN borderline atypical", "equivocally atypical PN", "slightly atypical PN?",
              "Streaks: ?irregular", "streaks ? irregular", "streaks irregular?", "streaks: irreg?", "streaks - irregular ?",
              "BWV cannot be confirmed", "BWV not confirmed", "BWV unconfirmed", "BWV to be confirmed", "BWV TBC", "BWV (tbc)",
              "BWV pending", "BWV: pending", "BWV awaiting review", "BWV - to be reviewed"]:
        c('hedge', t)
    # attribution / negated elsewhere
    for t in ["blue area not BWV", "blue structureless area, not BWV", "blue-grey area rather than BWV", "blue area, but no BWV",
              "blue area (not true BWV)", "not a BWV", "this is not BWV", "It is not BWV but regression", "not BWV but blue-white structures",
              "Blue colour due to tattoo, not BWV", "Bluish area consistent with blue nevus rather than BWV", "grey areas instead of BWV",
              "in the absence of BWV", "in absence of BWV", "absent: BWV, streaks", "Absent: BWV", "Negative: BWV, streaks", "Negatives: BWV",
              "Not seen: BWV, streaks", "Not present: BWV", "None of: BWV, streaks", "Absent findings: BWV, streaks, PN", "Absent - BWV, streaks",
              "absent features: BWV; streaks", "Excluded: BWV", "Ruled out: BWV", "Missing: BWV"]:
        c('attribution/negated header', t, (BWV,A),(ST,A),(PN,A))
    # multiple lesions
    for t in ["Lesion 1: BWV +. Lesion 2: BWV -.", "L1: BWV present; L2: no BWV", "Left: BWV; right: none", "Lesion A has BWV, lesion B does not.",
              "Lesion 1 atypical PN; lesion 2 typical PN", "Back lesion: atypical PN. Arm lesion: typical PN.", "lesion 1: BWV; lesion 2: no BWV"]:
        c('multiple lesions', t)
    # abbreviations
    for t in ["BWV (-ve)", "BWV: -ve", "BWV -ve.", "BWV –ve", "BWV - ve", "BWV ve-", "BWV neg", "BWV: neg.", "BWV N/A", "BWV: n/a", "PN: n/a",
              "BWV: NAD", "NAD", "BWV NAD", "BWV: nad", "BWV WNL", "BWV: WNL", "PN WNL", "PN: WNL", "streaks: nil", "streaks: Nil", "Streaks nil.",
              "streaks: none seen", "streaks: 0", "streaks 0", "streaks: none", "D/G: none", "D/G: 0", "D/G none", "pigm.: none", "pigm. none",
              "pigm. 0", "regression: none", "regression: 0", "regression 0", "vessels: none", "vessels none", "vessels 0", "vessels: nil",
              "PN: none", "PN none", "PN 0", "PN: 0", "BWV 0/1", "PN: -", "PN:-", "PN : -", "PN: –", "PN -", "PN –", "PN —", "PN — absent"]:
        c('abbrev-negation', t, (BWV,A),(ST,A),(PN,A),(DG,A),(PG,A),(RG,A),(VS,A))
    # contexts / past-tense hedges / time
    for t in ["BWV was present at last visit", "BWV was noted previously", "BWV (old)", "BWV (prior)", "BWV (2019)", "BWV — historic",
              "h/o BWV", "hx BWV", "Hx: BWV", "PMH: lesion with BWV", "previous BWV", "prev. BWV", "earlier BWV", "past BWV", "former BWV",
              "Known BWV from prior exam, not seen today", "BWV seen on previous dermoscopy, absent today", "today no BWV (previously present)",
              "BWV (previously)", "old report: atypical PN", "Compared to 2020: BWV gone", "vs prior: BWV resolved", "Interval loss of BWV",
              "new BWV compared to before", "new BWV", "newly BWV"]:
        allowed = {(BWV,'present')} if t in ("new BWV compared to before","new BWV","newly BWV") else {(BWV,A)} if "no BWV" in t else set()
        cases.append(('history/prior', t, allowed))
    # signs after nouns in other forms
    for t in ["BWV: -, streaks: -", "BWV- / streaks-", "BWV (−)", "BWV(–)", "BWV –", "BWV ‒", "BWV ⁻", "BWV˗", "BWV ‐", "BWV: –",
              "BWV - ", "BWV -.", "BWV -;", "BWV - (absent)", "BWV +/−", "BWV ±", "BWV +−", "BWV -/+", "BWV (+)", "BWV(+)", "BWV [+]",
              "BWV ++", "BWV +++", "BWV (++)", "BWV 1+", "BWV: 1", "BWV 1", "BWV = 1", "BWV 2", "BWV: +2", "BWV (+2)"]:
        c('signs', t, (BWV,A) if ('-' in t or '−' in t or '–' in t or '‒' in t or '⁻' in t or '˗' in t or '‐' in t) and '+' not in t else (BWV,'present'))
    for t in ["7PCL score 3 (BWV 2, atyp PN 1)", "7-point score: 0 (no BWV, no atypical PN)", "7PCL: 0", "7PCL score 0", "7PCL total 1: irregular streaks",
              "7-point checklist: BWV (2 points)", "Major criteria: atypical PN, BWV; minor: none", "Major criteria: none. Minor: irregular streaks",
              "Major: none (atypical PN, BWV, atypical vascular pattern all absent)", "Major criteria absent: atypical PN, BWV",
              "Minor criteria: none of irregular streaks, irregular D/G, regression"]:
        c('7PCL scoring', t, (BWV,A),(PN,A),(ST,'irregular'))
    # other negations
    for t in ["BWV: no", "Blue-whitish veil: no", "Streaks: no.", "streaks: No", "streaks:no", "streaks - no", "streaks no", "streaks None",
              "Streaks: not applicable", "streaks: n.a.", "streaks: NA", "streaks: not seen", "streaks not visible", "streaks invisible",
              "streaks: negative", "Streaks: Negative", "streaks negative", "streaks (negative)", "streaks - negative", "streaks: neg",
              "no streaks seen", "no streaks observed", "no streaks visualized", "no streaks noted", "streaks: none noted",
              "PN absent", "PN: absent", "absent PN", "regression absent", "vessels absent", "D/G absent",
              "Vessels: not visible", "No vessels visible", "vessels not seen", "dots and globules absent", "no dots or globules",
              "no dots/globules", "no dots nor globules", "dots: absent; globules: absent", "no dots, globules", "D/G: n",
              "regression: no", "regression - no", "Regression: No.", "regression not seen", "no regression seen"]:
        c('other negation', t, (BWV,A),(ST,A),(PN,A),(RG,A),(VS,A),(DG,A))
    # negation scope beyond clause: "no" applies to long list with "and"
    for t in ["No BWV, streaks, or atypical network.", "Neither BWV nor streaks.", "neither BWV, nor streaks", "BWV and streaks absent", "BWV and streaks not seen",
              "BWV, streaks: absent", "BWV/streaks: absent", "BWV, streaks absent", "BWV / streaks / PN: none", "BWV and streaks: no", "BWV & streaks: none",
              "BWV + streaks: absent", "BWV or streaks: not seen", "BWV, streaks and PN all absent", "BWV, streaks, regression - absent", "BWV, streaks -",
              "BWV; streaks: absent", "BWV streaks: absent", "BWV, streaks, D/G: -", "BWV & streaks -", "BWV and streaks -",
              "absent BWV and streaks", "BWV as well as streaks absent", "Both BWV and streaks absent", "BWV, irregular streaks: none",
              "atypical PN and BWV absent", "atypical PN or BWV not seen", "atypical PN, BWV: no"]:
        c('plural negation after list', t, (BWV,A),(ST,A),(PN,A),(RG,A),(DG,A))
    # parenthetical
    for t in ["BWV (absent)", "BWV (none)", "BWV (not seen)", "BWV (no)", "BWV (0)", "streaks (absent), BWV (absent)", "atypical PN (absent)",
              "BWV [absent]", "BWV {absent}", "BWV <absent>", "BWV — none", "BWV … none", "BWV ... no", "BWV → absent", "BWV -> absent", "BWV => no",
              "BWV -> none", "BWV > absent", "BWV -> 0"]:
        c('parenthetical/arrow', t, (BWV,A),(ST,A),(PN,A))
    # "with(out)" scoping
    for t in ["lesion without BWV and streaks", "without streaks and BWV", "without streaks and with BWV", "without BWV and irregular streaks",
              "lacking streaks, BWV", "free of BWV, streaks", "no streaks; BWV", "without streaks; BWV", "Streaks absent, BWV", "no streaks. BWV.",
              "BWV not seen, streaks", "no sign of streaks, BWV or PN", "no evidence of atypical PN, streaks or BWV", "absence of streaks or BWV", "negative for streaks or BWV",
              "no streaks, no BWV", "no streaks or BWV or PN", "no streaks, BWV, PN", "not streaks or BWV", "without any streaks or BWV", "no obvious streaks or BWV",
              "no streaks, BWV nor PN", "no streaks / BWV / PN", "no streaks or clear BWV", "no streaks or obvious BWV", "no streaks or definite BWV",
              "no streaks or any BWV", "no streaks, or BWV", "no streaks or typical PN", "no streaks but BWV", "no streaks, but BWV", "no streaks; yes BWV"]:
        allowed = {(ST,A),(BWV,A),(PN,A)}
        if t in ("without streaks and with BWV","no streaks but BWV","no streaks, but BWV","no streaks; yes BWV","no streaks; BWV","without streaks; BWV","Streaks absent, BWV","no streaks. BWV.","BWV not seen, streaks"):
            allowed = {(ST,A),(BWV,'present'),(BWV,A) if t.startswith("BWV not") else (BWV,'present'),(ST,'present')}
        if t=="BWV not seen, streaks": allowed={(BWV,A)}
        if t=="no streaks or typical PN": allowed={(ST,A)}
        if t=="without BWV and irregular streaks": allowed={(BWV,A),(ST,'irregular')}
        cases.append(('negated list scope', t, allowed))
    # quotes / descriptive non-lesion
    for t in ["BWV is a major criterion", "BWV scores 2 points", "The 7PCL includes BWV, atypical PN and atypical vessels.", "Teaching note: BWV indicates melanoma",
              "BWV = blue-whitish veil", "Abbreviations: BWV, blue-whitish veil; PN, pigment network", "Key: PN pigment network, BWV blue-whitish veil",
              "Template: PN/streaks/BWV", "Checklist items: atypical PN, BWV, atypical vessels, irregular streaks, irregular D/G, irregular pigm., regression",
              "Assessed: PN, streaks, BWV", "Criteria evaluated: BWV, streaks", "BWV: see image 3", "BWV: see above", "BWV: as before", "BWV: unchanged",
              "BWV unchanged", "BWV: stable", "BWV stable", "BWV: same", "streaks: as previous", "BWV: ditto", "BWV — idem",
              "Dermoscopist to assess BWV", "BWV not commented", "BWV not mentioned in referral", "BWV not reported", "BWV: not recorded",
              "BWV not documented", "BWV: not described", "BWV: ---", "BWV: -- ", "BWV: --"]:
        allowed=set()
        if t=="BWV: ---" or t.startswith("BWV: --"): allowed={(BWV,A)}
        c('meta/non-finding mention', t, *allowed)
    # spelling variants of grades
    for t in ["a-typical PN", "non typical PN", "atypical-ish PN", "un-typical PN", "PN: not typical", "PN not typical", "PN non-typical", "atypical PN-like",
              "PN typical-ish", "PN: typical, focally atypical", "PN typical centrally, atypical at periphery", "mostly typical PN with atypical areas",
              "PN: typical (previously atypical)", "PN: atypical (previously typical)", "irregular streaks (previously regular)",
              "regular streaks in part, irregular elsewhere", "streaks regular > irregular", "D/G: regular and irregular",
              "pigm. diffuse irregular, localized regular", "regular D/G, some irregular", "PN typical / atypical", "PN typical→atypical"]:
        c('mixed/changed grade', t)
    return cases


def generated() -> list[tuple[str, str, set]]:
    """``(pattern, text, allowed readings)``: risky contexts around present or graded phrasings."""
    cases: list[tuple[str, str, set]] = []

    def c(pat: str, text: str, *allowed: tuple[str, str]) -> None:
        cases.append((pat, text, set(allowed)))

    # section headers
    for t in ["Present: atypical PN\nAbsent: streaks, BWV", "Absent: streaks, BWV", "Not seen: streaks, BWV", "Negative for: streaks, BWV",
              "Absent features:\n- streaks\n- BWV", "Absent:\n- BWV\n- irregular streaks", "Negative findings: streaks, BWV.", "Not present: streaks; BWV",
              "Absent: streaks; BWV; atypical PN", "Features absent: streaks, BWV", "Pertinent negatives: streaks, BWV, atypical PN",
              "Negatives - BWV, irregular streaks", "None of the following: BWV, irregular streaks", "No:\n- BWV\n- streaks", "Absent\nBWV\nstreaks",
              "Excluded: streaks, BWV", "Not identified: streaks, BWV, atypical PN", "Findings NOT present: BWV",
              "7PCL negative for: atypical PN, BWV", "No major criteria (atypical PN, BWV)", "No major criteria: atypical PN, BWV, atypical vessels"]:
        c('negative section header', t, (ST,A),(BWV,A),(PN,A),(PN,'atypical'))  # PN atypical allowed only in first
    # tables
    for t in ["BWV\tN", "BWV\tno", "BWV | No", "BWV | 0", "| BWV | - |", "| BWV | absent |", "BWV    no", "BWV    -", "BWV\t-", "BWV ... absent",
              "BWV........no", "BWV: \t no", "Criterion | Present\nBWV | No\nstreaks | No", "BWV   N\nstreaks   N", "BWV  0\nPN  0",
              "BWV:\nabsent", "BWV:\n absent", "BWV:\n- absent", "Blue-whitish veil\nAbsent", "Blue-whitish veil\n  No"]:
        c('table/column layout', t, (BWV,A),(ST,A),(PN,A))
    # cross product: contexts x phrasings that read present/graded
    present_phr = ["BWV", "blue-whitish veil", "atypical PN", "atyp. PN", "irregular streaks", "irregular D/G", "regression (blue areas)", "dotted vessels", "pigm. diffuse irregular"]
    ctx = {
     'history': ["previous {}", "h/o {}", "{} previously", "prior exam showed {}", "{} on last visit", "{} (prior)", "{} at baseline", "had {} before",
                 "{} in 2019, now resolved", "{} resolved", "{} has resolved", "{} disappeared", "{} no longer visible", "{} now gone",
                 "{} seen before, now absent", "{}, now resolved", "{}; since resolved", "{} - resolved", "{} (resolved)"],
     'conditional': ["if {}, excise", "excise if {}", "monitor for {}", "watch for {}", "look for {}", "check for {}", "in case of {}", "should {} develop",
                     "unless {}", "when {} appears, refer", "re-image for {}", "new {} would prompt excision", "{} would prompt excision", "refer if {} develops"],
     'hedge': ["maybe {}", "perhaps {}", "could be {}", "may be {}", "might be {}", "may represent {}", "{} vs regression", "{} versus artefact",
               "{} or artefact", "{}-like", "{}-like area", "{} like", "pseudo {}", "mimicking {}", "resembling {}", "hint of {}", "borderline {}", "subtle {}?",
               "{} (tbc)", "{} unconfirmed", "{} not confirmed", "{} ±", "{} (±)", "{} (+/-)", "{}: ±", "rather than {}", "instead of {}", "not typical {}",
               "{} vs. not", "query {}", "? {}", "{} ?", "equivocal {}", "{} equivocal", "{}, equivocal", "{} - equivocal", "{}, possibly", "{}, uncertain",
               "{}; uncertain", "{}, ?", "{} - ?", "{}, questionable", "{} (questionable)", "{} (possible)", "{} (doubtful)", "{}, doubtful"],
     'neg-after-comma': ["{}, absent", "{}, not seen", "{}; not seen", "{}: - ", "{} (-)", "{}(-)", "{} [-]", "{} (0)", "{} 0", "{} - none", "{}, none",
                         "{}, no", "{}: N", "{} N", "{} (N)", "{} ✗", "{} ✘", "{} x", "{} ø", "{} never seen", "{} isn't seen", "{} wasn't seen", "{} isn't present", "{} aren't seen",
                         "{} not really", "{} denied", "{} unseen", "{} non-existent", "{} invisible", "w/o {}", "devoid of {}", "hardly any {}", "barely any {}",
                         "{} (absent)", "{}, negative", "{}. Absent.", "{} — absent", "{} ... no", "{} -> absent", "{}: absent?", "{}:\nabsent", "{}\tno"],
     'checkbox': ["[ ] {}", "[  ] {}", "☐ {}", "□ {}", "( ) {}", "{} [ ]", "{} ☐", "{}: [ ]", "{} Y/N", "{} (Y/N)", "{}: Y / N", "{}:", "{}:\n", "{}: ___", "{}: ...",
                  "{} - ", "{} present/absent", "{}: present/absent", "{} yes/no"],
     'other lesion': ["adjacent lesion shows {}", "{} in the other lesion", "lesion 2: {}", "other naevus with {}", "mother's melanoma had {}",
                      "{} in neighbouring lesion", "satellite lesion: {}", "{} on the contralateral lesion", "family hx: {}"],
     'meta': ["{} is a major criterion", "features to watch: {}", "assessed: {}", "criteria evaluated: {}", "template: {}", "please comment on {}",
              "dermoscopist to assess {}", "{} not assessed by me", "{} not commented on", "{} not reported", "{}: not recorded", "{}: see image"],
    }
    for pat, tmpls in ctx.items():
        for tm in tmpls:
            for p in present_phr:
                t = tm.format(p)
                allowed = set()
                if pat == 'neg-after-comma':
                    allowed = {(k,A) for k in (BWV,ST,PN,DG,RG,VS,PG)}
                c(pat, t, *allowed)
    return cases


def stated() -> list[tuple[str, str, tuple]]:
    """``(pattern, text, the reading expected)``: findings a clinician states of the lesion in front of them, in training
    words and around them (a reader that refuses too much reads these short: the query falls back to the image)."""
    P, IRR, ATY = "present", "irregular", "atypical"
    return [("stated", t, tuple(sorted(r, key=lambda f: _ORDER.index(f[0])))) for t, r in [
        ("Irregular streaks were seen. BWV is present.", [(ST, IRR), (BWV, P)]),
        ("The lesion shows atypical PN and BWV", [(PN, ATY), (BWV, P)]),
        ("7PCL criteria: atyp. PN, BWV +", [(PN, ATY), (BWV, P)]),
        ("Dermoscopy: atypical pigment network, irregular streaks, BWV.", [(PN, ATY), (ST, IRR), (BWV, P)]),
        ("Findings: BWV; irregular D/G", [(DG, IRR), (BWV, P)]),
        ("[x] BWV", [(BWV, P)]),
        ("BWV (+)", [(BWV, P)]),
        ("atypical PN with BWV and irregular streaks", [(PN, ATY), (ST, IRR), (BWV, P)]),
        ("Asymmetric lesion with BWV", [(BWV, P)]),
        ("BWV present, streaks absent", [(BWV, P), (ST, A)]),  # (read since 78dfd03: a bare noun and a denial word)
        ("When examined: BWV present", [(BWV, P)]),
        ("New BWV noted today.", [(BWV, P)]),
        ("BWV unchanged since last visit", [(BWV, P)]),
        ("Dotted vessels in the centre", [(VS, "dotted")]),
        ("Regression (blue areas) at the periphery", [(RG, "blue areas")]),
        ("BWV, which would favour melanoma", [(BWV, P)]),
        ("Atypical PN; the lesion has grown since 2022", [(PN, ATY)]),
        ("Irregular streaks at the periphery, BWV centrally", [(ST, IRR), (BWV, P)]),
        ("BWV and irregular streaks present; excision advised", [(ST, IRR), (BWV, P)]),
        ("Dermoscopic findings:\n- pigment network: atypical\n- BWV: present", [(PN, ATY), (BWV, P)]),
        ("Impression: atypical PN, BWV. Plan: excise.", [(PN, ATY), (BWV, P)]),
        ("Prominent BWV", [(BWV, P)]),
        ("Irregular D/G throughout", [(DG, IRR)]),
        ("Streaks irregular, PN atypical", [(PN, ATY), (ST, IRR)]),
        ("Diffuse irregular pigmentation", [(PG, "diffuse irregular")]),
        ("BWV present; may represent melanoma", [(BWV, P)]),
        ("BWV, could be melanoma", [(BWV, P)]),
        ("Today: atypical PN, BWV.", [(PN, ATY), (BWV, P)]),
        ("No streaks or BWV; atypical PN.", [(PN, ATY), (ST, A), (BWV, A)]),
        ("without evidence of BWV", [(BWV, A)]),
        ("62-year-old man: BWV present", [(BWV, P)]),
        ("Past history unremarkable; BWV present.", [(BWV, P)]),
        ("BWV present. Biopsy in 2019 of another lesion.", [(BWV, P)]),
        ("Prev. excision elsewhere. Today BWV present.", [(BWV, P)]),
        ("Irregular streaks; old scar nearby", [(ST, IRR)]),
        # what a review of 675 more texts found a first version of today's rules dropping
        ("Seen in 2026: atypical pigment network and blue-whitish veil.", [(PN, ATY), (BWV, P)]),
        ("Urgent referral - BWV and atypical PN on dermoscopy.", [(PN, ATY), (BWV, P)]),
        ("Lesion 3 (left scapula): atypical PN, BWV.", [(PN, ATY), (BWV, P)]),
        ("BWV present, ?melanoma.", [(BWV, P)]),
        ("No streaks, atypical PN and BWV.", [(PN, ATY), (ST, A), (BWV, P)]),
    ]]


_ORDER = [PN, ST, PG, RG, DG, BWV, VS]


def reviewed() -> tuple[list[dict], list[str]]:
    """The reviews' texts (:data:`REVIEWED`: ``review``, ``group``, ``text``, ``expected`` and ``allowed`` readings) and
    the reviews held out (no rule was written from them)."""
    import json

    data = json.loads(REVIEWED.read_text(encoding="utf-8"))
    return data["texts"], list(data.get("held_out_reviews", []))


def score_reviewed(entries: list[dict], read_findings, listed: int, held_out: Sequence[str] = ()) -> dict:
    """Per review and group: texts, texts read with a finding outside ``expected`` and ``allowed`` (wrong), the
    ``expected`` findings read (recall), with the wrong readings listed, except a held-out review's: whoever writes the
    next rules reads these results, and a held-out review measures the reader only while its wrong readings stay unseen."""
    out: dict = {}
    for e in entries:
        read = {tuple(f) for f in read_findings(e["text"])}
        expected, allowed = {tuple(f) for f in e["expected"]}, {tuple(f) for f in e["allowed"]}
        review = out.setdefault(e["review"], {"texts": 0, "wrong": 0, "expected_findings": 0, "read_of_expected": 0, "by_group": {}})
        group = review["by_group"].setdefault(e["group"], {"texts": 0, "wrong": 0, "expected_findings": 0, "read_of_expected": 0, "examples": []})
        for row in (review, group):
            row["texts"] += 1
            row["expected_findings"] += len(expected)
            row["read_of_expected"] += len(read & expected)
        if read - expected - allowed:
            review["wrong"] += 1
            group["wrong"] += 1
            if len(group["examples"]) < listed and e["review"] not in held_out:
                group["examples"].append({"text": e["text"], "read": sorted(map(list, read)), "expected": e["expected"], "allowed": e["allowed"]})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT_JSON)
    parser.add_argument("--list", type=int, default=5, help="wrong readings listed per pattern (default 5)")
    args = parser.parse_args(argv)
    header = begin(__file__, "wrong readings of the findings reader on clinicians' phrasings", argv, machine=False)
    from monai_cir.data.report import read_by_rules, read_findings

    sets = {}
    for name, cases in (("hand_written", hand_written()), ("generated", generated())):
        totals, wrong = collections.Counter(), collections.defaultdict(list)
        for pattern, text, allowed in cases:
            totals[pattern] += 1
            read = read_findings(text)
            if any(finding not in allowed for finding in read):
                wrong[pattern].append({"text": text, "read": [list(f) for f in read]})
        sets[name] = {
            "texts": len(cases), "wrong": sum(len(v) for v in wrong.values()),
            "by_pattern": {p: {"texts": totals[p], "wrong": len(wrong[p]), "examples": wrong[p][: args.list]} for p in totals},
        }
        print(f"{name}: {sets[name]['wrong']} of {len(cases)} texts read wrong", flush=True)
        for p in totals:
            print(f"  {p}: {len(wrong[p])} / {totals[p]}", flush=True)
    # the other side: what a clinician states of the lesion is read, each text exactly as expected
    missed = [{"text": t, "read": [list(f) for f in read_findings(t)], "expected": [list(f) for f in e]} for _, t, e in stated()
              if read_findings(t) != e]
    sets["stated"] = {"texts": len(stated()), "read_otherwise": len(missed), "examples": missed}
    print(f"stated: {len(missed)} of {len(stated())} texts read otherwise than stated", flush=True)
    entries, held_out = reviewed()
    sets["reviewed"] = score_reviewed(entries, read_findings, args.list, held_out)
    for name in held_out:
        sets["reviewed"][name]["held_out"] = True
    # the same reviews read by the rules alone, without the learned check: what the check adds, review by review
    for name, r in score_reviewed(entries, read_by_rules, 0, held_out).items():
        sets["reviewed"][name]["rules_alone"] = {"wrong": r["wrong"], "read_of_expected": r["read_of_expected"]}
    for name, r in sets["reviewed"].items():
        print(f"reviewed {name}{' (held out)' if r.get('held_out') else ''}: {r['wrong']} of {r['texts']} texts read wrong; "
              f"{r['read_of_expected']} of {r['expected_findings']} stated findings read", flush=True)
    lines = [f"# {header['benchmark']}", "", f"commit {header['commit']['sha'][:7]}{' (dirty)' if header['commit']['dirty'] else ''}; `{header['command']}`", ""]
    for name, s in sets.items():
        if name == "stated":
            lines += [f"## stated: {s['read_otherwise']} of {s['texts']} texts that state findings read otherwise", ""]
            lines += [f"- `{m['text']!r}`: read {m['read']}, stated {m['expected']}" for m in s["examples"]] + [""]
            continue
        if name == "reviewed":
            lines += ["## reviewed: texts reviews wrote, with the findings each states (`bench/reader_texts/reviewed.json`)", "",
                      "The reader's rules were corrected on the reviews not marked held out: those guard against regressions and do not",
                      "measure how the reader generalises; a held-out review (written without seeing the reader's code, no rule written",
                      "from it) does. Wrong: a finding read outside the stated and allowed ones; recall: the stated findings read (a",
                      "finding left unread is the safe failure: the query falls back to the image). A held-out review's wrong readings",
                      "are not listed: they stay unseen until rules are written from it.", "",
                      "The reader keeps a reading of its rules only when its learned check (`monai_cir/data/finding_check.py`,",
                      "trained on the reviews not held out) finds it likely stated of the imaged lesion, now; the rules alone:",
                      "", "| review | texts | wrong, rules alone | wrong | stated findings read, rules alone | stated findings read |",
                      "|---|---|---|---|---|---|"]
            for review, r in s.items():
                alone = r["rules_alone"]
                lines.append(f"| {review}{' (held out)' if r.get('held_out') else ''} | {r['texts']} | {alone['wrong']} | {r['wrong']} | "
                             f"{alone['read_of_expected']} / {r['expected_findings']} | {r['read_of_expected']} / {r['expected_findings']} |")
            lines.append("")
            for review, r in s.items():
                kind = " (held out)" if r.get("held_out") else ""
                lines += [f"### review {review}{kind}: {r['wrong']} of {r['texts']} texts read wrong; {r['read_of_expected']} of {r['expected_findings']} stated findings read", "",
                          "| group | texts | wrong | stated findings read | e.g. |", "|---|---|---|---|---|"]
                for g, row in sorted(r["by_group"].items(), key=lambda kv: -kv[1]["wrong"]):
                    example = row["examples"][0] if row["examples"] else None
                    shown = f"`{example['text']!r}` -> {example['read']}".replace("|", "\\|") if example else ""
                    lines.append(f"| {g} | {row['texts']} | {row['wrong']} | {row['read_of_expected']} / {row['expected_findings']} | {shown} |")
                lines.append("")
            continue
        lines += [f"## {name}: {s['wrong']} of {s['texts']} texts read wrong", "", "| pattern | texts | wrong | e.g. |", "|---|---|---|---|"]
        for p, row in sorted(s["by_pattern"].items(), key=lambda kv: -kv[1]["wrong"]):
            example = row["examples"][0] if row["examples"] else None
            shown = f"`{example['text']!r}` -> {example['read']}".replace("|", "\\|") if example else ""
            lines.append(f"| {p} | {row['texts']} | {row['wrong']} | {shown} |")
        lines.append("")
    write_results(args.out, {**header, "sets": sets}, markdown=lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
