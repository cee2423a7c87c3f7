"""Soups chosen or learned on held-out rows: the greedy soup keeps an ingredient only when held-out accuracy does
not drop (and may keep one alone, which its name shows), the learned soup finds the model that is right, and
merge() asks for validation rows where a soup needs them."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from fusion import Ensemble, HFClassifier, merge
from fusion.errors import ConfigError
from fusion.train_config import TrainConfig

LABELS = ["negative", "positive"]


def _negate_head(source, target):
    """``source`` with its classifier negated: it predicts the other class wherever ``source`` is sure."""
    shutil.copytree(source, target)
    tensors = load_file(str(source / "model.safetensors"))
    tensors = {k: -v if k.startswith("classifier.") else v for k, v in tensors.items()}
    save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})
    return target


def _logits(folder, texts):
    member = HFClassifier(folder, show_progress=False)
    ens = Ensemble([member], cache_dir="memory")._set_fitted([member], None, LABELS)
    return ens.member_outputs({"text": texts}).logits[:, 0]


@pytest.fixture(scope="module")
def ingredients(tmp_path_factory):
    """Model A, an exact copy of it, A with its head negated, and held-out rows labelled with A's predictions
    (so A is right on every row)."""
    from tiny_models import make_toy_sentiment, save_bert_classifier

    root = tmp_path_factory.mktemp("soups")
    a = save_bert_classifier(root / "a", LABELS, seed=3)
    texts = make_toy_sentiment(60, seed=5)["text"]
    # a random head predicts one class everywhere, by margins of 1e-4: scale it up, then shift its bias so that
    # A splits the rows in two
    tensors = load_file(str(a / "model.safetensors"))
    tensors["classifier.weight"] *= 1000.0
    save_file(tensors, str(a / "model.safetensors"), metadata={"format": "pt"})
    scores = _logits(a, texts)
    tensors["classifier.bias"][1] -= float((scores[:, 1] - scores[:, 0]).median())
    save_file(tensors, str(a / "model.safetensors"), metadata={"format": "pt"})
    copy = shutil.copytree(a, root / "a-copy")
    flipped = _negate_head(a, root / "flipped")
    predicted = _logits(a, texts).argmax(1).numpy()
    assert 0 < predicted.sum() < len(texts)  # both classes occur: a soup predicting one class is wrong somewhere
    return {"a": a, "copy": copy, "flipped": flipped,
            "validation": {"text": texts, "label": [LABELS[i] for i in predicted]}, "predicted": predicted}


def test_a_greedy_soup_can_keep_one_ingredient_and_says_so(ingredients):
    soup = merge([ingredients["flipped"], ingredients["a"]], "greedy_soup", validation=ingredients["validation"],
                 cache_dir="memory", show_progress=False)
    assert soup.name == "greedy-soup-1-of-2" and soup.config.models == [str(ingredients["a"])]
    selection = soup.selection_
    assert selection["order"] == ["a", "flipped"] and selection["kept"] == ["a"]
    assert selection["accuracy"]["a"] == 1.0
    # the flipped head cancels A's: zero logits predict the first class, right where A predicts it
    (step,) = selection["steps"]
    assert step == {"ingredient": "flipped", "accuracy": pytest.approx(float((ingredients["predicted"] == 0).mean())),
                    "kept": False}


def test_a_greedy_soup_adds_an_ingredient_when_accuracy_does_not_drop(ingredients):
    soup = merge([ingredients["a"], ingredients["copy"]], "greedy_soup", validation=ingredients["validation"],
                 cache_dir="memory", show_progress=False)
    assert soup.name == "greedy-soup-2-of-2" and soup.selection_["kept"] == ["a", "a-copy"]
    assert soup.selection_["steps"] == [{"ingredient": "a-copy", "accuracy": 1.0, "kept": True}]
    assert soup.describe().startswith("linear merge of 2 models")


def test_a_learned_soup_puts_its_weight_on_the_model_that_is_right(ingredients):
    config = TrainConfig(learning_rate=0.3, max_epochs=6, batch_size=16, patience=None, show_progress=False)
    soup = merge([ingredients["a"], ingredients["flipped"]], "learned_soup", validation=ingredients["validation"],
                 train_config=config, validation_fraction=0.0, show_progress=False)
    (weights,) = soup.coefficients_.values()
    assert soup.config.method.kind == "learned_soup" and weights[0] > 0.8 and sum(weights) == pytest.approx(1.0)
    ens = Ensemble([soup], cache_dir="memory")._set_fitted([soup], None, LABELS)
    predicted = ens.member_outputs({"text": ingredients["validation"]["text"]}).logits[:, 0].argmax(1).numpy()
    assert np.array_equal(predicted, ingredients["predicted"])  # the soup (2a - 1) * A's head predicts as A


@pytest.mark.parametrize(("method", "kwargs", "match"), [
    ("greedy_soup", {}, "'greedy_soup' chooses or learns the soup on held-out rows: pass validation="),
    ("greedy_soup", {"validation": {"text": ["x"], "label": ["negative"]}, "base": "b"}, "drop base="),
    ("ties", {"validation": {"text": ["x"], "label": ["negative"]}}, "validation=...\\) is for the soups"),
    ("greedy_soup", {"validation": {"text": ["x"], "label": ["negative"]}, "desnity": 0.5}, "no parameter 'desnity'"),
])
def test_merge_says_what_a_soup_needs(ingredients, method, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        merge([ingredients["a"], ingredients["copy"]], method, **kwargs)


def test_a_learned_soup_with_its_coefficients_needs_no_validation(ingredients):
    soup = merge([ingredients["a"], ingredients["flipped"]], "learned_soup", coefficients={"all": [1.0, 0.0]})
    head = load_file(str(soup.merged_dir() / "model.safetensors"))["classifier.weight"]
    assert torch.equal(head, load_file(str(ingredients["a"] / "model.safetensors"))["classifier.weight"])
