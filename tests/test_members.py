"""Members: outputs against plain forward passes, pooling, heads, fine-tuning, scikit-learn members."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tfidf_member
from sklearn.svm import LinearSVC
from torch import nn
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from fusion import (
    ConfigError,
    Ensemble,
    HFClassifier,
    HFEncoder,
    LinearFuser,
    LinearHead,
    NotFittedError,
    TrainConfig,
)
from fusion.cache.store import OutputCache
from fusion.inputs import TextData, as_text_data

TEXTS = ["a good film", "bad", "the plot was great but the acting was awful and the music loud", "fine"]


def per_example_logits(model_dir, texts, max_length=None):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return torch.cat([model(**tokenizer(t, return_tensors="pt", truncation=max_length is not None,
                                              max_length=max_length)).logits for t in texts])


@pytest.mark.parametrize("fixture", ["bert_classifier_dir", "roberta_classifier_dir"])
def test_classifier_outputs_equal_plain_forward_in_input_order(fixture, request):
    model_dir = request.getfixturevalue(fixture)
    member = HFClassifier(model_dir, batch_size=3, show_progress=False)
    logits = member.compute(TextData(TEXTS), OutputCache())["logits"]
    torch.testing.assert_close(logits, per_example_logits(model_dir, TEXTS), atol=1e-5, rtol=1e-5)


def test_engine_handles_one_row_and_truncates_long_texts(bert_classifier_dir):
    long_text = " ".join(["good"] * 500)
    member = HFClassifier(bert_classifier_dir, max_length=16, show_progress=False)
    logits = member.compute(TextData([long_text]), OutputCache())["logits"]
    torch.testing.assert_close(logits, per_example_logits(bert_classifier_dir, [long_text], 16), atol=1e-5, rtol=1e-5)


def test_engine_empty_input_gives_zero_rows(bert_classifier_dir):
    model, tokenizer = HFClassifier(bert_classifier_dir, show_progress=False).load_model()
    from fusion.engine import run_model

    out = run_model(model, tokenizer, [], lambda m, b: {"logits": m(**b).logits}, show_progress=False)
    assert out["logits"].shape == (0, 2)


@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
def test_encoder_pooling_matches_hand_computation(gpt2_encoder_dir, pooling):
    member = HFEncoder(gpt2_encoder_dir, pooling=pooling, show_progress=False)
    emb = member.embeddings(TextData(TEXTS), OutputCache())
    tokenizer, model = AutoTokenizer.from_pretrained(gpt2_encoder_dir), AutoModel.from_pretrained(gpt2_encoder_dir)
    for row, text in enumerate(TEXTS):
        with torch.no_grad():
            hidden = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
        expected = {"mean": hidden.mean(0), "cls": hidden[0], "last": hidden[-1]}[pooling]
        torch.testing.assert_close(emb[row], expected, atol=1e-5, rtol=1e-5)


def test_encoder_head_trains_and_reports_embeddings(bert_encoder_dir, toy_sentiment):
    labels = ["negative", "positive"]
    train = as_text_data(toy_sentiment["train"], label_names=labels)
    member = HFEncoder(bert_encoder_dir, head=LinearHead(), show_progress=False,
                       train_config=TrainConfig(learning_rate=1e-2, max_epochs=50, batch_size=64, show_progress=False))
    with pytest.raises(NotFittedError, match="fit"):
        member.compute(train, OutputCache())
    cache = OutputCache()
    member.fit(train, labels, cache)
    out = member.compute(train, cache)
    assert out["logits"].shape == (len(train), 2) and out["embeddings"].shape == (len(train), 32)
    assert member.output_labels(None) == labels
    accuracy = (out["logits"].argmax(1).numpy() == train.labels).mean()
    assert accuracy > 0.6, "a linear head on random-init BERT features should still beat chance on training rows"


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 8), nn.Tanh(), nn.Linear(8, 2))

    def forward(self, x):
        return self.net(x)


def test_custom_head_module_round_trip(bert_encoder_dir, toy_sentiment, tmp_path):
    member = HFEncoder(bert_encoder_dir, head=TwoLayer(), name="custom", show_progress=False)
    ens = Ensemble([member], labels=["negative", "positive"]).fit(toy_sentiment["train"], toy_sentiment["validation"])
    ens.save_pretrained(tmp_path / "e")
    with pytest.raises(ConfigError, match=r'objects=\{"custom": \{"head": module\}\}'):
        Ensemble.from_pretrained(tmp_path / "e")
    with pytest.raises(ConfigError, match=r"heads=\.\.\.\) is now objects="):
        Ensemble.from_pretrained(tmp_path / "e", heads={"custom": TwoLayer()})
    same = Ensemble.from_pretrained(tmp_path / "e", objects={"custom": {"head": TwoLayer()}})
    texts = toy_sentiment["validation"]["text"]
    assert np.array_equal(same.predict_proba(texts), ens.predict_proba(texts))


def test_finetuned_encoder_saves_its_backbone(bert_encoder_dir, toy_sentiment, tmp_path):
    config = TrainConfig(learning_rate=1e-3, max_epochs=1, batch_size=32, show_progress=False)
    member = HFEncoder(bert_encoder_dir, finetune=True, train_config=config, name="ft", show_progress=False)
    before = {k: v.clone() for k, v in AutoModel.from_pretrained(bert_encoder_dir).state_dict().items()}
    ens = Ensemble([member], labels=["negative", "positive"], fuser_data="validation")
    ens.fit(toy_sentiment["train"], toy_sentiment["validation"])
    assert member.torch_modules() == [] and not member.is_fitted, "the user's member must stay a specification"
    after = ens.members_[0].torch_modules()[0].state_dict()
    assert any(not torch.equal(before[k], after[k].cpu()) for k in before), "fine-tuning must change the backbone"
    ens.save_pretrained(tmp_path / "e")
    assert (tmp_path / "e" / "members" / "0-ft" / "backbone" / "model.safetensors").is_file()
    texts = toy_sentiment["validation"]["text"]
    assert np.array_equal(Ensemble.from_pretrained(tmp_path / "e").predict_proba(texts), ens.predict_proba(texts))


def test_finetuning_tokenises_the_training_texts_once(bert_encoder_dir, toy_sentiment, monkeypatch):
    import fusion.batching

    calls = []
    real = fusion.batching.tokenize
    monkeypatch.setattr(fusion.batching, "tokenize", lambda tok, texts, *a, **k: calls.append(len(texts)) or real(
        tok, texts, *a, **k))
    config = TrainConfig(learning_rate=1e-3, max_epochs=1, batch_size=32, show_progress=False)
    member = HFEncoder(bert_encoder_dir, finetune=True, train_config=config, validation_fraction=0.2,
                       show_progress=False)
    data = as_text_data(toy_sentiment["train"], label_names=["negative", "positive"])
    member.fit(data, ["negative", "positive"], OutputCache())
    member.compute(data, OutputCache())  # fine-tuning rows, hold-out rows and inference share one pass
    fold = data.subset(np.arange(0, len(data), 2))
    member.clone().fit(fold, ["negative", "positive"], OutputCache())  # a fold reads its root's tokens
    assert calls == [len(data)]


def test_encoder_truncates_to_the_backbones_positions_when_the_tokenizer_sets_no_limit(bert_encoder_dir, tmp_path):
    import shutil

    model_dir = shutil.copytree(bert_encoder_dir, tmp_path / "no-limit")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.model_max_length = int(1e30)  # as many hub tokenizers: "no limit"
    tokenizer.save_pretrained(model_dir)
    limit = AutoModel.from_pretrained(model_dir).config.max_position_embeddings
    long_text = " ".join(["good"] * (3 * limit))
    member = HFEncoder(model_dir, pooling="cls", show_progress=False)
    got = member.embeddings(TextData([long_text, "bad"]), OutputCache())
    model = AutoModel.from_pretrained(model_dir).eval()
    with torch.no_grad():
        expected = model(**tokenizer(long_text, truncation=True, max_length=limit, return_tensors="pt"))
    torch.testing.assert_close(got[0], expected.last_hidden_state[0, 0], atol=1e-5, rtol=1e-5)


def test_prefitted_sklearn_member_uses_its_own_class_names(toy_sentiment):
    estimator = tfidf_member().config.estimator
    names = np.array(["negative", "positive"])[toy_sentiment["train"]["label"]]
    estimator.fit(toy_sentiment["train"]["text"], names)
    member = tfidf_member().__class__(estimator, name="pre")
    assert not member.trainable and member.output_labels(None) == ["negative", "positive"]
    ens = Ensemble([member, tfidf_member()], fuser=LinearFuser(), labels=["positive", "negative"])
    ens.fit(toy_sentiment["train"], toy_sentiment["validation"])
    probs = ens.member_outputs(toy_sentiment["validation"]).probabilities()[:, 0].numpy()
    np.testing.assert_allclose(probs, estimator.predict_proba(toy_sentiment["validation"]["text"])[:, [1, 0]], atol=1e-6)


def test_sklearn_member_needs_predict_proba():
    with pytest.raises(ConfigError, match="predict_proba"):
        tfidf_member().__class__(LinearSVC())


def test_sklearn_member_with_unseen_class_in_a_fold_stays_finite(toy_topics):
    labels = ["sports", "politics", "science"]
    data = as_text_data(toy_topics["train"], label_names=labels)
    only_two = data.subset(np.flatnonzero(data.labels < 2))
    member = tfidf_member().fit(only_two, labels, OutputCache())
    logits = member.compute(data, OutputCache())["logits"]
    assert logits.shape == (len(data), 3) and torch.isfinite(logits).all()
    assert (logits[:, 2] < -20).all(), "a class never seen in training gets (almost) zero probability"


def test_head_training_is_reproducible_whatever_the_callers_rng_state(bert_encoder_dir, toy_sentiment):
    labels = ["negative", "positive"]
    train = as_text_data(toy_sentiment["train"], label_names=labels)
    config = TrainConfig(max_epochs=3, batch_size=64, show_progress=False)
    heads = []
    for caller_seed in (1, 2):
        torch.manual_seed(caller_seed)
        member = HFEncoder(bert_encoder_dir, head="mlp", train_config=config, show_progress=False)
        heads.append(member.fit(train, labels, OutputCache()).head_.state_dict())
    assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])
