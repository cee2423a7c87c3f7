"""Tokenised text and batches of it: flat token storage, threaded tokenisation (cached in an
:class:`~fusion.cache.OutputCache`), length-sorted batches under a row and token budget (inference), and
length-grouped shuffled micro-batches (training).

Example:
    >>> tokens = Tokenized({"input_ids": [[5, 6, 7], [8], [9, 10]]})
    >>> length_sorted_batches(tokens.lengths, max_tokens=4)
    [[0], [2, 1]]
    >>> tokens.batch([2, 1], pad_id=0)["input_ids"].tolist()
    [[9, 10], [8, 0]]
"""

from __future__ import annotations

import collections
import itertools
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch

from .cache.store import TOKENS_VARIANT, OutputCache
from .errors import ConfigError

Batch = dict[str, torch.Tensor]
Item = TypeVar("Item")

TOKENIZE_CHUNK = 2048  # texts per tokenizer call on a worker thread
LENGTH_GROUP_BATCHES = 50  # training: rows are length-sorted within windows of this many batches
PREFETCH = 3  # batches prepared ahead on the host for a GPU


class Tokenized:
    """Token ids of many texts, stored flat (one int64 array per field, plus row offsets and lengths), so that
    any set of rows pads into a batch with a few vectorised numpy operations.

    The attention mask is not stored: with right padding it is ``position < length``. ``to_tensors`` and
    ``from_tensors`` turn it into flat tensors and back (how an :class:`~fusion.cache.OutputCache` stores it).
    """

    def __init__(self, fields: Mapping[str, Sequence[Sequence[int]]]) -> None:
        ids = fields["input_ids"]
        self.lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        self.offsets = np.zeros(len(ids), dtype=np.int64)
        np.cumsum(self.lengths[:-1], out=self.offsets[1:])
        total = int(self.lengths.sum())
        self.flat = {k: np.fromiter(itertools.chain.from_iterable(v), dtype=np.int64, count=total)
                     for k, v in fields.items() if k in ("input_ids", "token_type_ids")}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor]) -> Tokenized:
        """Rebuild from :meth:`to_tensors`' output (arrays share the tensors' memory).

        Example:
            >>> tokens = Tokenized({"input_ids": [[5, 6], [7]]})
            >>> Tokenized.from_tensors(tokens.to_tensors()).batch([0, 1], pad_id=0)["input_ids"].tolist()
            [[5, 6], [7, 0]]
        """
        tokens = cls.__new__(cls)
        tokens.lengths = tensors["lengths"].numpy()
        tokens.offsets = np.zeros(len(tokens.lengths), dtype=np.int64)
        np.cumsum(tokens.lengths[:-1], out=tokens.offsets[1:])
        tokens.flat = {k: v.numpy() for k, v in tensors.items() if k != "lengths"}
        return tokens

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """``{"lengths": [rows], "input_ids": [tokens], ...}`` int64 tensors sharing this object's memory."""
        return {"lengths": torch.from_numpy(self.lengths), **{k: torch.from_numpy(v) for k, v in self.flat.items()}}

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum())

    def batch(self, rows: Sequence[int] | np.ndarray, pad_id: int) -> Batch:
        """The given rows, right-padded to their longest row, as CPU tensors (+ ``attention_mask``)."""
        rows = np.asarray(rows, dtype=np.int64)
        lengths = self.lengths[rows]
        width = max(int(lengths.max()) if len(rows) else 0, 1)
        positions = np.arange(width)
        mask = positions[None, :] < lengths[:, None]
        index = self.offsets[rows][:, None] + np.minimum(positions[None, :], np.maximum(lengths - 1, 0)[:, None])
        batch: Batch = {}
        for key, flat in self.flat.items():
            fill = pad_id if key == "input_ids" else 0
            values = flat[np.clip(index, 0, max(len(flat) - 1, 0))] if len(flat) else np.zeros_like(index)
            batch[key] = torch.from_numpy(np.where(mask, values, fill))
        batch["attention_mask"] = torch.from_numpy(mask.astype(np.int64))
        return batch


def _encode(tokenizer, texts: Sequence[str], max_length: int) -> dict[str, list]:
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False,
                        return_attention_mask=False)
    return {k: encoded[k] for k in ("input_ids", "token_type_ids") if k in encoded}


def tokenize(tokenizer, texts: Sequence[str], max_length: int, *, workers: int | None = None) -> Tokenized:
    """Tokenise without padding, truncating to ``max_length`` tokens; fast (Rust) tokenizers run on several
    threads in chunks (they release the GIL), whatever ``TOKENIZERS_PARALLELISM`` says."""
    texts = list(texts)
    workers = workers or min(os.cpu_count() or 1, 8)
    if not getattr(tokenizer, "is_fast", False) or workers == 1 or len(texts) < 2 * TOKENIZE_CHUNK:
        return Tokenized(_encode(tokenizer, texts, max_length))
    chunks = [texts[i : i + TOKENIZE_CHUNK] for i in range(0, len(texts), TOKENIZE_CHUNK)]
    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(lambda chunk: _encode(tokenizer, chunk, max_length), chunks))
    return Tokenized({k: [row for part in parts for row in part[k]] for k in parts[0]})


def cached_tokenize(tokenizer, texts: Sequence[str], max_length: int, key: tuple[str, str] | None,
                    cache: OutputCache | None = None) -> Tokenized:
    """``tokenize``, stored in ``cache`` (in its small in-memory LRU of tokenisations, and on disk unless the
    cache is memory-only) under the tokenizer, the data and ``max_length``: members that share a tokenizer
    (two poolings of one backbone, fine-tunes of one checkpoint) tokenise the same data once, and a later run
    not at all.

    Args:
        tokenizer: a Hugging Face tokenizer.
        texts: the inputs.
        max_length: truncation length in tokens (part of the key).
        key: ``(tokenizer fingerprint, data fingerprint)``; None: tokenise without caching.
        cache: where to keep it; None: tokenise without caching.

    Returns:
        The :class:`Tokenized` texts.

    Example:
        >>> cached_tokenize(tok, texts, 128, (tok_fp, data.fingerprint), cache)  # doctest: +SKIP
    """
    if key is None or cache is None:
        return tokenize(tokenizer, texts, max_length)
    tokenizer_fp, data_fp = key
    label = f"tokenizer {getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__}"
    stored = cache.get_or_compute(tokenizer_fp, data_fp, lambda: tokenize(tokenizer, texts, max_length).to_tensors(),
                                  f"{TOKENS_VARIANT}-max{max_length}", label=label)
    return Tokenized.from_tensors(stored)


def pad_token_id(tokenizer) -> int:
    """The id padding positions hold (0 for tokenizers without a pad token: the attention mask hides them)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def length_sorted_batches(lengths: Sequence[int] | np.ndarray, batch_size: int | None = None,
                          max_tokens: int | None = None) -> list[list[int]]:
    """Row indices grouped into batches of similar length, longest first (so an out-of-memory error shows up
    on the first batch). A batch holds at most ``batch_size`` rows and at most ``max_tokens`` padded tokens
    (rows x its longest row; a row longer than the budget gets a batch of its own)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.lexsort((np.arange(len(lengths)), -lengths))  # longest first; ties keep input order
    batches, start = [], 0
    while start < len(order):
        size = len(order) - start
        if batch_size:
            size = min(size, batch_size)
        if max_tokens:
            size = min(size, max(1, max_tokens // max(int(lengths[order[start]]), 1)))
        batches.append(order[start : start + size].tolist())
        start += size
    return batches


def grouped_micro_batches(perm: torch.Tensor, lengths: np.ndarray, batch_size: int | None, max_tokens: int | None,
                          generator: torch.Generator) -> list[torch.Tensor]:
    """Training micro-batches of similar length: the (shuffled) rows are sorted by length within windows of
    ``LENGTH_GROUP_BATCHES`` batches, cut under the row and token budgets, and the batches shuffled again, so
    padding is small while every epoch still mixes lengths. Same permutation and generator -> same batches
    (every process of a distributed run agrees)."""
    if batch_size is None and max_tokens is None:
        raise ConfigError("length grouping needs batch_size or max_tokens: a full batch has nothing to group.")
    rows = perm.numpy()
    window = LENGTH_GROUP_BATCHES * (batch_size or max(1, max_tokens // max(int(lengths.max()), 1)))
    batches = [torch.as_tensor(chunk[b]) for start in range(0, len(rows), window)
               for chunk in [rows[start : start + window]]
               for b in length_sorted_batches(lengths[chunk], batch_size, max_tokens)]
    order = torch.randperm(len(batches), generator=generator)
    return [batches[i] for i in order.tolist()]


def prefetched(build: Callable[[Item], Batch], items: Sequence[Item], pin: bool,
               ahead: int = PREFETCH) -> Iterator[tuple[Item, Batch]]:
    """``(item, build(item))`` for each item, in order. With ``pin`` (for a GPU), batches are built ``ahead``
    of use on a worker thread and put in pinned memory, so that host work and asynchronous copies
    (``.to(device, non_blocking=True)``) overlap the GPU's work on earlier batches.

    Example:
        >>> [(i, b["x"].tolist()) for i, b in prefetched(lambda i: {"x": torch.tensor([i])}, [1, 2], pin=False)]
        [(1, [1]), (2, [2])]
    """
    def work(item: Item) -> tuple[Item, Batch]:
        batch = build(item)
        return item, {k: v.pin_memory() for k, v in batch.items()} if pin else batch

    if not pin:
        yield from map(work, items)
        return
    with ThreadPoolExecutor(1) as pool:
        pending = collections.deque(pool.submit(work, item) for item in items[:ahead])
        for i in range(len(items)):
            done = pending.popleft().result()
            if i + ahead < len(items):
                pending.append(pool.submit(work, items[i + ahead]))
            yield done


class TokenRows:
    """Training rows of tokenised text (+ optional label ids), padded per batch; a ``training.Rows``.

    ``rows`` picks which of ``tokens``' rows these are (default: all, in order), so that the training and
    held-out rows of one tokenisation (see :func:`cached_tokenize`) need no second pass. ``soft_targets``
    (``[len(rows), classes]``, aligned with ``labels``) are a teacher's probabilities for a distillation
    student, in each batch as ``"soft_targets"``.
    """

    def __init__(self, tokens: Tokenized, pad_id: int, labels: torch.Tensor | None = None,
                 rows: Sequence[int] | np.ndarray | None = None, soft_targets: torch.Tensor | None = None) -> None:
        self.tokens, self.pad_id, self.labels, self.soft_targets = tokens, pad_id, labels, soft_targets
        self.rows = np.arange(len(tokens)) if rows is None else np.asarray(rows, dtype=np.int64)

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per row (for length-grouped batching)."""
        return self.tokens.lengths[self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, index: torch.Tensor) -> Batch:
        if len(index):
            batch = self.tokens.batch(self.rows[index.numpy()], self.pad_id)
        else:  # an empty slice of a global batch in a multi-process run still runs a forward pass
            batch = {k: torch.zeros((0, 1), dtype=torch.long) for k in (*self.tokens.flat, "attention_mask")}
        if self.labels is not None:
            batch["labels"] = self.labels[index]
        if self.soft_targets is not None:
            batch["soft_targets"] = self.soft_targets[index]
        return batch
