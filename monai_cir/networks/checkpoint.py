"""Saving and loading a trained network: the trained weights plus the configuration that built it.

Two formats, both plain ``torch.save`` dicts of tensors, strings and numbers, read with
``torch.load(weights_only=True)`` (no code runs on load; a file that needs more is refused):

- ``monai-cir-head/1`` (encoders frozen, the default): only what training changed (composers, region
  masks, projections) and the encoders' names and fingerprint. The encoders come from their packages,
  so the file is small; loading refuses a head trained on other encoder weights.
- ``monai-cir-net/1`` (end-to-end fine-tuning, ``finetune: true``): the head *and* both encoders' weights
  and the text encoder's architecture, so the fine-tuned network loads back as it was trained.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from ..atomic import torch_save_atomic
from .text_encoder import ARCHITECTURE_KEYS, architecture_overrides
from .composed_retrieval import (
    DEFAULT_PRESET,
    ComposedRetrievalNet,
    create_model,
    hash_weights,
)

__all__ = ["save_checkpoint", "read_checkpoint", "record_in_checkpoint", "load_model", "encoder_fingerprint", "default_checkpoint_path",
           "checkpoint_in_folder", "MODEL_ENV"]

logger = logging.getLogger(__name__)

MODEL_ENV = "MONAI_CIR_MODEL"
_REPO_ROOT = Path(__file__).resolve().parents[2]
CONSTRUCTOR_KEYS = ("levels", "beta", "num_masks", "num_heads", "projection", "image_size", "text_gate", "full_text_findings", "late_fusion_share", "late_fusion", "diagnosis_prior")


def encoder_fingerprint(net: ComposedRetrievalNet) -> str:
    """SHA-256 of the encoders' names and weights (what the head was trained on)."""
    digest = hashlib.sha256(f"{net.config['image_model']}|{net.config['text_model']}".encode())
    hash_weights(digest, net.image_encoder.state_dict(), "image.")
    hash_weights(digest, net.text_encoder.state_dict(), "text.")
    return digest.hexdigest()


HEAD_FORMAT = "monai-cir-head/1"
NET_FORMAT = "monai-cir-net/1"
# The text architecture a whole-network checkpoint rebuilds (random init, then its own weights).
TEXT_ARCHITECTURE_KEYS = ARCHITECTURE_KEYS


def save_checkpoint(net: ComposedRetrievalNet, path: str | Path, include_encoders: bool | None = None, **extra: Any) -> Path:
    """Write the trained weights, config and encoder fingerprint atomically (temp file, then rename).

    ``include_encoders``: also store both encoders (format ``monai-cir-net/1``); default: when the
    encoders were trainable (``net.freeze_encoders`` is False, i.e. after end-to-end fine-tuning), since a
    head alone would not load on the packaged encoders. ``extra``: numbers / strings recorded with it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if include_encoders is None:
        include_encoders = not net.freeze_encoders
    payload = {
        "format": NET_FORMAT if include_encoders else HEAD_FORMAT,
        "preset": extra.pop("preset", DEFAULT_PRESET),
        "config": dict(net.config),
        "encoder_fingerprint": encoder_fingerprint(net),
        "head": {k: v.detach().cpu() for k, v in net.head_state_dict().items()},
        "extra": extra,
    }
    if include_encoders:
        text_config = net.text_encoder.model.config
        payload["text_architecture"] = {k: getattr(text_config, k) for k in TEXT_ARCHITECTURE_KEYS if hasattr(text_config, k)}
        payload["encoders"] = {
            "image": {k: v.detach().cpu() for k, v in net.image_encoder.state_dict().items()},
            "text": {k: v.detach().cpu() for k, v in net.text_encoder.state_dict().items()},
        }
    torch_save_atomic(payload, path)
    return path


def record_in_checkpoint(path: str | Path, **extra: Any) -> Path:
    """Add (or replace) entries of a checkpoint's ``extra`` record, atomically; the weights, config and
    fingerprint stay as they are (what is fitted after training, e.g. the differential slot's margin)."""
    payload = read_checkpoint(path)
    payload["extra"] = {**dict(payload.get("extra") or {}), **extra}
    torch_save_atomic(payload, path)
    return Path(path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The payload of a monai-cir checkpoint file, unpickled with ``weights_only=True``.

    Raises ValueError for a file that is not one, and for one that would need arbitrary Python objects
    (e.g. a pickle crafted to run code on load): such a file is refused, never executed."""
    path = Path(path)
    if _is_torchscript_archive(path):
        raise ValueError(f"{path} is a TorchScript export (as the bundle's model.ts), not a monai-cir checkpoint: pass the "
                         "checkpoint (model.pt) or the folder that holds it")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch names a refused object "Unsupported global: ..." or, for os / sys / posix (os.system, the usual payload),
        # "unsupported GLOBAL posix.system whose module posix is blocked"
        if "unsupported global" not in str(err).lower():  # not a pickle of objects at all (truncated, another format)
            raise ValueError(f"{path} is not a readable monai-cir checkpoint ({_torch_reason(err)}): pass a model.pt written by "
                             "monai-cir (the bundle's models/model.pt, or one `monai-cir train` wrote)") from err
        raise ValueError(
            f"refused to load {path}: it holds Python objects other than tensors, numbers and strings, which a "
            "monai-cir checkpoint never does (a file crafted to run code on load looks like this). Load only "
            f"checkpoints from a source you trust; re-save a trusted one with monai_cir.networks.save_checkpoint. ({err})"
        ) from err
    except Exception as err:
        raise ValueError(f"{path} is not a readable monai-cir checkpoint ({_torch_reason(err)}): pass a model.pt written by "
                         "monai-cir (the bundle's models/model.pt, or one `monai-cir train` wrote)") from err
    if not isinstance(payload, dict) or payload.get("format") not in (HEAD_FORMAT, NET_FORMAT):
        raise ValueError(f"{path} is not a monai-cir checkpoint (format {HEAD_FORMAT!r} or {NET_FORMAT!r})")
    problem = _payload_problem(payload)
    if problem is not None:
        raise ValueError(f"{path} is not a valid monai-cir checkpoint: {problem} (a damaged or hand-made file: pass a "
                         "model.pt written by monai-cir)")
    return payload


def _payload_problem(payload: dict[str, Any]) -> str | None:
    """What is wrong with a checkpoint payload's structure (None: nothing), so that a damaged or crafted file is refused
    in one line naming the field, not with a KeyError or TypeError deep in building the network."""
    config = payload.get("config")
    if not isinstance(config, dict):
        return "'config' is missing or not a mapping"
    for key in ("image_model", "text_model"):
        if not isinstance(config.get(key), str) or not config[key]:
            return f"config {key!r} is missing or not a name"
    if "image_size" in config:
        size = config["image_size"]
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            return f"config 'image_size' must be a positive integer, got {size!r}"
    if not isinstance(payload.get("encoder_fingerprint"), str):
        return "'encoder_fingerprint' is missing or not a string"
    head = payload.get("head")
    if not isinstance(head, dict) or not all(isinstance(v, torch.Tensor) for v in head.values()):
        return "'head' is missing or not a mapping of tensors"
    if not isinstance(payload.get("extra") or {}, dict):
        return "'extra' is not a mapping"
    if payload["format"] == NET_FORMAT:
        encoders = payload.get("encoders")
        if not isinstance(encoders, dict) or not all(isinstance(encoders.get(k), dict) for k in ("image", "text")):
            return "'encoders' must map 'image' and 'text' to their weights"
        try:
            architecture_overrides(payload.get("text_architecture"))
        except ValueError as err:
            return str(err)
    return None


def _is_torchscript_archive(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip with ``code/`` and ``constants.pkl``): torch.load would hand it to
    torch.jit.load, and refuses it with weights_only, advising to load it unsafely."""
    import zipfile

    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _torch_reason(err: Exception) -> str:
    """What torch.load found wrong, without its advice to load the file with weights_only=False (which would run
    whatever code a crafted file holds)."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        after = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()
        return after[0].strip() if after else type(err).__name__
    return (text.split(" In PyTorch 2.6", 1)[0].strip().splitlines() or [type(err).__name__])[0][:300]


# where a folder holds its checkpoint, in this order: a MODELS folder (model.pt beside index/), then a MONAI bundle
# folder or MODELS as `monai-deploy package --models DIR` lays it out (models/model.pt)
CHECKPOINT_IN_FOLDER = ("model.pt", "models/model.pt")


def checkpoint_in_folder(folder: str | Path) -> Path | None:
    """The checkpoint file ``folder`` holds (the first of :data:`CHECKPOINT_IN_FOLDER` there), None when neither:
    the one rule :func:`load_model`, the demo and the deploy app read a folder by."""
    return next((Path(folder) / name for name in CHECKPOINT_IN_FOLDER if (Path(folder) / name).is_file()), None)


def default_checkpoint_path() -> Path | None:
    """``$MONAI_CIR_MODEL``, else ``bundle/models/model.pt`` in the checkout, else None."""
    env = os.environ.get(MODEL_ENV)
    if env:
        return Path(env)
    candidate = _REPO_ROOT / "bundle" / "models" / "model.pt"
    return candidate if candidate.is_file() else None


def _scripted_network(payload: dict[str, Any], kwargs: dict[str, Any], artifact: str | Path) -> ComposedRetrievalNet | None:
    """The checkpoint's network around the encoder artifact's scripted encoders, or None (logged) when the
    artifact does not serve this checkpoint."""
    from .scripted import EncoderArtifactError, load_encoder_artifact

    config = payload["config"]
    expected = {
        "encoder_fingerprint": payload["encoder_fingerprint"], "image_model": config["image_model"],
        "text_model": config["text_model"], "image_size": int(config.get("image_size", 260)),
    }
    try:
        image_encoder, text_encoder = load_encoder_artifact(artifact, expected)
    except EncoderArtifactError as err:
        logger.warning("encoder artifact not used, building the encoders with timm and transformers (a slower start): %s", err)
        return None
    return ComposedRetrievalNet(image_encoder, text_encoder, **kwargs)


def load_model(
    path: str | Path | None = None,
    device: str | torch.device | None = None,
    check_encoders: bool = True,
    encoder_artifact: str | Path | None = None,
) -> ComposedRetrievalNet:
    """Build the network of a checkpoint (a ``.pt`` file or a bundle folder with ``models/model.pt``).

    With no path, :func:`default_checkpoint_path`; with no checkpoint at all, the untrained offline
    default (pretrained encoders, identity-initialised head) and a warning.

    ``encoder_artifact``: an encoder artifact folder (``<index>/encoders``, :mod:`monai_cir.networks.scripted`)
    to take the frozen encoders from instead of building them with timm and transformers (a fast start,
    CPU only): used when it was written for the encoders the checkpoint records (fingerprint, names, image
    size) and its files are intact; otherwise the eager encoders are built, with one log line saying why.
    """
    path = Path(path) if path is not None else default_checkpoint_path()
    if path is None:
        warnings.warn(
            "no trained checkpoint found (set MONAI_CIR_MODEL or train the bundle): using the offline encoders "
            "with an untrained head, i.e. frozen-feature retrieval",
            stacklevel=2,
        )
        net = ComposedRetrievalNet.offline_default(image_size=260)
    else:
        if path.is_dir():
            found = checkpoint_in_folder(path)
            if found is None:
                raise FileNotFoundError(f"no model checkpoint in the folder {path}: expected {' or '.join(CHECKPOINT_IN_FOLDER)} in it "
                                        "(train it first, e.g. bundle/configs/train.yaml)")
            path = found
        if not path.is_file():
            raise FileNotFoundError(f"model checkpoint not found: {path} (train it first, e.g. bundle/configs/train.yaml with that --fold)")
        payload = read_checkpoint(path)
        config = payload["config"]
        kwargs = {k: config[k] for k in CONSTRUCTOR_KEYS if k in config}
        preset = payload.get("preset", DEFAULT_PRESET)
        if encoder_artifact is not None and device is not None and torch.device(device).type != "cpu":
            encoder_artifact = None  # CPU traces: CUDA keeps the eager encoders (and their fp16 autocast)
        # the artifact's encoders are the ones the checkpoint records (fingerprint checked on load)
        net = _scripted_network(payload, kwargs, encoder_artifact) if encoder_artifact is not None else None
        if net is not None:
            logger.info("encoders from the TorchScript artifact %s", encoder_artifact)
        elif payload["format"] == NET_FORMAT:  # fine-tuned encoders: rebuild the architecture, then its own weights
            net = create_model(
                preset, pretrained=False, image_model=config["image_model"], text_model=config["text_model"],
                text_config_overrides=payload.get("text_architecture"), **kwargs,
            )
            net.image_encoder.load_state_dict(payload["encoders"]["image"])
            net.text_encoder.load_state_dict(payload["encoders"]["text"])
            if encoder_fingerprint(net) != payload["encoder_fingerprint"]:
                raise ValueError(f"{path} is damaged: its encoder weights do not match the fingerprint recorded with them")
        else:
            net = create_model(preset, pretrained=True, **kwargs)
            if check_encoders and encoder_fingerprint(net) != payload["encoder_fingerprint"]:
                raise ValueError(
                    f"{path} was trained on other encoder weights than the installed {config['image_model']} / "
                    f"{config['text_model']}: retrain the head or install the encoder packages it was trained with"
                )
        net.load_head_state_dict(payload["head"])
        net.checkpoint_info = dict(payload.get("extra") or {})
        logger.info("loaded %s (%s)", path, {k: config.get(k) for k in CONSTRUCTOR_KEYS})
    if device is not None:
        net = net.to(device)
    return net.eval()
