"""Member conformance: every registered member kind goes through the same checks (outputs, labels, clone
independence, config round trip, exact save/load, fingerprints), then the behaviours of shared heads and shared
backbones that the component contract promises.

A member kind registered in ``fusion.members.MEMBERS`` without a case in ``CASES`` fails the suite: add one.
Case ids are ``KIND`` or ``KIND-variant``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import torch
from helpers import tfidf_member
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from tiny_models import make_toy_sentiment, save_bert_classifier, save_bert_encoder
from torch import nn

import fusion.io
from fusion.cache.store import OutputCache
from fusion.config import Config, LoadOptions, is_setting, object_spec
from fusion.errors import ChecksumError, ConfigError, NotFittedError
from fusion.inputs import TextData, as_text_data
from fusion.members import MEMBERS, HFClassifier, HFEncoder, Member, TorchMember
from fusion.members.heads import Head, LinearHead, MLPHead
from fusion.members.sklearn_member import estimator_hash
from fusion.merging.api import merge
from fusion.train_config import TrainConfig

SENTIMENT = ["negative", "positive"]
COLOURS = ["red", "green", "blue"]
TRAIN = TrainConfig(learning_rate=1e-2, max_epochs=3, batch_size=16, show_progress=False)
FINETUNE = TRAIN.replace(learning_rate=1e-3, max_epochs=1)
N_ROWS = 48
SCRIPT = Path(__file__).with_name("_member_fingerprints.py")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: intra-op threads gain nothing on 2 cores, and one thread keeps float sums identical in the
    subprocess that recomputes fingerprints."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- the factory table


@dataclass(frozen=True)
class Models:
    """The tiny Hugging Face model directories the cases use."""

    classifier: Path
    encoder: Path


def memory_cache() -> OutputCache:
    """A new cache that keeps nothing on disk: every test computes from scratch, in aligned memory (tensors
    read back from safetensors files are not 64-byte aligned, which changes the last bits of a matmul)."""
    return OutputCache(memory_only=True)


def text_rows() -> tuple[TextData, list[str]]:
    return as_text_data(make_toy_sentiment(N_ROWS, 0), label_names=SENTIMENT), SENTIMENT


def feature_rows() -> tuple[TextData, list[str]]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(COLOURS), N_ROWS)
    x = np.eye(len(COLOURS), 6, dtype=np.float32)[labels] * 2 + rng.normal(0, 0.5, (N_ROWS, 6)).astype(np.float32)
    return as_text_data({"x": x, "label": labels}, text_column="x", label_names=COLOURS), COLOURS


class TwoLayer(nn.Module):
    """A user head module ``[rows, 32] -> [rows, 2]``."""

    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, hidden), nn.Tanh(), nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def feature_net(hidden: int = 8) -> nn.Module:
    return nn.Sequential(nn.Linear(6, hidden), nn.Tanh(), nn.Linear(hidden, len(COLOURS)))


def tfidf_pipeline(c: float = 1.0):
    return make_pipeline(TfidfVectorizer(), LogisticRegression(C=c, max_iter=500))


def perturb_tensors(member: Member) -> None:
    """Change every learned floating tensor of a member in place."""
    with torch.no_grad():
        for tensor in member.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(1.0)


def perturb_estimator(member: Member) -> None:
    member.estimator_[-1].coef_ += 1.0


@dataclass(frozen=True)
class Case:
    """How to build a tiny instance of a member kind and matching data.

    Attributes:
        make: the unfitted spec, from the model directories.
        rows: the data it is fitted and evaluated on, and the label names.
        objects: fresh objects that loading needs again (as a user passes them: other instances, same layers).
        dim: embedding width, where the member outputs embeddings.
        matters: config changes that must change the fingerprint.
        pure: changes inside fields that must not change it (top-level ``setting`` fields are checked anyway).
        files: writes a model directory with another seed's weights (Hugging Face members).
        perturb: changes the learned state of a fitted member in place.
        trainable: whether ``fit`` learns anything.
    """

    make: Callable[[Models], Member]
    rows: Callable[[], tuple[TextData, list[str]]] = text_rows
    objects: Callable[[], dict[str, Any]] = dict
    dim: int | None = None
    matters: Mapping[str, Any] = field(default_factory=dict)
    pure: Mapping[str, Any] = field(default_factory=dict)
    files: Callable[[Path, int], Path] | None = None
    perturb: Callable[[Member], None] = perturb_tensors
    trainable: bool = True


def merge_partner(models: Models) -> Path:
    """A second fine-tune of the classifier's architecture (another seed) to merge it with, written once beside it
    (the process that recomputes fingerprints finds it there)."""
    path = models.classifier.parent / "merge-partner-seed1"
    if not (path / "config.json").is_file():
        save_bert_classifier(path, SENTIMENT, 1)
    return path


def _encoder(models: Models, **kwargs: Any) -> HFEncoder:
    return HFEncoder(models.encoder, **{"train_config": TRAIN, "show_progress": False, **kwargs})


CASES: dict[str, Case] = {
    "hf_classifier": Case(
        lambda m: HFClassifier(m.classifier, batch_size=16, show_progress=False),
        files=lambda path, seed: save_bert_classifier(path, SENTIMENT, seed),
        matters={"max_length": 16, "label_map": {"negative": "bad", "positive": "good"}, "dtype": "bfloat16"},
        trainable=False,
    ),
    "hf_encoder": Case(
        lambda m: _encoder(m, head=MLPHead(hidden=8)), dim=32, files=save_bert_encoder,
        matters={"pooling": "cls", "head": "linear", "max_length": 16, "train_config": TRAIN.replace(seed=1),
                 "normalize": True, "finetune": True, "validation_fraction": 0.2, "dtype": "bfloat16"},
        pure={"train_config": TRAIN.replace(show_progress=True)},
    ),
    "hf_encoder-custom-head": Case(
        lambda m: _encoder(m, head=TwoLayer(), pooling="cls"), objects=lambda: {"head": TwoLayer()}, dim=32,
        files=save_bert_encoder, matters={"head": TwoLayer(hidden=4)},
    ),
    "hf_encoder-finetune": Case(
        lambda m: _encoder(m, finetune=True, train_config=FINETUNE, head=LinearHead()), dim=32,
        files=save_bert_encoder, matters={"train_config": FINETUNE.replace(learning_rate=1e-4), "finetune": False},
    ),
    "merged": Case(
        lambda m: merge([m.classifier, merge_partner(m)], "linear", weight=[0.6, 0.4], batch_size=16, show_progress=False),
        matters={"method": {"kind": "linear", "weight": [0.4, 0.6]}, "head": 0, "merged_dtype": "bfloat16",
                 "max_length": 16, "label_map": {"negative": "bad", "positive": "good"}, "dtype": "bfloat16"},
        trainable=False,
    ),
    "sklearn": Case(
        lambda m: tfidf_member(), objects=lambda: {"estimator": tfidf_pipeline()},
        matters={"estimator": tfidf_pipeline(c=0.5)}, perturb=perturb_estimator,
    ),
    "torch": Case(
        lambda m: TorchMember(feature_net(), train_config=TRAIN, batch_size=16, show_progress=False),
        rows=feature_rows, objects=lambda: {"module": feature_net()},
        matters={"module": feature_net(hidden=4), "train_config": TRAIN.replace(seed=1), "validation_fraction": 0.3},
        pure={"train_config": TRAIN.replace(show_progress=True)},
    ),
}
# A value for every field declared ``setting`` (none may change the fingerprint); each must differ from the case's.
SETTING_VALUES = {"name": "renamed", "batch_size": 3, "max_tokens": 64, "show_progress": True, "device": "cpu",
                  "revision": "v2", "revisions": ["v2", "v2"], "base_revision": "v2"}
TRAINABLE = [case for case, spec in CASES.items() if spec.trainable]
HF_CASES = [case for case, spec in CASES.items() if spec.files is not None]


def kind_of(case: str) -> str:
    return case.split("-")[0]


@pytest.fixture(scope="module")
def models(bert_classifier_dir, bert_encoder_dir) -> Models:
    return Models(bert_classifier_dir, bert_encoder_dir)


_FITTED: dict[str, tuple[Member, Member]] = {}


def fitted(case: str, models: Models) -> tuple[Member, Member]:
    """(spec, a clone of it fitted on the case's rows), fitted once per session; tests only read them."""
    if case not in _FITTED:
        spec = CASES[case].make(models)
        data, labels = CASES[case].rows()
        _FITTED[case] = spec, spec.clone().fit(data, labels, memory_cache())
    return _FITTED[case]


def fit_clone(spec: Member, case: str, data: TextData | None = None) -> Member:
    rows, labels = CASES[case].rows()
    return spec.clone().fit(rows if data is None else data, labels, memory_cache())


def outputs(member: Member, data: TextData) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in member.compute(data, memory_cache()).items()}


def assert_same_outputs(got: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), f"{name} differ"


def user_objects(config: Config, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every object field's value in a config, nested configs included, by dotted path."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if object_spec(f) is not None and value is not None:
            yield path + f.name, value
        elif isinstance(value, Config):
            yield from user_objects(value, f"{path}{f.name}.")


def object_state(value: Any) -> Any:
    """What a user object has learned: a module's exact tensors, an estimator's hash."""
    if isinstance(value, nn.Module):
        return {k: v.clone() for k, v in value.state_dict().items()}
    return estimator_hash(value)


def same_state(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return a == b


class HashCounter:
    """Records every hash of tensors (how many tensors), of files and of estimators while the test runs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tensors: list[int] = []
        self.files: list[str] = []
        self.estimators = 0
        real_tensors, real_file, real_hash = fusion.io.sha256_tensors, fusion.io.sha256_file, joblib.hash

        def tensors(state):
            self.tensors.append(len(state))
            return real_tensors(state)

        def file(path):
            self.files.append(str(path))
            return real_file(path)

        def estimator(*args, **kwargs):
            self.estimators += 1
            return real_hash(*args, **kwargs)

        for module in [m for name, m in list(sys.modules.items()) if name.startswith("fusion")]:
            for attribute, real, counting in (("sha256_tensors", real_tensors, tensors), ("sha256_file", real_file, file)):
                if getattr(module, attribute, None) is real:
                    monkeypatch.setattr(module, attribute, counting)
        monkeypatch.setattr(joblib, "hash", estimator)

    @property
    def total(self) -> int:
        return len(self.tensors) + len(self.files) + self.estimators

    def reset(self) -> None:
        self.tensors.clear()
        self.files.clear()
        self.estimators = 0


# ---------------------------------------------------------------- every registered kind has a case


@pytest.mark.parametrize("kind", MEMBERS.names())
def test_every_registered_member_kind_has_a_case(kind):
    if not any(kind_of(case) == kind for case in CASES):
        pytest.fail(f"member kind {kind!r} has no case in tests/test_member_conformance.py CASES: add one "
                    f"(a tiny instance and matching data) so that it is checked like every other kind.")


@pytest.mark.parametrize("case", CASES)
def test_case_builds_its_kind(case, models):
    member = CASES[case].make(models)
    assert member.kind == kind_of(case) and member.trainable == CASES[case].trainable


# ---------------------------------------------------------------- outputs


@pytest.mark.parametrize("case", CASES)
def test_outputs_have_a_row_per_input_and_named_columns(case, models):
    _, member = fitted(case, models)
    data, labels = CASES[case].rows()
    out = member.compute(data, memory_cache())
    assert member.is_fitted and member.output_labels(labels) == labels
    assert out["logits"].shape == (len(data), len(labels)) and torch.isfinite(out["logits"]).all()
    if CASES[case].dim is None:
        assert set(out) == {"logits"}
    else:
        assert set(out) == {"logits", "embeddings"} and out["embeddings"].shape == (len(data), CASES[case].dim)


@pytest.mark.parametrize("case", TRAINABLE)
def test_use_before_fit_says_to_fit(case, models, tmp_path):
    spec = CASES[case].make(models)
    assert spec.trainable and not spec.is_fitted
    with pytest.raises(NotFittedError, match="fit"):
        spec.compute(CASES[case].rows()[0], memory_cache())
    with pytest.raises(NotFittedError, match="fit"):
        spec.save(tmp_path)


# ---------------------------------------------------------------- clones


@pytest.mark.parametrize("case", CASES)
def test_a_clone_is_an_unfitted_equal_spec_and_fitting_it_trains_no_user_object(case, models):
    spec = CASES[case].make(models)
    twin = spec.clone()
    assert type(twin) is type(spec) and twin is not spec and twin.config == spec.config
    assert twin.is_fitted == spec.is_fitted == (not spec.trainable)
    members = {"original": spec, "clone": twin}
    before = {(who, path): object_state(value) for who, m in members.items() for path, value in user_objects(m.config)}
    data, labels = CASES[case].rows()
    assert twin.fit(data, labels, memory_cache()) is twin and twin.is_fitted
    assert spec.is_fitted == (not spec.trainable), "fitting a clone fitted the original"
    after = {(who, path): value for who, m in members.items() for path, value in user_objects(m.config)}
    assert after.keys() == before.keys()
    for (who, path), state in before.items():
        assert same_state(object_state(after[who, path]), state), f"fitting trained the {who}'s {path}"


@pytest.mark.parametrize("case", TRAINABLE)
def test_two_fitted_clones_learn_the_same_state_independently(case, models):
    spec, _ = fitted(case, models)
    data, _ = CASES[case].rows()
    first, second = fit_clone(spec, case), fit_clone(spec, case)
    expected = outputs(second, data)
    assert_same_outputs(outputs(first, data), expected)  # fitting is reproducible
    assert first.fingerprint == second.fingerprint
    CASES[case].perturb(first)
    assert not torch.equal(outputs(first, data)["logits"], expected["logits"]), "the perturbation took no effect"
    assert_same_outputs(outputs(second, data), expected)


# ---------------------------------------------------------------- config


@pytest.mark.parametrize("fit", [False, True], ids=["spec", "fitted"])
@pytest.mark.parametrize("case", CASES)
def test_config_round_trips_through_json(case, fit, models):
    spec, member = fitted(case, models)
    member = member if fit else spec
    saved = json.loads(json.dumps(member.config.to_dict()))
    assert type(member).Config.from_dict(saved, objects=CASES[case].objects()) == member.config
    assert member.config == spec.config  # fitting changes no parameter
    config = member.to_config()
    assert config["kind"] == member.kind and json.loads(json.dumps(config)) == config
    fields = {f.name: getattr(member.config, f.name) for f in dataclasses.fields(member.config)}
    assert type(member)(**fields).config == member.config  # the constructor's parameters are the config's fields


def test_an_object_field_missing_when_loading_names_the_member_and_the_fix(models, tmp_path):
    _, member = fitted("hf_encoder-custom-head", models)
    fitted_state = member.save(tmp_path)
    with pytest.raises(ConfigError, match=r"member 'bert_encoder\d*-cls'.*objects=\{\"bert_encoder\d*-cls\": \{\"head\""):
        HFEncoder.load(member.to_config(), fitted_state, tmp_path)


# ---------------------------------------------------------------- save and load


@pytest.mark.parametrize("case", CASES)
def test_save_then_load_reproduces_the_outputs_exactly(case, models, tmp_path):
    spec, member = fitted(case, models)
    data, labels = CASES[case].rows()
    fitted_state = json.loads(json.dumps(member.save(tmp_path)))
    config = json.loads(json.dumps(member.to_config()))
    options = LoadOptions(objects={member.name: CASES[case].objects()})
    loaded = MEMBERS.get(config["kind"]).load(config, fitted_state, tmp_path, options)
    assert type(loaded) is type(member) and loaded is not member and loaded.is_fitted
    assert loaded.config == member.config and loaded.clone().config == spec.config
    assert loaded.output_labels(labels) == member.output_labels(labels)
    assert loaded.fingerprint == member.fingerprint
    assert_same_outputs(outputs(loaded, data), outputs(member, data))


@pytest.mark.parametrize("case", TRAINABLE)
def test_restoring_a_saved_fit_onto_a_clone_of_the_spec_reproduces_the_outputs(case, models, tmp_path):
    spec, member = fitted(case, models)
    data, labels = CASES[case].rows()
    fitted_state = json.loads(json.dumps(member.save(tmp_path)))
    restored = spec.clone().restore(fitted_state, tmp_path)
    assert restored.is_fitted and restored.fingerprint == member.fingerprint and not spec.is_fitted
    assert restored.config == spec.config and restored.output_labels(labels) == member.output_labels(labels)
    assert_same_outputs(outputs(restored, data), outputs(member, data))


# ---------------------------------------------------------------- fingerprints


def _setting_changes(config: Config) -> dict[str, Any]:
    changes = {}
    for f in dataclasses.fields(config):
        if is_setting(f):
            assert f.name in SETTING_VALUES, f"setting {f.name!r} has no value in SETTING_VALUES: add one"
            assert getattr(config, f.name) != SETTING_VALUES[f.name], f"choose another SETTING_VALUES[{f.name!r}]"
            changes[f.name] = SETTING_VALUES[f.name]
    return changes


@pytest.mark.parametrize("case", CASES)
def test_fingerprint_ignores_pure_settings(case, models):
    spec = CASES[case].make(models)
    changes = [{name: value} for name, value in _setting_changes(spec.config).items()]
    changes += [{name: value} for name, value in CASES[case].pure.items()]
    assert {"name": "renamed"} in changes
    for change in changes:
        assert type(spec)(spec.config.replace(**change)).fingerprint == spec.fingerprint, change


@pytest.mark.parametrize("case", CASES)
def test_fingerprint_follows_every_setting_that_matters(case, models):
    spec = CASES[case].make(models)
    assert CASES[case].matters, "list the config changes that must change the fingerprint"
    prints = {"spec": spec.fingerprint}
    for name, value in CASES[case].matters.items():
        prints[name] = type(spec)(spec.config.replace(**{name: value})).fingerprint
    assert len(set(prints.values())) == len(prints), prints


@pytest.mark.parametrize("case", TRAINABLE)
def test_fitted_fingerprint_follows_the_learned_state(case, models):
    spec, member = fitted(case, models)
    data, _ = CASES[case].rows()
    other_rows = fit_clone(spec, case, data.subset(np.arange(0, len(data), 2)))  # same spec, other weights
    prints = {spec.fingerprint, member.fingerprint, other_rows.fingerprint}
    if hasattr(spec.config, "train_config"):  # the same spec fitted with another seed
        seed = (spec.config.train_config or TRAIN).seed + 1
        reseeded = spec.config.replace(train_config=(spec.config.train_config or TRAIN).replace(seed=seed))
        prints.add(fit_clone(type(spec)(reseeded), case).fingerprint)
    assert len(prints) == 3 + hasattr(spec.config, "train_config")


@pytest.mark.parametrize("case", HF_CASES)
def test_fingerprint_follows_the_model_files_not_their_place(case, models, tmp_path):
    spec = CASES[case].make(models)
    model = spec.config.model
    copy = shutil.copytree(model, tmp_path / "copy")
    other = CASES[case].files(tmp_path / "other", 1)
    assert (other / "model.safetensors").read_bytes() != (Path(model) / "model.safetensors").read_bytes()
    assert type(spec)(spec.config.replace(model=copy)).fingerprint == spec.fingerprint
    assert type(spec)(spec.config.replace(model=other)).fingerprint != spec.fingerprint


@pytest.mark.parametrize("case", HF_CASES)
def test_loading_refuses_changed_model_files_unless_the_weights_were_saved(case, models, tmp_path):
    spec, data = CASES[case].make(models), CASES[case].rows()[0]
    model = shutil.copytree(spec.config.model, tmp_path / "model")
    member = fit_clone(type(spec)(spec.config.replace(model=model)), case)
    (tmp_path / "saved").mkdir()
    fitted_state = json.loads(json.dumps(member.save(tmp_path / "saved")))
    (model / "model.safetensors").unlink()  # a new file: the loaded weights map the old one's pages
    shutil.copy(CASES[case].files(tmp_path / "other", 1) / "model.safetensors", model / "model.safetensors")

    def load(**options: Any) -> Member:
        options = LoadOptions(objects={member.name: CASES[case].objects()}, **options)
        return MEMBERS.get(member.kind).load(member.to_config(), fitted_state, tmp_path / "saved", options)

    if getattr(member.config, "finetune", False):  # the fine-tuned backbone was saved with the member
        assert_same_outputs(outputs(load(), data), outputs(member, data))
        return
    with pytest.raises(ChecksumError, match=f"member {member.name!r}: weight files .* differ"):
        load()
    assert load(verify_members=False).is_fitted


@pytest.mark.parametrize("case", CASES)
def test_fingerprint_is_computed_once(case, models, monkeypatch):
    spec, member = fitted(case, models)
    data, _ = CASES[case].rows()
    cache = memory_cache()
    member.compute(data, cache)
    first = spec.fingerprint, member.fingerprint  # the spec's is computed on first use (the fitted one when fitted)
    counter = HashCounter(monkeypatch)
    for _ in range(5):
        assert (spec.fingerprint, member.fingerprint) == first
    member.compute(data, cache)  # answered by the cache: nothing hashed either
    assert counter.total == 0, (counter.tensors, counter.files, counter.estimators)
    assert spec.clone().fingerprint == spec.fingerprint
    assert counter.files == [] and counter.tensors == [], "a clone shares its source's checksums"


@pytest.fixture(scope="module")
def other_process(models, tmp_path_factory) -> dict[str, dict[str, str]]:
    """Fingerprints that ``tests/_member_fingerprints.py`` computes in a new process, from the same config and
    data, and from each case's fitted member saved here."""
    root = tmp_path_factory.mktemp("fingerprints")
    for case in CASES:
        _, member = fitted(case, models)
        directory = root / case
        directory.mkdir()
        (directory / "fitted.json").write_text(json.dumps(member.save(directory)))
        (directory / "config.json").write_text(json.dumps(member.to_config()))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SCRIPT.parents[1]), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, str(SCRIPT), str(root), str(models.classifier), str(models.encoder)],
                   check=True, timeout=300, env=env)  # this checkout's fusion, whatever the environment installs
    return json.loads((root / "fingerprints.json").read_text())


@pytest.mark.parametrize("case", CASES)
def test_fingerprint_is_the_same_in_another_process(case, models, other_process):
    spec, member = fitted(case, models)
    assert other_process[case] == {"spec": spec.fingerprint, "refit": member.fingerprint,
                                   "reloaded": member.fingerprint}


# ---------------------------------------------------------------- shared heads and backbones


@pytest.mark.parametrize("make_head", [TwoLayer, lambda: MLPHead(hidden=8)], ids=["module", "head"])
def test_one_head_object_given_to_two_encoders_trains_two_independent_heads(make_head, models):
    head = make_head()
    before = {k: v.clone() for k, v in head.state_dict().items()}
    specs = [_encoder(models, head=head, pooling=pooling) for pooling in ("mean", "cls")]
    data, labels = text_rows()
    cache = memory_cache()
    first, second = (spec.clone().fit(data, labels, cache) for spec in specs)
    a, b = first.head_, second.head_
    assert a is not b and head not in (a, b)
    assert not {p.data_ptr() for p in a.parameters()} & {p.data_ptr() for p in b.parameters()}
    assert not {p.data_ptr() for p in head.parameters()} & {p.data_ptr() for p in a.parameters()}
    assert same_state({k: v.clone() for k, v in head.state_dict().items()}, before), "the user's head was trained"
    assert not isinstance(head, Head) or not head.is_built
    assert all(not spec.is_fitted and spec.head_ is None for spec in specs)
    expected = second.compute(data, cache)["logits"].clone()
    with torch.no_grad():
        for parameter in a.parameters():
            parameter.add_(1.0)
    assert torch.equal(second.compute(data, cache)["logits"], expected)


def count_backbone_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows each forward pass of any AutoModel loaded from now on runs over (one entry per batch)."""
    import transformers

    rows: list[int] = []
    real = transformers.AutoModel.from_pretrained

    def from_pretrained(*args, **kwargs):
        model = real(*args, **kwargs)
        model.register_forward_hook(lambda module, inputs, output: rows.append(output.last_hidden_state.shape[0]))
        return model

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", from_pretrained)
    return rows


def test_two_poolings_of_one_checkpoint_run_the_backbone_once(models, monkeypatch):
    rows = count_backbone_rows(monkeypatch)
    specs = [_encoder(models, pooling="mean", head=LinearHead()), _encoder(models, pooling="cls", head=MLPHead(hidden=8))]
    train, labels = text_rows()
    other = as_text_data(make_toy_sentiment(16, 1), label_names=SENTIMENT)
    cache = memory_cache()
    members = [spec.clone().fit(train, labels, cache) for spec in specs]
    out = [[member.compute(data, cache) for data in (train, other)] for member in members]
    assert sum(rows) == len(train) + len(other), "each dataset goes through the backbone once, for both members"
    assert not torch.equal(out[0][1]["embeddings"], out[1][1]["embeddings"]), "mean and cls pool differently"
    for member, (_, on_other) in zip(members, out, strict=True):  # the shared entries are each member's own
        assert_same_outputs(member.compute(other, memory_cache()), on_other)


def test_finetuned_encoder_hashes_its_backbone_once(models, monkeypatch):
    spec = _encoder(models, finetune=True, train_config=FINETUNE)
    data, labels = text_rows()
    cache = memory_cache()
    counter = HashCounter(monkeypatch)
    member = spec.clone().fit(data, labels, cache)
    n_backbone = len(member.torch_modules()[0].state_dict())
    assert counter.tensors.count(n_backbone) == 1, counter.tensors  # once, when fine-tuning ends
    member.compute(data, cache)
    counter.reset()
    for _ in range(5):
        assert member.fingerprint
    member.compute(data, cache)
    assert counter.tensors == [] and counter.files == []


# ---------------------------------------------------------------- what a fingerprint covers of objects and dtype


class Scale(nn.Module):
    """Multiplies by a constant that ``repr`` does not show: two of them print alike but compute differently."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


class Shift(nn.Module):
    """Adds a learned offset whose start a fit keeps (no ``reset_parameters``)."""

    def __init__(self, start: float) -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.full((32,), start))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.offset


def sequential_heads() -> dict[str, nn.Module]:
    """Untrained ``nn.Sequential`` heads that must each have their own fingerprint."""
    torch.manual_seed(0)
    return {"linear": nn.Sequential(nn.Linear(32, 2)),
            "two-layer": nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 2)),
            "scale-1": nn.Sequential(Scale(1.0), nn.Linear(32, 2)),
            "scale-5": nn.Sequential(Scale(5.0), nn.Linear(32, 2)),
            "shift-0": nn.Sequential(Shift(0.0), nn.Linear(32, 2)),
            "shift-3": nn.Sequential(Shift(3.0), nn.Linear(32, 2))}


def test_untrained_custom_heads_that_compute_differently_have_different_fingerprints(models):
    heads = sequential_heads()
    assert repr(heads["scale-1"]) == repr(heads["scale-5"]) and repr(heads["shift-0"]) == repr(heads["shift-3"])
    prints = {name: _encoder(models, head=head).fingerprint for name, head in heads.items()}
    assert len(set(prints.values())) == len(prints), prints
    torch_prints = {name: TorchMember(head).fingerprint for name, head in heads.items()}
    assert len(set(torch_prints.values())) == len(torch_prints), torch_prints


def test_a_head_fingerprint_is_stable_and_shared_by_clones_and_equal_modules(models):
    head = sequential_heads()["shift-3"]
    spec = _encoder(models, head=head)
    assert spec.fingerprint == _encoder(models, head=head).fingerprint  # computed twice
    assert spec.clone().fingerprint == spec.fingerprint == spec.clone().clone().fingerprint
    assert _encoder(models, head=sequential_heads()["shift-3"]).fingerprint == spec.fingerprint  # an equal module
    assert same_state(head.state_dict(), sequential_heads()["shift-3"].state_dict()), "fingerprinting changed it"


def test_start_weights_that_a_fit_resets_do_not_split_the_cache(models):
    """Fits start from a re-initialised copy seeded by the training seed: the weights a layer with
    ``reset_parameters`` holds before cannot change the outputs, so they do not change the fingerprint
    (a module built unseeded in another process still finds its cached outputs)."""
    torch.manual_seed(1)
    one = nn.Sequential(nn.Linear(32, 2))
    torch.manual_seed(2)
    two = nn.Sequential(nn.Linear(32, 2))
    assert not same_state(one.state_dict(), two.state_dict())
    specs = [_encoder(models, head=head) for head in (one, two)]
    assert specs[0].fingerprint == specs[1].fingerprint
    data, labels = text_rows()
    a, b = (outputs(fit_clone(spec, "hf_encoder"), data) for spec in specs)
    assert_same_outputs(a, b)


def test_sklearn_estimators_with_other_parameters_have_different_fingerprints():
    from fusion import SklearnMember

    prints = {SklearnMember(tfidf_pipeline(c)).fingerprint for c in (1.0, 0.5)}
    prints.add(SklearnMember(make_pipeline(TfidfVectorizer(ngram_range=(1, 2)), LogisticRegression(max_iter=500))
                             ).fingerprint)
    assert len(prints) == 3


@pytest.mark.parametrize("case", ["hf_classifier", "hf_encoder"])
def test_auto_dtype_is_fingerprinted_as_resolved(case, models, monkeypatch):
    """``dtype="auto"`` computes in bfloat16 on a GPU and float32 on a CPU: outputs of one must never be served
    to the other, while ``"auto"`` on a CPU and ``"float32"`` compute the same."""
    spec = CASES[case].make(models)
    explicit = {dtype: type(spec)(spec.config.replace(dtype=dtype)) for dtype in ("float32", "bfloat16")}
    cpu_auto = type(spec)(spec.config.replace(dtype="auto"))
    assert cpu_auto.fingerprint == explicit["float32"].fingerprint != explicit["bfloat16"].fingerprint
    cpu_backbone = getattr(cpu_auto, "backbone_fingerprint", None)
    monkeypatch.setattr("fusion.members.hf_model.default_device", lambda: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    gpu_auto = type(spec)(spec.config.replace(dtype="auto"))
    assert gpu_auto.fingerprint == explicit["bfloat16"].fingerprint != cpu_auto.fingerprint
    if isinstance(spec, HFEncoder):  # the cached backbone pass too
        assert gpu_auto.backbone_fingerprint != cpu_backbone


def test_an_ensemble_trains_its_fuser_on_each_heads_own_out_of_fold_outputs(models, monkeypatch, tmp_path):
    """Two encoders whose untrained heads print alike but compute differently: each member's out-of-fold outputs
    are its own (the second is not served the first's cache entry)."""
    from fusion import Ensemble, LinearFuser
    from fusion.ensemble import ensemble as ensemble_module

    heads = sequential_heads()
    members = [_encoder(models, head=heads[name], name=name) for name in ("scale-1", "scale-5")]
    seen = []
    real = ensemble_module.fit_candidates
    monkeypatch.setattr(ensemble_module, "fit_candidates",
                        lambda fusers, outputs, *args, **kwargs: seen.append(outputs) or real(fusers, outputs, *args,
                                                                                               **kwargs))
    ens = Ensemble(members, fuser=LinearFuser(), labels=SENTIMENT, cv=2, cache_dir=tmp_path)
    ens.fit(make_toy_sentiment(N_ROWS, 0))
    (outputs_seen,) = seen
    assert outputs_seen.member_names == ["scale-1", "scale-5"]
    assert not torch.equal(outputs_seen.logits[:, 0], outputs_seen.logits[:, 1])
    assert len(list(tmp_path.rglob("oof-*.safetensors"))) == 2


@pytest.mark.parametrize("case", ["hf_classifier", "hf_encoder"])
def test_a_member_saved_where_auto_meant_another_dtype_is_keyed_apart_when_loaded(case, models, tmp_path):
    """Saved on a GPU (``"auto"`` = bfloat16), loaded on a CPU (float32): the recorded fingerprints name bfloat16
    outputs, so the loaded member gets its own; saved and loaded alike, it keeps them."""
    spec = type(CASES[case].make(models))(CASES[case].make(models).config.replace(dtype="auto"))
    member = fit_clone(spec, case) if spec.trainable else spec
    saved = json.loads(json.dumps(member.save(tmp_path)))
    assert saved["dtype"] == "float32"

    def load(**changes: Any) -> Member:
        fitted_state = {k: v for k, v in {**saved, **changes}.items() if v is not None}
        return MEMBERS.get(member.kind).load(member.to_config(), fitted_state, tmp_path)

    def prints(loaded: Member) -> tuple[str, str | None]:
        return loaded.fingerprint, getattr(loaded, "backbone_fingerprint", None)

    assert prints(load()) == prints(member)
    on_gpu, before_records = prints(load(dtype="bfloat16")), prints(load(dtype=None))
    assert on_gpu[0] != member.fingerprint and before_records[0] != member.fingerprint
    if isinstance(member, HFEncoder):
        assert on_gpu[1] != member.backbone_fingerprint
    explicit = type(spec)(spec.config.replace(dtype="float32"))
    explicit = fit_clone(explicit, case) if explicit.trainable else explicit
    (tmp_path / "explicit").mkdir()
    old = {k: v for k, v in json.loads(json.dumps(explicit.save(tmp_path / "explicit"))).items() if k != "dtype"}
    reloaded = MEMBERS.get(explicit.kind).load(explicit.to_config(), old, tmp_path / "explicit")
    assert reloaded.fingerprint == explicit.fingerprint  # an explicit dtype means the same everywhere
