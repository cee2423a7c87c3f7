"""Accuracy against inference cost: which subsets of members buy which accuracy at which price.

Each subset is scored by the accuracy of its soft vote (the mean of its members' probabilities, argmax) and
costs its members' seconds per 1,000 rows: each member's own, plus each cached pass they share (one encoder
backbone under several heads, see :class:`fusion.cache.store.EntryCost`) once; a plain number is a member's
own cost, shared with no other. With up to ``EXHAUSTIVE_LIMIT`` members every non-empty
subset is scored (2^M - 1); beyond that, each single member plus the subsets met by greedy forward selection
(add, at each step, the member that raises accuracy most; ties go to the cheaper one). A subset is on the
Pareto front when no other subset of known cost is at least as cheap and at least as accurate, and strictly
better in one of the two; subsets with an unknown cost are never on it.

Example:
    >>> import numpy as np
    >>> probas = {"a": np.array([[0.9, 0.1], [0.6, 0.4]]), "b": np.array([[0.2, 0.8], [0.3, 0.7]])}
    >>> [(p["members"], p["accuracy"]) for p in cost_accuracy(probas, np.array([0, 1]), {"a": 1.0, "b": 5.0})]
    [(['a'], 0.5), (['b'], 0.5), (['a', 'b'], 1.0)]
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import combinations

import numpy as np

from ..cache.store import EntryCost

EXHAUSTIVE_LIMIT = 8


def _vote_accuracy(stack: np.ndarray, subset: tuple[int, ...], labels: np.ndarray) -> float:
    return float((stack[list(subset)].mean(0).argmax(1) == labels).mean())


def as_cost(value: float | EntryCost) -> EntryCost:
    """A model's cost as an :class:`EntryCost`: a plain number is all its own, shared with no other model."""
    return value if isinstance(value, EntryCost) else EntryCost(float(value))


def _cost(subset: tuple[int, ...], costs: list[EntryCost | None]) -> float | None:
    """Running the members of ``subset`` together (a pass several share counted once); None if one is unknown."""
    picked = [costs[i] for i in subset]
    return None if any(c is None for c in picked) else float(EntryCost.joint(picked).total)


def _greedy_subsets(stack: np.ndarray, labels: np.ndarray, costs: list[EntryCost | None]) -> list[tuple[int, ...]]:
    n_members = len(stack)
    subsets: list[tuple[int, ...]] = [(i,) for i in range(n_members)]
    chosen: list[int] = []
    running = np.zeros_like(stack[0])
    while len(chosen) < n_members:
        remaining = [i for i in range(n_members) if i not in chosen]
        keys = [(float(((running + stack[i]).argmax(1) == labels).mean()), -(_cost((*chosen, i), costs) or 0.0))
                for i in remaining]
        best = remaining[keys.index(max(keys))]
        chosen.append(best)
        running += stack[best]
        if len(chosen) > 1:
            subsets.append(tuple(sorted(chosen)))
    return subsets


def pareto_front(points: list[tuple[float | None, float]]) -> list[bool]:
    """For ``(cost, accuracy)`` points: True where no known-cost point dominates (cost None: False)."""
    known = [(c, a) for c, a in points if c is not None]
    flags = []
    for cost, acc in points:
        dominated = cost is None or any(
            c <= cost and a >= acc and (c < cost or a > acc) for c, a in known
        )
        flags.append(not dominated)
    return flags


def cost_accuracy(
    member_proba: dict[str, np.ndarray], labels: np.ndarray,
    seconds_per_1k: Mapping[str, float | EntryCost | None],
) -> list[dict]:
    """Subsets of members with soft-vote accuracy, joint cost and Pareto flag.

    Args:
        seconds_per_1k: member -> its cost per 1,000 rows: an :class:`EntryCost` (shared passes apart) or a
            number (all its own); a member left out or None has an unknown cost.

    Returns:
        ``[{"members": [...], "accuracy", "seconds_per_1k" (None if a member's cost is unknown), "pareto"}]``,
        by subset size, then in member order.
    """
    names = list(member_proba)
    stack = np.stack([member_proba[n] for n in names])
    costs = [None if (c := seconds_per_1k.get(n)) is None else as_cost(c) for n in names]
    if len(names) <= EXHAUSTIVE_LIMIT:
        subsets = [s for k in range(1, len(names) + 1) for s in combinations(range(len(names)), k)]
    else:
        subsets = sorted(_greedy_subsets(stack, labels, costs), key=lambda s: (len(s), s))
    points = [(_cost(s, costs), _vote_accuracy(stack, s, labels)) for s in subsets]
    flags = pareto_front(points)
    return [{"members": [names[i] for i in s], "accuracy": acc, "seconds_per_1k": cost, "pareto": flag}
            for s, (cost, acc), flag in zip(subsets, points, flags, strict=True)]
