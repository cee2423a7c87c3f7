"""The tiny test models load offline like hub models, tokenize the toy words, run padded batches; data are learnable."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from tiny_models import (
    HIDDEN_SIZE,
    MAX_LENGTH,
    TOPIC_WORDS,
    TOY_WORDS,
    make_toy_sentiment,
    make_toy_topics,
    save_bert_classifier,
    save_gpt2_encoder,
    save_roberta_classifier,
)
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

PAIR = ["the film was brilliant", "an awful movie with a dull plot, a boring ending and a lazy script"]
CLASSIFIERS = [
    ("bert_classifier_dir", ["negative", "positive"], "BertForSequenceClassification"),
    ("roberta_classifier_dir", ["positive", "negative"], "RobertaForSequenceClassification"),
    ("generic_label_classifier_dir", ["LABEL_0", "LABEL_1"], "BertForSequenceClassification"),
]
ENCODERS = [("bert_encoder_dir", "BertModel"), ("gpt2_encoder_dir", "GPT2Model")]
ALL_DIRS = [name for name, *_ in CLASSIFIERS + ENCODERS]


@pytest.mark.parametrize(("fixture", "labels", "class_name"), CLASSIFIERS)
def test_classifier_loads_offline_and_scores_a_padded_batch(request, fixture, labels, class_name):
    directory = request.getfixturevalue(fixture)
    model = AutoModelForSequenceClassification.from_pretrained(directory)
    batch = AutoTokenizer.from_pretrained(directory)(PAIR, padding=True, return_tensors="pt")
    assert type(model).__name__ == class_name and not model.training
    assert [model.config.id2label[i] for i in range(len(labels))] == labels
    assert model.config.label2id == {name: i for i, name in enumerate(labels)}
    with torch.inference_mode():
        logits = model(**batch).logits
    assert logits.shape == (2, len(labels)) and torch.isfinite(logits).all()


@pytest.mark.parametrize(("fixture", "class_name"), ENCODERS)
def test_encoder_loads_offline_and_embeds_a_padded_batch(request, fixture, class_name):
    directory = request.getfixturevalue(fixture)
    model = AutoModel.from_pretrained(directory)
    batch = AutoTokenizer.from_pretrained(directory)(PAIR, padding=True, return_tensors="pt")
    assert type(model).__name__ == class_name and not model.training
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    assert hidden.shape == (2, batch["input_ids"].shape[1], HIDDEN_SIZE) and torch.isfinite(hidden).all()


@pytest.mark.parametrize("fixture", ALL_DIRS)
def test_padding_does_not_change_the_outputs_of_the_short_row(request, fixture):
    directory = request.getfixturevalue(fixture)
    classifier = fixture.endswith("classifier_dir")
    model = (AutoModelForSequenceClassification if classifier else AutoModel).from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    with torch.inference_mode():
        alone, padded = (
            model(**tokenizer(texts, padding=True, return_tensors="pt")) for texts in [PAIR[:1], PAIR]
        )
    if classifier:
        torch.testing.assert_close(padded.logits[:1], alone.logits)
    else:
        length = alone.last_hidden_state.shape[1]
        torch.testing.assert_close(padded.last_hidden_state[:1, :length], alone.last_hidden_state)


@pytest.mark.parametrize("fixture", ALL_DIRS)
def test_directory_holds_safetensors_and_tokenizer_pads_right(request, fixture):
    directory = request.getfixturevalue(fixture)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    batch = tokenizer(PAIR, padding=True)
    assert (directory / "model.safetensors").is_file() and not list(directory.glob("*.bin"))
    assert tokenizer.padding_side == "right" and tokenizer.model_max_length == MAX_LENGTH
    assert batch["attention_mask"][0][-1] == 0 and batch["input_ids"][0][-1] == tokenizer.pad_token_id


@pytest.mark.parametrize("fixture", ALL_DIRS)
def test_tokenizers_map_no_toy_word_to_unknown(request, fixture, toy_sentiment, toy_topics):
    tokenizer = AutoTokenizer.from_pretrained(request.getfixturevalue(fixture))
    topic_words = [word for words in TOPIC_WORDS.values() for word in words]
    texts = [" ".join(TOY_WORDS), " ".join(topic_words)]
    texts += toy_sentiment["train"]["text"] + toy_topics["train"]["text"]
    for ids in tokenizer(texts)["input_ids"]:
        assert tokenizer.unk_token_id not in ids


def test_wordpiece_keeps_toy_words_whole(bert_classifier_dir):
    tokenizer = AutoTokenizer.from_pretrained(bert_classifier_dir)
    assert tokenizer.tokenize(" ".join(TOY_WORDS)) == TOY_WORDS
    assert tokenizer.tokenize("watching films") == ["watch", "##ing", "film", "##s"]


def test_roberta_batch_of_maximal_length_fits_position_embeddings(roberta_classifier_dir, toy_sentiment):
    directory = roberta_classifier_dir
    model = AutoModelForSequenceClassification.from_pretrained(directory)
    texts = sorted(toy_sentiment["train"]["text"], key=len)[-2:] + ["good"]
    batch = AutoTokenizer.from_pretrained(directory)(
        texts, padding=True, truncation=True, return_tensors="pt"
    )
    assert batch["input_ids"].shape == (3, MAX_LENGTH)
    with torch.inference_mode():
        assert model(**batch).logits.shape == (3, 2)


def test_gpt2_pad_token_is_distinct_from_eos(gpt2_encoder_dir):
    tokenizer = AutoTokenizer.from_pretrained(gpt2_encoder_dir)
    assert tokenizer.pad_token == "<|pad|>" and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert (
        tokenizer(["good"])["input_ids"][0] == tokenizer(["good"], add_special_tokens=False)["input_ids"][0]
    )


@pytest.mark.parametrize(
    "save",
    [
        lambda p, s: save_bert_classifier(p, ["a", "b"], seed=s),
        lambda p, s: save_roberta_classifier(p, ["a"], seed=s),
        save_gpt2_encoder,
    ],
)
def test_same_seed_gives_same_weights_and_other_seed_differs(tmp_path, save):
    first, again, other = (
        load_file(save(tmp_path / name, seed) / "model.safetensors")
        for name, seed in [("first", 3), ("again", 3), ("other", 4)]
    )
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_factories_leave_the_callers_random_state_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    save_gpt2_encoder(tmp_path / "gpt2", seed=7)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(("make", "n_classes"), [(make_toy_sentiment, 2), (make_toy_topics, 3)])
def test_toy_data_are_deterministic_varied_and_balanced(make, n_classes):
    data = make(240, 0)
    lengths = [len(text.split()) for text in data["text"]]
    assert data == make(240, 0) and data != make(240, 1)
    assert len(data["text"]) == len(data["label"]) == 240
    assert min(lengths) >= 4 and sum(n >= 40 for n in lengths) >= 3
    assert all(data["label"].count(k) >= 240 / n_classes / 2 for k in range(n_classes))


@pytest.mark.parametrize("fixture", ["toy_sentiment", "toy_topics"])
def test_toy_data_are_learnable_by_tfidf_logistic_regression(request, fixture):
    data = request.getfixturevalue(fixture)
    model = make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=500))
    model.fit(data["train"]["text"], data["train"]["label"])
    assert model.score(data["validation"]["text"], data["validation"]["label"]) > 0.8
