"""Soups chosen or learned on held-out rows (Wortsman et al. 2022, "Model soups"): the greedy soup and the learned
soup. Both return a :class:`~fusion.members.merged.MergedModel`, a member like any merge; ``fusion.merge`` calls
them when given ``method="greedy_soup"`` or ``"learned_soup"`` with ``validation=``.

- **Greedy soup** (the paper's recipe): order the ingredients by held-out accuracy, best first; start the soup
  with the best; add each next ingredient only if the uniform average's held-out accuracy does not drop. The
  result is a ``linear`` merge of the kept ingredients, and it may keep one ingredient alone: the member's name
  says how many were kept (``greedy-soup-1-of-5``) and ``selection_`` records every step.
- **Learned soup**: mixing coefficients per model or per layer trained on the held-out rows
  (:mod:`fusion.merging.learned_soup`); the result is a ``learned_soup`` merge holding them.

Example:
    >>> from fusion import merge
    >>> soup = merge(["ft-seed0", "ft-seed1", "ft-seed2"], "greedy_soup", validation=val_ds)  # doctest: +SKIP
    >>> soup.name, soup.selection_["kept"]  # doctest: +SKIP
    ('greedy-soup-2-of-3', ['ft-seed1', 'ft-seed0'])
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..members.hf_classifier import HFClassifier
from ..members.hf_model import HFInferenceConfig
from ..members.hf_source import HFSource, model_label
from ..members.merged import MergedModel
from ..registry import Registry
from ..train_config import TrainConfig

logger = logging.getLogger(__name__)

SoupBuilder = Callable[..., MergedModel]

SOUPS: Registry[SoupBuilder] = Registry("soup", attribute="soup_name")
"""Soups built from held-out rows, by name: ``fusion.merge(models, NAME, validation=...)`` calls them."""


def held_out_accuracies(members: Sequence[Any], validation: Any, *, cache_dir: Any = None,
                        text_column: str = "text", label_column: str = "label") -> list[float]:
    """Each member's accuracy on ``validation`` (labelled rows, anything ``Ensemble.fit`` reads), with its
    outputs from (and into) the output cache; labels are matched by name, in the first member's label order."""
    from ..ensemble.ensemble import Ensemble

    members = list(members)
    labels = members[0].output_labels(None)
    ensemble = Ensemble(members, cache_dir=cache_dir, text_column=text_column, label_column=label_column)
    ensemble._set_fitted(members, None, labels)  # frozen members: nothing to fit
    rows = ensemble._data(validation, "validation", require_labels=True)
    predicted = ensemble.member_outputs(rows).logits.argmax(2)
    return (predicted == torch.as_tensor(rows.labels)[:, None]).float().mean(0).tolist()


def _settings(settings: dict[str, Any]) -> dict[str, Any]:
    """MergedModel settings a soup passes on (the method's parameters are the soup's own)."""
    unknown = [k for k in settings if k not in {f for f in MergedModel.Config.__dataclass_fields__}]
    if unknown:
        from ..errors import did_you_mean

        fields = sorted(MergedModel.Config.__dataclass_fields__)
        raise ConfigError(f"a soup has no parameter {unknown[0]!r}; the merged member's settings are: "
                          f"{', '.join(fields)}." + did_you_mean(unknown[0], fields))
    return settings


@SOUPS.register("greedy_soup")
def greedy_soup(models: Sequence[str], validation: Any, *, head: int | str | None = None, name: str | None = None,
                cache_dir: Any = None, revisions: Sequence[str | None] | None = None, **settings: Any) -> MergedModel:
    """The greedy soup of ``models`` on ``validation`` (see the module docstring).

    Args:
        models: fine-tunes of one checkpoint (folders, hub ids, ``package:`` references).
        validation: labelled held-out rows (a ``Dataset``, a dict of columns, a DataFrame).
        head: keep this model's head (label sets that differ); None merges the heads aligned by label name.
        name: the member's name (default ``greedy-soup-K-of-N``).
        cache_dir: the output cache the candidates' outputs go through (None: the cache home).
        revisions: hub revisions of ``models``.
        **settings: the merged member's other settings (``max_length``, ``batch_size``, ``label_map``, ...).

    Returns:
        A ``linear`` :class:`MergedModel` of the kept ingredients, with ``selection_``: ``{"order",
        "accuracy" (each ingredient alone), "steps" (ingredient, soup accuracy with it, kept), "kept"}``.
    """
    settings = _settings(settings)
    revisions = list(revisions) if revisions is not None else [None] * len(models)
    if len(models) < 2:
        raise ConfigError(f"a greedy soup chooses among at least 2 ingredients; got {len(models)}.")
    # the ingredients run alone as the soups will run: the same inference settings and label map
    shared = {f.name for f in dataclasses.fields(HFInferenceConfig) if f.name != "name"} | {"label_map"}
    inference = {k: v for k, v in settings.items() if k in shared}
    alone = [HFClassifier(m, revision=r, name=f"ingredient-{i}", **inference)
             for i, (m, r) in enumerate(zip(models, revisions, strict=True))]
    accuracy = held_out_accuracies(alone, validation, cache_dir=cache_dir)
    order = sorted(range(len(models)), key=lambda i: (-accuracy[i], i))  # ties: the order given
    kept, best, steps = [order[0]], accuracy[order[0]], []

    def soup(indices: list[int], soup_name: str) -> MergedModel:
        return MergedModel([models[i] for i in indices], "linear", head=head, name=soup_name,
                           revisions=[revisions[i] for i in indices] if any(revisions) else None, **settings)

    for i in order[1:]:
        candidate = soup([*kept, i], "greedy-soup-candidate")
        (score,) = held_out_accuracies([candidate], validation, cache_dir=cache_dir)
        keep = score >= best  # "if held-out accuracy does not drop"
        steps.append({"ingredient": model_label(models[i]), "accuracy": score, "kept": keep})
        logger.info("greedy soup: %s %s (held-out accuracy %.4f, soup %.4f)", "adding" if keep else "skipping",
                    model_label(models[i]), score, best)
        if keep:
            kept, best = [*kept, i], score
    result = soup(kept, name or f"greedy-soup-{len(kept)}-of-{len(models)}")
    result.selection_ = {"order": [model_label(models[i]) for i in order],
                         "accuracy": {model_label(models[i]): accuracy[i] for i in order},
                         "steps": steps, "kept": [model_label(models[i]) for i in kept], "soup_accuracy": best}
    return result


@SOUPS.register("learned_soup")
def learned_soup(models: Sequence[str], validation: Any, *, granularity: str = "model",
                 train_config: TrainConfig | None = None, validation_fraction: float = 0.2,
                 head: int | str | None = None, name: str | None = None,
                 revisions: Sequence[str | None] | None = None, text_column: str = "text",
                 label_column: str = "label", **settings: Any) -> MergedModel:
    """The learned soup of ``models``: mixing coefficients (per model, or per layer with
    ``granularity="layer"``) trained on ``validation`` through the one training loop, a share
    (``validation_fraction``) of its rows held out for early stopping.

    Holds every model's floating-point tensors while learning (the mixed forward pass needs them); the soup
    itself is then written by the streaming driver from the learned coefficients.

    Returns:
        A ``learned_soup`` :class:`MergedModel` (its config holds the coefficients), with ``coefficients_``.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ..batching import TokenRows, pad_token_id, tokenize
    from ..engine import max_input_length
    from ..inputs import as_text_data, holdout_split
    from ..progress import quiet_transformers
    from .checkpoints import Checkpoint
    from .learned_soup import learn_coefficients
    from .merge import plan_merge

    settings = _settings(settings)
    revisions = list(revisions) if revisions is not None else [None] * len(models)
    references = [os.fspath(m) for m in models]
    sources = [HFSource(m, r) for m, r in zip(references, revisions, strict=True)]
    with contextlib.ExitStack() as stack:
        checkpoints = [stack.enter_context(Checkpoint(s, model_label(r))) for s, r in zip(sources, references,
                                                                                           strict=True)]
        plan = plan_merge(checkpoints, None, head, references)
        states: list[dict[str, torch.Tensor]] = [{} for _ in references]
        for tensor_name in plan.names:
            if plan.merged(tensor_name):
                tensors, _ = plan.read(tensor_name)
                for state, tensor in zip(states, tensors, strict=True):
                    state[tensor_name] = tensor
    skeleton_dir = sources[plan.heads.keep or 0].local_dir
    with quiet_transformers():
        skeleton = AutoModelForSequenceClassification.from_pretrained(str(skeleton_dir)).float().eval()
        tokenizer = AutoTokenizer.from_pretrained(str(sources[plan.vocabulary.donor].local_dir))
    if plan.vocabulary.rows is not None:
        skeleton.resize_token_embeddings(plan.vocabulary.rows)
    label_names = plan.heads.labels
    if label_names is None:
        raise ConfigError("a learned soup is trained on labels: the models have no classification head.")
    rows = as_text_data(validation, text_column=text_column, label_column=label_column, label_names=label_names,
                        require_labels=True, where="validation")
    tokens = tokenize(tokenizer, list(rows.texts), max_input_length(skeleton, tokenizer, settings.get("max_length")))
    labels = torch.as_tensor(np.asarray(rows.labels), dtype=torch.long)
    fit_rows, hold_rows = holdout_split(len(rows), validation_fraction, train_config.seed if train_config else 0)

    def token_rows(index: np.ndarray) -> TokenRows:
        return TokenRows(tokens, pad_token_id(tokenizer), labels[index], rows=index)

    method = learn_coefficients(skeleton, states, token_rows(fit_rows),
                                token_rows(hold_rows) if hold_rows is not None else None,
                                granularity=granularity, config=train_config)
    del states, skeleton
    result = MergedModel(references, method.config, head=head, name=name or f"learned-soup-{granularity}",
                         revisions=revisions if any(revisions) else None, **settings)
    result.coefficients_ = method.config.coefficients
    return result
