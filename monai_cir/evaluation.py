"""The paper's cross-validation protocol on Derm7pt, and a cross-site check (DESIGN.md section 3).

Per fold f of the committed stratified 5-fold split (:func:`monai_cir.data.load_folds`):
queries = the cases of fold f (image + text), database = the cases of the other four folds (images
only), relevant = same class (Eq. 1); metrics are arXiv v1 Eqs. 10-14 (:mod:`monai_cir.metrics`),
reported per fold and as mean ± sample std (ddof = 1), in percent.

Methods are plug-ins. A method is a function of a :class:`FoldContext` registered with
:func:`register_method`; it returns ``(query_embeddings (Q, D), database_embeddings (N, D))`` (scored
by inner product, so normalise for cosine) or a similarity matrix ``(Q, N)``. Trained methods train on
``ctx.train_indices`` (= the database folds: the held-out fold is never seen).

Cross-site (``cross_site="isic-uda1"``): each image of the other collection queries all its other
images (leave-one-out, relevant = same diagnosis). A method takes part when it registered a
``cross_site`` function: given a :class:`CrossSiteContext` (the whole Derm7pt cache to train on and
the target collection's cache) it returns target embeddings (N, D) — its ``encode_target`` — or
``{"similarity": (N, N)}``.

Built-in methods (frozen encoders, no training): ``imagenet_cosine`` (pooled last level, cosine: the
analogue of the paper's ResNet50-CosSim), ``frozen_multilevel_cosine`` (pooled L, M, H), and
*untrained* stand-ins for ``image_only``, ``text_only`` and ``composed``. The trained methods of
:mod:`monai_cir.engine.cv_methods` (if that module exists) register under the same names and replace
the stand-ins; the stand-ins stay available as ``image_only_untrained``, ``text_only_untrained`` and
``composed_untrained`` (what training starts from).
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .metrics import leave_one_out_metrics, retrieval_metrics, summarize_folds

__all__ = [
    "DEFAULT_METHODS",
    "METRIC_KEYS",
    "UNTRAINED_METHODS",
    "CrossSiteContext",
    "FoldContext",
    "Method",
    "available_methods",
    "evaluate",
    "fold_indices",
    "get_method",
    "register_method",
    "results_table",
    "retrieval_figure",
]

logger = logging.getLogger(__name__)

METRIC_KEYS = ("acc@1", "acc@2", "acc@4", "map")
DEFAULT_METHODS = ("imagenet_cosine", "frozen_multilevel_cosine", "image_only", "text_only", "composed")
UNTRAINED_METHODS = ("imagenet_cosine", "frozen_multilevel_cosine", "image_only_untrained", "text_only_untrained", "composed_untrained")
PLUGIN_MODULES = ("monai_cir.engine.cv_methods",)

MethodOutput = Any  # tuple[Tensor, Tensor] | Tensor


@dataclass
class FoldContext:
    """What a method sees for one fold.

    Attributes:
        cache: the Derm7pt :class:`~monai_cir.data.FeatureCache` (all 888 cases).
        query_indices: rows of the cache that query (the held-out fold).
        database_indices: rows that form the database (the other folds); also the training rows.
        fold: the fold number (0-based).
        config: the run configuration (image size, seed, method options...).
        seed: the random seed for this method and fold.
    """

    cache: Any
    query_indices: np.ndarray
    database_indices: np.ndarray
    fold: int
    config: dict[str, Any]
    seed: int = 0

    @property
    def train_indices(self) -> np.ndarray:
        return self.database_indices

    @property
    def query_labels(self) -> np.ndarray:
        return self.cache.labels[torch.as_tensor(self.query_indices)].numpy()

    @property
    def database_labels(self) -> np.ndarray:
        return self.cache.labels[torch.as_tensor(self.database_indices)].numpy()


@dataclass
class CrossSiteContext:
    """What a method's cross-site function sees: train on ``source`` (all of it), embed ``target``."""

    source: Any
    target: Any
    config: dict[str, Any]
    seed: int = 0

    @property
    def train_indices(self) -> np.ndarray:
        return np.arange(len(self.source))


@dataclass
class Method:
    """A registered retrieval method."""

    name: str
    fn: Callable[[FoldContext], MethodOutput]
    label: str
    trained: bool = False
    cross_site: Callable[[CrossSiteContext], torch.Tensor] | None = None
    description: str = ""


_REGISTRY: dict[str, Method] = {}
_PLUGINS_LOADED = False


def register_method(
    name: str,
    *,
    label: str | None = None,
    trained: bool = True,
    cross_site: Callable[[CrossSiteContext], torch.Tensor] | None = None,
    description: str = "",
) -> Callable[[Callable[[FoldContext], MethodOutput]], Callable[[FoldContext], MethodOutput]]:
    """Decorator: register ``fn(ctx: FoldContext) -> (Q, T) | S`` as method ``name``.

    Args:
        name: the name used on the command line and in the results file; a later registration
            replaces an earlier one (trained methods replace the untrained stand-ins).
        label: the row label in tables (default ``name``; stand-ins say ``"(untrained)"``).
        trained: whether the method trains on ``ctx.train_indices`` (recorded in the results).
        cross_site: optional ``fn(ctx: CrossSiteContext) -> target embeddings (N, D)`` (scored by inner
            product) or ``{"similarity": (N, N)}``; lets the method take part in the cross-site evaluation.
            that lets the method take part in the cross-site evaluation.
        description: one line for ``--help`` and the results file (defaults to the docstring's first line).
    """

    def decorator(fn: Callable[[FoldContext], MethodOutput]) -> Callable[[FoldContext], MethodOutput]:
        previous = _REGISTRY.get(name)
        if previous is not None:
            logger.debug("method %r: %s replaces %s", name, fn.__module__, previous.fn.__module__)
        doc = description or ((fn.__doc__ or "").strip().splitlines() or [""])[0]
        _REGISTRY[name] = Method(name, fn, label or name, trained, cross_site, doc)
        return fn

    return decorator


def _load_plugins() -> None:
    """Import the trained methods' module(s) once, if present (they replace same-named stand-ins)."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    for module in PLUGIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name is not None and module.startswith(err.name):  # the module itself (or its package) is absent
                logger.debug("no %s: the untrained stand-ins are used", module)
                continue
            raise


def available_methods() -> dict[str, Method]:
    """All registered methods (built-ins and plug-ins), by name."""
    _load_plugins()
    return dict(_REGISTRY)


def get_method(name: str) -> Method:
    methods = available_methods()
    if name not in methods:
        raise ValueError(f"unknown method {name!r}; available: {sorted(methods)}")
    return methods[name]


# ---------------------------------------------------------------------------------------- built-ins
def _pooled(cache: Any, indices: np.ndarray, levels: Sequence[int]) -> torch.Tensor:
    """Concatenated unit-norm pooled levels, scaled so that the inner product is the mean cosine."""
    blocks = [F.normalize(cache.pooled(level, indices), dim=-1) for level in levels]
    return torch.cat(blocks, dim=-1) / len(blocks) ** 0.5


def _imagenet_target(ctx: CrossSiteContext) -> torch.Tensor:
    return _pooled(ctx.target, np.arange(len(ctx.target)), [-1])


def _multilevel_target(ctx: CrossSiteContext) -> torch.Tensor:
    return _pooled(ctx.target, np.arange(len(ctx.target)), [0, 1, 2])


@register_method("imagenet_cosine", label="ImageNet features + cosine (frozen, last level)", trained=False, cross_site=_imagenet_target)
def imagenet_cosine(ctx: FoldContext) -> MethodOutput:
    """Frozen pretrained backbone, global-average-pooled last level (H), cosine; the text is ignored
    (the analogue of the paper's ResNet50-CosSim row)."""
    return _pooled(ctx.cache, ctx.query_indices, [-1]), _pooled(ctx.cache, ctx.database_indices, [-1])


@register_method("frozen_multilevel_cosine", label="frozen features + cosine (L, M, H)", trained=False, cross_site=_multilevel_target)
def frozen_multilevel_cosine(ctx: FoldContext) -> MethodOutput:
    """Frozen backbone, pooled L, M and H levels, mean of the three cosines; text ignored."""
    return _pooled(ctx.cache, ctx.query_indices, [0, 1, 2]), _pooled(ctx.cache, ctx.database_indices, [0, 1, 2])


def _untrained_head(config: dict[str, Any], seed: int):
    """A freshly initialised, seeded head (what training starts from) on the encoders of the network
    that built the cache (``config["_objects"]["net"]``; default: the offline architecture with
    random encoder weights, which are never run: the cache replaces them)."""
    from .networks import ComposedRetrievalNet, create_model

    objects = config.setdefault("_objects", {})
    key = ("untrained_head", seed)
    if key in objects:
        return objects[key]
    base = objects.get("net")
    if base is None:
        base = objects["net"] = create_model(pretrained=False, image_size=int(config.get("image_size", 260))).eval()
    torch.manual_seed(seed)
    net = ComposedRetrievalNet(base.image_encoder, base.text_encoder, image_size=base.image_size).eval()
    objects[key] = net
    return net


@torch.no_grad()
def _embed(net, cache: Any, indices: np.ndarray, texts: str | None = None, neutral: list[torch.Tensor] | None = None, chunk: int = 64) -> torch.Tensor:
    """Embed cache rows with the head: targets (``texts=None``), or composed queries with the cached
    text tokens (``texts="tokens"``); ``neutral`` replaces the image maps (text-only queries)."""
    out = []
    for start in range(0, len(indices), chunk):
        idx = indices[start : start + chunk]
        if neutral is not None:
            maps = [n.unsqueeze(0).expand(len(idx), *n.shape) for n in neutral]
        else:
            maps = cache.select_maps(idx)
        maps = [maps[i] for i in net.level_indices]
        if texts == "tokens":
            index = torch.as_tensor(idx, dtype=torch.long)
            maps = net.compose(maps, cache.tokens[index].float(), cache.token_mask[index])
        out.append(net.embed_maps(maps))
    return torch.cat(out)


@register_method("image_only_untrained", label="image only (untrained head)", trained=False)
@register_method("image_only", label="image only (untrained head)", trained=False)
def untrained_image_only(ctx: FoldContext) -> MethodOutput:
    """Stand-in: the untrained network's target embedding for both sides (no text)."""
    net = _untrained_head(ctx.config, ctx.seed)
    return _embed(net, ctx.cache, ctx.query_indices), _embed(net, ctx.cache, ctx.database_indices)


@register_method("text_only_untrained", label="text only (untrained head)", trained=False)
@register_method("text_only", label="text only (untrained head)", trained=False)
def untrained_text_only(ctx: FoldContext) -> MethodOutput:
    """Stand-in: the query text composed onto the mean database map (no query image), untrained head."""
    net = _untrained_head(ctx.config, ctx.seed)
    idx = torch.as_tensor(ctx.database_indices, dtype=torch.long)
    neutral = [m[idx].float().mean(0) for m in ctx.cache.maps]
    return _embed(net, ctx.cache, ctx.query_indices, texts="tokens", neutral=neutral), _embed(net, ctx.cache, ctx.database_indices)


@register_method("composed_untrained", label="composed (untrained head)", trained=False)
@register_method("composed", label="composed (untrained head)", trained=False)
def untrained_composed(ctx: FoldContext) -> MethodOutput:
    """Stand-in: image + text through the untrained composer (Eq. 5) and alignment (Eqs. 6-9)."""
    net = _untrained_head(ctx.config, ctx.seed)
    return _embed(net, ctx.cache, ctx.query_indices, texts="tokens"), _embed(net, ctx.cache, ctx.database_indices)


# ---------------------------------------------------------------------------------------- protocol
def fold_indices(cache: Any, folds: dict[str, int] | None = None) -> np.ndarray:
    """Fold number of each cache row, from the committed folds file (every case must be in it)."""
    from .data.folds import load_folds

    folds = load_folds() if folds is None else folds
    missing = [cid for cid in cache.case_ids if cid not in folds]
    if missing:
        raise ValueError(f"{len(missing)} cases have no fold in the folds file (first: {missing[:3]}); is the cache of Derm7pt?")
    return np.array([folds[cid] for cid in cache.case_ids])


def _similarity(output: MethodOutput, n_query: int, n_database: int, name: str) -> torch.Tensor:
    if isinstance(output, (tuple, list)) and len(output) == 2:
        q, t = (torch.as_tensor(x).float() for x in output)
        if q.ndim != 2 or t.ndim != 2 or q.shape[1] != t.shape[1]:
            raise ValueError(f"method {name!r} returned embeddings of shapes {tuple(q.shape)} and {tuple(t.shape)}; expected (Q, D) and (N, D)")
        s = q @ t.T
    else:
        s = torch.as_tensor(output).float()
    if tuple(s.shape) != (n_query, n_database):
        raise ValueError(f"method {name!r} gave a similarity of shape {tuple(s.shape)}, expected ({n_query}, {n_database})")
    return s


def _unit(values: dict[str, float]) -> dict[str, float]:
    return {k: round(100.0 * values[k], 2) for k in METRIC_KEYS}


def evaluate(
    methods: Sequence[str] = DEFAULT_METHODS,
    image_size: int = 260,
    folds: Sequence[int] = (0, 1, 2, 3, 4),
    cross_site: str | None = None,
    seed: int = 0,
    cache: Any = None,
    query_subset: int | None = None,
    keep_rankings: bool = False,
    progress: bool = True,
    root: Any = None,
    net: Any = None,
    method_options: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run the cross-validation protocol for ``methods``.

    Args:
        methods: registered method names (see :func:`available_methods`).
        image_size: preprocessing size of the feature cache.
        folds: which folds to hold out (0-based).
        cross_site: another collection (``"isic-uda1"``) for the leave-one-out cross-site check.
        seed: base seed; a method gets ``seed + fold``.
        cache: a ready Derm7pt :class:`~monai_cir.data.FeatureCache` (default: built or loaded).
        query_subset: use only the first n queries of each fold (smoke tests).
        keep_rankings: keep each fold's ranking and AP (for figures) under ``"_rankings"``.
        root: data root (default ``$MONAI_CIR_DATA``).
        net: the network whose frozen encoders build the caches (default: the offline pretrained
            encoders); untrained stand-ins put a fresh head on it.
        method_options: ``{method: {option: value}}``, recorded in the config and passed to the
            methods as ``ctx.config["method_options"]``.

    Returns:
        ``{"methods": {name: {"label", "trained", "acc@1": {"folds", "mean", "std"}, ..., "map": ..., "seconds"}},
        "cross_site": {collection: {name: {"acc@1", ..., "map"}}}, "config": {...}}``; all metrics in percent.
    """
    from tqdm.auto import tqdm

    from .data.feature_cache import build_feature_cache

    selected = [get_method(name) for name in methods]
    if cache is None:
        cache = build_feature_cache("derm7pt", image_size, net=net, root=root, progress=progress)
    fold_of = fold_indices(cache)
    config: dict[str, Any] = {
        "collection": "derm7pt",
        "image_size": int(cache.image_size or image_size),
        "folds": [int(f) for f in folds],
        "seed": int(seed),
        "methods": list(methods),
        "cross_site": cross_site,
        "query_subset": query_subset,
        "method_options": method_options or {},
        "encoder_fingerprint": cache.fingerprint,
        "protocol": "queries = held-out fold (image + text); database = other folds (images only); relevant = same class",
        "metrics": "arXiv v1 Eqs. 10-14, percent; std = sample std (ddof=1) over folds; ties: stable sort, database order",
    }
    run_config = dict(config)  # methods may keep objects under "_objects"
    run_config["_objects"] = {"net": net} if net is not None else {}
    results: dict[str, Any] = {"methods": {}, "cross_site": {}, "config": config}
    rankings: dict[str, dict[int, dict[str, Any]]] = {}
    bar = tqdm(total=len(selected) * len(folds), desc="evaluate", unit="fold", disable=not progress)
    for method in selected:
        per_fold: dict[str, list[float]] = {k: [] for k in METRIC_KEYS}
        start = time.perf_counter()
        for fold in folds:
            query = np.flatnonzero(fold_of == fold)
            database = np.flatnonzero(fold_of != fold)
            if len(query) == 0:
                raise ValueError(f"fold {fold} has no cases; folds are 0..{fold_of.max()}")
            if query_subset:
                query = query[:query_subset]
            ctx = FoldContext(cache, query, database, int(fold), run_config, seed + int(fold))
            s = _similarity(method.fn(ctx), len(query), len(database), method.name)
            m = retrieval_metrics(s, ctx.query_labels, ctx.database_labels)
            for k in METRIC_KEYS:
                per_fold[k].append(m[k])
            if keep_rankings:
                rankings.setdefault(method.name, {})[int(fold)] = {"query": query, "database": database, "ranking": m["ranking"], "ap": m["ap"], "similarity": s}
            bar.update(1)
        entry = {"label": method.label, "trained": method.trained, "description": method.description}
        entry.update({k: summarize_folds(per_fold[k], scale=100.0, ndigits=2) for k in METRIC_KEYS})
        entry["seconds"] = round(time.perf_counter() - start, 2)
        results["methods"][method.name] = entry
    bar.close()
    if cross_site:
        results["cross_site"][cross_site] = evaluate_cross_site(selected, cross_site, cache, run_config, seed, root=root, progress=progress, net=net)
    if keep_rankings:
        results["_rankings"] = rankings
        results["_cache"] = cache
    return results


def evaluate_cross_site(
    methods: Sequence[Method], collection: str, source: Any, config: dict[str, Any], seed: int = 0, root: Any = None, progress: bool = True, net: Any = None
) -> dict[str, Any]:
    """Leave-one-out on ``collection`` for every method with a ``cross_site`` function (others are
    listed under ``"skipped"``). Percent."""
    from .data.feature_cache import build_feature_cache

    target = build_feature_cache(collection, source.image_size, net=net, root=root, progress=progress)
    out: dict[str, Any] = {"protocol": "leave-one-out: each image queries the other N-1; relevant = same diagnosis", "n": len(target), "methods": {}, "skipped": []}
    for method in methods:
        if method.cross_site is None:
            out["skipped"].append(method.name)
            continue
        start = time.perf_counter()
        output = method.cross_site(CrossSiteContext(source, target, config, seed))
        if isinstance(output, dict):
            s = torch.as_tensor(output["similarity"]).float()
        else:
            emb = torch.as_tensor(output).float()
            if emb.ndim != 2 or emb.shape[0] != len(target):
                raise ValueError(f"method {method.name!r}: cross-site embeddings have shape {tuple(emb.shape)}, expected ({len(target)}, D)")
            s = emb @ emb.T
        m = leave_one_out_metrics(s, target.labels.numpy())
        entry = {"label": method.label, **_unit(m), "seconds": round(time.perf_counter() - start, 2)}
        out["methods"][method.name] = entry
    return out


def _cell(entry: dict[str, Any]) -> str:
    mean, std = entry["mean"], entry["std"]
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"


def results_table(results: dict[str, Any]) -> str:
    """Markdown tables of a results dict: the CV table, and the cross-site table when present."""
    lines = [
        "| Method | Acc@1 | Acc@2 | Acc@4 | mAP |",
        "|---|---|---|---|---|",
    ]
    for name, entry in results["methods"].items():
        lines.append(f"| {entry.get('label', name)} (`{name}`) | " + " | ".join(_cell(entry[k]) for k in METRIC_KEYS) + " |")
    folds = results.get("config", {}).get("folds")
    lines.append("")
    lines.append(f"Derm7pt, {len(folds or [])} folds {folds}; mean ± sample std (ddof=1) over folds, percent.")
    for collection, block in results.get("cross_site", {}).items():
        lines += ["", f"Cross-site: {collection}, {block['protocol']} (N = {block['n']})", "", "| Method | Acc@1 | Acc@2 | Acc@4 | mAP |", "|---|---|---|---|---|"]
        for name, entry in block["methods"].items():
            lines.append(f"| {entry['label']} (`{name}`) | " + " | ".join(f"{entry[k]:.1f}" for k in METRIC_KEYS) + " |")
        if block.get("skipped"):
            lines.append(f"\nNo cross-site encoder: {', '.join(block['skipped'])}.")
    return "\n".join(lines) + "\n"


CLASS_COLOURS = {0: "#d62728", 1: "#2ca02c", 2: "#1f77b4"}  # melanoma red, nevus green, benign keratosis blue


def retrieval_figure(cache: Any, fold_rankings: dict[int, dict[str, Any]], method: str, out_dir: Any, k: int = 5, image_size: int = 260) -> Any:
    """The qualitative figure of paper Fig. 3: one query per class (from the first evaluated fold),
    its text, and its top-``k`` database images with borders coloured by class.

    The figure shows Derm7pt images (research-only terms): write it to a git-ignored folder
    (``output/figures``), never into the repository. Returns the PNG path."""
    import textwrap
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from .data.collections import CLASS_NAMES
    from .data.preprocess import load_image

    fold = min(fold_rankings)
    info = fold_rankings[fold]
    labels = cache.labels.numpy()
    rows = []
    for c in range(len(CLASS_NAMES)):
        positions = [i for i, q in enumerate(info["query"]) if labels[q] == c]
        if positions:  # the query of this class with the median AP: a typical, not a cherry-picked, example
            positions.sort(key=lambda i: info["ap"][i])
            rows.append(positions[len(positions) // 2])
    fig, axes = plt.subplots(len(rows), k + 2, figsize=(2.2 * (k + 2), 2.9 * len(rows)), squeeze=False,
                             gridspec_kw={"width_ratios": [1.4] + [1] * (k + 1)})
    for r, qpos in enumerate(rows):
        q = info["query"][qpos]
        record = cache.records[q]
        text_ax = axes[r][0]
        text_ax.axis("off")
        text_ax.text(0.0, 0.5, "\n".join(textwrap.wrap(record.text or "(no text)", 34)), fontsize=7, va="center", ha="left", transform=text_ax.transAxes)
        panels = [(q, f"query ({record.diagnosis})\nAP {100 * info['ap'][qpos]:.0f}")]
        for rank, dpos in enumerate(info["ranking"][qpos][:k], start=1):
            d = info["database"][dpos]
            panels.append((d, f"#{rank} {cache.records[d].diagnosis}\n{float(info['similarity'][qpos, dpos]):.3f}"))
        for c, (index, title) in enumerate(panels, start=1):
            ax = axes[r][c]
            ax.imshow(load_image(cache.records[index].image_path, image_size).permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            colour = CLASS_COLOURS.get(int(labels[index]), "black")
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(5 if c > 1 else 2)
            ax.set_title(title, fontsize=8)
    handles = [Patch(edgecolor=CLASS_COLOURS[i], facecolor="none", linewidth=3, label=n) for i, n in enumerate(CLASS_NAMES)]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8)
    fig.suptitle(f"Top-{k} retrieval, {method}, Derm7pt fold {fold} (queries with median AP per class)", fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"derm7pt_top{k}_{method}_fold{fold}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
