"""Label-space alignment across members: always by label name, never by position alone."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch

from .errors import LabelMismatchError

_GENERIC = re.compile(r"^LABEL_\d+$")


def is_generic(names: Sequence[str]) -> bool:
    """True when names are transformers' placeholders (``LABEL_0``, ``LABEL_1``, ...)."""
    return bool(names) and all(_GENERIC.match(str(n)) for n in names)


def config_labels(config: Mapping) -> list[str]:
    """A transformers ``config.json``'s label names in id order (``LABEL_i`` placeholders when it has no
    ``id2label``).

    Example:
        >>> config_labels({"id2label": {"1": "pos", "0": "neg"}})
        ['neg', 'pos']
    """
    id2label = config.get("id2label") or {str(i): f"LABEL_{i}" for i in range(config.get("num_labels", 2))}
    return [str(id2label[k]) for k in sorted(id2label, key=int)]


def apply_label_map(member: str, names: Sequence[str], label_map: Mapping[str | int, str] | None) -> list[str]:
    """Rename a member's labels with ``label_map`` (keys: the member's names or ids).

    Raises:
        LabelMismatchError: the names are generic placeholders and no map was given, or the map names a
            label the member does not have.
    """
    names = [str(n) for n in names]
    if not label_map:
        if is_generic(names):
            example = ", ".join(f"{n!r}: '<name>'" for n in names[:3])
            raise LabelMismatchError(
                f"member {member!r} only has placeholder label names {names}; fusion aligns members by label "
                f"name, so say what they mean: label_map={{{example}}}."
            )
        return names
    # JSON turns integer keys into strings: read "0" as id 0 unless "0" is itself a label name.
    label_map = {(int(k) if isinstance(k, str) and k.isdigit() and k not in names else k): v for k, v in label_map.items()}
    unknown = [k for k in label_map if not (k in names or (isinstance(k, int) and 0 <= k < len(names)))]
    if unknown:
        raise LabelMismatchError(
            f"member {member!r}: label_map keys {unknown} are neither its label names {names} nor ids "
            f"0..{len(names) - 1}."
        )
    renamed = [label_map.get(name, label_map.get(i, name)) for i, name in enumerate(names)]
    if len(set(renamed)) != len(renamed):
        raise LabelMismatchError(f"member {member!r}: label_map gives duplicate names {renamed}.")
    return renamed


def alignment(member: str, member_labels: Sequence[str], ensemble_labels: Sequence[str]) -> torch.Tensor:
    """Column index that reorders a member's outputs into the ensemble's label order.

    Example:
        >>> alignment("m", ["pos", "neg"], ["neg", "pos"]).tolist()
        [1, 0]
    """
    member_labels, ensemble_labels = list(member_labels), list(ensemble_labels)
    if sorted(member_labels) != sorted(ensemble_labels) or len(set(member_labels)) != len(member_labels):
        missing = [n for n in ensemble_labels if n not in member_labels]
        extra = [n for n in member_labels if n not in ensemble_labels]
        raise LabelMismatchError(
            f"member {member!r} has labels {member_labels}, but the ensemble's labels are {ensemble_labels} "
            f"(missing from the member: {missing}; not in the ensemble: {extra}). Pass label_map= to the member "
            "to rename its labels, e.g. label_map={'POS': 'positive'}, or set the ensemble's labels=."
        )
    position = {name: i for i, name in enumerate(member_labels)}
    return torch.tensor([position[name] for name in ensemble_labels], dtype=torch.long)
