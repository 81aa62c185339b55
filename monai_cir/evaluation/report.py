"""Reporting a results dict: the markdown tables and the qualitative figure (paper Fig. 3)."""

from __future__ import annotations

import json
from typing import Any

from .protocol import METRIC_KEYS

__all__ = ["METRIC_NAMES", "results_table", "retrieval_figure", "text_forms_table"]

METRIC_NAMES = {"acc@1": "Acc@1", "acc@2": "Acc@2", "acc@4": "Acc@4", "map": "mAP", "p@5": "P@5"}


def _cell(entry: dict[str, Any]) -> str:
    mean, std = entry["mean"], entry["std"]
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"


def merged_commit(results: dict[str, Any], commit: dict[str, Any]) -> dict[str, Any]:
    """The commit a merged results file records: ``commit`` (this run's) when every method's runs ran on it, dirty when
    any run's tree was; ``"mixed: see each method's runs"`` only when the runs' commits differ."""
    runs = [r for entry in results["methods"].values() for r in entry.get("runs", [])]
    dirty = any(r.get("dirty") for r in runs)
    if all(r.get("commit") == commit.get("sha") for r in runs):
        return {**commit, "dirty": dirty}
    return {"sha": "mixed: see each method's runs", "dirty": dirty}


def results_header(results: dict[str, Any], image_size: int) -> str:
    """The title and provenance line of a results file's Markdown (``monai-cir evaluate``): the collection, the commit
    (and a dirty tree), the image size, the wall time, and any method options that change a method's recipe (a run
    with 2 epochs must not read as the default recipe's)."""
    config = results["config"]
    collection = "Derm7pt" if config["collection"] == "derm7pt" else config["collection"]
    commit = results["commit"]
    options = config.get("method_options") or {}
    changed = f"; method options changed from the defaults: `{json.dumps(options, sort_keys=True)}`" if options else ""
    return (f"# {collection} cross-validation\n\nProduced by `monai-cir evaluate` (commit {commit['sha']}"
            f"{', dirty tree' if commit.get('dirty') else ''}, image size {image_size}, wall time {results['wall_time_s']:.0f} s{changed}).\n\n")


def results_table(results: dict[str, Any]) -> str:
    """Markdown tables of a results dict: the CV table, and the cross-site table when present."""
    header = ["| Method | " + " | ".join(METRIC_NAMES[k] for k in METRIC_KEYS) + " |", "|---" * (len(METRIC_KEYS) + 1) + "|"]
    lines = list(header)
    for name, entry in results["methods"].items():
        folds = entry.get("held_out_folds")
        suffix = "" if folds is None or folds == results.get("config", {}).get("folds") else f" (folds {folds})"
        lines.append(f"| {entry.get('label', name)} (`{name}`){suffix} | " + " | ".join(_cell(entry[k]) if k in entry else "–" for k in METRIC_KEYS) + " |")
    folds = results.get("config", {}).get("folds")
    lines.append("")
    collection = results.get("config", {}).get("collection", "derm7pt")
    name = "Derm7pt" if collection == "derm7pt" else collection  # your own collection is named as it is
    lines.append(f"{name}, {len(folds or [])} folds {folds}; mean ± sample std (ddof=1) over folds, percent. "
                 "P@5 = share of the top 5 with the query's diagnosis.")
    for collection, block in results.get("cross_site", {}).items():
        lines += ["", f"Cross-site: {collection}, {block['protocol']} (N = {block['n']})", "", *header]
        for name, entry in block["methods"].items():
            lines.append(f"| {entry['label']} (`{name}`) | " + " | ".join(f"{entry[k]:.1f}" if k in entry else "–" for k in METRIC_KEYS) + " |")
        if block.get("skipped"):
            lines.append(f"\nNo cross-site encoder: {', '.join(block['skipped'])}.")
    return "\n".join(lines) + "\n"


def _mean(value: Any) -> float:
    return float(value["mean"]) if isinstance(value, dict) else float(value)


def _averaged_over(by_form: dict[str, dict[str, Any]]) -> str:
    """What a cross-validation text-forms cell averages: the held-out folds its entries name."""
    folds = {tuple(entry["held_out_folds"]) for by_method in by_form.values() for entry in by_method.values() if isinstance(entry, dict) and entry.get("held_out_folds")}
    if len(folds) != 1:
        return "means over each method's held-out folds"
    (only,) = folds
    return f"mean over {len(only)} held-out folds {list(only)}" if len(only) > 1 else f"held-out fold {only[0]} alone"


def text_forms_table(results: dict[str, Any]) -> str:
    """Markdown: per collection, Acc@1 / mAP of every method with the query texts in each form."""
    blocks = results.get("text_forms") or {}
    cross_validated = results.get("config", {}).get("collection", "derm7pt")  # the folds' collection; the others: cross-site
    lines: list[str] = []
    for collection, by_form in blocks.items():
        forms = list(by_form)
        methods = list(next(iter(by_form.values()), {}))
        lines += [f"Text forms, {collection} (Acc@1 / mAP, percent; {_averaged_over(by_form) if collection == cross_validated else 'leave-one-out'})", "",
                  "| Method | " + " | ".join(forms) + " |", "|---" * (len(forms) + 1) + "|"]
        for name in methods:
            cells = []
            for form in forms:
                entry = by_form[form].get(name)
                cells.append("–" if entry is None else f"{_mean(entry['acc@1']):.1f} / {_mean(entry['map']):.1f}")
            lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
        texts = (results.get("cross_site", {}).get(collection) or {}).get("text_forms_texts") if collection != cross_validated else None
        if texts:
            n = results["cross_site"][collection].get("n", "?")
            said = [f"{form} {t['naming_a_finding']} of {n}" + (f" (the same texts as {t['same_texts_as']})" if t.get("same_texts_as") else "")
                    for form, t in texts.items()]
            lines += ["", "Query texts naming a 7-point finding: " + "; ".join(said) + "."]
            if not any(t["naming_a_finding"] for t in texts.values()):
                lines.append(f"No {collection} text names a finding: a findings-gated method's rows are its image-only query in every form.")
        lines.append("")
    return "\n".join(lines)


def _class_colour(label: int) -> str:
    """The report's colour of class ``label`` (:data:`monai_cir.dicom.report_pdf.CLASS_COLOURS`)."""
    from ..data.collections import CLASS_NAMES
    from ..dicom.report_pdf import CLASS_COLOURS, OTHER_CLASS_COLOUR

    return CLASS_COLOURS.get(CLASS_NAMES[label], OTHER_CLASS_COLOUR) if 0 <= label < len(CLASS_NAMES) else OTHER_CLASS_COLOUR


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

    from ..data.collections import CLASS_NAMES
    from ..data.preprocess import load_image

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
            colour = _class_colour(int(labels[index]))
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(5 if c > 1 else 2)
            ax.set_title(title, fontsize=8)
    handles = [Patch(edgecolor=_class_colour(i), facecolor="none", linewidth=3, label=n) for i, n in enumerate(CLASS_NAMES)]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8)
    fig.suptitle(f"Top-{k} retrieval, {method}, Derm7pt fold {fold} (queries with median AP per class)", fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"derm7pt_top{k}_{method}_fold{fold}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
