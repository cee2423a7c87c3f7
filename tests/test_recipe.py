"""Recipes: the schema derived from config fields (by type) and signatures, line-numbered errors, overrides, data
loading."""

from __future__ import annotations

import csv
import dataclasses
import inspect
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch
import yaml
from helpers import write_csv

from fusion import FUSERS, HEADS, MEMBERS, ConfigError, DataError, Ensemble, HFEncoder, MLPHead, TrainConfig
from fusion.config import RECIPE_KEY, Config, coerced, object_field, setting
from fusion.datafiles import DataSpec, load_data, load_split, read_table
from fusion.fusers import MeanFuser
from fusion.fusers.linear import DEFAULT_TRAINING as LINEAR_TRAINING
from fusion.members.heads import HeadConfig, head_config
from fusion.members.hf_source import ModelRef
from fusion.members.sklearn_member import SklearnEstimator
from fusion.recipe import (
    PIPELINES,
    Recipe,
    RecipeError,
    component_fields,
    config_fields,
    load_recipe,
    member_fields,
    parse_override,
    parse_recipe,
    recipe_kinds,
    value_type,
)
from fusion.recipe.document import parse_yaml
from fusion.recipe.schema import read_mapping

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


GOOD = """\
output: out
data:
  path: {data}
  limit: 40
members:
  - kind: hf_encoder
    name: enc
    model: {encoder}
    pooling: mean
    head: {{name: mlp, params: {{hidden: 16}}}}
    train_config: {{max_epochs: 3}}
  - kind: sklearn
    name: tfidf
    pipeline: {{name: tfidf_logreg, params: {{ngram_range: [1, 2], C: 2}}}}
fusers: [mean, {{name: linear, params: {{per_class: true}}}}]
ensemble:
  cv: 2
"""


def parse(text: str, tmp_path: Path, **paths) -> Recipe:
    return parse_recipe(text.format(**paths), "recipe.yaml", tmp_path)


def test_a_good_recipe_builds_every_object(tmp_path, sentiment_dir, bert_encoder_dir):
    recipe = parse(GOOD, tmp_path, data=sentiment_dir, encoder=bert_encoder_dir)
    encoder, tfidf = recipe.build_members()
    assert isinstance(encoder, HFEncoder) and isinstance(encoder.config.head, MLPHead.Config)
    assert encoder.config.head.hidden == 16
    assert encoder.config.train_config == TrainConfig(max_epochs=3)
    assert tfidf.config.estimator.steps[0][1].ngram_range == (1, 2)  # the YAML list became the tuple scikit-learn wants
    mean, linear = recipe.build_fusers()
    assert (mean.kind, linear.kind, linear.config.per_class) == ("mean", "linear", True)
    assert recipe.build_ensemble([encoder, tfidf]).cv == 2
    assert recipe.data == DataSpec(path=str(sentiment_dir), limit=40)
    assert recipe.output == tmp_path / "out"  # relative to the recipe's directory
    assert recipe.build_members()[0] is not encoder  # every build is fresh (no shared heads)


# --- bad recipes: each message names the line, the key and what is accepted -------------------------------

BASE = {
    "data": "data:\n  path: {data}\n",
    "members": "members:\n  - kind: sklearn\n    pipeline: tfidf_logreg\n",
}
ENCODER = "members:\n  - kind: hf_encoder\n    model: {encoder}\n"
BAD_RECIPES = [
    ("unknown-top-level-key", BASE["data"] + "memebers:\n  - kind: sklearn\n", 3,
     ["unknown key 'memebers' in the recipe", "accepted: data, ensemble, fusers, members, output, report",
      "did you mean 'members'"]),
    ("unknown-member-key", BASE["data"] + ENCODER + "    poolng: mean\n", 6,
     [r"unknown key 'poolng' in members\[0\] \(hf_encoder\)", "accepted: .*head.*pooling", "did you mean 'pooling'"]),
    ("wrong-type", "data:\n  path: {data}\n  limit: ten\n" + BASE["members"], 3,
     ["data.limit must be an integer or null, got 'ten'"]),
    ("missing-member-path", BASE["data"] + "members:\n  - kind: hf_encoder\n    model: ./no/such/model\n", 5,
     [r"members\[0\].model: directory './no/such/model' does not exist", "not a hub id",
      "a model directory, a hub id .* or package:MODULE"]),
    ("unknown-fuser", BASE["data"] + BASE["members"] + "fusers: [mean, linaer]\n", 6,
     [r"fusers\[1\]: unknown fuser 'linaer'", ", ".join(FUSERS.names()), "Did you mean 'linear'"]),
    ("unknown-member-kind", BASE["data"] + "members:\n  - kind: hf_encodr\n", 4,
     [r"members\[0\].kind: unknown member kind 'hf_encodr'", "accepted: hf_classifier, hf_encoder, merged, sklearn",
      "did you mean 'hf_encoder'"]),
    ("missing-data-path", "data:\n  path: no_such_dir\n" + BASE["members"], 2,
     ["data.path: 'no_such_dir' does not exist", "dataset directory .*train.csv"]),
    ("missing-required-key", BASE["data"] + "members:\n  - kind: hf_encoder\n    pooling: mean\n", 4,
     [r"members\[0\] \(hf_encoder\) lacks the required key 'model'"]),
    ("head-param-type", BASE["data"] + ENCODER + "    head: {{name: mlp, params: {{hidden: big}}}}\n", 6,
     [r"members\[0\].head.params.hidden must be an integer, got 'big'"]),
    ("unknown-head", BASE["data"] + ENCODER + "    head: mpl\n", 6,
     [r"members\[0\].head: unknown head 'mpl'", "linear, mlp", "Did you mean 'mlp'"]),
    ("unknown-pipeline", BASE["data"] + "members:\n  - kind: sklearn\n    pipeline: tfidf_logrg\n", 5,
     ["unknown scikit-learn pipeline 'tfidf_logrg'", "tfidf_logreg, tfidf_nb, tfidf_svm"]),
    ("pipeline-param", BASE["data"] + "members:\n  - kind: sklearn\n    pipeline:\n      name: tfidf_logreg\n"
     "      params:\n        ngram_range: [1, 2, 3]\n", 8,
     [r"members\[0\].pipeline.params.ngram_range must be a list of 2 items, each an integer"]),
    ("train-config-key", BASE["data"] + ENCODER + "    train_config:\n      max_epoch: 3\n", 7,
     [r"unknown TrainConfig key\(s\) \['max_epoch'\]", "max_epochs"]),
    ("constructor-choice", BASE["data"] + ENCODER + "    pooling: maxx\n", 6,
     [r"members\[0\]: HFEncoder.Config.pooling must be one of \['cls', 'last', 'mean'\]; got 'maxx'"]),
    ("ensemble-choice", BASE["data"] + BASE["members"] + "ensemble:\n  fuser_data: sometimes\n", 7,
     ["fuser_data must be one of", "'auto', 'train', 'validation'"]),
    ("fuser-param-type", BASE["data"] + BASE["members"] + "fusers:\n  - name: linear\n    params: {{per_class: 3}}\n",
     8, [r"fusers\[0\].params.per_class must be true or false, got 3"]),
    ("fuser-unknown-param", BASE["data"] + BASE["members"] + "fusers:\n  - name: stacking\n    params: {{metaa: mlp}}\n",
     8, [r"unknown key 'metaa' in fusers\[0\] \(stacking\) params", "did you mean 'meta'"]),
    ("fuser-param-outside-params", BASE["data"] + BASE["members"] + "fusers:\n  - name: linear\n    per_class: true\n",
     8, [r"unknown key 'per_class' in fusers\[0\]; accepted: name, params", "put settings under params"]),
    ("duplicate-member-names", BASE["data"] + BASE["members"] + "  - kind: sklearn\n    pipeline: tfidf_nb\n", 6,
     [r"members\[1\] is named 'pipeline' like members\[0\]", "must be unique"]),
    ("member-not-a-mapping", BASE["data"] + "members:\n  - hf_encoder\n", 4,
     [r"members\[0\] must be a mapping with a kind \(one of hf_classifier, hf_encoder, merged, sklearn\)"]),
    ("no-members", BASE["data"], 1, ["lacks the required section 'members'"]),
    ("report-format", BASE["data"] + BASE["members"] + "report:\n  formats: [html, pdf]\n", 7,
     ["report.formats must be a list of items, each one of 'html', 'md', 'json'"]),
    ("two-data-sources", "data:\n  path: {data}\n  hub: glue\n" + BASE["members"], 2,
     ["exactly one source: path .*train .*hub", r"\['path', 'hub'\]"]),
    ("duplicate-yaml-key", BASE["data"] + BASE["members"] + "    pipeline: tfidf_nb\n", 6,
     ["key 'pipeline' appears twice"]),
    ("invalid-yaml", BASE["data"] + "members:\n  - kind: sklearn\n     pipeline: tfidf_logreg\n", 5,
     ["not valid YAML: mapping values are not allowed here"]),
    ("torch-kind", BASE["data"] + "members:\n  - kind: torch\n", 4,
     ["unknown member kind 'torch' .*needs Python objects", "accepted: hf_classifier, hf_encoder, merged, sklearn"]),
    ("fuser-constraint", BASE["data"] + BASE["members"] + "fusers:\n  - name: stacking\n    params: {{meta: forest}}\n",
     8, [r"fusers\[0\].params: StackingFuser.Config.meta must be 'logreg', 'mlp' or a scikit-learn classifier; "
         "got 'forest'"]),
    ("fuser-train-config-key", BASE["data"] + BASE["members"] + "fusers:\n  - name: linear\n    params:\n"
     "      train_config: {{max_epoch: 3}}\n", 9, [r"unknown TrainConfig key\(s\) \['max_epoch'\]", "max_epochs"]),
    ("head-constraint", BASE["data"] + ENCODER + "    head: {{name: mlp, params: {{hidden: 0}}}}\n", 6,
     [r"members\[0\].head.params: MLPHead.Config.hidden must be an integer >= 1; got 0"]),
    ("head-needs-python", BASE["data"] + ENCODER + "    head: {{name: custom, params: {{module: x}}}}\n", 6,
     [r"members\[0\].head.params.module takes a Python Module object, which a recipe cannot give"]),
    ("train-config-constraint", BASE["data"] + ENCODER + "    train_config:\n      max_epochs: 0\n", 7,
     [r"TrainConfig.max_epochs must be an integer >= 1; got 0"]),
    ("object-field", BASE["data"] + "members:\n  - kind: sklearn\n    pipeline: tfidf_nb\n    estimator: x\n", 6,
     [r"unknown key 'estimator' in members\[0\] \(sklearn\); accepted: kind, label_map, name, pipeline"]),
]


@pytest.mark.parametrize(("text", "line", "patterns"), [c[1:] for c in BAD_RECIPES], ids=[c[0] for c in BAD_RECIPES])
def test_bad_recipes_name_the_line_the_key_and_the_accepted_values(text, line, patterns, tmp_path, sentiment_dir,
                                                                   bert_encoder_dir):
    with pytest.raises(RecipeError) as caught:
        parse(text, tmp_path, data=sentiment_dir, encoder=bert_encoder_dir)
    message = str(caught.value)
    assert message.startswith(f"recipe.yaml line {line}: "), message
    for pattern in patterns:
        assert re.search(pattern, message), f"{pattern!r} not in {message!r}"
    assert isinstance(caught.value, ConfigError)


def test_no_validation_split_needs_a_fraction(tmp_path, toy_topics):
    write_csv(tmp_path / "train.csv", toy_topics["train"])
    text = "data:\n  path: .\n" + BASE["members"]
    with pytest.raises(RecipeError, match=r"recipe.yaml line 2: .*no validation split; set data.validation_fraction"):
        parse(text, tmp_path)
    parse(text.replace("path: .\n", "path: .\n  validation_fraction: 0.2\n"), tmp_path)


# --- the schema is derived, not written twice ---------------------------------------------------------------


def test_member_sections_follow_config_fields():
    for kind in MEMBERS:
        cls = MEMBERS.get(kind)
        params = {f.name for f in dataclasses.fields(cls.Config)}
        keys = {field.param for field in member_fields(cls).values()} - {"kind"}
        assert keys == params == set(inspect.signature(cls).parameters), kind
    assert member_fields(MEMBERS.get("sklearn"))["pipeline"].param == "estimator"  # its recipe key, from the field
    assert "torch" in MEMBERS and "torch" not in recipe_kinds()  # needs an nn.Module: Python only


@pytest.mark.parametrize("registry", [HEADS, FUSERS, PIPELINES], ids=["heads", "fusers", "pipelines"])
def test_component_params_follow_config_fields_or_signatures(registry):
    for name in registry:
        target = registry.get(name)
        params = {f.param for f in component_fields(target).values()}
        assert params == set(inspect.signature(target).parameters), name
        if hasattr(target, "Config"):
            assert params == {f.name for f in dataclasses.fields(target.Config)}, name


@dataclass(frozen=True)
class GaterConfig(Config):
    """A component kind the schema has never heard of: every field is converted by its type, not its name."""

    checkpoint: ModelRef
    scorer: HeadConfig = coerced(head_config, "linear")
    schedule: TrainConfig | None = None
    classifier: SklearnEstimator = object_field(describe=repr, copy=lambda e: e, load_hint="pass it again",
                                                default=None, metadata={RECIPE_KEY: "pipeline"})
    module: torch.nn.Module | None = object_field(describe=repr, copy=lambda m: m, load_hint="pass it again",
                                                  default=None)
    quiet: bool = setting(False)


def test_a_new_component_kind_needs_no_schema_code(tmp_path, bert_encoder_dir):
    fields = config_fields(GaterConfig)
    assert set(fields) == {"checkpoint", "scorer", "schedule", "pipeline", "module", "quiet"}
    assert fields["checkpoint"].required and not fields["scorer"].required
    text = (f"checkpoint: {bert_encoder_dir}\nscorer: {{name: mlp, params: {{hidden: 8}}}}\n"
            "schedule: {max_epochs: 2}\npipeline: tfidf_nb\nquiet: true\n")
    doc = parse_yaml(text, "gater.yaml", tmp_path)
    config = GaterConfig(**read_mapping(doc, (), doc.data, fields, "gater"))
    assert config.checkpoint == str(bert_encoder_dir) and config.scorer == MLPHead.Config(hidden=8)
    assert config.schedule == TrainConfig(max_epochs=2) and config.quiet
    assert hasattr(config.classifier, "predict_proba")  # the named pipeline, built
    doc = parse_yaml("checkpoint: x\nmodule: linear\n", "gater.yaml", tmp_path)
    with pytest.raises(RecipeError, match=r"line 2: module takes a Python Module object, which a recipe cannot give"):
        read_mapping(doc, (), doc.data, fields, "gater")
    doc = parse_yaml("checkpoint: x\nscorer: mpl\n", "gater.yaml", tmp_path)
    with pytest.raises(RecipeError, match=r"line 2: scorer: unknown head 'mpl'; .*Did you mean 'mlp'"):
        read_mapping(doc, (), doc.data, fields, "gater")


def test_fusers_are_built_through_their_config(tmp_path, sentiment_dir):
    text = (BASE["data"] + BASE["members"] + "fusers:\n  - mean\n  - name: linear\n    params: {{train_config: "
            "{{max_epochs: 5}}}}\n  - name: stacking\n    params:\n      meta: {{sklearn: "
            "sklearn.linear_model.LogisticRegression, params: {{C: 0.5}}}}\n")
    recipe = parse(text, tmp_path, data=sentiment_dir)
    mean, linear, stacking = recipe.build_fusers()
    assert recipe.fuser_labels == ["mean", "linear", "stacking"] and mean.config == MeanFuser.Config()
    assert linear.config.train_config == LINEAR_TRAINING.replace(max_epochs=5)  # merged over the fuser's default
    assert stacking.config.meta["sklearn"].endswith("LogisticRegression") and stacking.config.meta["params"]["C"] == 0.5
    quiet = recipe.build_fusers(show_progress=False)[1]
    assert not quiet.config.train_config.show_progress and quiet.fingerprint == linear.fingerprint


def test_a_recipe_without_fusers_compares_the_default_candidates(tmp_path, sentiment_dir):
    recipe = parse(BASE["data"] + BASE["members"], tmp_path, data=sentiment_dir)
    assert [f.kind for f in recipe.build_fusers()] == ["mean", "linear", "stacking", "caruana"]  # as Ensemble(members)


@pytest.mark.parametrize(
    ("annotation", "good", "bad", "text"),
    [
        (int, 3, True, "an integer"),
        (float, 2, "x", "a number"),
        (bool, False, 0, "true or false"),
        (int | None, None, 1.5, "an integer or null"),
        (str | os.PathLike, "a/b", 3, "a path"),
        (tuple[int, int], [1, 2], [1, 2, 3], "a list of 2 items, each an integer"),
        (Sequence[float] | None, [0.5, 1], ["a"], "a list of items, each a number or null"),
        (Mapping[str | int, str] | None, {0: "neg", "POS": "pos"}, {"a": 1}, "a mapping of a string or an integer to a string or null"),
        (Literal["word", "char"], "char", "chars", "one of 'word', 'char'"),
    ],
)
def test_value_types_from_annotations(annotation, good, bad, text):
    kind = value_type(annotation)
    assert kind.accepts(good) and not kind.accepts(bad)
    assert kind.text == text


def test_every_pipeline_builds_a_classifier_with_predict_proba():
    for name in PIPELINES:
        estimator = PIPELINES.get(name)()
        assert hasattr(estimator, "predict_proba"), name


# --- paths, packages, overrides -------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_recipe_file(tmp_path, sentiment_dir, bert_encoder_dir):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "models").symlink_to(bert_encoder_dir)
    (tmp_path / "data").symlink_to(sentiment_dir)
    recipe_file = tmp_path / "recipes" / "r.yaml"
    recipe_file.write_text("output: ../out\ndata:\n  path: ../data\nmembers:\n  - kind: hf_encoder\n"
                           "    model: ../models\nensemble:\n  cache_dir: ../cache\n")
    recipe = load_recipe(recipe_file)
    assert recipe.output == tmp_path / "out" and recipe.data.path == str(tmp_path / "data")
    assert recipe.build_members()[0].source.model == str(tmp_path / "models")
    assert recipe.build_ensemble(recipe.build_members()).cache.directory == tmp_path / "cache"
    saved = yaml.safe_load(recipe.resolved_yaml())
    assert saved["members"][0]["model"] == str(tmp_path / "models") and saved["output"] == str(tmp_path / "out")


def test_package_models_resolve_through_get_model_path_and_stay_portable(tmp_path, monkeypatch, sentiment_dir,
                                                                          bert_encoder_dir, toy_sentiment):
    (tmp_path / "fake_model_pkg.py").write_text(f"def get_model_path():\n    return {str(bert_encoder_dir)!r}\n")
    dist_info = tmp_path / "fake_model_pkg-0.0.dist-info"  # installed: package: refs need a distribution's files
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-model-pkg\nVersion: 0.0\n")
    (dist_info / "RECORD").write_text("fake_model_pkg.py,,\nfake_model_pkg-0.0.dist-info/METADATA,,\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    text = "data:\n  path: {data}\nmembers:\n  - kind: hf_encoder\n    model: package:{package}\n"
    recipe = parse(text, tmp_path, data=sentiment_dir, package="fake_model_pkg")
    member = recipe.build_members()[0]
    assert member.source.model == "package:fake_model_pkg" and member.name == "fake_model_pkg-mean"
    assert member.source.local_dir == bert_encoder_dir.resolve() and member.source.resolved_revision is None
    ensemble = recipe.build_ensemble([member], labels=["negative", "positive"])
    ensemble.fit(toy_sentiment["train"], toy_sentiment["validation"])
    ensemble.save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "fusion_config.json").read_text())
    assert config["members"][0]["config"]["model"] == "package:fake_model_pkg"  # not the install path: portable
    reloaded = Ensemble.from_pretrained(tmp_path / "saved")
    np.testing.assert_array_equal(reloaded.predict_proba(toy_sentiment["validation"]),
                                  ensemble.predict_proba(toy_sentiment["validation"]))
    with pytest.raises(RecipeError, match=r"line 5: members\[0\].model: .*package 'no_such_pkg' is not installed"):
        parse(text, tmp_path, data=sentiment_dir, package="no_such_pkg")


def test_overrides_are_validated_and_named_in_errors(tmp_path, sentiment_dir, bert_encoder_dir):
    text = GOOD.format(data=sentiment_dir, encoder=bert_encoder_dir)
    recipe = parse_recipe(text, "recipe.yaml", tmp_path, [parse_override("members.0.pooling=cls"),
                                                          parse_override("ensemble.cv=3")], limit=7, output="elsewhere")
    assert recipe.build_members()[0].config.pooling == "cls" and recipe.build_ensemble(recipe.build_members()).cv == 3
    assert recipe.data.limit == 7 and recipe.output == Path.cwd() / "elsewhere"  # command-line paths: from cwd
    with pytest.raises(RecipeError, match=r"recipe.yaml \(--set members.0.poolng\): unknown key 'poolng'.*'pooling'"):
        parse_recipe(text, "recipe.yaml", tmp_path, {"members.0.poolng": "cls"})
    with pytest.raises(RecipeError, match=r"\(--set members.5.model\): members is a list of 2 items; 5 is not an index"):
        parse_recipe(text, "recipe.yaml", tmp_path, {"members.5.model": "x"})
    with pytest.raises(RecipeError, match=r"\(--limit\): data.limit must be at least 1 row, got 0"):
        parse_recipe(text, "recipe.yaml", tmp_path, limit=0)
    with pytest.raises(RecipeError, match="expected KEY=VALUE"):
        parse_override("members.0.model")
    assert parse_override("fusers=[mean, linear]") == ("fusers", ["mean", "linear"])


def test_data_override_replaces_the_whole_source(tmp_path, sentiment_dir):
    text = "data:\n  train: nowhere.csv\n  validation: nowhere_either.csv\n" + BASE["members"]
    recipe = parse_recipe(text, "recipe.yaml", tmp_path, data=str(sentiment_dir))
    assert (recipe.data.path, recipe.data.train, recipe.data.validation) == (str(sentiment_dir), None, None)
    recipe = parse_recipe(text, "recipe.yaml", tmp_path, data="hub:someone/sst2")
    assert (recipe.data.hub, recipe.data.path, recipe.data.train) == ("someone/sst2", None, None)


def test_shipped_recipes_validate(sentiment_dir, bert_encoder_dir):
    models = {f"members.{i}.model": str(bert_encoder_dir) for i in range(2)}  # whether or not the demo package is installed
    for name in ("sst2_minilm.yaml", "trec_minilm.yaml"):
        recipe = load_recipe(RECIPES / name, models, data=str(sentiment_dir))
        assert [m.name for m in recipe.build_members()] == ["minilm-mean-linear", "minilm-cls-mlp", "tfidf-logreg"]
        assert recipe.fuser_labels == ["mean", "vote", "linear", "stacking"]
    assert load_recipe(RECIPES / "sst2_minilm.yaml", models).data.path == str(RECIPES / "data" / "sst2_sample")
    hub = load_recipe(RECIPES / "hub_classifiers.yaml")  # hub ids are only checked when the build starts
    assert [m.source.model for m in hub.build_members()][0] == "distilbert/distilbert-base-uncased-finetuned-sst-2-english"
    assert [m.config.label_map for m in hub.build_members()][1] == {"LABEL_0": "negative", "LABEL_1": "positive"}


def test_trec_recipe_carves_validation_with_a_fixed_seed(bert_encoder_dir):
    if not (ROOT.parent / "shared" / "data" / "trec").is_dir():
        pytest.skip("../shared/data/trec is not in this checkout")
    models = {f"members.{i}.model": str(bert_encoder_dir) for i in range(2)}
    trec = load_recipe(RECIPES / "trec_minilm.yaml", models).data
    assert (trec.validation_fraction, trec.seed) == (0.1, 0)
    splits = load_data(trec)
    assert splits.carved and splits.labels == ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]
    assert len(splits.validation["text"]) == 546 and set(splits.validation["label"]) == set(splits.labels)
    assert load_data(trec).validation == splits.validation  # the same carve every time


# --- data loading ------------------------------------------------------------------------------------------------


def test_directory_labels_become_names_and_limit_samples(sentiment_dir):
    splits = load_data(DataSpec(path=sentiment_dir, limit=50))
    assert splits.labels == ["negative", "positive"] and not splits.carved
    assert len(splits.train["text"]) == 50 and set(splits.train["label"]) == {"negative", "positive"}
    assert load_data(DataSpec(path=sentiment_dir, limit=50)).train == splits.train  # seeded


def test_label_ids_are_read_by_name_not_position(tmp_path):
    write_csv(tmp_path / "train.csv", {"text": ["a", "b", "c", "d"], "label": [0, 1, 0, 1]})
    (tmp_path / "labels.json").write_text(json.dumps({"0": "positive", "1": "negative"}))  # the other order
    splits = load_data(DataSpec(path=tmp_path, validation_fraction=0.5))
    assert splits.carved and splits.labels == ["positive", "negative"]
    rows = dict(zip(splits.train["text"] + splits.validation["text"], splits.train["label"] + splits.validation["label"],
                    strict=True))
    assert rows == {"a": "positive", "b": "negative", "c": "positive", "d": "negative"}


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json"])
def test_split_files_in_every_format(tmp_path, suffix):
    rows = [{"text": "good, really", "label": "positive"}, {"text": "bad", "label": "negative"}]
    path = tmp_path / f"train{suffix}"
    if suffix in (".csv", ".tsv"):
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, ["text", "label"], delimiter="," if suffix == ".csv" else "\t")
            writer.writeheader()
            writer.writerows(rows)
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path.write_text(json.dumps(rows))
    assert read_table(path) == {"text": ["good, really", "bad"], "label": ["positive", "negative"]}
    table, names = load_split(DataSpec(train=str(path)), "train")
    assert table == {"text": ["good, really", "bad"], "label": ["positive", "negative"]} and names is None


def test_data_errors_name_the_file_and_the_columns(tmp_path, sentiment_dir):
    with pytest.raises(DataError, match=r"no column 'sentence'; the data has columns \['text', 'label'\]"):
        load_data(DataSpec(path=sentiment_dir, text_column="sentence"))
    with pytest.raises(DataError, match=r"no 'test' split; available splits: \['train', 'validation'\]"):
        load_split(DataSpec(path=sentiment_dir), "test")
    (tmp_path / "train.xlsx").write_text("")
    with pytest.raises(DataError, match=r"unsupported file type '.xlsx'"):
        read_table(tmp_path / "train.xlsx")
