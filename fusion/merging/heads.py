"""Classification heads: found in the checkpoints, aligned by label name before merging, or one kept whole.

The head is what a classifier adds on top of its base model: every tensor outside the transformers class's
``base_model_prefix`` (``classifier.*`` beside ``bert.*``; RoBERTa's ``classifier.dense`` and
``classifier.out_proj``; ``score.weight`` of decoder classifiers), or, for a class transformers does not know,
the tensors under the usual head modules (:data:`HEAD_MODULES`). A checkpoint has a classification head when
some of those tensors have one row per label (``config.id2label``); they are its *label rows*.

The same rule as output fusion: rows are matched by label **name**, never by position. Each model's label rows
are reordered into the first model's label order before merging, so fine-tunes with the same labels in another
order merge correctly. Models with different label sets are refused unless ``head=`` names the model whose head
is kept unmerged (the backbone is merged, the head and its labels are that model's). Placeholder names
(``LABEL_0``, ``LABEL_1``) say nothing about what a row means, so, as a fusion member with such labels needs a
``label_map``, aligning them is refused; give the models real ``id2label`` names or keep one head.

Example:
    >>> plan = plan_heads([checkpoint_a, checkpoint_b], None, head=None, references=["a", "b"])  # doctest: +SKIP
    >>> plan.labels, plan.permutations[1].tolist()  # doctest: +SKIP
    (['negative', 'positive'], [1, 0])
    >>> resolve_head("ft-b", ["out/ft-a", "out/ft-b"])
    1
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..errors import ConfigError, LabelMismatchError
from ..labels import alignment, config_labels, is_generic
from ..members.hf_source import model_label, model_short_name
from .checkpoints import Checkpoint, base_model_prefix

HEAD_MODULES = ("classifier", "score", "pre_classifier", "head", "heads", "logits_proj", "sequence_summary",
                "out_proj", "classification_head")
"""Top-level modules that hold a classification head, for classes transformers does not know (remote code)."""


@dataclass(frozen=True)
class ClassifierHead:
    """One checkpoint's classification head.

    Attributes:
        labels: label names in row order (``config.id2label``).
        tensors: every tensor of the head (label rows and the layers before them).
        label_rows: the head tensors with one row per label, reordered when labels are aligned.
    """

    labels: list[str]
    tensors: frozenset[str]
    label_rows: frozenset[str]


def find_head(checkpoint: Checkpoint) -> ClassifierHead | None:
    """The checkpoint's classification head, or None (a bare encoder, a language model)."""
    labels = config_labels(checkpoint.config)
    names = list(checkpoint.tensors)
    prefix = base_model_prefix(checkpoint.config)
    if prefix and any(n.startswith(prefix + ".") for n in names):
        outside = [n for n in names if not n.startswith(prefix + ".")]
    else:
        outside = [n for n in names if n.split(".")[0] in HEAD_MODULES]
    rows = [n for n in outside if checkpoint.tensors[n].shape[:1] == (len(labels),) and checkpoint.tensors[n].mergeable]
    if not rows:
        return None
    return ClassifierHead(labels, frozenset(outside), frozenset(rows))


@dataclass(frozen=True)
class HeadPlan:
    """What a merge does with the classification heads.

    Attributes:
        labels: the output head's labels in row order (None: the models have no classification head).
        tensors: the head's tensor names (empty without a head).
        label_rows: the head tensors with one row per label.
        permutations: per model, the row order that puts its label rows into ``labels``' order (None: already
            in that order, or not aligned because one head is kept).
        base_permutation: the same for the base's head when it has the same labels; None otherwise.
        base_has_head: the base has a head with the same label set (else the head tensors are treated as
            absent from the base).
        keep: index of the model whose head is kept unmerged (``head=``), else None.
        note: what was done, in words.
    """

    labels: list[str] | None
    tensors: frozenset[str] = frozenset()
    label_rows: frozenset[str] = frozenset()
    permutations: list[torch.Tensor | None] = field(default_factory=list)
    base_permutation: torch.Tensor | None = None
    base_has_head: bool = False
    keep: int | None = None
    note: str = "the models have no classification head"

    def aligned(self, name: str, model: int, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` (model ``model``'s ``name``) with its label rows in the output's label order."""
        permutation = self.permutations[model] if self.permutations else None
        if permutation is None or name not in self.label_rows:
            return tensor
        return tensor.index_select(0, permutation)

    def aligned_base(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """The base's ``tensor`` with its label rows in the output's label order."""
        if self.base_permutation is None or name not in self.label_rows:
            return tensor
        return tensor.index_select(0, self.base_permutation)


def resolve_head(head: int | str, references: Sequence[str]) -> int:
    """The index of the model ``head=`` names: an index, the reference as given, its folder/hub name.

    Raises:
        ConfigError: no model, or several, match.
    """
    if isinstance(head, bool) or not isinstance(head, (int, str, os.PathLike)):
        raise ConfigError(f"head={head!r}: give the index of a model (0..{len(references) - 1}) or its name.")
    if isinstance(head, int):
        if not 0 <= head < len(references):
            raise ConfigError(f"head={head}: there are {len(references)} models; give an index 0..{len(references) - 1}"
                              " or a model's name.")
        return head
    wanted = os.fspath(head)
    matches = [i for i, ref in enumerate(references)
               if wanted in (ref, model_label(ref), model_short_name(ref))]
    if len(matches) != 1:
        names = [model_label(ref) for ref in references]
        why = "no model is called" if not matches else "several models are called"
        raise ConfigError(f"head={wanted!r}: {why} that; the models are {names} (or give an index).")
    return matches[0]


def plan_heads(models: Sequence[Checkpoint], base: Checkpoint | None, head: int | str | None,
               references: Sequence[str]) -> HeadPlan:
    """How heads are merged: aligned by label name, or the head of model ``head`` kept.

    Raises:
        LabelMismatchError: different label sets without ``head=``; placeholder label names to align; a model
            with a head beside one without.
        ConfigError: ``head=`` names no model, or a model without a head.
    """
    heads = [find_head(m) for m in models]
    keep = resolve_head(head, references) if head is not None else None
    if all(h is None for h in heads):
        if keep is not None:
            raise ConfigError(f"head={head!r}: the models have no classification head to keep.")
        return HeadPlan(None)
    if any(h is None for h in heads):
        without = models[heads.index(None)].label
        raise LabelMismatchError(f"cannot merge: model {without!r} has no classification head but "
                                 f"{models[next(i for i, h in enumerate(heads) if h)].label!r} has one.")
    first = heads[0]
    assert first is not None
    if keep is not None:
        kept = heads[keep]
        assert kept is not None
        return HeadPlan(kept.labels, kept.tensors, kept.label_rows, [None] * len(models), keep=keep,
                        note=f"the backbone is merged; the classification head and its labels are "
                             f"{models[keep].label!r}'s, unmerged (head={head!r})")
    label_sets = [sorted(h.labels) for h in heads if h is not None]
    if any(s != label_sets[0] for s in label_sets) or any(len(set(h.labels)) != len(h.labels) for h in heads if h):
        listed = "; ".join(f"{m.label!r}: {h.labels}" for m, h in zip(models, heads, strict=True) if h is not None)
        raise LabelMismatchError(f"cannot merge classification heads with different label sets ({listed}). Merge "
                                 "the backbone only and keep one model's head with head=<index or model name>.")
    generic = [m.label for m, h in zip(models, heads, strict=True) if h is not None and is_generic(h.labels)]
    if generic:
        raise LabelMismatchError(
            f"models {generic} only have placeholder label names {first.labels}: fusion aligns classifier heads by "
            "label name, so it cannot tell which rows mean the same label. Put the real names in each model's "
            "config.json (id2label / label2id), or keep one model's head with head=<index or model name>.")
    permutations = []
    for model, h in zip(models, heads, strict=True):
        assert h is not None
        order = alignment(model.label, h.labels, first.labels)
        permutations.append(None if h.labels == first.labels else order)
    base_permutation, base_has_head = None, False
    base_head = find_head(base) if base is not None else None
    if base is not None and base_head is not None and sorted(base_head.labels) == sorted(first.labels) \
            and not is_generic(base_head.labels):
        base_has_head = True
        if base_head.labels != first.labels:
            base_permutation = alignment(base.label, base_head.labels, first.labels)
    moved = [m.label for m, p in zip(models, permutations, strict=True) if p is not None]
    note = (f"classification heads merged with their rows aligned by label name to {first.labels} "
            f"({'reordered: ' + ', '.join(repr(m) for m in moved) if moved else 'all in the same order'})")
    return HeadPlan(list(first.labels), first.tensors, first.label_rows, permutations, base_permutation,
                    base_has_head, None, note)
