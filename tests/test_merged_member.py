"""A merge result is a member (``MergedModel``, ``fusion.merge``): in an Ensemble next to its sources, cached once
per fingerprint, saved inside an ensemble, written as a plain Hugging Face folder, and from the command line."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tfidf_member
from safetensors.torch import load_file
from tiny_models import make_toy_sentiment, save_bert_classifier

import fusion.merging.merge as driver
from fusion import Ensemble, HFClassifier, MergedModel, OutputCache, merge
from fusion.cache.store import default_cache_dir
from fusion.cli import main
from fusion.errors import ConfigError, UnknownNameError
from fusion.inputs import as_text_data
from fusion.merging import MERGE_METHODS
from fusion.merging.methods.linear import LinearMerge
from fusion.recipe import RecipeError, load_merge_recipe, parse_recipe

SENTIMENT = ["negative", "positive"]
QUIET = {"show_progress": False}


@pytest.fixture(scope="module")
def finetunes(tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny BERT classifiers of one architecture and vocabulary, with different weights (seeds 0 and 1)."""
    root = tmp_path_factory.mktemp("finetunes")
    return save_bert_classifier(root / "ft-a", SENTIMENT, 0), save_bert_classifier(root / "ft-b", SENTIMENT, 1)


@pytest.fixture
def merges(monkeypatch) -> list[Path]:
    """Counts the driver's merges (each call's output folder)."""
    calls: list[Path] = []
    real = driver.merge_checkpoints

    def counting(models, method, output, **kwargs):
        calls.append(Path(output))
        return real(models, method, output, **kwargs)

    monkeypatch.setattr(driver, "merge_checkpoints", counting)
    return calls


def rows(n: int = 24, seed: int = 0):
    return as_text_data(make_toy_sentiment(n, seed), label_names=SENTIMENT)


def logits(member, data) -> torch.Tensor:
    return member.compute(data, OutputCache(memory_only=True))["logits"]


# ---------------------------------------------------------------- in an ensemble


def test_a_merge_is_a_member_of_an_ensemble_beside_its_sources(finetunes, merges, tmp_path):
    a, b = finetunes
    members = [HFClassifier(a, name="a", **QUIET), HFClassifier(b, name="b", **QUIET),
               merge([a, b], "linear", weight=[0.6, 0.4], name="soup", **QUIET)]
    ens = Ensemble(members, fuser="mean", labels=SENTIMENT, cv=2, cache_dir=tmp_path / "cache")
    ens.fit(make_toy_sentiment(40, 0), make_toy_sentiment(16, 1))
    proba = ens.predict_proba(["a great film", "dull and boring"])
    assert proba.shape == (2, 2)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-9)
    assert {m.name for m in ens.report_.models} >= {"a", "b", "soup"}
    assert len(merges) == 1  # labels, outputs, every fold: one merge
    assert [m.describe() for m in ens.members_][2] == "linear merge of 2 models (weight [0.6, 0.4])"

    again = Ensemble([merge([a, b], "linear", weight=[0.6, 0.4], name="soup", **QUIET)], labels=SENTIMENT, cv=2,
                     cache_dir=tmp_path / "other-cache")  # other outputs cache: the member runs again
    again.fit(make_toy_sentiment(40, 0))
    assert len(merges) == 1, "a second fit (a fresh spec, as another process has) reuses the merged folder"
    cached = list((default_cache_dir() / "merged").iterdir())
    assert len(cached) == 1 and (cached[0] / "model" / "model.safetensors").is_file()


def test_the_merge_is_not_counted_as_inference_cost(finetunes, monkeypatch):
    """Merging happens once, on first use, like a fit: the recorded cost per row is the merged model's running
    time only (a slow merge here does not reach it)."""
    import time

    real = MergedModel._merge_into

    def slow_merge(self, output):
        time.sleep(1.0)
        return real(self, output)

    monkeypatch.setattr(MergedModel, "_merge_into", slow_merge)
    member, data, cache = merge(list(finetunes), "linear", **QUIET), rows(), OutputCache(memory_only=True)
    cache.get_or_compute(member.fingerprint, data.fingerprint, lambda: member.compute(data, cache))
    assert cache.cost(member.fingerprint, data.fingerprint).own < 0.8


def test_the_merged_member_predicts_what_hf_classifier_predicts_on_the_merged_folder(finetunes, tmp_path):
    a, b = finetunes
    method = LinearMerge(weight=[0.6, 0.4])
    result = driver.merge_checkpoints([a, b], method, tmp_path / "reference", show_progress=False)
    member = merge([a, b], method, **QUIET)
    data = rows()
    assert torch.equal(logits(member, data), logits(HFClassifier(result.directory, **QUIET), data))
    merged = load_file(member.merged_dir() / "model.safetensors")
    first, second = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    name = "classifier.weight"
    torch.testing.assert_close(merged[name], 0.6 * first[name] + 0.4 * second[name])  # the weights asked for
    assert member.output_labels(None) == result.labels == SENTIMENT


def test_another_process_finds_the_merge_in_the_cache_home(finetunes, merges):
    a, b = finetunes
    member = merge([a, b], "linear", **QUIET)
    folder = member.merged_dir()
    script = textwrap.dedent(f"""
        import fusion.merging.merge as driver
        from fusion import merge
        driver.merge_checkpoints = None  # merging again would fail
        member = merge([{str(a)!r}, {str(b)!r}], "linear", show_progress=False)
        print(member.merged_dir())
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}  # this checkout's fusion
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True,
                          env=env, cwd=a.parent)
    assert Path(done.stdout.strip()) == folder and len(merges) == 1


def test_a_damaged_cached_merge_is_merged_again(finetunes, merges):
    a, b = finetunes
    folder = merge([a, b], "linear", **QUIET).merged_dir()
    (folder / "config.json").write_text((folder / "config.json").read_text() + " ")
    again = merge([a, b], "linear", **QUIET)
    assert again.merged_dir() == folder and len(merges) == 2
    assert json.loads((folder / "config.json").read_text())  # rewritten whole


def test_fusion_cache_info_and_clear_see_merged_models(finetunes, merges, capsys):
    from fusion.cache.admin import cache_summary, clear_cache

    a, b = finetunes
    folder = merge([a, b], "linear", name="soup", **QUIET).merged_dir().parent
    files = [p for p in folder.rglob("*") if p.is_file()]
    (row,) = cache_summary().members
    assert (row.fingerprint, row.entries, row.size) == (folder.name, 1, sum(p.stat().st_size for p in files))
    assert row.label == "merged soup (linear merge of 2 models)"
    assert main(["cache", "info"]) == 0 and "merged soup (linear merge of 2 models)" in capsys.readouterr().out
    kept = clear_cache(older_than=3600)
    assert (kept.removed, kept.kept) == (0, 1) and folder.is_dir()
    cleared = clear_cache()
    assert (cleared.removed, cleared.freed) == (len(files), row.size) and not folder.parent.exists()
    merge([a, b], "linear", **QUIET).merged_dir()
    assert len(merges) == 2, "a cleared merge is merged again when used"


def test_models_that_cannot_merge_are_refused_and_leave_nothing_in_the_cache(finetunes, roberta_classifier_dir):
    member = merge([finetunes[0], roberta_classifier_dir], "linear", **QUIET)
    with pytest.raises(ConfigError, match="roberta_classifier"):
        member.output_labels(None)
    merged = default_cache_dir() / "merged"
    assert not merged.exists() or not [p for p in merged.rglob("*") if p.is_file()]


# ---------------------------------------------------------------- fingerprints and config


def test_fingerprint_follows_the_method_parameters_and_sources_not_settings(finetunes, tmp_path):
    a, b = finetunes
    spec = merge([a, b], "linear", weight=[0.6, 0.4], **QUIET)
    same = {merge([a, b], "linear", weight=[0.6, 0.4], batch_size=3, name="x", show_progress=True).fingerprint,
            merge([shutil.copytree(a, tmp_path / "copy"), b], "linear", weight=[0.6, 0.4]).fingerprint,
            spec.clone().fingerprint}
    assert same == {spec.fingerprint}
    other = {merge([a, b], "linear", weight=[0.4, 0.6]).fingerprint, merge([a, b], "linear").fingerprint,
             merge([a, b], "linear", weight=[0.6, 0.4], normalize=False).fingerprint,
             merge([b, a], "linear", weight=[0.6, 0.4]).fingerprint,
             merge([a, b], "linear", weight=[0.6, 0.4], max_length=16).fingerprint,
             merge([a, b], "linear", weight=[0.6, 0.4], merged_dtype="bfloat16").fingerprint}
    assert len(other) == 6 and spec.fingerprint not in other
    assert merge([a, b], "linear", max_length=16).merge_fingerprint == merge([a, b], "linear").merge_fingerprint
    by_name = merge([a, b], "linear", head="ft-b")
    assert by_name.config.head == 1 and by_name.fingerprint == merge([a, b], "linear", head=1).fingerprint
    with pytest.raises(ConfigError, match=r"head='ft-c': no model is called that"):
        merge([a, b], "linear", head="ft-c")


def test_the_method_is_given_by_name_dict_component_or_config(finetunes):
    a, b = finetunes
    forms = [{"kind": "linear", "weight": [1, 2]}, LinearMerge(weight=[1, 2]), LinearMerge.Config(weight=[1, 2])]
    configs = {MergedModel([a, b], form).config for form in forms}
    assert len(configs) == 1
    (config,) = configs
    assert MergedModel.Config.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.to_dict()["method"] == {"kind": "linear", "weight": [1, 2], "normalize": True}
    assert type(MergedModel([a, b]).config.method) is MERGE_METHODS.get("linear").Config


def test_models_may_be_hf_classifier_members(finetunes):
    a, b = finetunes
    member = merge([HFClassifier(a, revision="main"), HFClassifier(b)], "linear")
    assert member.config.models == [str(a), str(b)] and member.config.revisions == ["main", None]


def test_unknown_methods_and_parameters_are_refused_with_the_closest_name(finetunes):
    a, b = finetunes
    with pytest.raises(ConfigError, match=r"merge method 'linear' has no parameter 'wieght'; its parameters are: "
                                          r"weight, normalize .*Did you mean 'weight'\?"):
        merge([a, b], "linear", wieght=[1, 2])
    with pytest.raises(UnknownNameError, match=r"unknown merge method 'lineer'.*Did you mean 'linear'\?"):
        merge([a, b], "lineer")
    with pytest.raises(ConfigError, match=r"weight has 3 values for 2 models"):
        merge([a, b], "linear", weight=[1, 2, 3])
    with pytest.raises(ConfigError, match=r"models\[1\] is a SklearnMember \('tfidf'\); only Hugging Face"):
        merge([a, tfidf_member()])
    with pytest.raises(ConfigError, match="must be a list of models"):
        merge(str(a))
    with pytest.raises(ConfigError, match=r"merge method 'linear' does not use a base model; drop base="):
        merge([a, b], "linear", base=a)  # the method's own check, when the member is built


# ---------------------------------------------------------------- saved


def test_a_saved_ensemble_loads_without_the_sources_and_without_merging(finetunes, merges, tmp_path):
    sources = [shutil.copytree(f, tmp_path / f.name) for f in finetunes]
    ens = Ensemble([merge(sources, "linear", weight=[0.6, 0.4], name="soup", **QUIET), tfidf_member()],
                   fuser="mean", labels=SENTIMENT, cv=2, cache_dir=tmp_path / "cache")
    ens.fit(make_toy_sentiment(40, 0), make_toy_sentiment(16, 1))
    texts = make_toy_sentiment(16, 2)["text"]
    expected = ens.predict_proba(texts)
    ens.save_pretrained(tmp_path / "ens")
    saved = json.loads((tmp_path / "ens" / "fusion_config.json").read_text())
    assert any(name.endswith("soup/merged/model.safetensors") for name in saved["files"])  # checksummed
    # the sources are not needed to load: named, with no path of this machine
    assert saved["members"][0]["config"]["models"] == ["folder:ft-a", "folder:ft-b"]
    assert str(tmp_path) not in json.dumps(saved["members"])
    for folder in [*sources, default_cache_dir() / "merged"]:
        shutil.rmtree(folder)
    loaded = Ensemble.from_pretrained(tmp_path / "ens", cache_dir=tmp_path / "fresh-cache")
    assert np.array_equal(loaded.predict_proba(texts), expected)
    assert len(merges) == 1 and loaded.members_[0].fingerprint == ens.members_[0].fingerprint
    loaded.save_pretrained(tmp_path / "again")  # saved again without the sources
    assert (tmp_path / "again" / saved["members"][0]["dir"] / "merged" / "model.safetensors").is_file()
    twin = loaded.members_[0].clone()  # a clone runs the saved merge; it never needs the sources
    assert twin.fingerprint == loaded.members_[0].fingerprint and np.array_equal(
        logits(twin, rows()).numpy(), logits(loaded.members_[0], rows()).numpy())
    with pytest.raises(ConfigError, match="'folder:ft-a' was a folder of the machine that saved this ensemble"):
        merge(["folder:ft-a", "folder:ft-b"], "linear").output_labels(None)


def test_a_saved_merged_model_refuses_a_changed_file(finetunes, tmp_path):
    from fusion.errors import ChecksumError

    a, b = finetunes
    ens = Ensemble([merge([a, b], "linear", name="soup", **QUIET)], labels=SENTIMENT, cv=2,
                   cache_dir=tmp_path / "cache").fit(make_toy_sentiment(40, 0))
    ens.save_pretrained(tmp_path / "ens")
    (config,) = (tmp_path / "ens").glob("members/*/merged/config.json")
    config.write_text(config.read_text().replace("negative", "NEGATIVE"))
    with pytest.raises(ChecksumError, match="config.json"):
        Ensemble.from_pretrained(tmp_path / "ens")


def test_save_pretrained_writes_a_folder_transformers_loads_with_the_same_logits(finetunes, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    a, b = finetunes
    member = merge([a, b], "linear", weight=[0.6, 0.4], **QUIET)
    out = member.save_pretrained(tmp_path / "merged")
    assert {"config.json", "model.safetensors", "fusion_merge.json", "README.md"} <= {p.name for p in out.iterdir()}
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    texts = ["a great film", "dull and boring"]
    with torch.no_grad():
        expected = torch.cat([model(**tokenizer([t], return_tensors="pt")).logits for t in texts])
    torch.testing.assert_close(logits(member, as_text_data({"text": texts})), expected)
    assert [model.config.id2label[i] for i in range(2)] == SENTIMENT
    with pytest.raises(Exception, match="not empty"):
        member.save_pretrained(tmp_path / "merged")
    assert member.save_pretrained(tmp_path / "merged", overwrite=True) == tmp_path / "merged"


# ---------------------------------------------------------------- recipes and the command line


def test_a_recipe_lists_merged_members_with_paths_relative_to_it(finetunes, sentiment_dir, tmp_path):
    a, b = finetunes
    shutil.copytree(a, tmp_path / "models" / "a")
    shutil.copytree(b, tmp_path / "models" / "b")
    recipe = parse_recipe(textwrap.dedent(f"""
        data: {{path: {sentiment_dir}}}
        members:
          - kind: merged
            models: [models/a, models/b]
            method: {{name: linear, params: {{weight: [0.6, 0.4]}}}}
            name: soup
    """), base=tmp_path)
    (member,) = recipe.build_members()
    assert isinstance(member, MergedModel) and member.name == "soup"
    assert member.config.models == [str(tmp_path / "models" / "a"), str(tmp_path / "models" / "b")]
    assert member.config.method == LinearMerge.Config(weight=[0.6, 0.4])
    with pytest.raises(RecipeError, match=r"line 4: members\[0\]\.models\[1\]: directory 'models/c/d' does not exist"):
        parse_recipe(f"data: {{path: {sentiment_dir}}}\nmembers:\n  - kind: merged\n    models: [models/a, models/c/d]\n",
                     base=tmp_path)
    with pytest.raises(RecipeError, match=r"merge: is read by `fusion merge"):
        parse_recipe(f"data: {{path: {sentiment_dir}}}\nmembers: [{{kind: merged, models: [models/a]}}]\nmerge: {{}}\n",
                     base=tmp_path)


def test_fusion_merge_writes_a_loadable_folder_from_models(finetunes, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification

    a, b = finetunes
    out = tmp_path / "merged"
    assert main(["merge", str(a), str(b), "--weight", "0.6", "0.4", "--set", "normalize=false", "--output", str(out),
                 "--quiet"]) == 0
    assert f"saved the linear merge of 2 models (weight [0.6, 0.4], normalize False) to {out}" in capsys.readouterr().out
    model = AutoModelForSequenceClassification.from_pretrained(out)
    merged, first, second = (load_file(d / "model.safetensors") for d in (out, a, b))
    torch.testing.assert_close(merged["classifier.bias"], 0.6 * first["classifier.bias"] + 0.4 * second["classifier.bias"])
    assert model.config.id2label == {0: "negative", 1: "positive"}
    provenance = json.loads((out / "fusion_merge.json").read_text())
    assert "linear" in json.dumps(provenance)


def test_fusion_merge_reads_a_merge_recipe(finetunes, tmp_path, capsys):
    a, b = finetunes
    recipe = tmp_path / "merge.yaml"
    recipe.write_text(f"output: merged\nmerge:\n  models: [{a}, {b}]\n  method: {{name: linear, params: "
                      "{weight: [1, 3]}}\n")
    member, output = load_merge_recipe(recipe)
    assert output == tmp_path / "merged" and member.config.method.weight == [1, 3]
    assert main(["merge", str(recipe), "--set", "merge.method.params.weight=[3, 1]", "--quiet"]) == 0
    merged, first, second = (load_file(d / "model.safetensors") for d in (tmp_path / "merged", a, b))
    torch.testing.assert_close(merged["classifier.bias"], 0.75 * first["classifier.bias"] + 0.25 * second["classifier.bias"])


@pytest.mark.parametrize(("argv", "message"), [
    (["{a}", "{b}", "--output", "{out}", "--set", "wieght=[1, 2]"], "no parameter 'wieght'.*Did you mean 'weight'"),
    (["{a}", "{b}", "--method", "lineer", "--output", "{out}"], "unknown merge method 'lineer'"),
    (["{a}", "{b}"], "give --output DIR"),
    (["{a}", "{b}", "--output", "{existing}"], "exists and is not empty; give --overwrite"),
    (["{recipe}", "--method", "linear"], "--method apply to models given on the command line"),
    (["{bad_recipe}"], r"line 2: unknown key 'modles' in merge.*did you mean 'models'"),
])
def test_fusion_merge_usage_errors_exit_2_with_the_message(argv, message, finetunes, tmp_path, capsys):
    a, b = finetunes
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "file").write_text("x")
    (tmp_path / "r.yaml").write_text(f"merge:\n  models: [{a}, {b}]\n")
    (tmp_path / "bad.yaml").write_text(f"merge:\n  modles: [{a}, {b}]\n")
    paths = {"a": a, "b": b, "out": tmp_path / "out", "existing": tmp_path / "existing", "recipe": tmp_path / "r.yaml",
             "bad_recipe": tmp_path / "bad.yaml"}
    assert main(["merge", *(arg.format(**paths) for arg in argv), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_fusion_build_runs_a_recipe_with_a_merged_member(finetunes, sentiment_dir, tmp_path, merges, capsys):
    a, b = finetunes
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(textwrap.dedent(f"""
        output: out
        data: {{path: {sentiment_dir}, limit: 40}}
        members:
          - {{kind: merged, models: [{a}, {b}], method: {{name: linear, params: {{weight: [0.6, 0.4]}}}}, name: soup}}
          - {{kind: sklearn, pipeline: tfidf_logreg}}
        ensemble: {{cv: 2}}
        report: {{formats: []}}
    """))
    assert main(["build", str(recipe), "--quiet"]) == 0
    assert "soup" in capsys.readouterr().out and len(merges) == 1
    loaded = Ensemble.from_pretrained(tmp_path / "out" / "ensemble")
    assert [m.kind for m in loaded.members_] == ["merged", "sklearn"]
    assert loaded.members_[0].describe() == "linear merge of 2 models (weight [0.6, 0.4])"


def test_fusion_merge_has_help(capsys):
    assert main(["merge", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: fusion merge") and "--quiet" in out and "--weight" in out
