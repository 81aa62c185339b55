"""The cross-validation folds every method uses (DESIGN.md section 3).

Stratified 5-fold over Derm7pt's 888 cases (classes melanoma / nevus / benign keratosis),
``sklearn.model_selection.StratifiedKFold(n_splits=5, shuffle=True, random_state=0)`` over the cases
in ``meta.csv`` order. The assignment is committed as ``monai_cir/resources/derm7pt_folds.csv``
(``case_num,fold``; no image data) so that every run reads the same folds instead of recomputing them.

Any other collection (a user's folder + CSV, :func:`~monai_cir.data.load_image_csv`) gets the same recipe at run
time (:func:`collection_folds`): stratified by diagnosis, ``StratifiedKFold(n_splits=5, shuffle=True,
random_state=0)`` over its cases in the order given (the CSV's row order), so the same CSV always gives the same
folds. Where the CSV says which images show one patient or one lesion (a ``patient_id`` or ``lesion_id`` column,
:data:`GROUP_COLUMNS`) and some show the same one, the folds keep each patient's (else each lesion's) images
together, ``StratifiedGroupKFold`` with the same settings: split over folds, a lesion's second image would find
its first among the other folds and score as if retrieval had worked. A collection whose every case is in the
committed file (Derm7pt, or a subset of it) keeps the committed folds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["FOLDS_FILE", "GROUP_COLUMNS", "NUM_FOLDS", "SEED", "case_groups", "collection_folds", "load_folds", "make_folds", "write_folds"]

FOLDS_FILE = Path(__file__).resolve().parent.parent / "resources" / "derm7pt_folds.csv"
NUM_FOLDS = 5
SEED = 0
# a user's CSV columns that say which images belong together (the first present wins: a patient's lesions too)
GROUP_COLUMNS = ("patient_id", "lesion_id")


def make_folds(labels: Sequence[int], n_splits: int = NUM_FOLDS, seed: int = SEED, groups: Sequence[str] | None = None) -> list[int]:
    """Fold number (0..n_splits-1) of each item, stratified by ``labels``; with ``groups``, the items of one
    group in one fold (``StratifiedGroupKFold``)."""
    import numpy as np
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    labels = np.asarray(labels)
    largest = int(np.bincount(np.unique(labels, return_inverse=True)[1]).max()) if len(labels) else 0
    if largest < n_splits:  # sklearn's own message names neither the cases nor the remedy
        raise ValueError(f"{n_splits}-fold cross-validation needs at least {n_splits} cases of some diagnosis; the {len(labels)} cases "
                         f"have at most {largest} of any: add cases")
    folds = np.full(len(labels), -1, dtype=int)
    if groups is None:
        splits = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels)
    else:
        if len(set(groups)) < n_splits:
            raise ValueError(f"{n_splits}-fold cross-validation needs at least {n_splits} patients / lesions; the {len(labels)} cases "
                             f"are of {len(set(groups))}: add cases")
        splits = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels, groups)
    for fold, (_, test) in enumerate(splits):
        folds[test] = fold
    return folds.tolist()


def case_groups(records: Sequence | None) -> tuple[list[str], str] | None:
    """``(group of each case, the column)`` from the first of :data:`GROUP_COLUMNS` a user's CSV has, when some
    group holds two cases or more (else None: nothing to keep together). A case with the column empty is a group
    of its own."""
    if not records:
        return None
    for column in GROUP_COLUMNS:
        values = [(getattr(r, "metadata", None) or {}).get(column) for r in records]
        if all(v is None or str(v).strip() == "" for v in values):
            continue
        groups = [f"{column}:{str(v).strip()}" if v is not None and str(v).strip() else f"case:{r.case_id}" for r, v in zip(records, values)]
        return (groups, column) if len(set(groups)) < len(groups) else None
    return None


def collection_folds(case_ids: Sequence[str], labels: Sequence[int], records: Sequence | None = None) -> tuple[list[int], str | None]:
    """Fold number (0..4) of each case and how they were assigned: ``(folds, None)`` with the committed Derm7pt
    folds when every case id is in :data:`FOLDS_FILE`, else ``(make_folds(labels), description)``, stratified
    by diagnosis with seed :data:`SEED` over the cases in the order given (deterministic for one CSV), each
    patient's or lesion's cases in one fold where ``records`` (the cases' records, in the same order) say which
    (:func:`case_groups`)."""
    import hashlib

    committed = load_folds()
    if all(cid in committed for cid in case_ids):
        return [committed[cid] for cid in case_ids], None
    grouped = case_groups(records)
    # names the cases and the folds they fall in (a digest of each case id with its label and fold, in order): two
    # collections' folds, or one CSV's before and after a relabelling (other labels stratify into other folds), never mix
    folds = make_folds(labels, groups=grouped[0] if grouped else None)
    digest = hashlib.sha256("\n".join(f"{cid}\t{label}\t{fold}" for cid, label, fold in zip(case_ids, labels, folds)).encode()).hexdigest()[:12]
    how = (f"stratified {NUM_FOLDS}-fold by diagnosis, each {grouped[1]}'s cases in one fold (StratifiedGroupKFold" if grouped
           else f"stratified {NUM_FOLDS}-fold by diagnosis (StratifiedKFold")
    description = f"{how}, shuffle, random_state {SEED}) over {len(case_ids)} cases in CSV order (case ids, labels and folds sha256 {digest})"
    return folds, description


def write_folds(path: str | Path = FOLDS_FILE, root: str | Path | None = None) -> Path:
    """(Re)create the committed folds file from Derm7pt's ``meta.csv`` (maintainers only)."""
    from .collections import load_derm7pt

    records = load_derm7pt(root)
    folds = make_folds([r.label for r in records])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["case_num,fold"] + [f"{r.metadata['case_num']},{f}" for r, f in zip(records, folds)]
    path.write_text("\n".join(lines) + "\n")
    return path


def load_folds(path: str | Path = FOLDS_FILE) -> dict[str, int]:
    """``{case_id: fold}`` for Derm7pt (case ids ``derm7pt-<case_num>``, folds 0..4)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"folds file not found: {path}; it ships with monai-cir (monai_cir/resources)")
    out: dict[str, int] = {}
    lines = path.read_text().splitlines()
    if not lines or lines[0].strip() != "case_num,fold":
        raise ValueError(f"{path} is malformed: the header must be 'case_num,fold'")
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            case_num, fold = (int(x) for x in line.split(","))
        except ValueError:
            raise ValueError(f"{path}, row {number}: expected two integers 'case_num,fold', got {line!r}") from None
        out[f"derm7pt-{case_num}"] = fold
    return out
