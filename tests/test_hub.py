"""A hub id resolves through the local Hugging Face cache (offline), and its commit is recorded."""

from __future__ import annotations

import shutil

import huggingface_hub.constants
import pytest

from fusion import ConfigError, Ensemble, HFClassifier

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
