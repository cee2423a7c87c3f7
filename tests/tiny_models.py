"""Tiny, real Hugging Face models and toy datasets for fast offline tests.

Every ``save_*`` factory builds a 2-layer, 32-wide model from a config under a fixed seed, saves it with
``save_pretrained`` (safetensors) and saves its tokenizer beside it, so tests load the directory with
``AutoModel*.from_pretrained(dir)`` / ``AutoTokenizer.from_pretrained(dir)`` exactly like a hub model.

Tokenizers truncate to ``MAX_LENGTH`` (64) tokens including special tokens; the long toy rows (48-72 words)
exceed it, so callers must pass ``truncation=True``. All tokenizers pad on the right.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    BertTokenizer,
    GPT2Config,
    GPT2Model,
    GPT2Tokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    RobertaConfig,
    RobertaForSequenceClassification,
    RobertaTokenizer,
)

MAX_LENGTH = 64
HIDDEN_SIZE = 32
_SIZES = {
    "hidden_size": HIDDEN_SIZE,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}


def _words(text: str) -> list[str]:
    return text.split()


POSITIVE_WORDS = _words(
    "good great excellent wonderful brilliant amazing superb delightful charming enjoyable fun funny "
    "beautiful touching moving clever fresh gripping stunning masterful loved love best perfect "
    "memorable hilarious heartfelt inspiring powerful elegant riveting"
)
NEGATIVE_WORDS = _words(
    "bad awful terrible boring dull horrible poor weak worst mess messy tedious bland clumsy lazy "
    "predictable pointless painful annoying stupid hated hate waste disappointing forgettable "
    "shallow confusing flat ugly sloppy"
)
FILLER_WORDS = _words(
    "the a an and but or so this that it its was is are were be been has have had of in on at to for "
    "with as by from about than then very quite really just also too more most some all there here "
    "film movie plot story actor actress cast scene scenes director script ending character characters "
    "performance music dialogue screen cinema sequel camera role audience minutes hour time year "
    "watch watched saw seen felt feel seems made make thought think i we you they he she me"
)
TOY_WORDS: list[str] = POSITIVE_WORDS + NEGATIVE_WORDS + FILLER_WORDS
"""~150 lower-case movie-review words: positive, negative, then neutral/filler."""

TOPIC_WORDS: dict[str, list[str]] = {
    "sports": _words("game team player coach score goal match season league championship stadium ball"),
    "politics": _words("election vote senator government policy parliament minister campaign law president"),
    "science": _words(
        "experiment research scientist laboratory theory physics chemistry biology molecule cell"
    ),
}
SENTIMENT_LABELS = ["negative", "positive"]
TOPIC_LABELS = list(TOPIC_WORDS)

_BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_SUFFIXES = ["##s", "##es", "##ing", "##ed", "##ly", "##er", "##est", "##ness", "##y", "##'"]
_CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789")
_PUNCTUATION = list(".,!?'-\"():;")


def _toy_row(rng: random.Random, keywords: list[list[str]], label: int) -> list[str]:
    """Words of one row: 3-4 keywords of ``label``, sometimes one of another class, filler to a varied length."""
    words = rng.choices(keywords[label], k=rng.randint(3, 4))
    if rng.random() < 0.15:
        words.append(rng.choice(keywords[rng.choice([k for k in range(len(keywords)) if k != label])]))
    length = rng.randint(48, 72) if rng.random() < 0.06 else rng.randint(4, 20)
    words += rng.choices(FILLER_WORDS, k=max(0, length - len(words)))
    rng.shuffle(words)
    return words


def _make_dataset(n: int, seed: int, keywords: list[list[str]], noise: float) -> dict[str, list]:
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        label = rng.randrange(len(keywords))
        texts.append(" ".join(_toy_row(rng, keywords, label)) + ".")
        if rng.random() < noise:
            label = rng.choice([k for k in range(len(keywords)) if k != label])
        labels.append(label)
    return {"text": texts, "label": labels}


def make_toy_sentiment(n: int, seed: int) -> dict[str, list]:
    """A learnable binary dataset ``{"text", "label"}`` (0 = negative, 1 = positive), ~10% label noise.

    Rows have 4-20 words; about 6% have 48-72 words (longer than ``MAX_LENGTH`` tokens). Deterministic.
    """
    return _make_dataset(n, seed, [NEGATIVE_WORDS, POSITIVE_WORDS], noise=0.1)


def make_toy_topics(n: int, seed: int) -> dict[str, list]:
    """A learnable 3-class dataset (0 = sports, 1 = politics, 2 = science), ~10% label noise. Deterministic."""
    return _make_dataset(n, seed, [TOPIC_WORDS[name] for name in TOPIC_LABELS], noise=0.1)


def _bert_vocab() -> dict[str, int]:
    words = _BERT_SPECIALS + _PUNCTUATION + _CHARS + ["##" + c for c in _CHARS] + _SUFFIXES
    words += TOY_WORDS + [w for name in TOPIC_LABELS for w in TOPIC_WORDS[name]]
    return {word: index for index, word in enumerate(dict.fromkeys(words))}


def make_bert_tokenizer() -> BertTokenizer:
    """A WordPiece tokenizer over the toy words (whole words), letters and suffixes (so nothing is [UNK])."""
    tokenizer = BertTokenizer(vocab=_bert_vocab(), model_max_length=MAX_LENGTH)
    text = "brilliant films " + " ".join(TOY_WORDS)
    probe = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).tokens
    if probe[:3] != ["brilliant", "film", "##s"] or "[UNK]" in probe:
        raise RuntimeError(f"toy WordPiece tokenizer is broken: {probe[:10]}")
    return tokenizer


def _train_bpe(
    special_tokens: list[str], vocab_size: int = 500
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a byte-level BPE on the toy corpora; returns its vocab and merges (specials get ids 0, 1, ...)."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = make_toy_sentiment(400, 0)["text"] + make_toy_topics(300, 0)["text"] + [" ".join(TOY_WORDS)]
    bpe.train_from_iterator(corpus, trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return model["vocab"], merges


def make_roberta_tokenizer() -> RobertaTokenizer:
    """Byte-level BPE (~500 tokens) with RoBERTa specials ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, ``<mask>``=4."""
    vocab, merges = _train_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    return RobertaTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LENGTH)


def make_gpt2_tokenizer() -> GPT2Tokenizer:
    """Byte-level BPE with ``<|endoftext|>``=0 (bos/eos/unk) and a distinct pad token ``<|pad|>``=1, right padding."""
    vocab, merges = _train_bpe(["<|endoftext|>", "<|pad|>"])
    return GPT2Tokenizer(
        vocab=vocab, merges=merges, pad_token="<|pad|>", padding_side="right", model_max_length=MAX_LENGTH
    )


def _build_and_save(
    path: str | Path,
    build: Callable[[PretrainedConfig], PreTrainedModel],
    config: PretrainedConfig,
    tokenizer: PreTrainedTokenizerBase,
    seed: int,
) -> Path:
    """Initialise ``build(config)`` under ``seed`` without touching the caller's RNG, then save it and ``tokenizer``."""
    path = Path(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build(config)
    model.eval().save_pretrained(path)  # safetensors
    tokenizer.save_pretrained(path)
    return path


def _label_maps(labels: list[str]) -> dict:
    return {"id2label": dict(enumerate(labels)), "label2id": {name: i for i, name in enumerate(labels)}}


def _bert_config(tokenizer: BertTokenizer, **extra) -> BertConfig:
    return BertConfig(
        vocab_size=len(tokenizer), max_position_embeddings=MAX_LENGTH, pad_token_id=0, **_SIZES, **extra
    )


def save_bert_classifier(path: str | Path, labels: list[str], seed: int = 0) -> Path:
    """Save a ``BertForSequenceClassification`` whose ``id2label`` is ``labels``, with its WordPiece tokenizer."""
    tokenizer = make_bert_tokenizer()
    config = _bert_config(tokenizer, **_label_maps(labels))
    return _build_and_save(path, BertForSequenceClassification, config, tokenizer, seed)


def save_generic_label_classifier(path: str | Path, n_labels: int = 2, seed: int = 0) -> Path:
    """Save a BERT classifier whose labels are only the defaults ``LABEL_0`` ... ``LABEL_{n-1}``."""
    tokenizer = make_bert_tokenizer()
    config = _bert_config(tokenizer, num_labels=n_labels)
    return _build_and_save(path, BertForSequenceClassification, config, tokenizer, seed)


def save_bert_encoder(path: str | Path, seed: int = 0) -> Path:
    """Save a bare ``BertModel`` (loads with ``AutoModel``; has a pooler) with the WordPiece tokenizer."""
    tokenizer = make_bert_tokenizer()
    return _build_and_save(path, BertModel, _bert_config(tokenizer), tokenizer, seed)


def save_roberta_classifier(path: str | Path, labels: list[str], seed: int = 0) -> Path:
    """Save a ``RobertaForSequenceClassification`` with a byte-level BPE tokenizer.

    Position ids start at ``pad_token_id + 1``, so ``max_position_embeddings`` is ``MAX_LENGTH + 2``.
    """
    tokenizer = make_roberta_tokenizer()
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_LENGTH + 2,
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **_SIZES,
        **_label_maps(labels),
    )
    return _build_and_save(path, RobertaForSequenceClassification, config, tokenizer, seed)


def save_gpt2_encoder(path: str | Path, seed: int = 0) -> Path:
    """Save a decoder-only ``GPT2Model`` whose tokenizer pads on the RIGHT with ``<|pad|>`` (id 1).

    For last-token pooling take the hidden state at ``attention_mask.sum(1) - 1``; no bos/eos is added.
    """
    tokenizer = make_gpt2_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=MAX_LENGTH,
        n_embd=HIDDEN_SIZE,
        n_layer=2,
        n_head=2,
        n_inner=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return _build_and_save(path, GPT2Model, config, tokenizer, seed)
