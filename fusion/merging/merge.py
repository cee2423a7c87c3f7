"""The model-level merge: stream every tensor of several checkpoints through a merge method into one HF folder.

:func:`merge_checkpoints` resolves each model (a local folder, a hub id from the offline cache, ``package:``),
checks before merging anything that the checkpoints can be merged (architecture, tensor names, shapes,
vocabularies: :mod:`.checkpoints`, :mod:`.vocabulary`; classification heads: :mod:`.heads`), then reads one
tensor of each model (and of the base) at a time, merges it with ``method.merge_tensor`` and appends it to the
output's ``model.safetensors`` at once (:mod:`.writer`: the file's header is known before any tensor is merged).
Peak memory is one tensor per input plus the merged tensor: neither the N models nor the merged model are ever
held. Methods with a whole-model pass (``method.whole_model_pass``) first get ``method.model_statistics`` over a stream of the task
vectors (:class:`TaskVectors`), read the same way.

What the merge does with each tensor:

- float parameters are read in float32 (float64 stays float64), merged, and cast to the output dtype (``dtype=``,
  default: the first model's dtype of that tensor);
- buffers that are not floating point (int64 position ids, masks) are never averaged: they must be equal in
  every model, and the first model's are written;
- tied weights are written as the checkpoint files hold them (transformers saves a tied output embedding once,
  and ties it again on load from ``config.json``);
- a classification head's label rows are aligned by label name first, or one model's head is kept (``head=``);
- tensors a base lacks (a head trained on top of a bare encoder; a base head with other labels) have the models'
  mean stand in for the base tensor, so a task-vector method combines the models' deviations from their mean
  (task arithmetic with weights 1 gives the mean; zeros would scale the head by the sum of the weights); they
  are logged and listed in the provenance file (``tensors.not_in_base``). mergekit refuses a base without them.

A base that does not look like the models' ancestor is allowed but warned about. The heuristic, computed while
merging: over the weight matrices (tensors of 2 or more dimensions the base has), the relative distance
``||model - base|| / ||base||`` of each model. Fine-tuning moves weights by a few percent of their norm; two
independent initialisations of a matrix differ by about sqrt(2) = 141% of it. Above
:data:`ANCESTOR_WARNING` (50%) the base is reported as probably not an ancestor.

The output folder, written atomically: ``config.json`` (the first model's, with the merged head's labels),
``model.safetensors``, the tokenizer files of the model the vocabulary comes from, ``fusion_merge.json`` (the
provenance: sources by hub id and revision or by folder name, never a path of this machine, with the sha256 of
their weight files; the method and its parameters; labels, heads, vocabulary) and ``README.md`` (a model card).
It loads with plain ``transformers.AutoModelForSequenceClassification.from_pretrained(folder)``.

Example:
    >>> from fusion.merging import LinearMerge
    >>> result = merge_checkpoints(["ft-a", "ft-b"], LinearMerge(), "merged")  # doctest: +SKIP
    >>> result.labels  # doctest: +SKIP
    ['negative', 'positive']
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..io import atomic_directory, write_json
from ..members.hf_source import TOKENIZER_FILES, HFSource, hub_reference, model_label, reference_kind
from ..progress import describe, progress_enabled
from .base import MergeMethod, TensorContext
from .card import render_merge_card
from .checkpoints import (
    Checkpoint,
    base_names,
    check_architectures,
    check_base,
    check_buffer,
    check_names,
    check_shapes,
)
from .heads import HeadPlan, plan_heads
from .vocabulary import VocabularyPlan, plan_vocabulary
from .writer import StreamingSafetensors

logger = logging.getLogger(__name__)

PROVENANCE_FILE = "fusion_merge.json"
PROVENANCE_FORMAT = 1
ANCESTOR_WARNING = 0.5
"""Relative distance ``||model - base|| / ||base||`` over the weight matrices above which a base is warned
about as probably not the models' ancestor (fine-tunes: a few percent; independent initialisations: ~141%)."""

OUTPUT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                 "float64": torch.float64}
EXTRA_TOKENIZER_FILES = ("tokenizer.model", "chat_template.jinja", "chat_template.json")


@dataclass(frozen=True)
class MergeResult:
    """What :func:`merge_checkpoints` wrote.

    Attributes:
        directory: the plain Hugging Face folder written.
        labels: the merged head's label order (None: models without a classification head).
        provenance: what ``fusion_merge.json`` holds.
    """

    directory: Path
    labels: list[str] | None
    provenance: dict[str, Any]


@dataclass(frozen=True)
class MergePlan:
    """Every decision made before a tensor is merged: the checkpoints, which tensor goes where, heads, vocab."""

    models: list[Checkpoint]
    base: Checkpoint | None
    base_names: dict[str, str]
    heads: HeadPlan
    vocabulary: VocabularyPlan

    @property
    def names(self) -> list[str]:
        return list(self.models[0].tensors)

    def copied(self, name: str) -> bool:
        """A buffer (not floating point): copied from the first model after an equality check."""
        return not self.models[0].tensors[name].mergeable

    def kept(self, name: str) -> bool:
        """A tensor of the head kept unmerged (``head=``)."""
        return self.heads.keep is not None and name in self.heads.tensors

    def merged(self, name: str) -> bool:
        return not self.copied(name) and not self.kept(name)

    def base_name(self, name: str) -> str | None:
        """The base's name for tensor ``name`` (None: no base, or the base lacks it)."""
        if self.base is None or (name in self.heads.tensors and not self.heads.base_has_head):
            return None
        return self.base_names.get(name)

    def is_embedding(self, name: str) -> bool:
        return self.models[0].is_vocabulary(name) and len(self.models[0].tensors[name].shape) == 2

    def output_shape(self, name: str) -> tuple[int, ...]:
        """The merged tensor's shape: the first model's, vocabulary rows cut to the shared ones."""
        shape = self.models[0].tensors[name].shape
        rows = self.vocabulary.rows
        if rows is not None and self.models[0].is_vocabulary(name):
            return (min(rows, shape[0]), *shape[1:])
        return shape

    def layout(self, dtype: torch.dtype | None) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """Every output tensor's (dtype, shape), known before any is merged: buffers as the first model has them,
        a kept head as its model has it, merged tensors in ``dtype`` (None: the first model's)."""
        layout = {}
        for name in self.names:
            if self.copied(name):
                info = self.models[0].tensors[name]
                layout[name] = (info.dtype, info.shape)
            elif self.kept(name):
                info = self.models[self.heads.keep or 0].tensors[name]
                layout[name] = (dtype or info.dtype, info.shape)
            else:
                layout[name] = (dtype or self.models[0].tensors[name].dtype, self.output_shape(name))
        return layout

    def _rows(self, checkpoint: Checkpoint, name: str, tensor: torch.Tensor) -> torch.Tensor:
        rows = self.vocabulary.rows
        if rows is not None and checkpoint.is_vocabulary(name) and tensor.shape[0] > rows:
            return tensor[:rows]
        return tensor

    def read(self, name: str) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """One merged tensor's inputs: each model's (float, vocabulary rows cut, label rows aligned) and the
        base's (None without a base; the models' mean when the base lacks it)."""
        tensors = [self.heads.aligned(name, i, _as_float(self._rows(m, name, m.read(name))))
                   for i, m in enumerate(self.models)]
        if self.base is None:
            return tensors, None
        base_name = self.base_name(name)
        if base_name is None:
            return tensors, _mean(tensors)
        base = self.heads.aligned_base(name, _as_float(self._rows(self.base, base_name, self.base.read(base_name))))
        return tensors, base


class TaskVectors:
    """The stream ``method.model_statistics`` reads: ``(name, [model_i - base, ...])`` for every merged tensor,
    one tensor name at a time (the models' tensors themselves without a base). Each iteration reads the
    checkpoints again."""

    def __init__(self, plan: MergePlan) -> None:
        self.plan = plan

    def __iter__(self) -> Iterator[tuple[str, list[torch.Tensor]]]:
        for name in self.plan.names:
            if self.plan.merged(name):
                tensors, base = self.plan.read(name)
                deltas = tensors if base is None else [t - base for t in tensors]
                del tensors, base  # a suspended generator keeps its locals: hold only what is yielded
                yield name, deltas
                del deltas


def _mean(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    total = tensors[0].clone()
    for tensor in tensors[1:]:
        total += tensor
    return total / len(tensors)


def _as_float(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.dtype == torch.float64 else tensor.to(torch.float32)


def _output_dtype(dtype: str | None) -> torch.dtype | None:
    if dtype is None:
        return None
    if dtype not in OUTPUT_DTYPES:
        raise ConfigError(f"dtype={dtype!r}: give one of {', '.join(OUTPUT_DTYPES)} (or None: the first model's).")
    return OUTPUT_DTYPES[dtype]


def _revisions(revisions: Sequence[str | None] | None, count: int) -> list[str | None]:
    if revisions is None:
        return [None] * count
    if isinstance(revisions, str) or len(revisions) != count:
        raise ConfigError(f"revisions: give one revision (or None) per model, a list of {count}; got {revisions!r}.")
    return list(revisions)


def plan_merge(models: Sequence[Checkpoint], base: Checkpoint | None, head: int | str | None,
               references: Sequence[str]) -> MergePlan:
    """Check the checkpoints can be merged (ConfigError / LabelMismatchError naming model, tensor and sizes) and
    decide heads and vocabulary, before any tensor is merged."""
    models = list(models)
    check_architectures(models, base)
    check_names(models)
    heads = plan_heads(models, base, head, references)
    check_shapes(models, exempt=lambda name: heads.keep is not None and name in heads.tensors)
    names = base_names(models, base) if base is not None else {}
    if base is not None:
        check_base(models, base, names, exempt=lambda name: name in heads.tensors and not heads.base_has_head)
    vocabulary = plan_vocabulary([*models, *([base] if base is not None else [])])
    plan = MergePlan(models, base, names, heads, vocabulary)
    if base is not None:
        lacking = [n for n in plan.names if plan.merged(n) and plan.base_name(n) is None]
        odd = [n for n in lacking if n not in heads.tensors]
        if lacking:
            (logger.warning if odd else logger.info)(
                "merge: base model %r lacks %d tensor(s) of the models (%s%s); the models' mean stands in for the "
                "base there", base.label, len(lacking), ", ".join(lacking[:5]), " ..." if len(lacking) > 5 else "")
    for name in plan.names:
        if plan.copied(name):
            check_buffer(models, name)
    return plan


class _AncestorCheck:
    """Accumulates ``||model - base||^2`` per model and ``||base||^2`` over weight matrices while merging."""

    def __init__(self, count: int) -> None:
        self.distance = [0.0] * count
        self.norm = 0.0

    def add(self, tensors: Sequence[torch.Tensor], base: torch.Tensor) -> None:
        if base.ndim < 2:
            return
        self.norm += float(torch.linalg.vector_norm(base)) ** 2
        for i, tensor in enumerate(tensors):
            self.distance[i] += float(torch.linalg.vector_norm(tensor - base)) ** 2

    def ratios(self) -> list[float] | None:
        if self.norm <= 0.0:
            return None
        return [math.sqrt(d / self.norm) for d in self.distance]


def _merge_tensors(plan: MergePlan, method: MergeMethod, statistics: dict[str, Any],
                   layout: dict[str, tuple[torch.dtype, tuple[int, ...]]], write: Callable[[str, torch.Tensor], None],
                   show: bool) -> list[float] | None:
    """Merge (or copy) every tensor in ``layout``'s order, handing each to ``write`` as soon as it is made; the
    relative distances of the models to the base (None without a base)."""
    from tqdm.auto import tqdm

    check = _AncestorCheck(len(plan.models))
    with tqdm(total=len(layout), desc=describe(f"merge ({method.kind})"), unit="tensor", leave=False,
              disable=not show) as bar:
        for name, (dtype, shape) in layout.items():
            if plan.copied(name):  # equal in every model (checked by plan_merge)
                result = plan.models[0].read(name)
            elif plan.kept(name):
                result = plan.models[plan.heads.keep or 0].read(name)
            else:
                tensors, base = plan.read(name)
                if base is not None and plan.base_name(name) is not None:
                    check.add(tensors, base)
                context = TensorContext(name, is_embedding=plan.is_embedding(name), seed=method.tensor_seed(name),
                                        statistics=statistics)
                result = method.merge_tensor(tensors, base, context)
                del tensors, base
                if tuple(result.shape) != shape:
                    raise ConfigError(f"merge method {method.kind!r} returned shape {tuple(result.shape)} for tensor "
                                      f"{name!r}, expected {shape}.")
            write(name, result.to(dtype))
            del result
            bar.update()
    return check.ratios()


def describe_source(source: HFSource, reference: str) -> dict[str, Any]:
    """How the provenance names a source: its hub id and resolved revision where known (a hub id, or a snapshot
    folder of the HF cache), else its folder name or ``package:`` reference, never a path of this machine; and
    the sha256 of its weight files."""
    entry: dict[str, Any] = {"model": model_label(reference)}
    if reference_kind(reference) == "hub":
        entry.update(hub_id=reference, revision=source.resolved_revision)
    elif (found := hub_reference(reference)) is not None:
        entry.update(hub_id=found[0], revision=found[1])
    entry["weights_sha256"] = source.weights_sha256
    return entry


def _output_config(plan: MergePlan, dtype: str | None) -> dict[str, Any]:
    config = dict(plan.models[0].config)
    heads = plan.heads
    if heads.keep is not None:
        donor = plan.models[heads.keep].config
        for key in ("id2label", "label2id", "num_labels", "problem_type"):
            config.pop(key, None)
            if key in donor:
                config[key] = donor[key]
    if heads.labels is not None:
        config["id2label"] = {str(i): name for i, name in enumerate(heads.labels)}
        config["label2id"] = {name: i for i, name in enumerate(heads.labels)}
    rows = plan.vocabulary.rows
    if rows is not None and plan.models[0].vocab_size != rows:
        if "vocab_size" in config:
            config["vocab_size"] = rows
        else:
            config["text_config"] = {**config["text_config"], "vocab_size": rows}
    if dtype is not None:
        config["dtype"] = dtype
        if "torch_dtype" in config:
            config["torch_dtype"] = dtype
    return config


def _copy_tokenizer(checkpoint: Checkpoint, directory: Path) -> list[str]:
    copied = []
    for name in (*TOKENIZER_FILES, *EXTRA_TOKENIZER_FILES):
        if (checkpoint.directory / name).is_file():
            shutil.copyfile(checkpoint.directory / name, directory / name)
            copied.append(name)
    return copied


def _warn_ancestor(plan: MergePlan, ratios: list[float] | None) -> None:
    if plan.base is None or ratios is None:
        return
    far = [(m.label, r) for m, r in zip(plan.models, ratios, strict=True) if r > ANCESTOR_WARNING]
    if far:
        listed = ", ".join(f"{label!r}: {ratio:.0%}" for label, ratio in far)
        logger.warning(
            "merge: base model %r does not look like the checkpoint the models were fine-tuned from: their weight "
            "matrices differ from it by %s of its norm (fine-tuning moves them by a few percent; independent "
            "initialisations differ by about 141%%). Task-vector methods assume the models are fine-tunes of the "
            "base; check base=...", plan.base.label, listed)


def _provenance(plan: MergePlan, method: MergeMethod, sources: Sequence[dict[str, Any]], base: dict | None,
                dtype: str, ratios: list[float] | None, tokenizer_files: list[str]) -> dict[str, Any]:
    from ..ensemble.persistence import library_versions

    donors = [*plan.models, *([plan.base] if plan.base is not None else [])]
    names = plan.names
    not_in_base = [n for n in names if plan.base is not None and plan.merged(n) and plan.base_name(n) is None]
    return {
        "format": PROVENANCE_FORMAT,
        "method": method.to_config(),
        "models": list(sources),
        "base": base,
        "labels": plan.heads.labels,
        "heads": plan.heads.note,
        "head_kept_from": plan.models[plan.heads.keep].label if plan.heads.keep is not None else None,
        "vocabulary": {"note": plan.vocabulary.note, "rows": plan.vocabulary.rows,
                       "tokenizer_from": donors[plan.vocabulary.donor].label, "tokenizer_files": tokenizer_files,
                       "dropped_tokens": plan.vocabulary.dropped},
        "dtype": dtype,
        "tensors": {"merged": sum(plan.merged(n) for n in names),
                    "copied_buffers": [n for n in names if plan.copied(n)],
                    "kept_head": [n for n in names if plan.kept(n)], "not_in_base": not_in_base},
        "relative_distance_to_base": (None if ratios is None else
                                      {m.label: round(r, 6) for m, r in zip(plan.models, ratios, strict=True)}),
        "versions": library_versions(),
    }


def merge_checkpoints(models: Sequence[str | os.PathLike], method: MergeMethod, output: str | os.PathLike, *,
                      base: str | os.PathLike | None = None, revisions: Sequence[str | None] | None = None,
                      base_revision: str | None = None, head: int | str | None = None, dtype: str | None = None,
                      show_progress: bool = True, overwrite: bool = False) -> MergeResult:
    """Merge fine-tunes of one checkpoint with ``method`` into a plain Hugging Face folder ``output``.

    Args:
        models: the fine-tuned models (local folders, hub ids from the offline cache, ``package:MODULE``).
        method: a :class:`~fusion.merging.MergeMethod` (``LinearMerge(weight=[...])``, ...).
        output: the folder to write (atomically: the complete folder or nothing).
        base: the checkpoint the models were fine-tuned from (task-vector methods need one; see
            ``method.base``).
        revisions / base_revision: hub revisions of the models / base (None: the cached default).
        head: keep this model's classification head (an index into ``models`` or its name) and merge only the
            backbone; needed when the models' label sets differ.
        dtype: the output dtype (``float32``, ``float16``, ``bfloat16``, ``float64``; None: the first model's).
        show_progress: one progress bar over the tensors (also off with ``fusion.set_progress(False)``).
        overwrite: replace ``output`` if it exists.

    Returns:
        A :class:`MergeResult`: the folder, the merged head's labels, the provenance.

    Raises:
        ConfigError: a method that cannot merge these models (count, base), models that cannot be merged
            (architecture, a missing tensor, a shape, a tokenizer, pickle-only weights, unequal buffers), an
            existing ``output`` without ``overwrite``.
        LabelMismatchError: heads with different label sets (pass ``head=``), or placeholder label names.

    Example:
        >>> from fusion.merging import LinearMerge
        >>> merge_checkpoints(["ft-a", "ft-b"], LinearMerge(weight=[2, 1]), "merged").labels  # doctest: +SKIP
        ['negative', 'positive']
    """
    if not isinstance(method, MergeMethod):
        raise ConfigError(f"method={method!r}: give a merge method, e.g. fusion.merging.LinearMerge().")
    references = [os.fspath(m) for m in models] if not isinstance(models, (str, os.PathLike)) else None
    if not references:
        raise ConfigError(f"models={models!r}: give a list of the models to merge.")
    method.check_models(len(references), base is not None)
    out_dtype = _output_dtype(dtype)
    target = Path(output)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"output {target} is a file; give a folder to write the merged model to.")
    if target.exists() and not overwrite:
        raise ConfigError(f"output folder {target} already exists; pass overwrite=True to replace it, or choose "
                          "another folder.")
    sources = [HFSource(ref, rev) for ref, rev in zip(references, _revisions(revisions, len(references)), strict=True)]
    base_reference = os.fspath(base) if base is not None else None
    base_source = HFSource(base_reference, base_revision) if base_reference is not None else None
    for source, ref in zip([*sources, *([base_source] if base_source else [])],
                           [*references, *([base_reference] if base_reference else [])], strict=True):
        if target.resolve() == source.local_dir:
            raise ConfigError(f"output folder {target} is the folder of model {model_label(ref)!r}; write the merge "
                              "to another folder.")
    with contextlib.ExitStack() as stack:
        checkpoints = [stack.enter_context(Checkpoint(s, model_label(r)))
                       for s, r in zip(sources, references, strict=True)]
        base_checkpoint = (stack.enter_context(Checkpoint(base_source, model_label(base_reference)))
                           if base_source is not None and base_reference is not None else None)
        plan = plan_merge(checkpoints, base_checkpoint, head, references)
        statistics = method.model_statistics(TaskVectors(plan)) if method.whole_model_pass else {}
        described = [describe_source(s, r) for s, r in zip(sources, references, strict=True)]
        described_base = (describe_source(base_source, base_reference)
                          if base_source is not None and base_reference is not None else None)
        donor = [*checkpoints, *([base_checkpoint] if base_checkpoint else [])][plan.vocabulary.donor]
        layout = plan.layout(out_dtype)
        dtype_name = dtype or next((str(d).removeprefix("torch.") for d, _ in layout.values() if d.is_floating_point),
                                   "float32")
        with atomic_directory(target, marker=PROVENANCE_FILE) as staging:
            with StreamingSafetensors(staging / "model.safetensors", layout, {"format": "pt"}) as out:
                ratios = _merge_tensors(plan, method, statistics, layout, out.write,
                                        show_progress and progress_enabled())
            _warn_ancestor(plan, ratios)
            write_json(staging / "config.json", _output_config(plan, dtype))
            tokenizer_files = _copy_tokenizer(donor, staging)
            provenance = _provenance(plan, method, described, described_base, dtype_name, ratios, tokenizer_files)
            (staging / "README.md").write_text(render_merge_card(provenance), encoding="utf-8")
            write_json(staging / PROVENANCE_FILE, provenance)  # last: marks the staged folder complete
    logger.info("merge: wrote %s (%d tensors, %s)", target.name, len(layout), method.kind)
    return MergeResult(target, plan.heads.labels, provenance)
