"""The per-example losses the training loop minimises (one definition each)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["distillation_loss", "features_loss", "per_example_cross_entropy", "targets_loss"]


def per_example_cross_entropy(scores: torch.Tensor, labels: torch.Tensor, *, log_probabilities: bool = False
                              ) -> torch.Tensor:
    """Cross-entropy of each row, shape ``[rows]`` (what ``fusion.training.train`` expects from a loss).

    Args:
        scores: ``[rows, classes]`` logits, or log-probabilities when ``log_probabilities``.
        labels: ``[rows]`` class ids.
        log_probabilities: the scores are already normalised (skip the softmax).

    Example:
        >>> per_example_cross_entropy(torch.zeros(2, 4), torch.tensor([0, 3])).tolist() == [1.3862943649291992] * 2
        True
    """
    if log_probabilities:
        return F.nll_loss(scores, labels, reduction="none")
    return F.cross_entropy(scores, labels, reduction="none")


def distillation_loss(student_logits: torch.Tensor, soft_targets: torch.Tensor, labels: torch.Tensor, *,
                      temperature: float, alpha: float) -> torch.Tensor:
    """Knowledge-distillation loss of each row, shape ``[rows]`` (Hinton, Vinyals and Dean 2015, "Distilling the
    Knowledge in a Neural Network").

    ``alpha * T**2 * KL(p_T || q_T) + (1 - alpha) * CE(student, label)``, where ``q_T = softmax(student / T)``
    and ``p_T`` is the teacher's distribution softened by the same temperature: the soft targets arrive as
    probabilities (a fused ensemble's), so ``p_T = softmax(log(p) / T)`` (``p ** (1/T)`` renormalised; classes
    of probability 0 stay 0). The ``T**2`` keeps the soft term's gradients on the hard term's scale as ``T``
    changes. Rows without a hard label (``label < 0``: unlabelled transfer data) get the soft term alone,
    ``T**2 * KL`` (not scaled by ``alpha``, which only mixes the two terms where both exist). The soft
    targets are constants (no gradient flows into them).

    Args:
        student_logits: ``[rows, classes]`` logits of the student.
        soft_targets: ``[rows, classes]`` teacher probabilities (rows summing to 1).
        labels: ``[rows]`` class ids, ``-1`` where a row has no hard label.
        temperature: ``T > 0``.
        alpha: weight of the soft term in ``[0, 1]``.

    Example:
        >>> logits, soft = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.5, 0.5]])
        >>> round(float(distillation_loss(logits, soft, torch.tensor([0]), temperature=1.0, alpha=1.0)), 4)
        0.4338
    """
    student_logits = student_logits.to(torch.promote_types(student_logits.dtype, torch.float32))  # fp16: no underflow
    dtype = student_logits.dtype
    log_teacher = torch.log(soft_targets.detach().to(dtype).clamp_min(torch.finfo(dtype).tiny))
    teacher_logp = F.log_softmax(log_teacher / temperature, dim=-1)
    student_logp = F.log_softmax(student_logits / temperature, dim=-1)
    teacher_p = teacher_logp.exp()
    kl = (teacher_p * (teacher_logp - student_logp)).sum(-1) * temperature**2
    labelled = labels >= 0
    hard = F.cross_entropy(student_logits, labels.clamp_min(0), reduction="none")
    return torch.where(labelled, alpha * kl + (1.0 - alpha) * hard, kl)


def targets_loss(scores: torch.Tensor, labels: torch.Tensor, soft_targets: torch.Tensor | None = None, *,
                 temperature: float = 1.0, alpha: float = 0.5) -> torch.Tensor:
    """What a member minimises per row: cross-entropy on the hard labels, or :func:`distillation_loss` when the
    rows carry soft targets (a student learning from an ensemble, see ``fusion.distill``).

    Example:
        >>> round(float(targets_loss(torch.zeros(1, 2), torch.tensor([1]))[0]), 4)  # log 2
        0.6931
    """
    if soft_targets is None:
        return per_example_cross_entropy(scores, labels)
    return distillation_loss(scores, soft_targets, labels, temperature=temperature, alpha=alpha)


def features_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], **distillation: float) -> torch.Tensor:
    """The per-row loss of a model on feature rows, ``model(batch["x"])`` against ``batch["y"]``: what a head on
    embeddings and a ``TorchMember`` train with. Rows carrying ``batch["soft_targets"]`` (a distillation student)
    use :func:`distillation_loss` with ``distillation``'s temperature and alpha.

    Example:
        >>> round(float(features_loss(torch.nn.Identity(), {"x": torch.zeros(1, 2), "y": torch.tensor([0])})[0]), 4)
        0.6931
    """
    return targets_loss(model(batch["x"]), batch["y"], batch.get("soft_targets"), **distillation)
