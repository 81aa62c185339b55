"""Small pieces the bundle configs (``bundle/configs/*.yaml``) wire together.

- :class:`TargetTower`: the image tower ``images (B, 3, S, S) in [0, 1] -> T (B, D)`` as a module with one
  input and one output, for ``verify_net_in_out`` and ``ckpt_export`` (TorchScript by tracing). Its
  state-dict keys for the head match the checkpoint's ``head`` entry (``--key_in_ckpt head``).
- :func:`fold_split`: train / held-out indices of the committed folds, or of stratified folds for another
  collection (``fold=-1``: all cases, no folds), of a feature cache or of a record list; :func:`subset_records`:
  a class-balanced few cases (smoke tests).
- :func:`check_checkpoint_target` / :func:`check_training_classes`: ``train.yaml``'s checks before any training
  (an existing checkpoint is not replaced without ``overwrite``; every diagnosis has the training cases the
  diagnosis prior needs); :func:`staging_path` / :func:`publish_checkpoint`: the stages write beside the target
  and the finished checkpoint is renamed onto it, so an interrupted run never leaves a half-trained file there.
- :func:`checkpoint_saver`: the bundle's saver (``train.yaml`` ``saver``), writing
  :func:`~monai_cir.networks.save_checkpoint` files (head + encoder fingerprint, or the whole network
  after fine-tuning); :func:`add_late_fusion_branch` / :func:`add_diagnosis_prior`: ``train.yaml``'s second and
  third stages (the release network).
- :func:`evaluate_checkpoint` / :func:`rank_collection`: the evaluate and inference workflows.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..networks import ComposedRetrievalNet, load_model, save_checkpoint
from ..networks.checkpoint import NET_FORMAT, read_checkpoint
from ..networks.composed_retrieval import HEAD_PREFIXES
from .data import class_round_robin

logger = logging.getLogger(__name__)

__all__ = [
    "TargetTower", "subset_records", "fold_split", "checkpoint_saver", "add_late_fusion_branch", "evaluate_checkpoint",
    "rank_collection", "trained_case_ids", "check_prior_options", "trained_collection", "trained_overlap", "check_checkpoint_target", "check_training_classes", "check_late_fusion_options", "check_finetune_settings", "flag", "staging_path", "publish_checkpoint",
]


class TargetTower(nn.Module):
    """``encode_target`` of a :class:`ComposedRetrievalNet` as a traceable one-input, one-output module.

    ``forward(images)``: images (B, 3, S, S) RGB in [0, 1] (preprocessed by ``monai_cir.data.preprocess_image``)
    -> unit-block embeddings ``T`` (B, D), D = 2 (d_L + d_M + d_H) (Eq. 9 decomposition, DESIGN.md section 2)
    + the late-fusion branch's width when the network has one (the release model: 1040 + 256).
    """

    def __init__(self, net: ComposedRetrievalNet, checkpoint: str | None = None) -> None:
        super().__init__()
        # registered under the network's own names, so the state-dict keys are the checkpoint's
        self.image_encoder = net.image_encoder
        self.composers = net.composers  # unused by the target side; kept so the head keys match the checkpoint
        self.alignments = net.alignments
        if net.late_fusion is not None:
            self.late_fusion = net.late_fusion
        if net.diagnosis_prior is not None:  # unused by the target side too (a query-side term)
            self.diagnosis_prior = net.diagnosis_prior
        self.__dict__["net"] = net  # not a submodule: its weights are the ones registered above
        self.embedding_dim = net.embedding_dim
        self.checkpoint = checkpoint

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False):  # type: ignore[override]
        """Accepts a head-only state dict (the checkpoint's ``head``: ``ckpt_export --key_in_ckpt head``):
        the encoders come from their packages, the head keys must all match. The tower is built from a checkpoint
        (``inference.yaml``'s ``checkpoint``), whose settings the weights do not carry (β, the late-fusion share, the
        image size): weights of another checkpoint are refused, since the tower would export them with its own settings."""
        keys = set(state_dict)
        own = self.state_dict()
        other = [k for k in keys & set(own) if torch.is_tensor(state_dict[k]) and (state_dict[k].shape != own[k].shape or not torch.equal(state_dict[k].to(own[k].dtype), own[k]))]
        if other:
            raise ValueError(
                f"these weights are not those of the checkpoint network_def was built from ({self.checkpoint or 'the untrained default'}; "
                f"{len(other)} tensors differ, first {other[0]}): its settings (β, the late-fusion share, the image size) would be "
                "exported with another checkpoint's weights; give the file as --checkpoint too (ckpt_export ... --ckpt_file FILE --checkpoint FILE)")
        head = {k for k in own if k.startswith(HEAD_PREFIXES)}
        if keys and keys <= head:
            if strict and head - keys:
                raise RuntimeError(f"head checkpoint lacks {sorted(head - keys)[:5]}")
            return super().load_state_dict(state_dict, strict=False, assign=assign)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        maps = self.image_encoder(images)
        return self.net.target_embedding([maps[i].float() for i in self.net.level_indices])


def fold_split(cases: Any, fold: int = 0, subset: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) rows of ``cases`` (a feature cache, or a list of ``CaseRecord``) for ``fold`` of the
    committed Derm7pt folds, or for another collection of its stratified folds
    (:func:`monai_cir.evaluation.fold_indices`); ``fold = -1``: (all, none), no folds needed.

    ``subset`` keeps a class-stratified random ``subset`` of each side (smoke tests)."""
    from types import SimpleNamespace

    from ..evaluation import fold_indices

    if not hasattr(cases, "case_ids"):  # records: what the image (fine-tuning) path reads
        cases = SimpleNamespace(case_ids=[r.case_id for r in cases], labels=[r.label for r in cases], records=list(cases))
    if fold < 0:
        train, test = np.arange(len(cases.case_ids)), np.array([], dtype=int)
    else:
        fold_of = fold_indices(cases)
        if fold not in set(fold_of.tolist()):
            raise ValueError(f"fold {fold} does not exist; folds are {sorted(set(fold_of.tolist()))} (or -1 for all cases)")
        train, test = np.flatnonzero(fold_of != fold), np.flatnonzero(fold_of == fold)
    if subset:
        labels = np.asarray(cases.labels)
        train, test = class_round_robin(labels, train, subset, seed), class_round_robin(labels, test, max(3, subset // 4), seed)
    return train, test


def trained_case_ids(cases: Any, indices: Sequence[int]) -> list[str]:
    """The case ids of ``cases[indices]`` (a feature cache or a list of case records): what a checkpoint records
    as ``trained_on``, so that a library fit (``monai-cir index fit-differential``) leaves the model's own
    training cases out (a training case sits closer to its own diagnosis than a new query does)."""
    records = getattr(cases, "records", cases)
    return [str(records[int(i)].case_id) for i in indices]


def trained_collection(cases: Any, indices: Sequence[int]) -> str | None:
    """The collection of ``cases[indices]`` when they all share one (recorded beside ``trained_on`` as
    ``trained_collection``, so that a case is identified by (collection, case id)), else None."""
    records = getattr(cases, "records", cases)
    names = {str(getattr(records[int(i)], "collection", "") or "") for i in indices}
    return names.pop() if len(names) == 1 and "" not in names else None


def trained_overlap(info: dict[str, Any] | None, records: Sequence[Any]) -> tuple[list[int], bool]:
    """Which of ``records`` a checkpoint trained on (positions), from its ``extra`` (``info``): ``trained_on`` holds
    bare case ids; a case is the same when its (collection, case id) is, when the checkpoint records its
    ``trained_collection`` and ``records`` hold cases of it, else by case id alone (the second value: True when
    matched by (collection, case id))."""
    info = info or {}
    trained = {str(c) for c in info.get("trained_on") or ()}
    by_id = [i for i, r in enumerate(records) if str(r.case_id) in trained]
    collection = info.get("trained_collection")
    if collection and any(str(getattr(records[i], "collection", "")) == collection for i in by_id):
        return [i for i in by_id if str(getattr(records[i], "collection", "")) == collection], True
    # no case of the recorded collection: a collection's name is the name a run gave it (a CSV's stem, --name), so the
    # same cases under another name are matched by case id (the second value says so)
    return by_id, False


# what a bundle setting given on the command line may say for true / false: `python -m monai.bundle run --overwrite false`
# passes the string 'false', which Python counts as true (only a capitalised False became a bool)
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0", "none", "null", ""}


def flag(value: Any, name: str) -> bool:
    """A bundle setting that is true or false, from a bool or from what the command line passes (``true`` / ``false`` in any
    case, ``yes`` / ``no``, ``1`` / ``0``); anything else is a ValueError naming the setting."""
    if isinstance(value, bool) or value is None:
        return bool(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"--{name} takes true or false, got {value!r}")


def check_checkpoint_target(path: str | Path, overwrite: bool = False, flag: str = "--overwrite true", elsewhere: str = "--checkpoint PATH") -> None:
    """Before any training: refuse to replace an existing checkpoint at ``path`` unless ``overwrite`` (the
    tracked release model, a fold's model: what it records, e.g. the differential slot's margins, would be lost).
    ``flag`` / ``elsewhere``: the options as the user passes them (the bundle's, or the CLI's ``--overwrite`` / ``--out``)."""
    if Path(path).exists() and not overwrite:
        raise ValueError(f"{path} already exists; pass {flag} to replace it, or write the new checkpoint elsewhere with {elsewhere}")
    staging_path(path)  # the target as this run found it before training: publish_checkpoint's check compares with it


def check_training_classes(cases: Any, train_indices: Sequence[int], prior_strength: float, fold: int = -1) -> None:
    """Before any training: every diagnosis among the training cases has the :data:`~.diagnosis_prior.PRIOR_MIN_CASES`
    cases the diagnosis prior's inner cross-validation needs, and there are two diagnoses or more (``prior_strength
    <= 0``: no prior, nothing to check). ``cases``: a feature cache or a list of case records."""
    from collections import Counter

    from .diagnosis_prior import PRIOR_MIN_CASES

    if prior_strength <= 0:
        return
    records = getattr(cases, "records", cases)
    counts = Counter(str(records[int(i)].diagnosis) for i in train_indices)
    where = "among all cases" if fold < 0 else f"among the training cases of fold {fold} (the other folds)"
    if len(counts) < 2:
        raise ValueError(f"the diagnosis prior needs training cases of two or more diagnoses; {where} there are only {dict(counts)}")
    few = {d: n for d, n in sorted(counts.items()) if n < PRIOR_MIN_CASES}
    if few:
        listed = ", ".join(f"{d!r} has {n}" for d, n in few.items())
        raise ValueError(f"diagnosis {listed} training case(s) {where}; the diagnosis prior needs at least {PRIOR_MIN_CASES} of every "
                         "diagnosis: add cases of it, leave its rows out of the CSV, or train without the prior (`monai-cir train --prior-strength 0`, "
                         "the bundle's --prior_strength 0)")


# the target as each staging path of this process found it (:func:`_file_state`), for publish_checkpoint's check
_TARGET_AT_STAGING: dict[str, tuple[int, int] | None] = {}


def _file_state(path: Path) -> tuple[int, int] | None:
    """``(mtime_ns, size)`` of a file, None when there is none."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


def staging_path(path: str | Path) -> str:
    """Where this run writes its stages before :func:`publish_checkpoint` renames the finished checkpoint onto
    ``path``: beside it (same file system, so the rename is atomic), ``<name>.<process id>.partial``, one per run,
    so that two runs with one target never write each other's stages. The staging files of runs that ended
    without publishing (killed: their process is gone) are removed here."""
    import os

    path = Path(path)
    for old in path.parent.glob(f"{path.name}.*.partial"):
        pid = old.name[len(path.name) + 1 : -len(".partial")]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            old.unlink(missing_ok=True)
    staging = str(path.parent / f"{path.name}.{os.getpid()}.partial")
    _TARGET_AT_STAGING.setdefault(staging, _file_state(path))
    return staging


def _process_alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def publish_checkpoint(staging: str | Path, path: str | Path) -> Path:
    """Rename the finished checkpoint ``staging`` onto ``path`` in one step (a reader, or a run killed before
    this point, sees the previous file or the finished one, never a half-trained one). Refused, the finished
    checkpoint kept at ``staging``, when another run has written ``path`` since this one began (two runs with
    one ``--out``: the later one to finish would silently replace the other's result)."""
    import os

    if not Path(staging).is_file():
        raise FileNotFoundError(f"training wrote no checkpoint at {staging}; nothing to publish to {path}")
    before = _TARGET_AT_STAGING.get(str(staging), _file_state(Path(path)))
    if _file_state(Path(path)) != before:
        # kept under a name no later run's clean-up of staging files takes (<name>.<pid>.partial of a process that is gone)
        kept = Path(path).with_name(f"{Path(path).stem}.kept-{os.getpid()}{Path(path).suffix}")
        os.replace(staging, kept)
        _TARGET_AT_STAGING.pop(str(staging), None)
        raise FileExistsError(
            f"{path} was written by another run while this one trained: not replaced. This run's checkpoint is kept at {kept} "
            "(run one training per output path at a time)")
    os.replace(staging, path)
    _TARGET_AT_STAGING.pop(str(staging), None)
    print(f"checkpoint -> {path}")
    return Path(path)


def checkpoint_saver(net: ComposedRetrievalNet, **extra: Any) -> Callable[..., Path]:
    """``save_fn(path, **info)`` writing the head of ``net`` with its encoder fingerprint and ``extra``."""

    def save(path: str | Path, **info: Any) -> Path:
        metrics = {k: float(v) for k, v in (info.pop("metrics", None) or {}).items()}
        return save_checkpoint(net, path, metrics=metrics, **info, **extra)

    return save


def add_late_fusion_branch(
    model: Any, keeper: Any, cache: Any, train_indices: Sequence[int], share: float, path: str | Path, seed: int = 0,
    options: dict[str, Any] | None = None, **extra: Any,
) -> ComposedRetrievalNet | None:
    """``train.yaml``'s second stage: the late-fusion branch of the release network (issue 13).

    Takes the best epoch's Eq. 9 head from ``keeper`` (the first stage's
    :class:`~monai_cir.engine.trainer.BestHeadKeeper`) into ``model`` (the :class:`~.heads.CachedComposedModel`
    that trained), trains the late-fusion MLP on the same cases exactly as the evaluation's
    ``late_fusion_fullbatch`` does (``cv_methods.train_method``: full batch, 200 epochs, symmetric SupCon
    τ 0.1, Adam 1e-3), joins the two (:func:`~monai_cir.engine.attach_late_fusion`) and overwrites the
    checkpoint at ``path`` with the joined network. ``options``: ``{"train": {...}, "net": {...}}`` over that
    recipe (``train.yaml``'s ``late_fusion_options``; the effective epochs are recorded). ``share <= 0``: nothing to
    do (the first stage's checkpoint is the paper's network); returns the joined network or None."""
    from . import attach_late_fusion
    from .cv_methods import method_options, train_method

    if share <= 0:
        return None
    if keeper.best_state is not None:
        model.load_state_dict(keeper.best_state)
    config = {"method_options": {"late_fusion_fullbatch": {k: dict(v) for k, v in (options or {}).items() if v}}}
    (branch,) = train_method("late_fusion_fullbatch", cache, np.asarray(train_indices), config, int(seed))
    net = attach_late_fusion(model.net, branch, share).eval()
    first_stage = read_checkpoint(path)["extra"] if Path(path).is_file() else {}  # the best epoch and its metrics
    epochs = int(method_options("late_fusion_fullbatch", config)["train"]["epochs"])
    collection = trained_collection(cache, train_indices)
    recorded = {"trained_collection": collection} if collection else {}
    save_checkpoint(net, path, **{**first_stage, "epoch": int(keeper.best_epoch), "seed": int(seed), **extra, **recorded, "late_fusion_epochs": epochs})
    print(f"late-fusion branch trained (share {share}) -> {path}")
    return net


def check_finetune_settings(val_fraction: Any, patience: Any, flip: Any, text_variants: Any) -> None:
    """``finetune.yaml``, before any training: the settings of training on the feature cache that end-to-end fine-tuning
    has no use for are refused by name (they were accepted and ignored: a run of hours without the early stopping asked for)."""
    ignored = []
    if float(val_fraction or 0) > 0:
        ignored.append(f"--val_fraction {val_fraction} (no inner validation on images: the epoch count is --max_epochs)")
    if int(patience or 0) > 0:
        ignored.append(f"--patience {patience} (no early stopping without inner validation)")
    if flip is not None:
        ignored.append(f"--flip {flip} (the feature cache's mirror views; the images are augmented here, flips included)")
    if int(text_variants or 0) > 0:
        ignored.append(f"--text_variants {text_variants} (re-worded texts of the feature cache's head training)")
    if ignored:
        raise ValueError("end-to-end fine-tuning (finetune.yaml) does not use " + "; ".join(ignored) + ": leave them out")


def check_late_fusion_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """``train.yaml``'s ``late_fusion_options``, checked before any training (a typo found after the first stage cost its
    epochs; one at the top level, ``nett``, was ignored): keys ``train`` (:class:`~.trainer.TrainConfig`'s fields) and
    ``net`` (:class:`~monai_cir.networks.late_fusion.LateFusionBranch`'s options). Raises ValueError naming the key."""
    import inspect

    from ..networks.late_fusion import LateFusionBranch
    from .trainer import TrainConfig

    options = dict(options or {})
    unknown = sorted(set(options) - {"train", "net"})
    if unknown:
        raise ValueError(f"late_fusion_options has unknown key(s) {unknown}; it takes train (training options) and net (the branch's)")
    TrainConfig.from_dict(options.get("train"))  # its error names the unknown training options and the known ones
    net_keys = set(inspect.signature(LateFusionBranch.__init__).parameters) - {"self", "image_dim", "text_dim"}
    unknown = sorted(set(options.get("net") or {}) - net_keys)
    if unknown:
        raise ValueError(f"late_fusion_options#net has unknown key(s) {unknown}; known: {sorted(net_keys)}")
    return options


def check_prior_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """``train.yaml``'s ``prior_options``, checked (before any training: a typo must not cost the first two stages):
    only ``c_grid`` (the probes' inverse L2 strengths, positive) and ``inner_folds`` (2 or more)."""
    from .diagnosis_prior import PRIOR_C_GRID, PRIOR_INNER_FOLDS, check_prior_search

    options = dict(options or {})
    unknown = sorted(set(options) - {"c_grid", "inner_folds"})
    if unknown:
        raise ValueError(f"prior_options has unknown key(s) {unknown}; it takes c_grid (the probes' inverse L2 strengths) and inner_folds")
    check_prior_search(options.get("c_grid", PRIOR_C_GRID), options.get("inner_folds", PRIOR_INNER_FOLDS))
    return options


def add_diagnosis_prior(path: str | Path, cache: Any, train_indices: Sequence[int], strength: float, seed: int = 0,
                        options: dict[str, Any] | None = None) -> ComposedRetrievalNet | None:
    """``train.yaml``'s third stage: the diagnosis prior (:class:`~monai_cir.networks.DiagnosisPrior`; issue 13).

    Loads the checkpoint at ``path`` (the second stage's), fits the prior's two probes on the same training cases
    (:func:`~monai_cir.engine.fit_diagnosis_prior`) and overwrites the checkpoint with the network and its prior,
    the fit recorded as ``extra["diagnosis_prior"]``. ``options``: ``{"c_grid": [...], "inner_folds": n}`` over the
    inner cross-validation's defaults (``train.yaml``'s ``prior_options``; any other key is an error). A differential slot recorded there is dropped: its margin is in
    the units of the score without the prior (refit it: ``bench/differential_slot.py --prior --write-checkpoint``).
    ``strength <= 0``: nothing to do; returns the network or None."""
    from .diagnosis_prior import fit_diagnosis_prior

    if strength <= 0:
        return None
    options = check_prior_options(options)
    payload = read_checkpoint(path)
    if payload["format"] == NET_FORMAT:
        raise ValueError(f"{path} holds fine-tuned encoders: the diagnosis prior is fitted on the frozen encoders' feature cache, "
                         "which they no longer match (train it with prior_strength 0, as finetune.yaml does)")
    _check_prior_cases(path, payload["extra"], cache, train_indices)
    net = load_model(path)
    prior_net, record = fit_diagnosis_prior(net, cache, train_indices, strength=float(strength), seed=int(seed), text_net=net, **options)
    extra = {k: v for k, v in payload["extra"].items() if k != "diagnosis_prior"}  # a previous fit's record is replaced
    if extra.pop("differential", None) is not None:
        logger.warning("%s: the differential slot's margins were fitted for the ranking before this prior and are dropped; refit "
                       "them (bench/differential_slot.py --prior --write-checkpoint %s)", path, path)
    collection = trained_collection(cache, train_indices)
    if collection and "trained_on" in extra:
        extra["trained_collection"] = collection
    save_checkpoint(prior_net.eval(), path, **extra, diagnosis_prior=record)
    print(f"diagnosis prior fitted (lambda {strength}, classes {record['classes']}) -> {path}")
    return prior_net


def _check_prior_cases(path: str | Path, extra: dict[str, Any], cache: Any, train_indices: Sequence[int]) -> None:
    """The diagnosis prior is fitted on the cases the checkpoint trained on (its ``trained_on``, ``fold``), never on
    another fold's training cases: the checkpoint's record would then name cases the prior did not learn, and the
    prior would have learned cases the checkpoint's fold holds out."""
    if "trained_on" not in extra:  # a checkpoint without the record (written before it existed): nothing to compare
        return
    records = getattr(cache, "records", cache)
    fitting = [records[int(i)] for i in train_indices]
    same, _ = trained_overlap(extra, fitting)
    if len(same) == len(fitting) == len({str(c) for c in extra["trained_on"]}):
        return
    fold = extra.get("fold")
    raise ValueError(
        f"{path} was trained on {len(extra['trained_on'])} cases (fold {fold}), but the diagnosis prior would be fitted on "
        f"{len(fitting)} other training cases ({len(fitting) - len(same)} of them not the checkpoint's); "
        f"pass --fold {fold} (the checkpoint's fold, with the collection it was trained on)")


def evaluate_checkpoint(net: ComposedRetrievalNet, cache: Any, query_idx: Sequence[int], database_idx: Sequence[int], output: str | Path | None = None,
                        tta: bool = True, checkpoint: str | Path | None = None, differential: bool = True) -> dict[str, Any]:
    """Protocol metrics (arXiv v1 Eqs. 10-14 and P@5, percent) of the checkpoint as it ranks: composed queries
    ``query_idx`` (image + text) against images ``database_idx``, by the network's similarity ``S``, plus its diagnosis
    prior's terms when it has one (``K = S + λ w log p(y_c | q)``, :mod:`monai_cir.prior_ranking`), with the differential
    slot the checkpoint records (``differential``; :func:`monai_cir.differential.differential_ranking`): the ranking the
    app shows and ``monai-cir evaluate`` scores (``composed_late_fusion_prior_differential`` for the release network).
    ``by_similarity`` holds the same metrics of ``S`` alone (what the trained heads rank without the prior). The JSON
    records how it ranked, the checkpoint and its fingerprint."""
    from ..differential import DifferentialSlot, differential_ranking
    from ..evaluation.protocol import METRIC_KEYS
    from ..metrics import retrieval_metrics
    from ..prior_ranking import PRIOR_RANKING, SIMILARITY_RANKING, prior_acted
    from .diagnosis_prior import prior_ranking_scores
    from .heads import CachedComposedModel

    info = getattr(net, "checkpoint_info", None) or {}
    cache_size, net_size = getattr(cache, "image_size", None), getattr(net, "image_size", None)
    if cache_size and net_size and int(cache_size) != int(net_size):
        raise ValueError(
            f"{checkpoint or 'the checkpoint'} was trained on {net_size} px images, but the feature cache holds {cache_size} px "
            f"maps: its heads would be scored on features they never saw; build the cache at the checkpoint's size "
            f"(evaluate.yaml does by default; drop an --image_size override, or pass --image_size {net_size})")
    records = getattr(cache, "records", cache)
    held_out = [records[int(i)] for i in query_idx]
    seen, _ = trained_overlap(info, held_out)
    if seen:
        raise ValueError(
            f"{checkpoint or 'the checkpoint'} (fold {info.get('fold')}) was trained on {len(seen)} of the {len(held_out)} held-out cases "
            f"(first: {held_out[seen[0]].case_id}): its scores there would count cases it learned; evaluate each fold with its own "
            "checkpoint (the one train.yaml writes with the same --fold and --records)")
    if "trained_on" not in info:
        logger.warning("%s records no training cases (trained_on): whether it trained on the held-out cases is not checked", checkpoint or "the checkpoint")
    model = CachedComposedModel(net, "composed")
    q = model.encode_queries(cache, query_idx, tta=tta)
    t = model.encode_targets(cache, database_idx, tta=tta)
    labels = np.asarray(cache.labels)
    query_labels, database_labels = labels[np.asarray(query_idx)], labels[np.asarray(database_idx)]
    similarity = (q @ t.T).double()
    ranking, acted = similarity, None
    if net.diagnosis_prior is not None:
        ranking, terms = prior_ranking_scores(net, similarity, cache, query_idx, cache, database_idx)
        acted = prior_acted(terms)
    slot = DifferentialSlot.from_checkpoint_info(getattr(net, "checkpoint_info", None)) if differential else None
    opened = None
    if slot is not None:
        ranking, opened = differential_ranking(ranking, database_labels, slot, prior_acted=acted)

    def percent(scores: Any) -> dict[str, float]:
        m = retrieval_metrics(scores, query_labels, database_labels)
        return {k: round(100.0 * float(m[k]), 2) for k in METRIC_KEYS}

    result: dict[str, Any] = percent(ranking)
    result.update(
        ranking=PRIOR_RANKING if acted is not None else SIMILARITY_RANKING,
        prior_ordered=int(np.sum(acted)) if acted is not None else 0,
        differential_slot=None if slot is None else {"rank": slot.rank, "opened": int(np.sum(opened))},
        by_similarity=percent(similarity),
        n_queries=len(query_idx), n_database=len(database_idx), unit="percent",
        # what was scored: the collection (the cache's name), the image size of its maps, and the held-out cases
        collection=getattr(cache, "collection", None) or None, image_size=int(cache_size) if cache_size else None,
        query_case_ids_sha256=hashlib.sha256("\n".join(str(records[int(i)].case_id) for i in query_idx).encode()).hexdigest()
        if records and hasattr(records[0], "case_id") else None,
        checkpoint=None if checkpoint is None else str(Path(checkpoint).resolve()), fingerprint=net.fingerprint(),
        checkpoint_fold=info.get("fold"),  # the fold the checkpoint was trained for (-1: every case), as it records it
    )
    result["tta"] = bool(tta)  # how it was embedded: runs with and without the mirror view differ
    if output is not None:
        from ..atomic import atomic_write_text

        Path(output).parent.mkdir(parents=True, exist_ok=True)
        _keep_earlier(Path(output))
        atomic_write_text(Path(output), json.dumps(result, indent=2) + "\n")
    return result


def _keep_earlier(path: Path) -> None:
    """An earlier run's results at ``path`` are kept beside it (``<name>.<its time>.json``, said in the log), not replaced
    without a word: evaluate / inference runs with other settings write to the same file."""
    if not path.is_file():
        return
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(path.stat().st_mtime))
    kept = path.with_name(f"{path.stem}.{stamp}{path.suffix}")
    n = 1
    while kept.exists():
        n += 1
        kept = path.with_name(f"{path.stem}.{stamp}-{n}{path.suffix}")
    path.rename(kept)
    logger.warning("%s held an earlier run's results: kept as %s", path, kept.name)


@torch.no_grad()
def rank_collection(
    net: ComposedRetrievalNet, records: Sequence[Any], query_records: Sequence[Any], top_k: int = 5, output: str | Path | None = None,
    batch_size: int = 8, differential: bool = True, checkpoint: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Inference: embed ``records`` as the case library (images only) and rank it for each query (image + text)
    as the deploy app shows it: the similarity ranking (with a diagnosis prior in the network: similarity plus the
    query's diagnosis posterior, :mod:`monai_cir.prior_ranking`), with the checkpoint's differential slot when it
    records one (:func:`monai_cir.differential.differential_ranking`, the evaluation's form of the app's rule;
    ``differential=False``: no slot). Each hit's ``score`` is its similarity. A query that is itself a library case (same collection and case id)
    is left out of its own ranking: a collection ranked against itself is leave-one-out, never "each case's best
    match is itself". Each result: ``{"query", "text", "text_use", "hits": [{"rank", "case_id", "diagnosis", "score"}],
    "ranking", "differential"}`` (``text_use``: the text's weight and the findings read, None for no text, as the app's
    results.json; ``ranking``: :data:`~monai_cir.prior_ranking.RANKINGS`; ``differential``: None, or the slot's case with
    the app's notice). ``output`` also records the model: the ``checkpoint`` path it was loaded from (absolute) and its
    fingerprint (:meth:`ComposedRetrievalNet.fingerprint`)."""
    from ..data.preprocess import load_image
    from ..differential import DifferentialSlot, differential_ranking, query_margins
    from ..networks.diagnosis_prior import term_columns
    from ..prior_ranking import PRIOR_RANKING, SIMILARITY_RANKING, prior_acted
    from ..retrieval import text_use

    if len(records) < 2:
        raise ValueError(f"the case library has {len(records)} case(s); a ranking needs at least 2")

    def images(recs: Sequence[Any]) -> torch.Tensor:
        return torch.stack([load_image(r.image_path, net.image_size) for r in recs]).to(net.device)

    from ..progress import progress_bar

    net.eval()
    # two progress bars: the library's images, then the queries (on a 2-core CPU each ~0.5 s an image: minutes)
    starts = range(0, len(records), batch_size)
    t = torch.cat([net.encode_target(images(records[i : i + batch_size]))
                   for i in progress_bar(starts, desc=f"embedding the library ({len(records)} cases)", unit="batch")])
    # a case is (collection, case id): a query from another collection with the same id is not this library case
    column = {(getattr(r, "collection", ""), r.case_id): j for j, r in enumerate(records)}
    diagnoses = sorted({r.diagnosis for r in records})
    labels = np.array([diagnoses.index(r.diagnosis) for r in records])
    slot = DifferentialSlot.from_checkpoint_info(getattr(net, "checkpoint_info", None)) if differential else None
    # with a diagnosis prior, each library case's term column (the last: a diagnosis the prior does not know)
    prior_columns = term_columns(net.diagnosis_prior.classes, [r.diagnosis for r in records]) if net.diagnosis_prior is not None else []
    results = []
    for i in progress_bar(range(0, len(query_records), batch_size), desc=f"ranking {len(query_records)} queries", unit="batch"):
        chunk = list(query_records[i : i + batch_size])
        q, terms = net.encode_query_and_terms(images(chunk), [r.text for r in chunk])
        similarity = (q @ t.T).double().cpu()
        for row, r in enumerate(chunk):
            own = column.get((getattr(r, "collection", ""), r.case_id))
            if own is not None:  # leave-one-out: the query's own library copy is no match
                similarity[row, own] = -np.inf
        # the ranking: the similarity, or with the prior S + λ w log p(y_c | q) (the hits still report S)
        ranking = similarity if terms is None else similarity + terms.double().cpu()[:, prior_columns]
        acted = prior_acted(terms) if terms is not None else None  # whom the prior ordered
        opened = np.zeros(len(chunk), dtype=bool)
        order = ranking.argsort(dim=1, descending=True, stable=True)
        if slot is not None:
            shown, opened = differential_ranking(ranking, labels, slot, prior_acted=acted)
            order = shown.argsort(dim=1, descending=True, stable=True)
            margins, positions = query_margins(ranking, labels)
        for row, r in enumerate(chunk):
            top = [j for j in order[row, : top_k + 1].tolist() if np.isfinite(float(similarity[row, j]))][:top_k]
            ordered = acted is not None and bool(acted[row]) and bool(top)  # as the app: the prior ordered these hits
            hits = [{"rank": k + 1, "case_id": records[j].case_id, "diagnosis": records[j].diagnosis, "score": round(float(similarity[row, j]), 4)}
                    for k, j in enumerate(top)]
            shown_case = None
            if opened[row] and top_k >= slot.rank:
                case = hits[slot.rank - 1]
                query_slot = slot.for_query(ordered)  # the margin this query's slot opened under
                column_of_case = top[slot.rank - 1]
                # its rank by similarity alone (with the prior, the ranking's positions are K's)
                rank_by_similarity = int((similarity[row] > similarity[row, column_of_case]).sum()) + 1 if ordered else int(positions[row]) + 1
                shown_case = {"rank": slot.rank, "case_id": case["case_id"], "diagnosis": case["diagnosis"],
                              "similarity_rank": rank_by_similarity, "margin": round(float(margins[row]), 6), "max_margin": query_slot.margin,
                              "notice": query_slot.notice(case["diagnosis"], rank_by_similarity, hits[0]["diagnosis"], float(margins[row]), prior=ordered)}
            results.append({"query": r.case_id, "text": r.text, "text_use": text_use(net, r.text or "")[0], "hits": hits,
                            "ranking": PRIOR_RANKING if ordered else SIMILARITY_RANKING, "differential": shown_case})
    if output is not None:
        from ..atomic import atomic_write_text

        Path(output).parent.mkdir(parents=True, exist_ok=True)
        model = {"checkpoint": None if checkpoint is None else str(Path(checkpoint).resolve()), "fingerprint": net.fingerprint()}
        # what was ranked: the library and the queries, by collection, and whether queries were library cases (ranked
        # leave-one-out) or cases the model trained on (their rankings are no held-out result)
        trained, _ = trained_overlap(getattr(net, "checkpoint_info", None) or {}, list(query_records))

        def cases(recs: Sequence[Any]) -> dict[str, Any]:
            return {"cases": len(recs), "collections": dict(collections.Counter(str(getattr(r, "collection", "")) for r in recs))}

        ranked = {"library": cases(records),
                  "queries": {**cases(query_records),
                              "library_cases_left_out_of_their_own_ranking": sum((getattr(r, "collection", ""), r.case_id) in column for r in query_records),
                              "trained_on_by_the_model": len(trained)}}
        if trained:
            logger.warning("%d of the %d queries are cases the model trained on: their rankings are no held-out result", len(trained), len(query_records))
        _keep_earlier(Path(output))
        atomic_write_text(Path(output), json.dumps({"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "model": model, "ranked": ranked, "results": results},
                                                   indent=2) + "\n")
    return results


def subset_records(collection: str = "derm7pt", n: int = 30, root: str | Path | None = None, seed: int = 0) -> list[Any]:
    """A class-balanced random subset of ``n`` records of a collection (smoke tests, CI)."""
    from ..data.collections import load_collection

    records = load_collection(collection, root)
    chosen = class_round_robin([r.label for r in records], np.arange(len(records)), n, seed)
    return [records[i] for i in chosen]
