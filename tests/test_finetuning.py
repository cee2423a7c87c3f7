"""finetune_classifier: a plain AutoModelForSequenceClassification folder that learned the task, reproducible
per seed, different across seeds (the ingredients of a model soup), and bad labels refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from fusion import Ensemble, HFClassifier
from fusion.errors import DataError
from fusion.finetuning import finetune_classifier
from fusion.train_config import TrainConfig

QUICK = TrainConfig(learning_rate=3e-3, max_epochs=6, batch_size=16, patience=None, show_progress=False)


@pytest.fixture(scope="module")
def finetuned(bert_encoder_dir, tmp_path_factory):
    from tiny_models import make_toy_sentiment

    data = make_toy_sentiment(240, 0)
    root = tmp_path_factory.mktemp("ft")
    for seed in (0, 1):
        finetune_classifier(bert_encoder_dir, data["text"], data["label"], ["negative", "positive"], root / f"s{seed}",
                            seed=seed, train_config=QUICK, validation_fraction=0.0)
    finetune_classifier(bert_encoder_dir, data["text"], data["label"], ["negative", "positive"], root / "s0-again",
                        seed=0, train_config=QUICK, validation_fraction=0.0)
    return root


def test_a_finetuned_classifier_learned_the_task_and_loads_as_a_member(finetuned, toy_sentiment, capsys):
    config = json.loads((finetuned / "s0" / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert (finetuned / "s0" / "model.safetensors").is_file() and (finetuned / "s0" / "tokenizer_config.json").is_file()
    ens = Ensemble([HFClassifier(finetuned / "s0", show_progress=False)], cache_dir="memory")
    ens.fit(toy_sentiment["train"], toy_sentiment["validation"])
    accuracy = float((ens.predict(toy_sentiment["validation"]["text"])
                      == np.array(["negative", "positive"])[toy_sentiment["validation"]["label"]]).mean())
    assert accuracy > 0.7  # chance is 0.5 (80 rows: 0.7 is 3.5 standard deviations above it)


def test_the_same_seed_gives_the_same_weights_and_another_seed_other_weights(finetuned):
    load = lambda name: AutoModelForSequenceClassification.from_pretrained(finetuned / name).state_dict()  # noqa: E731
    s0, again, s1 = load("s0"), load("s0-again"), load("s1")
    assert all(torch.equal(s0[k], again[k]) for k in s0)
    assert not torch.equal(s0["classifier.weight"], s1["classifier.weight"])


@pytest.mark.parametrize(("texts", "labels", "match"), [
    (["a", "b"], [0], "2 texts and 1 labels"),
    (["a", "b"], [0, 2], r"labels must be ids in \[0, 2\)"),
])
def test_bad_rows_are_refused(bert_encoder_dir, tmp_path, texts, labels, match):
    with pytest.raises(DataError, match=match):
        finetune_classifier(bert_encoder_dir, texts, labels, ["negative", "positive"], tmp_path / "x")
    assert not (tmp_path / "x").exists()
