"""The method registry: each retrieval method is registered once, under its own name.

A method is a function of a :class:`~monai_cir.evaluation.protocol.FoldContext` returning
``(query_embeddings (Q, D), database_embeddings (N, D))`` (scored by inner product, so normalise for
cosine) or a similarity matrix ``(Q, N)``. It may also have a ``cross_site`` function of a
:class:`~monai_cir.evaluation.protocol.CrossSiteContext` returning the other collection's target
embeddings ``(N, D)`` or ``{"similarity": (N, N)}``.

Registering a name twice is an error (a second module cannot silently replace a method): the frozen
baselines and the untrained stand-ins live in :mod:`monai_cir.evaluation.baselines`, the trained
methods in :mod:`monai_cir.engine.cv_methods`, and ``monai_cir.evaluation`` imports both explicitly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Method", "MethodOutput", "available_methods", "get_method", "register_method", "unregister_method"]

MethodOutput = Any  # tuple[Tensor, Tensor] | Tensor


@dataclass(frozen=True)
class Method:
    """A registered retrieval method."""

    name: str
    fn: Callable[..., MethodOutput]
    label: str
    trained: bool = False
    cross_site: Callable[..., Any] | None = None
    description: str = ""
    fits_prior: bool = False


_REGISTRY: dict[str, Method] = {}


def register_method(
    name: str,
    *,
    label: str | None = None,
    trained: bool = True,
    cross_site: Callable[..., Any] | None = None,
    description: str = "",
    fits_prior: bool = False,
) -> Callable[[Callable[..., MethodOutput]], Callable[..., MethodOutput]]:
    """Decorator: register ``fn(ctx: FoldContext) -> (Q, T) | S`` as method ``name``.

    Args:
        name: the name used on the command line and in the results file; must not be registered yet.
        label: the row label in tables (default ``name``).
        trained: whether the method trains on ``ctx.train_indices`` (recorded in the results).
        cross_site: optional ``fn(ctx: CrossSiteContext) -> target embeddings (N, D)`` (scored by inner
            product) or ``{"similarity": (N, N)}``: lets the method take part in the cross-site evaluation.
        description: one line for ``--list-methods`` and the results file (default: the docstring's first line).
        fits_prior: whether the method fits the diagnosis prior on each fold's training cases (:func:`~monai_cir.evaluation.evaluate`
            checks before any fold that every fold's training cases allow it).
    """

    def decorator(fn: Callable[..., MethodOutput]) -> Callable[..., MethodOutput]:
        if name in _REGISTRY:
            previous = _REGISTRY[name].fn
            raise ValueError(
                f"method {name!r} is already registered by {previous.__module__}.{previous.__qualname__}; "
                "register the new method under a name of its own (or unregister_method the old one first)"
            )
        doc = description or ((fn.__doc__ or "").strip().splitlines() or [""])[0]
        _REGISTRY[name] = Method(name, fn, label or name, trained, cross_site, doc, fits_prior)
        return fn

    return decorator


def unregister_method(name: str) -> Method:
    """Remove method ``name`` from the registry (tests and notebooks that register temporary methods)."""
    if name not in _REGISTRY:
        raise ValueError(f"method {name!r} is not registered; registered: {sorted(_REGISTRY)}")
    return _REGISTRY.pop(name)


def available_methods() -> dict[str, Method]:
    """All registered methods, by name, in registration order."""
    return dict(_REGISTRY)


def get_method(name: str) -> Method:
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; available: {sorted(_REGISTRY)}")
    return _REGISTRY[name]
