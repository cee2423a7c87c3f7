"""CascadeFuser: hand-computed thresholds, row-wise stopping, lazy member runs counted, costs from the cache,
nested state round trips, and the report's cascade cost."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from fusion import Ensemble
from fusion.cache.store import EntryCost
from fusion.errors import ConfigError, UnknownNameError
from fusion.evaluation import build_report
from fusion.fusers import CascadeFuser, Fuser, MeanFuser, MemberOutputs
from fusion.fusers.cascade import stage_costs, stratified_holdout, tune_thresholds
from fusion.members.base import Member, MemberConfig

LABELS = ["neg", "pos"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ColumnMember(Member):
    """Scores ``[0, scale * x[:, column]]`` from numeric rows; records how many rows each call computes."""

    kind = "column"
    computed: ClassVar[dict[str, list[int]]] = {}

    @dataclass(frozen=True)
    class Config(MemberConfig):
        kind: ClassVar[str] = "column"
        column: int = 0
        scale: float = 1.0

    @property
    def inputs(self) -> str:
        return "arrays"

    def output_labels(self, ensemble_labels):
        return LABELS

    def compute(self, data, cache):
        x = torch.as_tensor(np.asarray(data.texts)[:, self.config.column], dtype=torch.float32)
        ColumnMember.computed.setdefault(self.name, []).append(len(data))
        return {"logits": torch.stack([torch.zeros_like(x), self.config.scale * x], 1)}


def rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Column 0: a weak noisy signal of the label; column 1: a strong one."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    sign = 2.0 * y - 1.0
    x = np.stack([sign * 0.8 + rng.normal(0, 1.2, n), sign * 2.0 + rng.normal(0, 0.8, n)], 1)
    return x, y


def two_member_outputs(n: int = 600, seed: int = 0, costs=(1.0, 20.0)) -> tuple[MemberOutputs, np.ndarray]:
    x, y = rows(n, seed)
    logits = torch.zeros(n, 2, 2)
    logits[:, 0, 1], logits[:, 1, 1] = torch.as_tensor(x[:, 0]), torch.as_tensor(x[:, 1])
    return MemberOutputs(logits, ["weak", "strong"], costs=None if costs is None else list(costs)), y


# ---------------------------------------------------------------- the pieces, by hand


def test_thresholds_are_the_cheapest_that_keep_the_target_accuracy():
    labels = np.array([0, 0, 1, 1])
    first = np.array([[0.9, 0.1], [0.6, 0.4], [0.7, 0.3], [0.2, 0.8]])  # rows 0, 1, 3 right; row 2 wrong at 0.7
    last = np.array([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.1, 0.9]])  # all right
    costs = np.array([1.0, 11.0])
    strict = tune_thresholds([first, last], labels, costs, target=1.0)
    # row 2 (0.7 sure, wrong) must go on; stopping rows 0 and 3 (0.9, 0.8) is the cheapest way: t in (0.7, 0.8]
    assert 0.7 < strict[0] <= 0.8 and strict[1] == 0.0
    # the highest grid value at or below 0.8: quantile 26/40 of [0.6, 0.7, 0.8, 0.9] = 0.6 + 1.95 * 0.1
    assert strict[0] == pytest.approx(0.795)
    loose = tune_thresholds([first, last], labels, costs, target=0.75)
    assert loose[0] == pytest.approx(0.6)  # every row stops at the first stage: 3 of 4 right, cost 1
    unreachable = tune_thresholds([first, last], labels, costs, target=1.01)
    assert unreachable[0] == np.inf  # nothing reaches the target: every row goes to the last stage


def test_stage_costs_count_a_shared_pass_once_and_fill_unknown_with_the_largest_known():
    head_a, head_b = EntryCost(0.5, {"backbone": 10.0}), EntryCost(0.25, {"backbone": 10.0})
    assert stage_costs([head_a, head_b, 2.0], [2, 0, 1]).tolist() == [2.0, 12.5, 12.75]
    assert stage_costs([3.0, None], [0, 1]).tolist() == [3.0, 6.0]
    assert stage_costs(None, [1, 0]).tolist() == [1.0, 2.0]


def test_the_holdout_is_stratified_seeded_and_falls_back_to_every_row():
    labels = np.array([0] * 10 + [1] * 20)
    fit, held = stratified_holdout(labels, 0.3, seed=4)
    assert np.bincount(labels[held]).tolist() == [3, 6] and len(fit) == 21
    assert np.array_equal(held, stratified_holdout(labels, 0.3, seed=4)[1])
    assert not np.array_equal(held, stratified_holdout(labels, 0.3, seed=5)[1])
    every = stratified_holdout(np.array([0, 1]), 0.3, seed=0)
    assert every[0].tolist() == every[1].tolist() == [0, 1]


# ---------------------------------------------------------------- the fuser


def test_default_order_is_cheapest_first_ties_by_member_order_unknown_last():
    outputs, y = two_member_outputs()
    logits = torch.cat([outputs.logits, outputs.logits], 1)
    four = MemberOutputs(logits, ["a", "b", "c", "d"], costs=[None, 5.0, 1.0, 5.0])
    assert CascadeFuser().fit(four, y).order_.tolist() == [2, 1, 3, 0]
    assert CascadeFuser(order=["d", "c", "b", "a"]).fit(four, y).order_.tolist() == [3, 2, 1, 0]
    with pytest.raises(ConfigError, match=r"order \['a'\] must name every member once"):
        CascadeFuser(order=["a"]).fit(four, y)


def test_rows_stop_at_the_first_confident_stage_and_usage_is_counted():
    outputs, y = two_member_outputs()
    fuser = CascadeFuser().fit(outputs, y)
    threshold = float(fuser.thresholds_[0])
    weak = outputs.probabilities(torch.float64)[:, 0].numpy()
    sure = weak.max(1) >= threshold
    assert 0 < sure.sum() < len(y)  # some rows stop early, some go on
    proba = fuser.predict_proba(outputs)
    np.testing.assert_array_equal(proba[sure], weak[sure])  # stage 1: the weak member alone (mean of one)
    both = MeanFuser().fit(outputs, y).predict_proba(outputs)
    np.testing.assert_allclose(proba[~sure], both[~sure], rtol=1e-12)  # stage 2: the mean of both
    np.testing.assert_allclose(fuser.member_usage(outputs), [1.0, (~sure).mean()])
    target, held_accuracy, full_accuracy, cost_share = fuser.tuning_.tolist()
    assert target == pytest.approx(full_accuracy - 0.005) and held_accuracy >= target
    # the expected cost tuned on the held-out rows (the mean stage fuser learns nothing, so its held-out
    # confidences are the ones above): every row pays the weak member's 1, the rows going on the strong one's 20
    held = stratified_holdout(y, 0.3, 0)[1]
    assert cost_share == pytest.approx((1.0 + 20.0 * (~sure[held]).mean()) / 21.0)
    # the cascade is nearly as accurate as both members and runs the costly one on fewer rows
    accuracy = (proba.argmax(1) == y).mean()
    assert accuracy >= (both.argmax(1) == y).mean() - 0.03 and (~sure).mean() < 0.85


def test_a_given_target_is_met_on_the_held_out_rows_and_a_higher_target_costs_more():
    outputs, y = two_member_outputs()
    loose = CascadeFuser(target=0.8).fit(outputs, y)
    strict = CascadeFuser(max_drop=0.0).fit(outputs, y)
    assert loose.tuning_[1] >= 0.8 and strict.tuning_[1] >= strict.tuning_[2]
    assert loose.member_usage(outputs)[1] < strict.member_usage(outputs)[1]


def test_nested_stage_state_round_trips_with_costs(tmp_path):
    outputs, y = two_member_outputs(n=150)
    fuser = CascadeFuser(stage_fuser="linear", order=["strong", "weak"]).fit(outputs, y)
    save_file(fuser.state_dict(), tmp_path / "fuser.safetensors")
    fuser.save_files(tmp_path)
    again = Fuser.from_config(fuser.to_config()).load_files(tmp_path).load_state_dict(
        load_file(tmp_path / "fuser.safetensors"))
    np.testing.assert_array_equal(again.predict_proba(outputs), fuser.predict_proba(outputs))
    assert again.order_.tolist() == [1, 0] and again.fingerprint == fuser.fingerprint
    assert sorted(again.state_dict()) == sorted(fuser.state_dict())
    assert any(k.startswith("stage1.") for k in fuser.state_dict())


def test_bad_configs_name_the_field():
    with pytest.raises(ConfigError, match="stage_fuser cannot be 'cascade'"):
        CascadeFuser(stage_fuser="cascade")
    with pytest.raises(UnknownNameError):
        CascadeFuser(stage_fuser="meen")
    with pytest.raises(ConfigError, match="order names a member twice"):
        CascadeFuser(order=["a", "a"])
    with pytest.raises(ConfigError, match=r"CascadeFuser\.Config\.holdout must be a share in \[0, 1\)"):
        CascadeFuser(holdout=1.0)


# ---------------------------------------------------------------- lazy execution in the ensemble


def test_the_costly_member_runs_only_on_the_rows_the_cheap_stage_leaves_undecided():
    ColumnMember.computed.clear()
    weak, strong = ColumnMember(column=0, name="weak"), ColumnMember(column=1, name="strong")
    ens = Ensemble([weak, strong], CascadeFuser(order=["weak", "strong"]), labels=LABELS, cache_dir="memory")
    x_train, y_train = rows(500, 1)
    ens.fit(x_train, y_train)
    x_test, _ = rows(200, 2)
    ColumnMember.computed.clear()
    proba = ens.predict_proba(x_test)
    threshold = float(ens.fuser_.thresholds_[0])
    weak_proba = torch.stack([torch.zeros(200), torch.as_tensor(x_test[:, 0], dtype=torch.float32)], 1).softmax(-1)
    undecided = int((weak_proba.double().max(1).values < threshold).sum())
    assert 0 < undecided < 200
    assert ColumnMember.computed == {"weak": [200], "strong": [undecided]}  # each run once, strong on few rows
    eager = ens.fuser_.predict_proba(ens.member_outputs(x_test))
    np.testing.assert_array_equal(proba, eager)
    np.testing.assert_array_equal(ens.predict(x_test), np.asarray(LABELS)[eager.argmax(1)])


def test_lazy_runs_slice_outputs_already_cached_for_all_rows_and_other_fusers_run_everything():
    weak, strong = ColumnMember(column=0, name="weak"), ColumnMember(column=1, name="strong")
    ens = Ensemble([weak, strong], CascadeFuser(order=["weak", "strong"]), labels=LABELS, cache_dir="memory")
    ens.fit(*rows(300, 1))
    x_test, _ = rows(100, 2)
    ens.member_outputs(x_test)  # both members cached on all rows
    ColumnMember.computed.clear()
    ens.predict_proba(x_test)
    assert ColumnMember.computed == {}
    plain = Ensemble([weak, strong], "mean", labels=LABELS, cache_dir="memory").fit(*rows(300, 1))
    ColumnMember.computed.clear()
    plain.predict_proba(x_test)
    assert ColumnMember.computed == {"weak": [100], "strong": [100]}


def test_member_costs_reach_the_fuser_from_the_cache():
    weak, strong = ColumnMember(column=0, name="weak"), ColumnMember(column=1, name="strong")
    x, y = rows(400, 1)
    ens = Ensemble([strong, weak], "cascade", labels=LABELS, cache_dir="memory")
    data = ens._data(x, "data")
    ens.cache.put(strong.fingerprint, data.fingerprint, strong.compute(data, ens.cache), seconds=8.0)
    ens.cache.put(weak.fingerprint, data.fingerprint, weak.compute(data, ens.cache), seconds=0.4)
    ens.fit(x, y)
    outputs = ens.member_outputs(x)
    assert [c.total for c in outputs.costs] == [pytest.approx(20.0), pytest.approx(1.0)]  # seconds per 1,000 rows
    assert ens.fuser_.order_.tolist() == [1, 0]  # weak (cheaper) first


# ---------------------------------------------------------------- the report


def test_the_report_costs_a_cascade_by_the_rows_reaching_each_member():
    proba = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])
    y = np.array([0, 1, 1, 1])
    report = build_report({"weak": proba, "strong": proba}, {"cascade": proba, "mean": proba}, y, LABELS,
                          seconds={"weak": 0.004, "strong": 0.08, "cascade": 0.0004, "mean": 0.0004},
                          member_usage={"cascade": {"weak": 1.0, "strong": 0.25}}, n_bootstrap=0)
    # per 1,000 rows: weak 1, strong 20, fusers 0.1; the cascade runs strong on a quarter of the rows
    assert report.full_seconds_per_1k("cascade") == pytest.approx(1.0 * 1.0 + 20.0 * 0.25 + 0.1)
    assert report.full_seconds_per_1k("mean") == pytest.approx(21.1)
    assert report.member_usage == {"cascade": {"weak": 1.0, "strong": 0.25}}
    assert type(report).from_dict(report.to_dict()) == report
    assert "strong 25%" in report.to_markdown()


def test_ensemble_evaluate_reports_the_measured_usage():
    weak, strong = ColumnMember(column=0, name="weak"), ColumnMember(column=1, name="strong")
    ens = Ensemble([weak, strong], CascadeFuser(order=["weak", "strong"]), labels=LABELS, cache_dir="memory")
    ens.fit(*rows(400, 1))
    x_test, y_test = rows(200, 2)
    report = ens.evaluate({"text": x_test, "label": y_test}, n_bootstrap=0)
    usage = report.member_usage[ens._fuser_label()]
    expected = ens.fuser_.member_usage(ens.member_outputs(x_test))
    assert usage == {"weak": 1.0, "strong": pytest.approx(expected[1])} and 0 < usage["strong"] < 1
    weak_cost, strong_cost = report.model("weak").seconds_per_1k, report.model("strong").seconds_per_1k
    fuser = report.model(ens._fuser_label()).seconds_per_1k
    assert report.full_seconds_per_1k(ens._fuser_label()) == pytest.approx(
        weak_cost + strong_cost * usage["strong"] + fuser)


def test_an_ensemble_with_a_cascade_saves_and_loads(tmp_path):
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from fusion import SklearnMember

    def column(j: int, name: str) -> SklearnMember:
        return SklearnMember(make_pipeline(ColumnTransformer([("pick", "passthrough", [j])]), LogisticRegression()),
                             name=name)

    x, y = rows(300, 3)
    # Both members cost about the same, so the order is named rather than left to the timings' noise.
    ens = Ensemble([column(0, "weak"), column(1, "strong")], CascadeFuser(order=["weak", "strong"]), labels=LABELS,
                   cache_dir="memory", cv=3).fit(x, y)
    ens.save_pretrained(tmp_path / "ens")
    loaded = Ensemble.from_pretrained(tmp_path / "ens", cache_dir="memory")
    x_test, _ = rows(100, 4)
    np.testing.assert_array_equal(loaded.predict_proba(x_test), ens.predict_proba(x_test))
    assert loaded.fuser_.thresholds_.tolist() == ens.fuser_.thresholds_.tolist()
    assert 0 < loaded.fuser_.last_usage_[1] < 1  # the strong member ran on some of the rows only


def test_later_stages_on_one_backbone_reuse_its_pass_on_the_rows_that_reached_them(bert_encoder_dir, toy_sentiment,
                                                                                   monkeypatch):
    """TF-IDF first, then two heads on one frozen encoder: the encoder runs only on the rows that reach the
    second stage, once; the third stage slices that pass for its (fewer) rows. The report costs the cascade by
    the share reaching each member, the shared pass counted once."""
    from helpers import tfidf_member

    from fusion import HFEncoder, TrainConfig
    from fusion.members.hf_encoder import HFEncoder as Encoder

    encoded: list[int] = []
    original = Encoder._load

    def loaded(self):
        backbone, tokenizer = original(self)
        if not getattr(backbone, "_counted", False):
            backbone.register_forward_hook(lambda module, args, kwargs, out: encoded.append(len(kwargs["input_ids"]))
                                           if "input_ids" in kwargs else encoded.append(len(args[0])),
                                           with_kwargs=True)
            backbone._counted = True
        return backbone, tokenizer

    monkeypatch.setattr(Encoder, "_load", loaded)
    fast = TrainConfig(learning_rate=1e-2, max_epochs=5, batch_size=32, patience=None, show_progress=False)
    members = [tfidf_member("tfidf"), *[HFEncoder(bert_encoder_dir, pooling=p, name=p, train_config=fast,
                                                  show_progress=False) for p in ("mean", "cls")]]
    ens = Ensemble(members, CascadeFuser(order=["tfidf", "mean", "cls"]), labels=["negative", "positive"],
                   cache_dir="memory", cv=2).fit(toy_sentiment["train"])
    texts = toy_sentiment["validation"]["text"]
    confidence = np.sort(ens.members_[0].compute(ens._data(texts, "data"), ens.cache)["logits"].softmax(-1)
                         .max(-1).values.numpy())
    # Stop half the rows at the first stage (TF-IDF's median confidence) and let every row reaching the second
    # go on to the third unless it is certain: the encoder must then run on exactly the rows that reach stage 2.
    ens.fuser_.thresholds_ = torch.tensor([float(confidence[len(texts) // 2]), 1.01, 0.0], dtype=torch.float64)
    encoded.clear()
    ens.predict_proba(texts)
    reached = ens.fuser_.last_usage_
    assert reached[0] == 1.0 and 0 < reached[1] < 1 and reached[2] == reached[1]
    assert sum(encoded) == round(reached[1] * len(texts)), "the encoder ran on rows that stopped at TF-IDF, or twice"

    report = ens.evaluate(toy_sentiment["validation"], n_bootstrap=0)
    usage = report.member_usage["cascade"]
    both = next(p["seconds_per_1k"] for p in report.cost_accuracy if set(p["members"]) == {"tfidf", "mean", "cls"})
    tfidf = report.model("tfidf").seconds_per_1k
    own = report.model("cascade").seconds_per_1k
    mean_after_tfidf = next(p["seconds_per_1k"] for p in report.cost_accuracy if set(p["members"]) == {"tfidf", "mean"})
    expected = own + tfidf + (mean_after_tfidf - tfidf) * usage["mean"] + (both - mean_after_tfidf) * usage["cls"]
    assert report.full_seconds_per_1k("cascade") == pytest.approx(expected)
