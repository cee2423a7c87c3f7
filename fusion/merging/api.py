"""``fusion.merge``: fine-tunes of one checkpoint merged into one model, as a member (:class:`MergedModel`).

Example:
    >>> from fusion import merge
    >>> merged = merge(["out/ft-a", "out/ft-b"], "ties", base="bert-base-uncased", density=0.5)  # doctest: +SKIP
    >>> merged.describe()  # doctest: +SKIP
    'ties merge of 2 models (density 0.5)'
    >>> merged.save_pretrained("out/merged")  # a plain Hugging Face folder  # doctest: +SKIP
    PosixPath('out/merged')
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError, did_you_mean
from ..members.base import Member
from ..members.hf_model import HFMember
from ..members.merged import MergedModel, method_config
from .base import MERGE_METHODS, MergeMethod, MergeMethodConfig
from .soups import SOUPS

# fields of MergedModel's config that merge() takes as its own arguments (the rest may come as parameters)
_OWN_ARGUMENTS = ("models", "method", "base", "head", "name")

ModelLike = str | os.PathLike | Member


def _reference(value: ModelLike, what: str) -> tuple[str, str | None]:
    """``(model reference, revision)`` of a path, hub id, ``package:`` reference or Hugging Face member."""
    if isinstance(value, HFMember):
        return value.config.model, value.config.revision
    if isinstance(value, Member):
        raise ConfigError(f"merge: {what} is a {type(value).__name__} ({value.name!r}); only Hugging Face checkpoints "
                          "merge. Give a model folder, a hub id, package:MODULE, or an HFClassifier.")
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value), None
    raise ConfigError(f"merge: {what} must be a model folder, a hub id, package:MODULE or an HFClassifier; got "
                      f"{value!r} ({type(value).__name__}).")


def merge(models: Sequence[ModelLike], method: str | MergeMethod | MergeMethodConfig | dict = "linear", *,
          base: ModelLike | None = None, head: int | str | None = None, name: str | None = None,
          validation: Any = None, **params: Any) -> MergedModel:
    """A member that merges ``models`` (fine-tunes of one checkpoint) with ``method``.

    Nothing is read yet: the merge runs once, when the member is first used (its labels, outputs or
    ``save_pretrained``), and its folder is cached in the cache home under the member's fingerprint.

    Args:
        models: model folders, hub ids, ``package:MODULE`` references or ``HFClassifier`` members (their model
            and revision are taken).
        method: a merge method's name (``fusion.merging.MERGE_METHODS``), a dict with ``"kind"``, a
            ``MergeMethod`` or its config.
        base: the checkpoint the models were fine-tuned from (task-vector methods need it).
        head: which model's head to keep when the label sets differ (its index, or its reference).
        name: the member's name (default ``<method>-merge``).
        validation: labelled held-out rows, for the soups chosen or learned on them (``"greedy_soup"``,
            ``"learned_soup"``: :mod:`fusion.merging.soups`).
        **params: the method's parameters (``weight=[0.6, 0.4]``, ``density=0.5``, ``seed=0``, ...), and the
            merged member's other settings (``merged_dtype``, ``label_map``, ``max_length``, ``batch_size``, ...).

    Raises:
        ConfigError: an unknown method or parameter (naming the method's parameters, with the closest one), a
            member that is no Hugging Face checkpoint, or parameters the method refuses.

    Example:
        >>> try:
        ...     merge(["a", "b"], "linear", wieght=[1, 2])
        ... except ConfigError as err:
        ...     print(str(err).split(";")[0], "/", str(err).split(". ")[-1])
        merge method 'linear' has no parameter 'wieght' / Did you mean 'weight'?
    """
    if isinstance(models, (str, os.PathLike, Member)) or not isinstance(models, Sequence):
        raise ConfigError(f"merge: models must be a list of models (two or more fine-tunes); got {models!r}.")
    references = [_reference(model, f"models[{i}]") for i, model in enumerate(models)]
    if isinstance(method, str) and method in SOUPS and (validation is not None or method not in MERGE_METHODS):
        if validation is None:
            raise ConfigError(f"merge method {method!r} chooses or learns the soup on held-out rows: pass "
                              "validation=<labelled rows>.")
        if base is not None:
            raise ConfigError(f"merge method {method!r} mixes the fine-tunes themselves; drop base=....")
        revisions = [revision for _, revision in references]
        return SOUPS.get(method)([model for model, _ in references], validation, head=head, name=name,
                                 revisions=revisions if any(r is not None for r in revisions) else None, **params)
    if validation is not None:
        raise ConfigError(f"merge(validation=...) is for the soups chosen or learned on held-out rows "
                          f"({', '.join(SOUPS.names())}), not {method!r}.")
    # a name is built with its parameters at once (a method may have parameters without a default)
    config_class = MERGE_METHODS.get(method).Config if isinstance(method, str) else type(method_config(method))
    method_fields = [f.name for f in dataclasses.fields(config_class)]
    member_fields = [f.name for f in dataclasses.fields(MergedModel.Config) if f.name not in _OWN_ARGUMENTS]
    unknown = [key for key in params if key not in method_fields and key not in member_fields]
    if unknown:
        raise ConfigError(f"merge method {config_class.kind!r} has no parameter {unknown[0]!r}; its parameters are: "
                          f"{', '.join(method_fields)} (the merged member's settings: {', '.join(member_fields)})."
                          + did_you_mean(unknown[0], method_fields + member_fields))
    method_params = {k: v for k, v in params.items() if k in method_fields}
    settings = {k: v for k, v in params.items() if k not in method_fields}
    if isinstance(method, str):
        config = config_class(**method_params)
    else:
        config = method_config(method)
        config = config.replace(**method_params) if method_params else config
    revisions = [revision for _, revision in references]
    if any(revision is not None for revision in revisions):
        settings.setdefault("revisions", revisions)
    if base is not None:
        base, base_revision = _reference(base, "base")
        if base_revision is not None:
            settings.setdefault("base_revision", base_revision)
    return MergedModel([model for model, _ in references], config, base=base, head=head, name=name, **settings)
