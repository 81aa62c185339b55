"""What every benchmark does the same way: record where its numbers come from before it runs, and write its
results file whole.

    from _common import begin, mean_std, write_results   # bench/ is on sys.path when a script runs

    header = begin(__file__, "derm7pt ablations of the composed method", argv)   # first, before any work
    ...
    write_results(args.out, {**header, "wall_time_s": wall, "rows": rows}, markdown=lines)

``begin`` reads the commit first: the code that runs is the code checked out when the script starts, so a
tree edited during a long run must not be recorded as the run's code. A dirty tree is said at once, not
discovered in the results file afterwards.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# the encoders load from the offline packages; a benchmark never reaches the network
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:  # `python bench/x.py` from a checkout without an installed monai_cir
    sys.path.insert(1, str(_REPO))

__all__ = ["PAPER", "TARGETS", "begin", "command_line", "evaluate_variants", "mean_std", "write_results"]

# the paper's 5-fold means on Derm7pt (arXiv v1, Table 2) and issue 13's targets, percent, by results-file key
PAPER = {"acc@1": 79.3, "acc@2": 82.4, "acc@4": 87.3, "map": 81.7}
TARGETS = {"acc@1": 86.0, "acc@4": 88.0, "map": 90.0, "p@5": 85.0}


def command_line(script: str | Path, argv: Sequence[str] | None = None) -> str:
    """The command that reruns a benchmark: ``python bench/<script> <arguments>`` (``argv`` as given to its
    ``main``, else the process's own)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", f"bench/{Path(script).name}", *args])


def begin(script: str | Path, benchmark: str, argv: Sequence[str] | None = None, machine: bool = True, **machine_extra: Any) -> dict[str, Any]:
    """The provenance fields every results file starts with (``benchmark``, ``created``, ``command``,
    ``commit``, ``machine``), read now; prints the commit and warns when the tree is dirty. ``script``: the
    benchmark's ``__file__``; ``machine_extra``: more fields for :func:`~monai_cir.provenance.machine_info`."""
    from monai_cir.provenance import busy_warning, git_commit, machine_info

    commit = git_commit()
    header: dict[str, Any] = {
        "benchmark": f"{benchmark} (bench/{Path(script).name})",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command_line(script, argv),
        "commit": commit,
    }
    if machine:
        header["machine"] = machine_info(**machine_extra)
        warning = busy_warning(header["machine"])
        if warning:
            print(f"WARNING: {warning}", flush=True)
    state = "no git checkout" if commit["sha"] is None else commit["sha"][:12] + (" (DIRTY tree: the figures will say so)" if commit["dirty"] else " (clean)")
    print(f"{benchmark}: commit {state}", flush=True)
    return header


def mean_std(stat: dict[str, Any], digits: int = 1) -> str:
    """``"83.1 ± 2.0"`` from a ``{"mean", "std"}`` summary (``"83.1"`` when there is no std: one fold)."""
    text = f"{stat['mean']:.{digits}f}"
    return text + (f" ± {stat['std']:.{digits}f}" if stat.get("std") is not None else "")


def evaluate_variants(variants: dict[str, tuple[str, Any]], folds: Sequence[int], cache: Any,
                      text_forms: Sequence[str] | None = None) -> tuple[dict[str, Any], float]:
    """Score variants of a method on Derm7pt's folds: each ``name: (label, fn(ctx) -> (Q, T) | S)`` is registered
    for the run only (:func:`monai_cir.evaluation.register_method`), all run in one
    :func:`monai_cir.evaluation.evaluate` (so they share its memo of trained models; ``text_forms`` as there);
    ``(results, wall seconds)``."""
    import time

    from monai_cir.evaluation import evaluate
    from monai_cir.evaluation.registry import register_method, unregister_method

    for name, (label, fn) in variants.items():
        register_method(name, label=label)(fn)
    start = time.perf_counter()
    try:
        return evaluate(list(variants), folds=folds, cache=cache, progress=True, text_forms=text_forms), time.perf_counter() - start
    finally:
        for name in variants:
            unregister_method(name)


def cross_fit(rows: Sequence[dict[str, Any]], n_folds: int, keys: Sequence[str], param: str = "lambda",
              choose_on: Sequence[str] = ("acc@1", "map", "p@5")) -> dict[str, Any]:
    """One row cross-fitted from ``rows`` (the same method at several values of ``param``, each with per-fold
    ``{"folds": [...]}`` metrics): each held-out fold takes the row best on the other folds' mean of ``choose_on``
    (nothing is picked on the fold it scores); ``{param: the values picked, key: summary of that fold's figures}``."""
    import numpy as np

    def balanced(row: dict[str, Any], at: int) -> float:
        return float(np.mean([row[k]["folds"][at] for k in choose_on]))

    picked, fitted = [], {k: [] for k in keys}
    for at in range(n_folds):
        others = [i for i in range(n_folds) if i != at]
        best = max(rows, key=lambda r: np.mean([balanced(r, i) for i in others]) if others else 0.0)
        picked.append(best[param])
        for k in keys:
            fitted[k].append(best[k]["folds"][at])
    return {param: picked, **{k: {"folds": v, "mean": round(float(np.mean(v)), 2),
                                  "std": round(float(np.std(v, ddof=1)), 2) if len(v) > 1 else None} for k, v in fitted.items()}}


def write_results(path: str | Path, payload: dict[str, Any], markdown: str | Sequence[str] | None = None, indent: int = 1) -> Path:
    """Write ``payload`` as JSON to ``path`` and, when given, ``markdown`` (a text or its lines) beside it
    as ``.md``; each file is replaced whole (a run killed while writing leaves the previous results)."""
    from monai_cir.atomic import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(payload, indent=indent, default=_plain) + "\n")
    written = [path]
    if markdown is not None:
        text = markdown if isinstance(markdown, str) else "\n".join(markdown)
        atomic_write_text(path.with_suffix(".md"), text.rstrip("\n") + "\n")
        written.append(path.with_suffix(".md"))
    print("wrote " + " and ".join(str(p) for p in written), flush=True)
    return path


def _plain(value: Any) -> Any:
    """JSON for numpy scalars and arrays (what the benchmarks' summaries hold)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
