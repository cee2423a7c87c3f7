"""Which vocabulary (embedding rows and tokenizer) a merge writes, and when vocabularies refuse to merge.

The rule, a documented subset of mergekit's (without its ``tokenizer_source`` that builds a union tokenizer):

- the same tokenizer files and vocabulary size everywhere: the rows are merged as they are;
- vocabularies that differ only by tokens added at the end (each model's token -> id map extends the smallest
  one): only the shared rows are merged, mergekit's "common submatrix" of embeddings of different sizes; the
  output takes the tokenizer of the first model (then the base) with that smallest vocabulary, and the tokens
  the others added are left out (logged, and said in the provenance file);
- any other difference (a token with another id, a token missing): refused, naming the token and the models,
  since the same row would mean different tokens.

Example:
    >>> plan = plan_vocabulary([checkpoint_a, checkpoint_b])  # doctest: +SKIP
    >>> plan.rows, plan.donor  # doctest: +SKIP
    (277, 0)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..members.hf_source import TOKENIZER_FILES
from .checkpoints import Checkpoint

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VocabularyPlan:
    """What a merge does with the vocabulary.

    Attributes:
        rows: rows of every vocabulary tensor in the output (None: the models declare no ``vocab_size``, so
            their vocabulary tensors are checked like any other).
        donor: index (models first, then the base) of the checkpoint whose tokenizer files the output gets.
        note: what was done, in words (for the provenance file and the model card).
        dropped: tokens some model has beyond the shared rows, left out of the output.
    """

    rows: int | None
    donor: int
    note: str
    dropped: list[str] = field(default_factory=list)


def has_tokenizer(checkpoint: Checkpoint) -> bool:
    return any((checkpoint.directory / name).is_file() for name in TOKENIZER_FILES)


def load_vocabulary(checkpoint: Checkpoint) -> dict[str, int]:
    """The tokenizer's token -> id map (added tokens included)."""
    from transformers import AutoTokenizer

    from ..progress import quiet_transformers

    try:
        with quiet_transformers():
            return dict(AutoTokenizer.from_pretrained(str(checkpoint.directory)).get_vocab())
    except Exception as err:  # a tokenizer needing a missing package, a broken file
        raise ConfigError(f"model {checkpoint.label!r}: cannot load its tokenizer to compare vocabularies "
                          f"({type(err).__name__}: {err}).") from err


def _difference(smaller: Mapping[str, int], larger: Mapping[str, int]) -> str | None:
    """Why ``larger`` does not extend ``smaller`` with tokens at the end (None when it does)."""
    for token, index in sorted(smaller.items(), key=lambda item: item[1]):
        if larger.get(token) != index:
            where = "is not in" if token not in larger else f"has id {larger[token]} in"
            return f"token {token!r} has id {index} in {{a}} but {where} {{b}}"
    end = max(smaller.values(), default=-1)
    inside = sorted((index, token) for token, index in larger.items() if token not in smaller and index <= end)
    if inside:
        index, token = inside[0]
        return f"{{b}} has token {token!r} at id {index}, which {{a}} gives another token or none"
    return None


def plan_vocabulary(checkpoints: Sequence[Checkpoint]) -> VocabularyPlan:
    """The vocabulary plan for these checkpoints (the models, then the base if any).

    Raises:
        ConfigError: vocabularies that do not differ only by tokens added at the end (naming a token and the
            two models), or vocabulary sizes that differ where a model has no tokenizer files to check them.
    """
    sizes = [c.vocab_size for c in checkpoints]
    with_tokenizer = [i for i, c in enumerate(checkpoints) if has_tokenizer(c)]
    first_donor = with_tokenizer[0] if with_tokenizer else 0
    known = [s for s in sizes if s is not None]
    rows = min(known) if len(known) == len(sizes) and known else None
    if len({checkpoints[i].source.tokenizer_fingerprint for i in with_tokenizer}) <= 1 and len(set(sizes)) == 1:
        return VocabularyPlan(rows, first_donor, "all models have the same tokenizer; every row is merged")
    if len(set(sizes)) > 1 and (rows is None or len(with_tokenizer) < len(checkpoints)):
        odd = next(c for i, c in enumerate(checkpoints) if sizes[i] is None or i not in with_tokenizer)
        raise ConfigError(f"cannot merge vocabularies of different sizes ({_sizes(checkpoints)}): model {odd.label!r} "
                          "has no tokenizer files (or no vocab_size in config.json), so fusion cannot check that the "
                          "shared rows mean the same tokens.")
    vocabularies = {i: load_vocabulary(checkpoints[i]) for i in with_tokenizer}
    smallest = min(with_tokenizer, key=lambda i: (len(vocabularies[i]), i))
    for i in with_tokenizer:
        why = _difference(vocabularies[smallest], vocabularies[i])
        if why is not None:
            a, b = checkpoints[smallest].label, checkpoints[i].label
            raise ConfigError(f"cannot merge models {a!r} and {b!r}: their tokenizers differ "
                              f"({why.format(a=repr(a), b=repr(b))}), so the same embedding row means different "
                              "tokens. Merge fine-tunes that share a tokenizer (vocabularies may differ only by "
                              "tokens added at the end).")
    size = len(vocabularies[smallest])
    donor = next((i for i in with_tokenizer if len(vocabularies[i]) == size and sizes[i] == rows), smallest)
    if rows is not None and max(vocabularies[donor].values(), default=-1) >= rows:
        raise ConfigError(f"model {checkpoints[donor].label!r}: its tokenizer has ids up to "
                          f"{max(vocabularies[donor].values())} but the shared embeddings have {rows} rows "
                          f"({_sizes(checkpoints)}); no tokenizer fits the merged embeddings.")
    dropped = sorted({t for v in vocabularies.values() for t in v if t not in vocabularies[donor]},
                     key=lambda t: min(v.get(t, 1 << 62) for v in vocabularies.values()))
    donor_label = checkpoints[donor].label
    if not dropped and len(set(sizes)) == 1:
        return VocabularyPlan(rows, donor, f"the tokenizer files differ but the vocabularies are the same; the output "
                                           f"uses {donor_label!r}'s tokenizer")
    note = (f"vocabularies differ only by tokens added at the end ({_sizes(checkpoints)}): the {rows} shared rows "
            f"are merged (mergekit's common submatrix) and the output uses {donor_label!r}'s tokenizer; "
            f"{len(dropped)} added token(s) are left out: {dropped[:10]}{' ...' if len(dropped) > 10 else ''}")
    logger.warning("merge: %s", note)
    return VocabularyPlan(rows, donor, note, dropped)


def _sizes(checkpoints: Sequence[Checkpoint]) -> str:
    return ", ".join(f"{c.label}: {c.vocab_size} rows" for c in checkpoints)
