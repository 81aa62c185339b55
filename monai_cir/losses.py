"""Training losses for composed retrieval.

The paper does not state its loss (DESIGN.md section 3). Relevance is class-level (Eq. 1: a target is
relevant when it shares the query's diagnosis), so we use a **multi-positive supervised contrastive
loss** (Khosla et al. 2020) on the retrieval score of Eq. 9:

``L_qt = - 1/|B| Σ_i 1/|P(i)| Σ_{p ∈ P(i)} log( exp(S(q_i, t_p)/τ) / Σ_j exp(S(q_i, t_j)/τ) )``

with ``P(i) = {j : y_j = y_i}`` over the targets of the batch. Because ``S = <Q, T>`` with blocks of
norm √β / √(1-β) per level (DESIGN.md section 2), ``S`` lies in ``[-n_levels, n_levels]``; the loss
divides by ``n_levels`` so that ``τ`` is a temperature on an average cosine.

An optional target-target term ``L_tt`` (same form on ``<T_i, T_j>``, ``j != i``) trains the image
tower to rank database images by class, which is what the database side needs (it has no text).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["multi_positive_supcon", "ComposedSupConLoss"]


def multi_positive_supcon(
    logits: torch.Tensor, query_labels: torch.Tensor, target_labels: torch.Tensor, exclude_diagonal: bool = False
) -> torch.Tensor:
    """Multi-positive InfoNCE: mean over queries of the mean ``-log softmax`` over their positives.

    Args:
        logits: (B, N) scores already divided by the temperature.
        query_labels: (B,) class of each query; target_labels: (N,) class of each target.
        exclude_diagonal: drop ``logits[i, i]`` from both the positives and the normaliser
            (target-target term, where item i is its own trivial match).
    Queries without any positive are skipped; returns 0 (with a graph) when none has one.
    """
    if logits.ndim != 2 or logits.shape != (query_labels.numel(), target_labels.numel()):
        raise ValueError(
            f"logits must be (B, N) = ({query_labels.numel()}, {target_labels.numel()}), got {tuple(logits.shape)}"
        )
    logits = logits.float()
    positives = query_labels.view(-1, 1) == target_labels.view(1, -1)
    if exclude_diagonal:
        if logits.shape[0] != logits.shape[1]:
            raise ValueError("exclude_diagonal needs a square logits matrix (targets against themselves)")
        eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(eye, float("-inf"))
        positives = positives & ~eye
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    n_pos = positives.sum(dim=1)
    valid = n_pos > 0
    if not valid.any():  # zero with a graph; the masked diagonal's -inf would make it -inf * 0 = NaN
        return logits.masked_fill(~torch.isfinite(logits), 0.0).sum() * 0.0
    pos_log_prob = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    return -(pos_log_prob[valid] / n_pos[valid]).mean()


class ComposedSupConLoss(nn.Module):
    """``L = L_qt + λ_tt L_tt (+ λ_tq L_tq)`` on composed queries ``Q`` and target embeddings ``T``.

    Args:
        temperature: ``τ`` on the level-averaged score ``S / n_levels``.
        target_weight: ``λ_tt`` of the target-target term (0 disables it).
        symmetric_weight: ``λ_tq`` of the target->query direction (each target against the queries).
        num_levels: the number of levels summed in ``S`` (its scale); ``None`` infers it from ``‖Q‖²``.

    ``forward(preds, labels)`` takes ``preds = (Q, T)`` as returned by the training network, so it plugs
    into MONAI's ``SupervisedTrainer`` as ``loss_function``.
    """

    def __init__(
        self, temperature: float = 0.1, target_weight: float = 1.0, symmetric_weight: float = 0.0, num_levels: int | None = None
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.target_weight = float(target_weight)
        self.symmetric_weight = float(symmetric_weight)
        self.num_levels = num_levels

    def forward(self, preds: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        queries, targets = preds
        if queries.shape != targets.shape:
            raise ValueError(f"queries {tuple(queries.shape)} and targets {tuple(targets.shape)} must have the same shape")
        scale = self.num_levels or max(1.0, float(targets.detach().pow(2).sum(dim=1).mean().round()))
        denom = scale * self.temperature
        labels = labels.view(-1)
        qt = queries @ targets.T / denom
        loss = multi_positive_supcon(qt, labels, labels)
        if self.symmetric_weight:
            loss = loss + self.symmetric_weight * multi_positive_supcon(qt.T, labels, labels)
        if self.target_weight:
            tt = targets @ targets.T / denom
            loss = loss + self.target_weight * multi_positive_supcon(tt, labels, labels, exclude_diagonal=True)
        return loss
