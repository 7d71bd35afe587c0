"""Student loss: cross-entropy on (soft) labels plus distillation from 1..N teachers.

loss = w_ce * CE(labels) + sum_t w_t * T^2 * KL(softmax(teacher_t / T) || softmax(student / T))
       + w_cos * (1 - cos(softmax(student), mean_t softmax(teacher_t)))
The T^2 factor keeps the distillation gradients' scale independent of T (Hinton et al.).
Soft labels (annotator shares, pseudolabels) train through the same CE term; forced-choice
battles (``ties`` False) through P(winner | not a tie), so they never teach "no ties".
Teachers' distributions are distilled whole: they predict battles that allow ties.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossWeights:
    ce: float = 1.0
    teachers: tuple[float, ...] = ()
    temperature: float = 1.0
    cosine: float = 0.0


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ties: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy; rows where ``ties`` is False score log softmax over (a, b) only."""
    logp = F.log_softmax(logits, dim=-1)
    if ties is not None:
        pair = F.log_softmax(logits[:, :2], dim=-1)
        logp = torch.where(ties[:, None], logp, torch.cat([pair, torch.zeros_like(logp[:, 2:])], dim=-1))
    return -(targets * logp).sum(dim=-1).mean()


def distillation_loss(student: torch.Tensor, labels: torch.Tensor, teachers: list[torch.Tensor], weights: LossWeights,
                      ties: torch.Tensor | None = None) -> torch.Tensor:
    loss = weights.ce * soft_cross_entropy(student, labels, ties) if weights.ce else student.new_zeros(())
    t = weights.temperature
    for teacher, w in zip(teachers, weights.teachers, strict=True):
        kl = F.kl_div(F.log_softmax(student / t, dim=-1), F.log_softmax(teacher / t, dim=-1), log_target=True, reduction="batchmean")
        loss = loss + w * t * t * kl
    if weights.cosine and teachers:
        target = torch.stack([F.softmax(x, dim=-1) for x in teachers]).mean(dim=0)
        loss = loss + weights.cosine * (1 - F.cosine_similarity(F.softmax(student, dim=-1), target, dim=-1)).mean()
    return loss
