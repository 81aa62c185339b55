"""The diagnosis prior: the query's diagnosis posterior in the ranking (issue 13).

A library case ``c`` with the biopsy-confirmed (or otherwise recorded) diagnosis ``y_c`` is ranked by

    K(q, c) = S(q, c) + λ w(q) log p(y_c | q)

``S`` the network's similarity (Eq. 9, + the late-fusion branch), ``p`` a linear probe of the query's diagnosis on
the text's mean token embedding and each L/M/H image map's whole-map mean (the late-fusion branch's inputs, before its
grid: what the probes are fitted and evaluated on, and what the app gives them), ``w`` the
findings gate's text weight (``min(1, n / 5)``, :meth:`~.ComposedRetrievalNet.text_weights`): a text that names no
7-point finding adds nothing, and the query is ranked by ``S`` alone, as without the prior. Two probes: one fitted
on the training cases' full reports (for texts naming 5 or more findings) and one on those and their partial
reports (fewer). Within one diagnosis ``K`` orders the cases as ``S`` does, so a library is ranked exactly by one
search per diagnosis (:class:`monai_cir.prior_ranking.PriorRankedIndex`); the index stores ``S``'s vectors only.

Measured (``bench/results/derm7pt_class_posterior_matched.md``, ``monai-cir evaluate``'s
``composed_late_fusion_prior``): at λ 10 the ranking is, in effect, the predicted diagnosis's closest cases first.
A library case whose diagnosis is not one of the probe's classes gets ``λ w E_p[log p]``, the term's expected
value under the query's posterior: it lies between the terms of the likely and the unlikely diagnoses, close to the
predicted one's for a confident query (for p = (0.9, 0.09, 0.01) at λ w = 10: -3.6 against -1.1, -24 and -46), so
such a case ranks a little behind the predicted diagnosis's cases of the same similarity and ahead of the others'.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DEFAULT_PRIOR_STRENGTH", "DiagnosisPrior", "FULL_TEXT_PROBE", "PARTIAL_TEXT_PROBE", "term_columns"]

# λ: chosen per held-out fold on the other four folds' mean of Acc@1, mAP and P@5 over the grid 0 ... 1000, it
# was 10 on every fold (bench/results/derm7pt_class_posterior.md, "cross-fitted")
DEFAULT_PRIOR_STRENGTH = 10.0
FULL_TEXT_PROBE, PARTIAL_TEXT_PROBE = 0, 1  # the probes, by the text weight of the query they serve (w = 1, w < 1)
_LOG_FLOOR = math.log(1e-12)  # log p floor: one confidently wrong probe cannot push a case out of reach


def term_columns(classes: Sequence[str], diagnoses: Sequence[str]) -> list[int]:
    """The column of each library diagnosis among a prior's terms (:meth:`DiagnosisPrior.forward`): its class's,
    or ``len(classes)``, the last, for a diagnosis the prior does not know."""
    position = {c: i for i, c in enumerate(classes)}
    return [position.get(d, len(classes)) for d in diagnoses]


class DiagnosisPrior(nn.Module):
    """``λ w log p(y | q)`` for each diagnosis ``y`` of :attr:`classes` (see the module docstring).

    Args:
        classes: the diagnoses the probes tell apart (the training collection's class names), in the probes'
            column order.
        in_dim: the probes' input width: the text encoder's width + the image levels' channels (the late-fusion
            branch's inputs, ``[sentence, pooled L/M/H]``).
        strength: λ (>= 0; 0 = the ranking is ``S``).

    The probes (standardisation + multinomial logistic regression) are buffers, saved with the head; an unfitted
    prior (:attr:`fitted` False) refuses to rank rather than rank by zeros."""

    def __init__(self, classes: Sequence[str], in_dim: int, strength: float = DEFAULT_PRIOR_STRENGTH) -> None:
        super().__init__()
        classes = tuple(classes)
        if len(classes) < 2 or len(set(classes)) != len(classes) or not all(isinstance(c, str) and c.strip() for c in classes):
            raise ValueError(f"DiagnosisPrior.classes must be two or more distinct diagnosis names, got {list(classes)}")
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength) or strength < 0:
            raise ValueError(f"DiagnosisPrior.strength (lambda) must be a finite number >= 0, got {strength!r}")
        if int(in_dim) < 1:
            raise ValueError(f"DiagnosisPrior.in_dim must be >= 1, got {in_dim!r}")
        self.classes = classes
        self.strength = float(strength)
        n, d = len(classes), int(in_dim)
        self.register_buffer("mean", torch.zeros(2, d))
        self.register_buffer("scale", torch.ones(2, d))
        self.register_buffer("weight", torch.zeros(2, n, d))
        self.register_buffer("bias", torch.zeros(2, n))
        self.register_buffer("fitted", torch.zeros(2, dtype=torch.bool))

    @property
    def options(self) -> dict[str, Any]:
        """What the network's config records (the constructor's arguments but ``in_dim``)."""
        return {"classes": list(self.classes), "strength": self.strength}

    @torch.no_grad()
    def set_probe(self, which: int, mean: Any, scale: Any, weight: Any, bias: Any) -> None:
        """Store a fitted probe: ``(x - mean) / scale`` then ``weight @ . + bias`` gives the classes' logits.
        ``which``: :data:`FULL_TEXT_PROBE` or :data:`PARTIAL_TEXT_PROBE`."""
        if which not in (FULL_TEXT_PROBE, PARTIAL_TEXT_PROBE):
            raise ValueError(f"which must be {FULL_TEXT_PROBE} (full texts) or {PARTIAL_TEXT_PROBE} (partial texts), got {which!r}")
        values = {"mean": mean, "scale": scale, "weight": weight, "bias": bias}
        for name, value in values.items():
            tensor = torch.as_tensor(value, dtype=torch.float32)
            expected = tuple(getattr(self, name).shape[1:])
            if tuple(tensor.shape) != expected or not torch.isfinite(tensor).all():
                raise ValueError(f"probe {name} must be a finite tensor of shape {expected}, got shape {tuple(tensor.shape)}")
            getattr(self, name)[which] = tensor.to(getattr(self, name).device)
        if not bool((self.scale[which] > 0).all()):
            raise ValueError("probe scale must be > 0 for every input")
        self.fitted[which] = True

    def log_posterior(self, pooled: torch.Tensor, sentence: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``log p(y | q)`` (B, C) from the pooled image levels (B, Σ C_i), the texts' mean token embeddings
        (B, d_T) and the text weights (B,) that pick each query's probe."""
        if not bool(self.fitted.all()):
            raise ValueError("the diagnosis prior's probes are not fitted: fit them (monai_cir.engine.fit_diagnosis_prior) "
                             "or build the network without diagnosis_prior")
        x = torch.cat([sentence.float(), pooled.float()], dim=1)
        probe = (weights.to(x.device).view(-1) < 1).long()
        z = (x - self.mean[probe]) / self.scale[probe]
        logits = torch.einsum("bd,bcd->bc", z, self.weight[probe]) + self.bias[probe]
        return F.log_softmax(logits, dim=1).clamp_min(_LOG_FLOOR)

    def forward(self, pooled: torch.Tensor, sentence: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The ranking terms (B, C + 1): ``λ w log p(y | q)`` for each of :attr:`classes`, then ``λ w E_p[log p]``
        for a library case of any other diagnosis (all zero for a query whose text the findings gate leaves out)."""
        w = weights.to(pooled.device, torch.float32).view(-1, 1)
        log_p = self.log_posterior(pooled, sentence, weights)
        expected = (log_p.exp() * log_p).sum(dim=1, keepdim=True)
        return self.strength * w * torch.cat([log_p, expected], dim=1)
