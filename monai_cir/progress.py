"""Progress bars: one tqdm call for the whole project."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

__all__ = ["progress_bar"]


def progress_bar(iterable: Iterable[Any] | None = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar over ``iterable`` (or a manual one with ``total=``). ``enabled=False`` hides it; an enabled bar still
    follows tqdm's own environment settings (``TQDM_DISABLE=1`` hides every bar, e.g. in CI logs), which an explicit
    ``disable=False`` would override."""
    if not enabled:
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)
