"""Learned soups: the merge method their coefficients define (values by hand), the mixing module (the uniform
soup's logits equal a model holding the averaged weights), and the training of the coefficients (it finds the
model that is right, reproducibly)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from fusion.batching import TokenRows, pad_token_id, tokenize
from fusion.errors import ConfigError
from fusion.merging import MERGE_METHODS, TensorContext
from fusion.merging.learned_soup import LearnedSoupMerge, SoupModule, learn_coefficients, tensor_group
from fusion.train_config import TrainConfig


@pytest.mark.parametrize(("name", "model", "layer"), [
    ("bert.encoder.layer.11.output.dense.weight", "all", "layer.11"),
    ("transformer.h.2.attn.c_attn.weight", "all", "layer.2"),
    ("model.layers.0.self_attn.q_proj.weight", "all", "layer.0"),
    ("bert.embeddings.word_embeddings.weight", "all", "embeddings"),
    ("classifier.weight", "all", "other"),
    ("bert.pooler.dense.bias", "all", "other"),
])
def test_tensor_groups(name, model, layer):
    assert tensor_group(name, "model") == model and tensor_group(name, "layer") == layer


def test_learned_soup_merges_each_group_with_its_coefficients():
    soup = MERGE_METHODS.get("learned_soup")(coefficients={"layer.0": [0.2, 0.8], "other": [1.0, 0.0]},
                                             granularity="layer")
    a, b = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[5.0, 6.0], [7.0, 8.0]])
    merged = soup.merge_tensor([a, b], None, TensorContext("encoder.layer.0.dense.weight"))
    torch.testing.assert_close(merged, torch.tensor([[0.2 * 1 + 0.8 * 5, 0.2 * 2 + 0.8 * 6], [0.2 * 3 + 0.8 * 7, 0.2 * 4 + 0.8 * 8]]))
    assert torch.equal(soup.merge_tensor([a, b], None, TensorContext("classifier.bias")), a)
    with pytest.raises(ConfigError, match="no coefficients for group 'embeddings'.*Learn them again"):
        soup.merge_tensor([a, b], None, TensorContext("embeddings.word_embeddings.weight"))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({}, "coefficients must be a non-empty mapping"),
    ({"coefficients": {"all": [0.5, 0.5]}, "granularity": "block"}, "granularity must be 'model' or 'layer'"),
    ({"coefficients": {"layer.0": [0.5, 0.5], "other": [1.0]}, "granularity": "layer"}, "got sizes \\[1, 2\\]"),
    ({"coefficients": {"all": [0.5, 0.5]}, "weight": [1.0, 2.0]}, "weight must be None: it takes coefficients"),
])
def test_bad_learned_soup_configs_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        LearnedSoupMerge(**kwargs)


def test_coefficients_for_another_number_of_models_are_refused():
    with pytest.raises(ConfigError, match="coefficients are for 2 models, not 3"):
        LearnedSoupMerge(coefficients={"all": [0.5, 0.5]}).check_models(3, has_base=False)


def test_the_config_round_trips_and_the_coefficients_are_in_the_fingerprint():
    soup = LearnedSoupMerge(coefficients={"all": [0.25, 0.75]})
    assert LearnedSoupMerge.Config.from_dict(soup.config.to_dict()) == soup.config
    assert soup.fingerprint != LearnedSoupMerge(coefficients={"all": [0.75, 0.25]}).fingerprint


# ---------------------------------------------------------------- the mixing module and its training


@pytest.fixture(scope="module")
def two_classifiers(tmp_path_factory):
    """Two tiny BERT classifiers with different random weights, and texts tokenised for them."""
    from tiny_models import make_toy_sentiment, save_bert_classifier

    root = tmp_path_factory.mktemp("soup")
    paths = [save_bert_classifier(root / f"m{seed}", ["negative", "positive"], seed=seed) for seed in (0, 1)]
    models = [AutoModelForSequenceClassification.from_pretrained(p).eval() for p in paths]
    tokenizer = AutoTokenizer.from_pretrained(paths[0])
    texts = make_toy_sentiment(96, seed=3)["text"]
    return models, tokenizer, tokenize(tokenizer, texts, 64)


def _rows(tokenizer, tokens, labels):
    return TokenRows(tokens, pad_token_id(tokenizer), labels)


def test_the_uniform_soup_module_computes_the_averaged_model(two_classifiers):
    models, tokenizer, tokens = two_classifiers
    states = [m.state_dict() for m in models]
    module = SoupModule(models[0], states, "layer")  # logits start at zero: the uniform soup
    averaged = AutoModelForSequenceClassification.from_config(models[0].config).eval()
    averaged.load_state_dict({k: (states[0][k].float() + states[1][k].float()) / 2 if states[0][k].is_floating_point()
                              else states[0][k] for k in states[0]})
    batch = _rows(tokenizer, tokens, None).take(torch.arange(8))
    with torch.no_grad():
        expected = averaged(**batch).logits
        got = module(batch)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert module.coefficients().shape == (len(module.groups), 2) and "layer.0" in module.groups


def test_learned_coefficients_find_the_model_that_is_right(two_classifiers):
    """Model 1 is model 0 with its classifier negated; the labels are model 0's predictions. Mixing the heads
    scales model 0's logits by (2a - 1), so the loss falls as the head's coefficient on model 0 rises."""
    models, tokenizer, tokens = two_classifiers
    good = models[0].state_dict()
    flipped = {k: -v if k.startswith("classifier.") else v for k, v in good.items()}
    with torch.no_grad():
        labels = models[0](**_rows(tokenizer, tokens, None).take(torch.arange(len(tokens)))).logits.argmax(1)
    config = TrainConfig(learning_rate=0.3, max_epochs=4, batch_size=32, patience=None, show_progress=False)
    learned = learn_coefficients(models[0], [good, flipped], _rows(tokenizer, tokens, labels), granularity="layer",
                                 config=config)
    assert isinstance(learned, LearnedSoupMerge) and learned.config.granularity == "layer"
    head = learned.config.coefficients["other"]
    assert head[0] > 0.9 and sum(head) == pytest.approx(1.0)
    again = learn_coefficients(models[0], [good, flipped], _rows(tokenizer, tokens, labels), granularity="layer",
                               config=config)
    assert again.config == learned.config  # seeded: the same coefficients


def test_a_model_missing_a_tensor_is_refused(two_classifiers):
    models, _, _ = two_classifiers
    state = dict(models[1].state_dict())
    del state["classifier.weight"]
    with pytest.raises(ConfigError, match=r"model\(s\) \[1\] have no tensor 'classifier.weight'"):
        SoupModule(models[0], [models[0].state_dict(), state], "model")
