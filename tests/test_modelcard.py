"""The model card is a Hugging Face model card (``huggingface_hub.ModelCard``) with real metadata: library, task,
base models, evaluation results in ``model-index``, what the user adds (license, datasets), a title naming the
ensemble and its task, and the report's headings kept in their hierarchy."""

from __future__ import annotations

import dataclasses
import re

import pytest
from helpers import tfidf_member
from huggingface_hub import ModelCard

from fusion import ConfigError, Ensemble, MeanFuser
from fusion.ensemble.modelcard import base_models, card_metadata
from fusion.ensemble.persistence import EnsembleConfig

LABELS = ["negative", "positive"]


@pytest.fixture(scope="module")
def fitted(toy_sentiment) -> Ensemble:
    ens = Ensemble([tfidf_member()], fuser=MeanFuser(), labels=LABELS, cache_dir="memory")
    return ens.fit(toy_sentiment["train"], toy_sentiment["validation"])


def _headings(markdown: str) -> list[tuple[int, str]]:
    found, fenced = [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"^(#{1,6}) (.*)", line)):
            found.append((len(match[1]), match[2]))
    return found


def test_the_card_carries_hub_metadata_and_eval_results(fitted, tmp_path):
    directory = fitted.save_pretrained(tmp_path / "ens", card_data={"license": "mit", "datasets": ["stanfordnlp/sst2"],
                                                                    "dataset_name": "SST-2"})
    card = ModelCard.load(directory / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "fusion" and data["pipeline_tag"] == "text-classification"
    assert data["license"] == "mit" and data["datasets"] == ["stanfordnlp/sst2"]
    (index,) = data["model-index"]
    metrics = {m["type"]: m["value"] for r in index["results"] for m in r["metrics"]}
    config = EnsembleConfig.read(directory)
    assert metrics["accuracy"] == pytest.approx(config.metrics["scores"]["fuser:mean"]["accuracy"], abs=0)
    assert metrics["log_loss"] == pytest.approx(config.metrics["scores"]["fuser:mean"]["log_loss"], abs=0)
    result = index["results"][0]
    assert result["dataset"] == {"name": "SST-2", "type": "stanfordnlp/sst2", "split": "validation"}
    assert result["task"]["type"] == "text-classification"


def test_the_title_names_the_ensemble_and_its_task(fitted, tmp_path):
    card = (fitted.save_pretrained(tmp_path / "ens") / "README.md").read_text()
    assert "\n# fusion ensemble (mean of 1 member): text classification into negative / positive\n" in card
    named = fitted.save_pretrained(tmp_path / "named", card_data={"model_name": "sst2-ensemble"})
    assert "\n# sst2-ensemble\n" in (named / "README.md").read_text()


def test_the_report_keeps_its_heading_hierarchy_inside_the_card(fitted, tmp_path):
    card = (fitted.save_pretrained(tmp_path / "ens") / "README.md").read_text()
    report = _headings(fitted.report_.to_markdown())
    assert len({level for level, _ in report}) > 1  # the report has more than one level to keep
    embedded = _headings(card.split("## Evaluation", 1)[1].split("\n## Usage", 1)[0])
    assert embedded == [(min(6, level + 2), text) for level, text in report]


def test_base_models_are_the_members_hub_ids(fitted, tmp_path):
    config = EnsembleConfig.read(fitted.save_pretrained(tmp_path / "ens"))
    hub = dataclasses.replace(config.members[0], config={**config.members[0].config, "model": "org/model-a"})
    local = dataclasses.replace(config.members[0], config={**config.members[0].config, "model": str(tmp_path)})
    package = dataclasses.replace(config.members[0], config={**config.members[0].config, "model": "package:pkg"})
    config = dataclasses.replace(config, members=[hub, local, package, hub])
    assert base_models(config) == ["org/model-a"]
    assert card_metadata(config).base_model == ["org/model-a"]


def test_unknown_card_data_is_refused_before_anything_is_written(fitted, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['licence'\].*Did you mean 'license'"):
        fitted.save_pretrained(tmp_path / "ens", card_data={"licence": "mit"})
    assert not (tmp_path / "ens").exists()
