"""Query texts as clinicians write them: the evaluation's text forms (issue 13).

Each form rewrites every query's text from its record (:func:`monai_cir.data.report.render_reports`),
re-encodes it with the frozen text encoder and gives a copy of the feature cache whose tokens, mask and
sentence embedding are the new text's (the image maps are shared). Only the *queries* read it: the
methods train on the cache's own (template) texts.

- ``template``: the report template (the cache's own texts);
- ``reworded``: wording styles held out of training (:data:`monai_cir.data.report.HELD_OUT_STYLES`);
- ``partial``: a random 1-4 of the criteria present;
- ``demographics``: age / sex / site only;
- ``empty``: no text (the image-only query);
- ``restyled``: the training styles' words instead of the template's (abbreviations, lists, prose, coded SR lines);
- ``findings_only``: a random 1-4 of the criteria present and no context (no age, sex, site or elevation).

Encoded forms are stored under ``$MONAI_CIR_CACHE/text_forms`` (keyed by the encoder fingerprint and the
texts), so a rerun does not encode again.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any

import torch

from ..data.report import TEXT_FORMS, render_reports

__all__ = ["TEXT_FORMS", "text_form_cache", "texts_cache", "encode_texts"]


def _text_net(cache: Any, net: Any = None):
    from ..networks import ComposedRetrievalNet, encoder_fingerprint

    net = net if net is not None else ComposedRetrievalNet.offline_default(image_size=int(cache.image_size or 260))
    if cache.fingerprint and encoder_fingerprint(net) != cache.fingerprint:
        raise ValueError("the text encoder given is not the one that built the feature cache (fingerprints differ); pass the cache's network")
    return net


def encode_texts(cache: Any, texts: Sequence[str], net: Any = None, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(tokens (N, n, d_T) fp16, token_mask (N, n), sentence (N, d_T))`` of ``texts`` with the encoder of
    ``cache`` (the feature cache's own encoding), memoised on disk."""
    from ..config import cache_dir
    from ..atomic import torch_save_atomic
    from ..data.feature_cache import _encode_texts

    from ..data.report import query_text

    # keyed by what the encoder is given (net.query_text; the offline default has the findings gate: the findings
    # in the template's words)
    read = [net.query_text(t) for t in texts] if net is not None else [query_text(t) for t in texts]
    key = hashlib.sha256("\x00".join([cache.fingerprint or "", *read]).encode()).hexdigest()[:24]
    path = cache_dir("text_forms") / f"{key}.pt"
    if path.exists():
        payload = torch.load(path, weights_only=True)
        return payload["tokens"], payload["token_mask"], payload["sentence"]
    tokens, mask, sentence = _encode_texts(_text_net(cache, net), list(texts), 64)
    torch_save_atomic({"tokens": tokens, "token_mask": mask, "sentence": sentence}, path)
    return tokens, mask, sentence


def text_form_cache(cache: Any, form: str, seed: int = 0, net: Any = None) -> Any:
    """A copy of ``cache`` whose texts are rendered in ``form`` (``template``: the cache itself)."""
    if form == "template":
        return cache
    texts = render_reports(cache.records, form, seed)
    if form == "empty":  # no tokens at all: what the encoder gives a blank text, without running it
        n, d = len(texts), int(cache.tokens.shape[-1])
        tokens, mask, sentence = torch.zeros(n, 1, d, dtype=torch.float16), torch.zeros(n, 1, dtype=torch.bool), torch.zeros(n, d)
        return _replace_texts(cache, texts, tokens, mask, sentence)
    return texts_cache(cache, texts, net)


def texts_cache(cache: Any, texts: Sequence[str], net: Any = None) -> Any:
    """A copy of ``cache`` whose case ``i`` has the text ``texts[i]`` (encoded with the cache's text encoder,
    :func:`encode_texts`; the image maps are shared)."""
    if len(texts) != len(cache.records):
        raise ValueError(f"texts_cache needs one text per cached case ({len(cache.records)}), got {len(texts)}")
    return _replace_texts(cache, list(texts), *encode_texts(cache, texts, net))


def _replace_texts(cache: Any, texts: list[str], tokens: torch.Tensor, mask: torch.Tensor, sentence: torch.Tensor) -> Any:
    records = [dataclasses.replace(r, text=t) for r, t in zip(cache.records, texts)]
    return dataclasses.replace(cache, records=records, tokens=tokens, token_mask=mask, sentence=sentence, path=None)
