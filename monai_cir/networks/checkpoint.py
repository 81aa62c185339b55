"""Saving and loading a trained network: the head weights plus the configuration that built it.

A checkpoint holds only what training changes (composers, region masks, projections) and the
encoders' names and fingerprint: the encoders themselves come from their packages, so the file is
small. Loading rebuilds the encoders from the config and refuses a checkpoint trained on other
encoder weights.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from .composed_retrieval import DEFAULT_PRESET, ComposedRetrievalNet, create_model, hash_weights

__all__ = ["save_checkpoint", "load_model", "encoder_fingerprint", "default_checkpoint_path", "MODEL_ENV"]

logger = logging.getLogger(__name__)

MODEL_ENV = "MONAI_CIR_MODEL"
_REPO_ROOT = Path(__file__).resolve().parents[2]
CONSTRUCTOR_KEYS = ("levels", "beta", "num_masks", "num_heads", "projection", "image_size")


def encoder_fingerprint(net: ComposedRetrievalNet) -> str:
    """SHA-256 of the encoders' names and weights (what the head was trained on)."""
    digest = hashlib.sha256(f"{net.config['image_model']}|{net.config['text_model']}".encode())
    hash_weights(digest, net.image_encoder.state_dict(), "image.")
    hash_weights(digest, net.text_encoder.state_dict(), "text.")
    return digest.hexdigest()


def save_checkpoint(net: ComposedRetrievalNet, path: str | Path, **extra: Any) -> Path:
    """Write the head weights, config and encoder fingerprint atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": "monai-cir-head/1",
        "preset": extra.pop("preset", DEFAULT_PRESET),
        "config": dict(net.config),
        "encoder_fingerprint": encoder_fingerprint(net),
        "head": {k: v.detach().cpu() for k, v in net.head_state_dict().items()},
        "extra": extra,
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def default_checkpoint_path() -> Path | None:
    """``$MONAI_CIR_MODEL``, else ``bundle/models/model.pt`` in the checkout, else None."""
    env = os.environ.get(MODEL_ENV)
    if env:
        return Path(env)
    candidate = _REPO_ROOT / "bundle" / "models" / "model.pt"
    return candidate if candidate.is_file() else None


def load_model(path: str | Path | None = None, device: str | torch.device | None = None, check_encoders: bool = True) -> ComposedRetrievalNet:
    """Build the network of a checkpoint (a ``.pt`` file or a bundle folder with ``models/model.pt``).

    With no path, :func:`default_checkpoint_path`; with no checkpoint at all, the untrained offline
    default (pretrained encoders, identity-initialised head) and a warning.
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
            path = path / "models" / "model.pt" if (path / "models" / "model.pt").is_file() else path / "model.pt"
        if not path.is_file():
            raise FileNotFoundError(f"model checkpoint not found: {path}")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:
            raise ValueError(f"{path} is not a readable monai-cir checkpoint: {err}") from err
        if not isinstance(payload, dict) or payload.get("format") != "monai-cir-head/1":
            raise ValueError(f"{path} is not a monai-cir head checkpoint (format 'monai-cir-head/1')")
        config = payload["config"]
        kwargs = {k: config[k] for k in CONSTRUCTOR_KEYS if k in config}
        net = create_model(payload.get("preset", DEFAULT_PRESET), pretrained=True, **kwargs)
        if check_encoders and encoder_fingerprint(net) != payload["encoder_fingerprint"]:
            raise ValueError(
                f"{path} was trained on other encoder weights than the installed {config['image_model']} / "
                f"{config['text_model']}: retrain the head or install the encoder packages it was trained with"
            )
        net.load_head_state_dict(payload["head"])
        logger.info("loaded %s (%s)", path, {k: config.get(k) for k in CONSTRUCTOR_KEYS})
    if device is not None:
        net = net.to(device)
    return net.eval()
