"""Ensemble.prune: the subset kept under a budget, computed by hand; limits refused with the cheapest cost; the
pruned ensemble refits its fuser, predicts, saves and loads."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from test_cascade import LABELS, ColumnMember

from fusion import Ensemble, SklearnMember
from fusion.errors import ConfigError
from fusion.fusers import LinearFuser, MeanFuser

# 10 rows; member m's score for "pos" is SCORES[m][row] (its probability is the sigmoid): a is wrong on rows 1
# and 2, b on row 0, c on row 3; their confidences differ so that soft votes are never ties.
Y = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 1])
SIGN = 2.0 * Y - 1.0
WRONG = {"a": [1, 2], "b": [0], "c": [3]}
CONFIDENCE = {"a": 2.0, "b": 4.0, "c": 3.0}
COSTS = {"a": 1.0, "b": 3.0, "c": 10.0}  # seconds per 1,000 rows


def features() -> np.ndarray:
    columns = []
    for name in "abc":
        score = SIGN * CONFIDENCE[name]
        score[WRONG[name]] *= -1
        columns.append(score)
    return np.stack(columns, 1)


# Soft votes by hand (s = sigmoid): {a} 0.8, {b} 0.9, {c} 0.9 (cost 10); {a, b}: row 0 b (4) beats a (2), rows 1-2
# b beats a: 0.9; {a, c}: row 3 c (3) beats a (2): 0.9; {b, c}: row 0 b (4) beats c (3): 0.9; {a, b, c}: row 0
# (s(2) + s(-4) + s(3)) / 3 = 0.62 right, rows 1-3 two of three right with the larger scores: 1.0, cost 14.


@pytest.fixture
def fitted(monkeypatch):
    monkeypatch.setattr(Ensemble, "_member_costs", lambda self, members, data: [COSTS[m.name] for m in members])
    members = [ColumnMember(column=i, name=name) for i, name in enumerate("abc")]
    return Ensemble(members, "mean", labels=LABELS, cache_dir="memory").fit(features(), Y)


@pytest.mark.parametrize(("limits", "kept", "accuracy", "cost"), [
    ({"max_seconds_per_1k": 20.0}, ["a", "b", "c"], 1.0, 14.0),  # everyone fits and is the most accurate
    ({"max_seconds_per_1k": 13.0}, ["b"], 0.9, 3.0),  # 0.9 at best; b is the cheapest of those
    ({"max_seconds_per_1k": 3.5}, ["b"], 0.9, 3.0),
    ({"max_seconds_per_1k": 2.0}, ["a"], 0.8, 1.0),
    ({"max_members": 2}, ["b"], 0.9, 3.0),
    ({"max_members": 2, "max_seconds_per_1k": 2.0}, ["a"], 0.8, 1.0),
])
def test_the_kept_subset_is_the_one_computed_by_hand(fitted, limits, kept, accuracy, cost):
    pruned = fitted.prune(**limits)
    assert pruned.pruned_["members"] == kept and [m.name for m in pruned.members_] == kept
    assert pruned.pruned_["accuracy"] == pytest.approx(accuracy)
    assert pruned.pruned_["seconds_per_1k"] == pytest.approx(cost)
    assert pruned.pruned_["full"] == {"members": ["a", "b", "c"], "accuracy": 1.0, "seconds_per_1k": 14.0}
    assert pruned.fuser_.n_members_ == len(kept) and fitted.fuser_.n_members_ == 3  # the original is untouched
    mean = features()[:, ["abc".index(n) for n in kept]]
    expected = (1 / (1 + np.exp(-mean))).mean(1) > 0.5
    np.testing.assert_array_equal(pruned.predict(features()) == "pos", expected)


def test_limits_are_required_checked_and_a_budget_below_every_subset_names_the_cheapest(fitted):
    with pytest.raises(ConfigError, match="prune needs a limit"):
        fitted.prune()
    with pytest.raises(ConfigError, match="max_members must be an integer >= 1"):
        fitted.prune(max_members=0)
    with pytest.raises(ConfigError, match=r"no subset of members fits max_seconds_per_1k=0.5: the cheapest subset "
                                          r"costs 1 s per 1,000 rows"):
        fitted.prune(max_seconds_per_1k=0.5)


def test_choosing_on_given_rows(fitted):
    x = features()
    flipped = Y.copy()
    flipped[[1, 2]] = 1 - flipped[[1, 2]]  # on these labels a is always right, b and c wrong twice more
    pruned = fitted.prune(max_members=1, data={"text": x, "label": np.asarray(LABELS)[flipped].tolist()})
    assert pruned.pruned_["members"] == ["a"] and pruned.pruned_["rows"] == "the given data"


def _column(j: int, name: str) -> SklearnMember:
    picker = ColumnTransformer([("pick", "passthrough", [j])])
    return SklearnMember(make_pipeline(picker, LogisticRegression()), name=name)


def test_the_pruned_ensemble_refits_its_fuser_predicts_saves_and_loads(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    x = (2.0 * y - 1.0)[:, None] * np.array([0.3, 1.5, 1.0]) + rng.normal(0, 1, (300, 3))
    ens = Ensemble([_column(j, n) for j, n in enumerate("abc")], [MeanFuser(), LinearFuser()], labels=LABELS,
                   cache_dir="memory", cv=3).fit(x, y)
    pruned = ens.prune(max_members=2)
    assert pruned.pruned_["members"] == ["b", "c"] and pruned.fuser_.n_members_ == 2  # the two strong columns
    assert set(pruned.candidates_) == set(ens.candidates_) - {"member: a"}
    pruned.save_pretrained(tmp_path / "pruned")
    loaded = Ensemble.from_pretrained(tmp_path / "pruned", cache_dir="memory")
    np.testing.assert_array_equal(loaded.predict_proba(x), pruned.predict_proba(x))
    assert [m.name for m in loaded.members_] == ["b", "c"]
    assert (pruned.predict(x) == np.asarray(LABELS)[y]).mean() > 0.8
