"""Tests of fusion.fusers: one conformance suite over the whole registry, hand-computed values, what the
learned fusers learn, stacking's options, and bad input as a table."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

from fusion.errors import ConfigError, MemberOutputError, NotFittedError, PersistenceError, UnknownNameError
from fusion.evaluation.metrics import log_loss
from fusion.fusers import (
    FUSERS,
    FixedWeightsFuser,
    Fuser,
    LinearFuser,
    MeanFuser,
    MemberOutputs,
    PickFuser,
    StackingFuser,
    VoteFuser,
)
from fusion.fusers.linear import DEFAULT_TRAINING as LINEAR_TRAINING
from fusion.fusers.stacking import DEFAULT_TRAINING as STACKING_TRAINING
from fusion.fusers.stacking import SKLEARN_METAS
from fusion.train_config import TrainConfig


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tensors here are tiny: intra-op threads gain nothing, and on a busy 2-core machine their spin-waits
    made each fit several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def member_outputs(n: int = 300, n_classes: int = 3, seed: int = 0) -> tuple[MemberOutputs, np.ndarray]:
    """3 members whose scores are the one-hot label plus noise of growing size, each with an embedding."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, n_classes, (n,), generator=g)
    noise = torch.tensor([1.0, 1.5, 2.0]).view(1, 3, 1) * torch.randn(n, 3, n_classes, generator=g)
    logits = 2.0 * F.one_hot(labels, n_classes)[:, None, :].float() + noise
    embeddings = [logits[:, m] @ torch.randn(n_classes, 4, generator=g) for m in range(3)]
    return MemberOutputs(logits, embeddings=embeddings), labels.numpy()


def outputs_from_proba(*members: list[list[float]]) -> MemberOutputs:
    """MemberOutputs whose member m has the given probabilities (rows x classes)."""
    return MemberOutputs(torch.tensor(members, dtype=torch.float64).log().transpose(0, 1))


DATA = {3: member_outputs(), 2: member_outputs(n_classes=2, seed=1)}

# Every registered fuser with its defaults, plus the variants that take other code paths.
CASES = {name: (lambda name=name: FUSERS.get(name)()) for name in FUSERS.names()} | {
    "stacking-sklearn": lambda: StackingFuser(meta=LogisticRegression()),
    "stacking-mlp": lambda: StackingFuser(meta="mlp"),
    "stacking-passthrough": lambda: StackingFuser(passthrough=True),
    "linear-unconstrained": lambda: LinearFuser(constraint="unconstrained"),
    "linear-per_class": lambda: LinearFuser(per_class=True),
    "cascade-linear": lambda: FUSERS.get("cascade")(stage_fuser="linear"),  # nested learned state
}
LEARNED = [case for case, make in CASES.items() if not isinstance(make(), FixedWeightsFuser)]
_FITTED: dict[tuple[str, int], Fuser] = {}


def fitted(case: str, n_classes: int = 3) -> Fuser:
    """The case's fuser fitted on DATA[n_classes], fitted once per session (tests only read it)."""
    if (case, n_classes) not in _FITTED:
        _FITTED[case, n_classes] = CASES[case]().fit(*DATA[n_classes])
    return _FITTED[case, n_classes]


# ---------------------------------------------------------------- conformance over the registry


@pytest.mark.parametrize("n_classes", [3, 2])
@pytest.mark.parametrize("case", CASES)
def test_outputs_are_probabilities(case, n_classes):
    outputs = DATA[n_classes][0]
    fuser = fitted(case, n_classes)
    proba, pred = fuser.predict_proba(outputs), fuser.predict(outputs)
    assert proba.shape == (outputs.n_rows, n_classes) and pred.shape == (outputs.n_rows,)
    assert np.isfinite(proba).all() and (proba >= 0).all() and (proba <= 1).all()
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-9)
    np.testing.assert_allclose(proba[np.arange(len(pred)), pred], proba.max(1), atol=1e-6)  # a top class
    if not isinstance(fuser, VoteFuser):  # VoteFuser breaks ties by mean member probability instead
        np.testing.assert_array_equal(pred, proba.argmax(1))


@pytest.mark.parametrize("case", LEARNED)
def test_learned_fusers_do_at_least_as_well_as_the_best_member(case):
    outputs, labels = DATA[3]
    best_member = max((outputs.logits[:, m].argmax(-1).numpy() == labels).mean() for m in range(3))
    assert (fitted(case).predict(outputs) == labels).mean() >= best_member - 0.02


@pytest.mark.parametrize("case", CASES)
def test_config_round_trips_through_json(case):
    fuser = CASES[case]()
    config = fuser.to_config()
    assert config["kind"] == fuser.kind and FUSERS.get(config["kind"]) is type(fuser)
    assert set(config) == {"kind"} | {f.name for f in dataclasses.fields(fuser.config)}
    assert Fuser.from_config(config).to_config() == config
    assert Fuser.from_config(json.loads(json.dumps(config))).to_config() == config
    assert type(fuser)(fuser.config).to_config() == config  # K(config) and K(**fields) build the same fuser


@pytest.mark.parametrize("case", CASES)
def test_format_1_configs_still_load(case):
    """``{"name": kind, "params": {...}}`` is what fusion_config.json of format version 1 holds."""
    config = CASES[case]().to_config()
    old = {"name": config.pop("kind"), "params": config}
    assert Fuser.from_config(old).to_config() == CASES[case]().to_config()


@pytest.mark.parametrize("case", CASES)
def test_fit_learns_state_but_keeps_the_hyper_parameters(case):
    fresh, fuser = CASES[case](), fitted(case)
    assert not fresh.is_fitted and fuser.is_fitted
    assert fuser.to_config() == fresh.to_config()
    weights = fuser.member_weights()
    assert weights is None or weights.shape == (3,)


@pytest.mark.parametrize("case", CASES)
def test_clone_is_unfitted_with_an_equal_config_and_fitting_it_leaves_the_original_alone(case):
    original = CASES[case]()
    twin = original.clone()
    assert type(twin) is type(original) and twin is not original and not twin.is_fitted
    assert twin.config == original.config and twin.to_config() == original.to_config()
    twin.fit(*DATA[3])
    assert twin.is_fitted and not original.is_fitted
    again = fitted(case).clone()
    assert not again.is_fitted and again.fingerprint == original.fingerprint


def test_fingerprints_differ_between_configs_and_ignore_settings():
    fingerprints = {case: make().fingerprint for case, make in CASES.items()}
    assert len(set(fingerprints.values())) == len(CASES)  # every case has another kind or config
    assert MeanFuser(weights=[1, 2, 3]).fingerprint != MeanFuser().fingerprint
    quiet, loud = LinearFuser(), LinearFuser(train_config={"show_progress": True})
    assert quiet.config != loud.config and quiet.fingerprint == loud.fingerprint  # a setting


@pytest.mark.parametrize("case", CASES)
def test_fingerprint_covers_the_learned_state(case):
    unfitted, fuser = CASES[case](), fitted(case)
    assert len({unfitted.fingerprint, fuser.fingerprint, fitted(case, 2).fingerprint}) == 3
    if case in LEARNED:  # the same config fitted on other rows learns other state
        outputs, labels = DATA[3]
        other = CASES[case]().fit(outputs.subset(range(150)), labels[:150])
        assert other.fingerprint != fuser.fingerprint


@pytest.mark.parametrize("name", FUSERS.names())
def test_the_constructor_signature_is_the_config(name):
    cls = FUSERS.get(name)
    assert cls.kind == cls.Config.kind == name and "Config" in cls.__dict__
    assert list(inspect.signature(cls).parameters) == [f.name for f in dataclasses.fields(cls.Config)]
    assert not hasattr(cls(), "name")  # a fuser has a kind, not an instance name


def test_train_config_is_stored_whole_with_a_partial_dict_merged_over_the_kinds_default():
    merged = LinearFuser(train_config={"max_epochs": 5}).config.train_config
    assert merged == LINEAR_TRAINING.replace(max_epochs=5)
    given = TrainConfig(max_epochs=5)
    assert LinearFuser(train_config=given).config.train_config is given
    assert LinearFuser(train_config=None).config == LinearFuser().config
    assert StackingFuser().to_config()["train_config"] == STACKING_TRAINING.to_dict()


NOT_VALID = ["not valid", -1, 2.5, None, [-1.0], {}]


@pytest.mark.parametrize("name", FUSERS.names())
def test_constraint_violations_name_the_kind_config_and_field(name):
    cls = FUSERS.get(name)
    for field, (valid, requirement) in cls.Config.constraints.items():
        bad = next(value for value in NOT_VALID if not valid(value))
        with pytest.raises(ConfigError, match=rf"^{cls.__name__}\.Config\.{field} must be {re.escape(requirement)}"):
            cls(**{field: bad})


@pytest.mark.parametrize("case", CASES)
def test_save_and_reload_give_identical_outputs(case, tmp_path):
    fuser, outputs = fitted(case), DATA[3][0]
    save_file(fuser.state_dict(), tmp_path / "fuser.safetensors")
    fuser.save_files(tmp_path)
    config = json.loads(json.dumps(fuser.to_config()))

    def reload() -> Fuser:
        return Fuser.from_config(config).load_files(tmp_path).load_state_dict(load_file(tmp_path / "fuser.safetensors"))

    reloaded = reload()
    np.testing.assert_array_equal(reloaded.predict_proba(outputs), fuser.predict_proba(outputs))
    np.testing.assert_array_equal(reloaded.predict(outputs), fuser.predict(outputs))
    again = reload()
    assert reloaded.fingerprint == again.fingerprint != Fuser.from_config(config).fingerprint  # set at load


def test_stacking_sklearn_meta_is_read_from_its_file_or_a_legacy_state_tensor(tmp_path):
    """The meta-learner lives in meta.skops (load_files); saves from before kept its skops bytes as a uint8
    tensor in the state, which still loads; neither present is a PersistenceError naming load_files."""
    import skops.io

    fuser, outputs = fitted("stacking-sklearn"), DATA[3][0]
    fuser.save_files(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["meta.skops"]
    legacy = {**fuser.state_dict(),
              "estimator_skops": torch.frombuffer(bytearray(skops.io.dumps(fuser.estimator_)), dtype=torch.uint8)}
    old = Fuser.from_config(fuser.to_config()).load_state_dict(legacy)
    np.testing.assert_array_equal(old.predict_proba(outputs), fuser.predict_proba(outputs))
    with pytest.raises(PersistenceError, match=r"meta-learner \(meta.skops\) was not read; call load_files"):
        Fuser.from_config(fuser.to_config()).load_state_dict(fuser.state_dict())


def test_a_reloaded_fuser_keeps_the_fingerprint_of_its_fit():
    fuser = fitted("linear")
    reloaded = Fuser.from_config(fuser.to_config()).load_state_dict(fuser.state_dict())
    assert reloaded.fingerprint == fuser.fingerprint


@pytest.mark.parametrize("case", CASES)
def test_fitting_twice_gives_identical_outputs_and_fingerprints(case):
    outputs, labels = DATA[3]
    fitted(case)
    torch.manual_seed(12345)  # another global random state than the first fit's: a fit must not read it
    again = CASES[case]().fit(outputs, labels)
    np.testing.assert_array_equal(again.predict_proba(outputs), fitted(case).predict_proba(outputs))
    assert again.fingerprint == fitted(case).fingerprint


@pytest.mark.parametrize("use", ["predict", "predict_proba", "state_dict"])
@pytest.mark.parametrize("case", CASES)
def test_use_before_fit_says_to_call_fit(case, use):
    args = () if use == "state_dict" else (DATA[3][0],)
    with pytest.raises(NotFittedError, match="fit"):
        getattr(CASES[case](), use)(*args)


@pytest.mark.parametrize("shape", [(10, 2, 3), (10, 4, 3), (10, 3, 2), (10, 3, 4)])
@pytest.mark.parametrize("case", CASES)
def test_predict_on_other_member_or_class_count_is_refused(case, shape):
    with pytest.raises(MemberOutputError, match=r"3 members x 3 classes"):
        fitted(case).predict(torch.zeros(shape))


@pytest.mark.parametrize(
    ("case", "foreign"),
    [
        ("mean", "stacking"),
        ("stacking", "mean"),
        ("linear", "mean"),
    ],
)
def test_loading_another_fusers_state_is_a_persistence_error(case, foreign):
    with pytest.raises(PersistenceError):
        CASES[case]().load_state_dict(fitted(foreign).state_dict())


# ---------------------------------------------------------------- hand-computed values


def test_mean_fuser_with_weights_gives_the_hand_computed_mixture():
    outputs = outputs_from_proba([[0.8, 0.2], [0.1, 0.9]], [[0.4, 0.6], [0.5, 0.5]])
    fuser = MeanFuser(weights=[3, 1]).fit(outputs, [0, 1])
    np.testing.assert_allclose(fuser.member_weights(), [0.75, 0.25])
    # 0.75 * [0.8, 0.2] + 0.25 * [0.4, 0.6] and 0.75 * [0.1, 0.9] + 0.25 * [0.5, 0.5]
    np.testing.assert_allclose(fuser.predict_proba(outputs), [[0.7, 0.3], [0.2, 0.8]], rtol=1e-6)


def test_vote_fuser_predicts_the_majority_and_returns_vote_shares():
    outputs = outputs_from_proba(
        [[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]],
        [[0.5, 0.4, 0.1], [0.1, 0.8, 0.1]],
        [[0.1, 0.8, 0.1], [0.1, 0.2, 0.7]],
    )
    fuser = VoteFuser().fit(outputs, [0, 2])
    np.testing.assert_array_equal(fuser.predict(outputs), [0, 2])  # 2 of 3 votes, whatever the confidence
    shares = [[2 / 3, 1 / 3, 0], [0, 1 / 3, 2 / 3]]
    np.testing.assert_allclose(fuser.predict_proba(outputs), shares, rtol=1e-6)
    weighted = VoteFuser(weights=[1, 1, 2]).fit(outputs, [0, 2])
    np.testing.assert_allclose(weighted.predict_proba(outputs), [[0.5, 0.5, 0], [0, 0.25, 0.75]], rtol=1e-6)
    np.testing.assert_array_equal(weighted.predict(outputs), [1, 2])  # row 0 ties; class 1's mean is higher


@pytest.mark.parametrize(
    ("members", "expected"),
    [
        # one vote each for 0 and 1; class 1 has the higher mean probability (0.5 vs 0.4)
        pytest.param([[[0.5, 0.4, 0.1]], [[0.3, 0.6, 0.1]]], 1, id="higher-mean-probability"),
        # one vote each for 0 and 1 with equal mean probabilities: the lower class id, whatever the order
        pytest.param([[[0.7, 0.2, 0.1]], [[0.2, 0.7, 0.1]]], 0, id="equal-mean-lowest-id"),
        pytest.param([[[0.2, 0.7, 0.1]], [[0.7, 0.2, 0.1]]], 0, id="equal-mean-lowest-id-swapped"),
        # 1 and 2 tie (mean 0.3 vs 0.255); class 0 has the highest mean (0.445) but no vote, so it cannot win
        pytest.param([[[0.45, 0.5, 0.05]], [[0.44, 0.1, 0.46]]], 1, id="only-tied-classes-compete"),
    ],
)
def test_vote_ties_go_to_the_highest_mean_probability_then_the_lowest_id(members, expected):
    outputs = outputs_from_proba(*members)
    assert VoteFuser().fit(outputs, [0]).predict(outputs).tolist() == [expected]


# ---------------------------------------------------------------- what LinearFuser learns


@pytest.mark.parametrize("constraint", ["simplex", "unconstrained"])
def test_linear_fuser_weighs_the_always_right_member_most(constraint):
    g = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 3, (300,), generator=g)
    logits = torch.randn(300, 3, 3, generator=g)
    logits[:, 1] = 3.0 * F.one_hot(labels, 3) + 0.1 * logits[:, 1]  # member 1 is always right
    fuser = LinearFuser(constraint=constraint).fit(logits, labels)
    assert fuser.member_weights().argmax() == 1


def test_linear_fuser_learns_the_temperature_of_an_overconfident_member():
    g = torch.Generator().manual_seed(3)
    true_logp = (2.0 * torch.randn(3000, 3, generator=g)).log_softmax(-1)
    labels = torch.multinomial(true_logp.exp(), 1, generator=g).squeeze(1)  # so true_logp is calibrated
    overconfident, noise = 5.0 * true_logp, torch.randn(3000, 3, generator=g)
    logits = torch.stack([overconfident, noise], 1)
    fuser = LinearFuser().fit(logits, labels)
    assert fuser.temperatures()[0] == pytest.approx(5.0, rel=0.2)
    assert fuser.member_weights()[0] > 0.9


@pytest.mark.parametrize("options", [{"constraint": "unconstrained"}, {"per_class": True}], ids=str)
def test_linear_variants_beat_the_plain_mean_when_members_are_good_on_different_classes(options):
    g = torch.Generator().manual_seed(4)
    labels = torch.randint(0, 3, (600,), generator=g)
    logits = torch.randn(600, 3, 3, generator=g)
    for m in range(3):  # member m is a sure detector of class m and knows nothing about the others
        logits[:, m, m] += torch.where(labels == m, 4.0, -4.0)
    mean_loss = log_loss(MeanFuser().fit(logits, labels).predict_proba(logits), labels.numpy())
    fused_loss = log_loss(LinearFuser(**options).fit(logits, labels).predict_proba(logits), labels.numpy())
    assert fused_loss < 0.5 * mean_loss


# ---------------------------------------------------------------- StackingFuser options


def test_stacking_passthrough_appends_the_embeddings_to_the_features():
    plain, through = fitted("stacking"), fitted("stacking-passthrough")
    assert not plain.uses_embeddings and through.uses_embeddings
    assert plain.mean_.shape == (3 * 3,) and through.mean_.shape == (3 * 3 + 3 * 4,)


def test_stacking_passthrough_needs_embeddings_at_fit_and_predict():
    outputs, labels = DATA[3]
    bare = MemberOutputs(outputs.logits)
    with pytest.raises(MemberOutputError, match="embeddings"):
        StackingFuser(passthrough=True).fit(bare, labels)
    with pytest.raises(MemberOutputError, match="embeddings"):
        fitted("stacking-passthrough").predict(bare)


def test_stacking_passthrough_refuses_embeddings_of_another_size():
    outputs, labels = DATA[3]
    one = MemberOutputs(outputs.logits, embeddings=[outputs.embeddings[0], None, None])
    fuser = StackingFuser(passthrough=True, train_config={"max_epochs": 2}).fit(one, labels)
    assert fuser.mean_.shape == (9 + 4,)
    with pytest.raises(MemberOutputError, match="fitted on 13 features, got 21"):
        fuser.predict(outputs)


@pytest.mark.parametrize(
    ("features", "transform"),
    [("proba", lambda z: z.softmax(-1)), ("log_proba", lambda z: z.log_softmax(-1)), ("logits", lambda z: z)],
)
def test_stacking_feature_modes_feed_the_named_transform(features, transform):
    outputs, labels = DATA[3]
    fuser = StackingFuser(features=features, train_config={"max_epochs": 30}).fit(outputs, labels)
    expected = transform(outputs.logits).reshape(outputs.n_rows, -1)
    torch.testing.assert_close(fuser.mean_, expected.mean(0))
    torch.testing.assert_close(fuser.std_, expected.std(0))
    assert (fuser.predict(outputs) == labels).mean() > 0.85


def test_stacking_without_standardize_keeps_the_features_as_they_are():
    fuser = StackingFuser(standardize=False, train_config={"max_epochs": 2}).fit(*DATA[3])
    assert (fuser.mean_ == 0).all() and (fuser.std_ == 1).all()


def test_stacking_rebuilds_its_sklearn_meta_learner_from_the_config():
    config = json.loads(json.dumps(StackingFuser(meta=LogisticRegression(C=0.25, max_iter=50)).to_config()))
    assert config["meta"]["sklearn"].startswith("sklearn.")
    assert config["meta"]["sklearn"].endswith(".LogisticRegression")
    fuser = Fuser.from_config(config).fit(*DATA[3])
    assert isinstance(fuser.estimator_, LogisticRegression)
    assert (fuser.estimator_.C, fuser.estimator_.max_iter) == (0.25, 50)


def test_stacking_sklearn_meta_config_is_the_same_after_json():
    config = StackingFuser(meta=MLPClassifier(hidden_layer_sizes=(8,))).to_config()
    assert Fuser.from_config(json.loads(json.dumps(config))).to_config() == config


def test_stacking_sklearn_meta_params_that_json_would_change_are_refused():
    with pytest.raises(ConfigError, match="class_weight"):
        StackingFuser(meta=LogisticRegression(class_weight={0: 2.0, 1: 1.0, 2: 1.0}))


def test_stacking_sklearn_meta_gives_zero_probability_to_classes_absent_from_training():
    outputs, labels = DATA[3]
    rows = np.flatnonzero(labels != 2)
    fuser = StackingFuser(meta=LogisticRegression()).fit(outputs.subset(rows), labels[rows])
    proba = fuser.predict_proba(outputs)
    assert proba.shape == (outputs.n_rows, 3) and (proba[:, 2] == 0).all()


def test_stacking_meta_spec_naming_an_sklearn_function_is_refused_without_calling_it(tmp_path):
    marker = tmp_path / "marker"
    config = {"kind": "stacking", "meta": {"sklearn": "sklearn.datasets.dump_svmlight_file",
                                           "params": {"X": [[1.0]], "y": [0], "f": str(marker)}}}
    with pytest.raises(ConfigError, match=r"'sklearn\.datasets\.dump_svmlight_file' is not an allowed meta-learner.*"
                                          r"LogisticRegression.*build the StackingFuser in Python"):
        Fuser.from_config(config)
    assert not marker.exists()


@pytest.mark.parametrize("path", [
    "sklearn.pipeline.Pipeline",  # a class, but not allow-listed (it takes other estimators)
    "sklearn.calibration.CalibratedClassifierCV",
    "sklearn.linear_model.RidgeClassifier",  # a classifier without predict_proba
    "sklearn.utils._testing.LogisticRegression",  # an allowed name under another module
    "sklearn.linear_model.LogisticRegression.fit",
    "os.system",
])
def test_stacking_meta_spec_outside_the_allow_list_is_refused(path):
    with pytest.raises(ConfigError, match=rf"{re.escape(repr(path))} is not an allowed meta-learner.*"
                                          r"sklearn\.ensemble\.RandomForestClassifier"):
        Fuser.from_config({"kind": "stacking", "meta": {"sklearn": path, "params": {}}})


def test_stacking_sklearn_meta_object_outside_the_allow_list_is_refused():
    from sklearn.linear_model import RidgeClassifier
    from sklearn.pipeline import Pipeline

    with pytest.raises(ConfigError, match=r"is not an allowed meta-learner.*passed in Python is saved as such a spec"):
        StackingFuser(meta=Pipeline([("lr", LogisticRegression())]))
    with pytest.raises(ConfigError, match=r"RidgeClassifier'? is not an allowed meta-learner"):
        StackingFuser(meta=RidgeClassifier())


def test_stacking_sklearn_meta_params_must_be_plain_json():
    nested = {"sklearn": "sklearn.linear_model.LogisticRegression", "params": {}}
    with pytest.raises(ConfigError, match="nested estimator spec"):
        StackingFuser(meta={"sklearn": "sklearn.ensemble.GradientBoostingClassifier", "params": {"init": nested}})
    with pytest.raises(ConfigError, match="plain JSON"):
        StackingFuser(meta={"sklearn": "sklearn.linear_model.LogisticRegression", "params": {"C": object()}})


def test_stacking_svc_meta_needs_probability():
    from sklearn.svm import SVC

    with pytest.raises(ConfigError, match="probability=True"):
        StackingFuser(meta=SVC())
    assert StackingFuser(meta=SVC(probability=True)).config.meta["sklearn"] == "sklearn.svm.SVC"


def test_stacking_every_allow_listed_meta_rebuilds_and_round_trips():
    for path in SKLEARN_METAS:
        params = {"probability": True} if path.endswith(".SVC") else {}
        config = StackingFuser(meta={"sklearn": path, "params": params}).to_config()
        assert config["meta"]["sklearn"] == path
        assert Fuser.from_config(json.loads(json.dumps(config))).to_config() == config


def test_stacking_saved_logreg_config_loads_fits_and_round_trips(tmp_path):
    fuser = StackingFuser(meta=LogisticRegression(C=0.5, max_iter=200)).fit(*DATA[3])
    saved = json.loads(json.dumps(fuser.to_config()))
    assert saved["meta"]["sklearn"] == "sklearn.linear_model.LogisticRegression"
    loaded = Fuser.from_config(saved)
    assert loaded.to_config() == saved and loaded.fingerprint == StackingFuser(**{
        k: v for k, v in saved.items() if k != "kind"}).fingerprint
    refit = loaded.fit(*DATA[3])
    assert isinstance(refit.estimator_, LogisticRegression) and refit.estimator_.C == 0.5
    torch.testing.assert_close(refit.predict_proba(DATA[3][0]), fuser.predict_proba(DATA[3][0]))


def test_stacking_meta_spec_written_with_the_defining_module_still_loads():
    private = f"{LogisticRegression.__module__}.LogisticRegression"  # what earlier versions saved
    fuser = Fuser.from_config({"kind": "stacking", "meta": {"sklearn": private, "params": {"C": 0.25}}})
    assert fuser.config.meta == {"sklearn": "sklearn.linear_model.LogisticRegression",
                                 "params": LogisticRegression(C=0.25).get_params(deep=False)}


# ---------------------------------------------------------------- bad input, as a table

SMALL = MemberOutputs(torch.randn(6, 2, 3, generator=torch.Generator().manual_seed(5)))
SMALL_LABELS = [0, 1, 2, 0, 1, 2]
NAN_SCORES = torch.zeros(4, 2, 3)
NAN_SCORES[1, 1, 0] = math.nan


BAD_INPUT = [
    pytest.param(lambda: FUSERS.get("lineer"), UnknownNameError,
                 "registered fusers are: " + ", ".join(FUSERS.names()) + r"\. Did you mean 'linear'\?",
                 id="unknown-name"),
    pytest.param(lambda: Fuser.from_config({"kind": "stackin"}), UnknownNameError,
                 rf"unknown fuser 'stackin'; registered fusers are: {', '.join(FUSERS.names())}\. Did you mean 'stacking'",
                 id="unknown-kind-in-config"),
    pytest.param(lambda: Fuser.from_config({"name": "stackin"}), UnknownNameError, "Did you mean 'stacking'",
                 id="unknown-name-in-format-1-config"),
    pytest.param(lambda: Fuser.from_config({"per_class": True}), ConfigError, "needs a 'kind'", id="no-kind"),
    pytest.param(lambda: LinearFuser.from_config({"kind": "mean"}), ConfigError, "call Fuser.from_config",
                 id="kind-of-another-class"),
    pytest.param(lambda: Fuser.from_config({"kind": "mean", "bogus": 1}), ConfigError,
                 r"unknown MeanFuser.Config key\(s\) \['bogus'\]; valid keys are: weights", id="unknown-parameter"),
    pytest.param(lambda: Fuser.from_config({"name": "mean", "params": {"bogus": 1}}), ConfigError,
                 r"unknown MeanFuser.Config key\(s\) \['bogus'\]", id="unknown-parameter-format-1"),
    pytest.param(lambda: LinearFuser(constraint="x"), ConfigError,
                 r"^LinearFuser.Config.constraint must be one of .*'simplex'.*'x'",
                 id="linear-constraint"),
    pytest.param(lambda: LinearFuser(per_class="yes"), ConfigError, r"^LinearFuser.Config.per_class must be True or False",
                 id="linear-per-class"),
    pytest.param(lambda: LinearFuser(train_config=3), ConfigError, "train_config must be a TrainConfig",
                 id="linear-train-config-type"),
    pytest.param(lambda: LinearFuser(train_config={"learning_rat": 0.1}), ConfigError,
                 "Did you mean 'learning_rate'", id="linear-train-config-key"),
    pytest.param(lambda: StackingFuser(features="x"), ConfigError,
                 r"^StackingFuser.Config.features must be one of .*'proba'.*'x'", id="stacking-features"),
    pytest.param(lambda: StackingFuser(meta="forest"), ConfigError,
                 r"^StackingFuser.Config.meta must be 'logreg', 'mlp'.*'forest'", id="stacking-meta-name"),
    pytest.param(lambda: StackingFuser(meta=object()), ConfigError,
                 r"^StackingFuser.Config.meta must be .*scikit-learn classifier; got a builtins.object",
                 id="stacking-meta-not-sklearn"),
    pytest.param(lambda: StackingFuser(meta={"sklearn": "os.system", "params": {}}), ConfigError,
                 "'os.system' is not an allowed meta-learner", id="stacking-meta-spec-not-sklearn"),
    pytest.param(lambda: StackingFuser(meta={"params": {}}), ConfigError, r"meta spec must be \{'sklearn'",
                 id="stacking-meta-spec-without-class"),
    pytest.param(lambda: StackingFuser(meta={"sklearn": "sklearn.linear_model.NoSuchModel"}), ConfigError,
                 "not an allowed meta-learner", id="stacking-meta-spec-unknown-class"),
    pytest.param(lambda: StackingFuser(meta={"sklearn": "sklearn.linear_model.LogisticRegression",
                                             "params": {"bogus": 1}}), ConfigError,
                 "cannot be rebuilt", id="stacking-meta-spec-unknown-parameter"),
    pytest.param(lambda: StackingFuser(meta="mlp", hidden=0), ConfigError,
                 r"^StackingFuser.Config.hidden must be an integer >= 1; got 0", id="stacking-hidden"),
    pytest.param(lambda: StackingFuser(validation_fraction=1.0), ConfigError,
                 r"^StackingFuser.Config.validation_fraction must be a number in \[0, 1\)", id="stacking-validation"),
    pytest.param(lambda: MeanFuser(weights=[1, -1]), ConfigError,
                 r"^MeanFuser.Config.weights must be None, or a list of non-negative numbers.*\[1, -1\]",
                 id="negative-weight"),
    pytest.param(lambda: MeanFuser(weights=[0, 0]), ConfigError, "positive sum", id="zero-weights"),
    pytest.param(lambda: VoteFuser(weights=[1, 1, 1]).fit(SMALL, SMALL_LABELS), ConfigError,
                 r"2 non-negative numbers \(one per member\).*\[1, 1, 1\]", id="weights-of-wrong-length"),
    pytest.param(lambda: MeanFuser(weights=[math.nan, 1]), ConfigError, "MeanFuser.Config.weights", id="nan-weight"),
    pytest.param(lambda: MeanFuser(weights=[math.inf, 1]), ConfigError, "MeanFuser.Config.weights", id="inf-weight"),
    pytest.param(lambda: VoteFuser(weights="1, 2"), ConfigError, "VoteFuser.Config.weights", id="weights-not-a-list"),
    pytest.param(lambda: MeanFuser().fit(SMALL, [0, 1, 2, 0, 1, 3]), MemberOutputError, r"ids in 0\.\.2",
                 id="label-too-large"),
    pytest.param(lambda: MeanFuser().fit(SMALL, [-1, 1, 2, 0, 1, 2]), MemberOutputError, r"ids in 0\.\.2",
                 id="negative-label"),
    pytest.param(lambda: MeanFuser().fit(SMALL, [0, 1]), MemberOutputError,
                 "6 rows of member outputs but 2 labels", id="labels-of-wrong-length"),
    pytest.param(lambda: MeanFuser().fit(SMALL, 0), MemberOutputError, "labels", id="scalar-labels"),
    pytest.param(lambda: MeanFuser().fit(SMALL, [[i] for i in SMALL_LABELS]), MemberOutputError, r"\(6, 1\)",
                 id="2d-labels"),
    pytest.param(lambda: MeanFuser().fit(torch.zeros(0, 2, 3), []), MemberOutputError, "zero rows",
                 id="no-rows"),
    pytest.param(lambda: MemberOutputs(torch.zeros(4, 3)), MemberOutputError,
                 r"\[rows, members, classes\].*\(4, 3\)", id="outputs-not-3d"),
    pytest.param(lambda: MemberOutputs(NAN_SCORES, member_names=["ok", "broken"]), MemberOutputError,
                 r"members \['broken'\] produced NaN", id="nan-scores-name-the-member"),
]


@pytest.mark.parametrize(("make", "error", "match"), BAD_INPUT)
def test_bad_input_is_refused_with_a_message_that_helps(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_a_failed_fit_leaves_the_fuser_unfitted():
    fuser = VoteFuser(weights=[1, 1, 1])
    with pytest.raises(ConfigError, match="2 non-negative numbers"):
        fuser.fit(SMALL, SMALL_LABELS)
    assert not fuser.is_fitted


def test_linear_fuser_temperatures_stay_bounded_so_flat_members_cannot_overflow():
    from fusion.fusers.linear import LOG_TEMPERATURE_BOUND, LinearCombiner

    model = LinearCombiner(2, 2, "simplex", per_class=False, temperature=True)
    with torch.no_grad():
        model.log_temperature.fill_(-80.0)  # what L-BFGS reached on a member with nearly constant scores
    logits = torch.tensor([[[-0.0044, 0.0108], [-1.3, -0.3]]])
    assert torch.isfinite(model(logits)).all()
    assert torch.allclose(model.temperature(), torch.full((2, 1), float(np.exp(-LOG_TEMPERATURE_BOUND))))


@pytest.mark.parametrize("weights", [None, [3, 1, 2]], ids=["equal", "weighted"])
def test_mean_fuser_equals_sklearn_soft_voting_exactly_whatever_the_batching(weights):
    from sklearn.ensemble import VotingClassifier
    from sklearn.frozen import FrozenEstimator

    outputs, labels = member_outputs(n=400, n_classes=3, seed=5)
    member_proba = outputs.probabilities(torch.float64).numpy()  # [rows, members, classes], float64

    class Fixed(LogisticRegression):  # a prefitted member whose predict_proba is that member's probabilities
        def __init__(self, member=0):
            super().__init__()
            self.member = member

        def predict_proba(self, rows):
            return member_proba[rows[:, 0].astype(int), self.member]

    rows = np.arange(outputs.n_rows)[:, None].astype(float)
    estimators = [(f"m{m}", FrozenEstimator(Fixed(m).fit(rows, labels))) for m in range(3)]
    voting = VotingClassifier(estimators, voting="soft", weights=weights).fit(rows, labels)
    fuser = MeanFuser(weights=weights).fit(outputs, labels)
    proba = fuser.predict_proba(outputs)
    assert proba.dtype == np.float64
    np.testing.assert_array_equal(proba, voting.predict_proba(rows))  # 0 difference
    reference = np.average(member_proba, axis=1, weights=weights)
    np.testing.assert_array_equal(proba, reference)
    if weights is None:
        np.testing.assert_array_equal(proba, np.mean(member_proba, axis=1))
    batched = np.concatenate([fuser.predict_proba(outputs.subset(np.arange(i, min(i + b, outputs.n_rows))))
                              for b in (1, 7, 64) for i in range(0, outputs.n_rows, b)])
    np.testing.assert_array_equal(batched, np.tile(proba, (3, 1)))


def test_pick_fuser_passes_one_member_through():
    outputs = outputs_from_proba([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], [[0.3, 0.7], [0.6, 0.4], [0.6, 0.4]])
    best = PickFuser().fit(outputs, [0, 1, 0])  # member0 is right on 3 rows of 3, member1 on 1
    assert best.accuracy_.tolist() == pytest.approx([1.0, 1 / 3]) and best.member_weights().tolist() == [1.0, 0.0]
    assert best.table_label(outputs.member_names) == "member: member0"
    named = PickFuser(member="member1").fit(outputs, [0, 1, 0])
    np.testing.assert_allclose(named.predict_proba(outputs), [[0.3, 0.7], [0.6, 0.4], [0.6, 0.4]], atol=1e-6)
    with pytest.raises(ConfigError, match=r"pick: member 'bert' is not among the members \['member0', 'member1'\]"):
        PickFuser(member="bert").fit(outputs, [0, 1, 0])
