"""Locations and runtime choices shared by every part of the package."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch

_T = TypeVar("_T")

__all__ = ["data_root", "cache_dir", "in_checkout", "layered_settings", "resolve_device", "autocast_for", "quiet_chatty_loggers", "in_a_passing_thread", "DATA_ROOT_ENV", "CACHE_DIR_ENV"]

DATA_ROOT_ENV = "MONAI_CIR_DATA"
CACHE_DIR_ENV = "MONAI_CIR_CACHE"

_REPO_ROOT = Path(__file__).resolve().parent.parent


def in_checkout() -> bool:
    """Whether monai_cir runs from a checkout of the project (beside its setup.cfg and bundle/), not from an installed
    package: installed, the folder above it is site-packages, where nothing may be written."""
    return (_REPO_ROOT / "setup.cfg").is_file() and (_REPO_ROOT / "bundle").is_dir()


def data_root() -> Path:
    """Root of the real collections: ``$MONAI_CIR_DATA``, else ``../shared/data`` beside the repository.

    Derm7pt lives under ``derm7pt/release_v0`` and ISIC UDA-1 under ``isic-uda1``. The path is not
    checked here: the dataset classes check it and say how to obtain the data when it is missing.
    """
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return (_REPO_ROOT.parent / "shared" / "data").resolve()


def cache_dir(*parts: str) -> Path:
    """A git-ignored folder for derived files (feature caches, converted weights, demo output).

    ``$MONAI_CIR_CACHE``, else ``.cache`` in the checkout, else (an installed package) ``$XDG_CACHE_HOME/monai-cir``
    (``~/.cache/monai-cir``), never site-packages. Feature caches are derived from the images, so they must never be
    committed (data terms): ``.cache/`` is in ``.gitignore``.
    """
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        root = Path(env).expanduser()
    elif in_checkout():
        root = _REPO_ROOT / ".cache"
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "monai-cir"
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _given(value: Any) -> bool:
    """Whether a layer sets ``value``: None, a blank string and an empty list mean "not set here"."""
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, (list, tuple, set, dict)):
        return bool(value)
    return True


def layered_settings(
    section: str,
    known: Collection[str],
    env: Mapping[str, str],
    *,
    app_yaml: Path | None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The settings given for ``known`` names, each from the highest layer that gives it:
    ``section:`` of ``app_yaml`` < environment (``env`` maps a name to its variable) < ``flags``.

    A layer gives a value unless it is None, a blank string or an empty list: so an unset flag
    (argparse's None, an ``append`` flag's []), an empty variable (``MONAI_CIR_X=``) and a ``null``
    in the yaml all leave the layer below, and what no layer gives is left to the caller's defaults.
    Environment values are stripped strings (the caller converts them). ``app_yaml`` None or a
    missing file: no yaml layer. ``environ`` None: :data:`os.environ`.

    Why one function: the app (``deploy_app.settings``) and the DICOM service (``monai_cir.service``)
    are configured alike, so a value must mean the same in both."""
    known = set(known)
    values: dict[str, Any] = {}
    if app_yaml is not None and Path(app_yaml).is_file():
        import yaml

        loaded = yaml.safe_load(Path(app_yaml).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{app_yaml}: must be a mapping with a '{section}:' section, got {type(loaded).__name__}")
        part = loaded.get(section)
        if part is not None and not isinstance(part, dict):
            raise ValueError(f"{app_yaml}: '{section}:' must be a mapping of setting: value, got {type(part).__name__}")
        unknown = sorted(set(part or {}) - known)
        if unknown:
            raise ValueError(f"{app_yaml}: unknown setting(s) {unknown} in '{section}:'; known: {sorted(known)}")
        values.update({k: v for k, v in (part or {}).items() if _given(v)})
    environ = os.environ if environ is None else environ
    values.update({key: environ[name].strip() for key, name in env.items() if key in known and _given(environ.get(name))})
    unknown = sorted(set(flags or {}) - known)
    if unknown:  # a caller's mistake (flag dest names are code), not a user's
        raise ValueError(f"flags {unknown} are not {section} settings; known: {sorted(known)}")
    values.update({k: v for k, v in (flags or {}).items() if _given(v)})
    return values


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Where a command's network runs: ``None`` or ``"auto"`` = CUDA when present, else CPU; otherwise the
    device asked for, refused with a clear error when it is CUDA and CUDA is not available.

    Entry points (the CLI, the demo, the app's ``--device``, training) resolve their device here once and
    place the network there; the library functions then run where the network is (their ``device=None``)."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a device torch knows; use auto, cpu or cuda[:N]") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for but CUDA is not available here; use auto or cpu")
    return resolved


def autocast_for(device: torch.device | str) -> contextlib.AbstractContextManager:
    """The mixed-precision policy of every forward pass (network and feature cache): fp16 autocast on
    CUDA, full precision elsewhere."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


# libraries that log routine steps at INFO: highdicom ~10 lines per SR it builds, faiss its loader
CHATTY_LOGGERS = ("highdicom", "faiss", "faiss.loader")


def quiet_chatty_loggers() -> None:
    """Log only warnings and errors of :data:`CHATTY_LOGGERS`, so that an INFO log says what the
    program did (each study, each file written) instead of how a library built it."""
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def in_a_passing_thread(work: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """``work(*args, **kwargs)`` in a thread that ends when it returns: its result, or its exception.

    Why: torch's CPU thread pool (GNU OpenMP) keeps a team of worker threads for every thread that
    ran a parallel operation, for as long as that thread lives. While one thread holds such a team,
    the forwards of any other thread lose much of their parallelism (``bench/thread_parallelism.py``:
    on two CPUs an EfficientNet-Lite2 forward takes 1.5-2x as long, by CPU model), and the Deploy SDK runs the
    app's operators in a thread of its own. Even a small parallel operation (``torch.rand`` of an
    image) makes a team. So what loads models in a process's main thread
    (:func:`deploy_app.app.load_models`) runs here, and leaves no team behind."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = work(*args, **kwargs)
        except BaseException as err:  # noqa: BLE001 (raised again in the caller's thread)
            outcome["error"] = err

    thread = threading.Thread(target=run, name=f"passing-{getattr(work, '__name__', 'work')}")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
