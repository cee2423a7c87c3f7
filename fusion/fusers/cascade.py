"""CascadeFuser: run members from the cheapest to the costliest and stop at the first confident stage.

Stage ``k`` fuses the ``k`` cheapest members (any registered fuser kind, ``stage_fuser``); a row stops at the
first stage whose fused confidence (its largest class probability) reaches that stage's threshold, and the last
stage (every member) decides the rows no earlier stage was sure of. Costlier members thus run only on the rows
the cheaper ones leave undecided: the attentional cascade of Viola & Jones ("Rapid Object Detection using a
Boosted Cascade of Simple Features", CVPR 2001) over ensemble members, with the confidence-threshold exit rule of
Wang et al. ("Wisdom of Committees: An Overlooked Approach to Faster and More Accurate Models", ICLR 2022), as
AutoGluon's cascades of its ensemble's members do.

Fitting: a stratified, seeded share ``holdout`` of the fuser's rows is set aside; each stage's fuser is fitted
on the other rows and predicts the held-out ones; the thresholds are then chosen on the held-out rows to
minimise the expected cost (the mean, over rows, of the cost of the members run up to the row's stopping stage)
subject to the cascade's accuracy being at least ``target`` (default: the full last stage's accuracy on those
rows minus ``max_drop``). The search is coordinate descent over a grid: each stage's candidates are the
quantiles 0, 1/40, ..., 1 of its held-out confidences plus "never stop"; starting from "never stop" everywhere
(the full ensemble, feasible by construction for the default target), each stage in turn takes the feasible
candidate of lowest cost (ties: higher accuracy, then the higher threshold), for two passes over the stages.
When no setting reaches a given ``target``, every row goes to the last stage. Finally the stage fusers are
refitted on all the rows.

Costs come from ``MemberOutputs.costs`` (seconds per 1,000 rows; ``Ensemble`` fills them from its cache); an
unknown cost counts as the largest known one (1 for every member when none is known), and members of unknown
cost come last in the default order.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> labels = torch.randint(0, 2, (400,), generator=g)
    >>> scores = 2.0 * torch.nn.functional.one_hot(labels, 2)[:, None].float() + torch.randn(400, 2, 2, generator=g)
    >>> outputs = MemberOutputs(scores, ["cheap", "costly"], costs=[1.0, 20.0])
    >>> cascade = CascadeFuser().fit(outputs, labels)
    >>> [outputs.member_names[i] for i in cascade.order_.tolist()]
    ['cheap', 'costly']
    >>> usage = cascade.member_usage(outputs)
    >>> float(usage[0]), bool(usage[1] < 1.0)
    (1.0, True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..config import LoadOptions, digest, in_range, is_int, optional
from ..errors import ConfigError, NotFittedError
from ..io import sha256_tensors
from .base import FUSERS, Fuser, FuserConfig, MemberOutputs

GRID = 41  # quantiles of each stage's held-out confidences tried as its threshold
PASSES = 2  # coordinate-descent passes over the stages


def stratified_holdout(labels: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(fit_rows, held_out_rows)``: ``round(share * count)`` rows of each class held out, drawn with a seeded
    generator; when either side would be empty, both are every row.

    Example:
        >>> fit, held = stratified_holdout(np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1]), 0.5, 0)
        >>> len(fit), len(held), sorted(np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])[held].tolist())
        (5, 5, [0, 0, 1, 1, 1])
    """
    rng = np.random.default_rng(seed)
    held = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        held.extend(rng.permutation(rows)[: int(round(share * len(rows)))].tolist())
    held_out = np.sort(np.asarray(held, dtype=np.int64))
    fit = np.setdiff1d(np.arange(len(labels)), held_out)
    if len(held_out) == 0 or len(fit) == 0:
        every = np.arange(len(labels))
        return every, every
    return fit, held_out


def stage_costs(costs: list[Any] | None, order: list[int]) -> np.ndarray:
    """The cost of reaching each stage: running the first ``k + 1`` members of ``order`` together (a pass they
    share counted once, see ``EntryCost.joint``); an unknown cost counts as the largest known one, or 1 each
    when none is known.

    Example:
        >>> stage_costs([2.0, None, 5.0], [0, 2, 1]).tolist()
        [2.0, 7.0, 12.0]
    """
    from ..cache.store import EntryCost
    from ..evaluation.cost import as_cost

    given = [None if costs is None else costs[i] for i in order]
    known = [as_cost(c).total for c in given if c is not None]
    fill = max(known) if known else 1.0
    parts = [as_cost(fill) if c is None else as_cost(c) for c in given]
    return np.asarray([EntryCost.joint(parts[: k + 1]).total for k in range(len(parts))], dtype=np.float64)


def _stops(confidence: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Per row, the first stage whose confidence reaches its threshold (the last stage always decides)."""
    stop = confidence >= thresholds[:, None]
    stop[-1] = True
    return stop.argmax(0)


def tune_thresholds(stage_proba: list[np.ndarray], labels: np.ndarray, costs: np.ndarray,
                    target: float) -> np.ndarray:
    """Per-stage confidence thresholds (``inf``: never stop there; the last is 0) minimising the mean cost of
    the stopping stage subject to accuracy >= ``target``, by the coordinate descent of the module docstring."""
    n_stages = len(stage_proba)
    confidence = np.stack([p.max(1) for p in stage_proba])
    correct = np.stack([p.argmax(1) == labels for p in stage_proba])
    rows = np.arange(len(labels))

    def score(thresholds: np.ndarray) -> tuple[float, float]:
        first = _stops(confidence, thresholds)
        return float(correct[first, rows].mean()), float(costs[first].mean())

    thresholds = np.full(n_stages, np.inf)
    thresholds[-1] = 0.0
    grid = [np.append(np.unique(np.quantile(c, np.linspace(0.0, 1.0, GRID))), np.inf) for c in confidence]
    for _ in range(PASSES):
        for k in range(n_stages - 1):
            best, best_key = thresholds[k], None
            for t in grid[k]:
                trial = thresholds.copy()
                trial[k] = t
                accuracy, cost = score(trial)
                if accuracy < target - 1e-12:
                    continue
                key = (cost, -accuracy, -t)
                if best_key is None or key < best_key:
                    best, best_key = t, key
            thresholds[k] = best
    return thresholds


@FUSERS.register("cascade")
class CascadeFuser(Fuser):
    """Members from cheapest to costliest; each row stops at the first stage confident enough.

    Args:
        stage_fuser: the registered fuser kind, with its defaults, that fuses each stage's members.
        target: the cascade's accuracy to keep on the held-out rows; None for the full ensemble's there minus
            ``max_drop``.
        max_drop: with ``target`` None, the accuracy the cascade may lose against the full ensemble.
        holdout: the share of the fuser's rows (per class) held out to choose the thresholds.
        order: member names from the first stage to the last (every member once); None: cheapest first by
            ``MemberOutputs.costs`` (ties by member order; unknown costs last).
        seed: draws the held-out rows.

    Learned state: ``order_`` (member indices, first stage first), ``thresholds_`` (``[members]``, the last 0),
    ``tuning_`` (target, the cascade's and the full ensemble's held-out accuracy, the cascade's expected cost as a
    share of the full cost), and each stage's fuser (``stages_``, state under ``stage<k>.``). After a prediction,
    ``last_usage_`` holds the share of its rows each member was run on.
    """

    @dataclass(frozen=True)
    class Config(FuserConfig):
        stage_fuser: str = "mean"
        target: float | None = None
        max_drop: float = 0.005
        holdout: float = 0.3
        order: list[str] | None = None
        seed: int = 0

        constraints: ClassVar = {
            "target": (optional(in_range(0.0, 1.0, closed_high=True)), "None or an accuracy in [0, 1]"),
            "max_drop": (in_range(0.0, 1.0, closed_high=True), "a number in [0, 1]"),
            "holdout": (in_range(0.0, 1.0), "a share in [0, 1)"),
            "order": (optional(lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v)),
                      "None or a list of member names"),
            "seed": (is_int, "an integer"),
        }

        def validate(self) -> None:
            if self.stage_fuser == "cascade":
                raise ConfigError("cascade: stage_fuser cannot be 'cascade'; name the fuser of each stage, e.g. 'mean'.")
            FUSERS.get(self.stage_fuser)  # an unknown kind: UnknownNameError listing the registered ones
            if self.order is not None and len(set(self.order)) != len(self.order):
                raise ConfigError(f"cascade: order names a member twice: {self.order}.")

    sums_to_one = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loaded_stages: dict[int, Fuser] = {}

    @property
    def uses_embeddings(self) -> bool:  # type: ignore[override]
        return bool(self._new_stage().uses_embeddings)

    def _new_stage(self) -> Fuser:
        return FUSERS.get(self.config.stage_fuser)()

    # --- learning -------------------------------------------------------------------------------------
    def _order(self, outputs: MemberOutputs) -> list[int]:
        names = outputs.member_names
        if self.config.order is not None:
            if sorted(self.config.order) != sorted(names):
                raise ConfigError(f"cascade: order {self.config.order} must name every member once; the members "
                                  f"are {names}.")
            return [names.index(n) for n in self.config.order]
        costs = outputs.costs or [None] * outputs.n_members
        from ..evaluation.cost import as_cost

        def key(i: int) -> tuple[int, float, int]:
            return (1, 0.0, i) if costs[i] is None else (0, as_cost(costs[i]).total, i)

        return sorted(range(outputs.n_members), key=key)

    def _fit(self, outputs: MemberOutputs, labels: torch.Tensor) -> None:
        y = labels.numpy()
        order = self._order(outputs)
        costs = stage_costs(outputs.costs, order)
        fit_rows, held = stratified_holdout(y, self.config.holdout, self.config.seed)
        proba = []
        for k in range(len(order)):
            stage_outputs = outputs.members(order[: k + 1])
            stage = self._new_stage().fit(stage_outputs.subset(fit_rows), y[fit_rows])
            proba.append(stage.predict_proba(stage_outputs.subset(held)))
        full = float((proba[-1].argmax(1) == y[held]).mean())
        target = full - self.config.max_drop if self.config.target is None else self.config.target
        thresholds = tune_thresholds(proba, y[held], costs, target)
        first = _stops(np.stack([p.max(1) for p in proba]), thresholds)
        accuracy = float(np.stack([p.argmax(1) == y[held] for p in proba])[first, np.arange(len(held))].mean())
        self.stages_ = [self._new_stage().fit(outputs.members(order[: k + 1]), y) for k in range(len(order))]
        self.order_ = torch.tensor(order, dtype=torch.long)
        self.thresholds_ = torch.from_numpy(thresholds)
        self.tuning_ = torch.tensor([target, accuracy, full, float(costs[first].mean() / costs[-1])],
                                    dtype=torch.float64)

    # --- prediction -----------------------------------------------------------------------------------
    def _cascade(self, fetch: Callable[[int, np.ndarray], MemberOutputs], n_rows: int) -> np.ndarray:
        """Run the stages, asking ``fetch(k, rows)`` for stage ``k``'s members on the rows still undecided;
        sets ``last_usage_`` (share of rows each member ran on, in member order)."""
        order = self.order_.tolist()
        proba = np.zeros((n_rows, self.n_classes_), dtype=np.float64)
        undecided = np.arange(n_rows)
        reached = np.zeros(len(order))
        for k, stage in enumerate(self.stages_):
            reached[k] = len(undecided)
            if len(undecided) == 0:
                break
            stage_proba = stage.predict_proba(fetch(k, undecided))
            stop = stage_proba.max(1) >= float(self.thresholds_[k]) if k < len(order) - 1 else np.ones(len(undecided), bool)
            proba[undecided[stop]] = stage_proba[stop]
            undecided = undecided[~stop]
        usage = np.zeros(len(order))
        usage[order] = reached / max(n_rows, 1)
        self.last_usage_ = usage
        return proba

    def _predict_proba(self, outputs: MemberOutputs) -> torch.Tensor:
        order = self.order_.tolist()
        return torch.from_numpy(self._cascade(lambda k, rows: outputs.members(order[: k + 1]).subset(rows),
                                              outputs.n_rows))

    def member_usage(self, outputs: MemberOutputs | torch.Tensor | np.ndarray) -> np.ndarray:
        """Share of the rows of ``outputs`` each member (in member order) is run on by the cascade.

        Example:
            >>> import torch
            >>> scores = torch.log(torch.tensor([[[0.9, 0.1], [0.8, 0.2]], [[0.55, 0.45], [0.1, 0.9]]]))
            >>> fuser = CascadeFuser(order=["member0", "member1"]).fit(scores, [0, 1])
            >>> fuser.thresholds_ = torch.tensor([0.7, 0.0], dtype=torch.float64)
            >>> fuser.member_usage(scores).tolist()  # row 1's first member is 0.55 sure: it runs the second
            [1.0, 0.5]
        """
        self._predict_proba(self._check_input(outputs))
        return self.last_usage_

    def lazy_predict(self, run_member: Callable[[int, np.ndarray], tuple[torch.Tensor, torch.Tensor | None]],
                     n_rows: int) -> np.ndarray:
        """The cascade asking ``run_member(m, rows)`` for member ``m`` only on the rows still undecided when its
        stage comes (each member once); equals ``predict_proba`` on every member's outputs."""
        if not self.is_fitted:
            raise NotFittedError("CascadeFuser is not fitted yet; call fit (or Ensemble.fit) first.")
        order = self.order_.tolist()
        logits: dict[int, torch.Tensor] = {}
        embeddings: dict[int, torch.Tensor | None] = {}

        def fetch(k: int, rows: np.ndarray) -> MemberOutputs:
            member = order[k]
            scores, embedding = run_member(member, rows)
            logits[member] = torch.zeros(n_rows, self.n_classes_)
            logits[member][torch.as_tensor(rows)] = torch.as_tensor(scores, dtype=torch.float32)
            embeddings[member] = None
            if embedding is not None:
                embeddings[member] = torch.zeros(n_rows, *embedding.shape[1:], dtype=embedding.dtype)
                embeddings[member][torch.as_tensor(rows)] = embedding
            index = torch.as_tensor(rows)
            members = order[: k + 1]
            return MemberOutputs(torch.stack([logits[m][index] for m in members], 1), [f"member{m}" for m in members],
                                 [None if embeddings[m] is None else embeddings[m][index] for m in members])

        return self._cascade(fetch, n_rows)

    # --- learned state ----------------------------------------------------------------------------------
    def _state(self) -> dict[str, torch.Tensor]:
        state = {"order_": self.order_, "thresholds_": self.thresholds_, "tuning_": self.tuning_}
        for k, stage in enumerate(self.stages_):
            state.update({f"stage{k}.{name}": tensor for name, tensor in stage.state_dict().items()})
        return state

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        order, thresholds, tuning = state["order_"], state["thresholds_"], state["tuning_"]
        stages = []
        for k in range(len(order)):
            prefix = f"stage{k}."
            stage = self._loaded_stages.get(k) or self._new_stage()
            stages.append(stage.load_state_dict({n[len(prefix):]: t for n, t in state.items() if n.startswith(prefix)}))
        self.order_, self.thresholds_, self.tuning_, self.stages_ = order, thresholds, tuning, stages
        self._loaded_stages = {}

    def save_files(self, directory: Path) -> None:
        """Each stage's files (a scikit-learn meta-learner) under ``directory/stage<k>/``; none for most kinds."""
        super().save_files(directory)
        for k, stage in enumerate(self.stages_):
            folder = Path(directory) / f"stage{k}"
            folder.mkdir(exist_ok=True)
            stage.save_files(folder)
            if not any(folder.iterdir()):
                folder.rmdir()

    def load_files(self, directory: Path, options: LoadOptions | None = None) -> CascadeFuser:
        """Read what ``save_files`` wrote (before ``load_state_dict``)."""
        self._loaded_stages = {int(folder.name[5:]): self._new_stage().load_files(folder, options)
                               for folder in Path(directory).glob("stage*")
                               if folder.is_dir() and folder.name[5:].isdigit()}
        return self

    def state_hash(self) -> str:
        return digest(sha256_tensors(self.state_dict()), *(stage.state_hash() for stage in self.stages_))
