"""The one batched inference engine for Hugging Face members.

Texts are tokenised once without padding (on several threads, and remembered for members sharing a
tokenizer), sorted by length (longest first, so an out-of-memory error shows up on the first batch), cut
into batches under a token budget and padded only to their own longest row, run under
``torch.inference_mode`` in bfloat16 on GPUs that support it, and written back in the original order. On a
GPU, padding and pinned copies run ahead of the model on a worker thread, and outputs stay on the GPU until
one copy at the end.
"""

from __future__ import annotations

import collections
import copy
import itertools
import logging
import os
import threading
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import ConfigError, ResourceError

logger = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
Forward = Callable[[torch.nn.Module, Batch], dict[str, torch.Tensor]]

_DEFAULT_MAX_LENGTH = 512
TOKENIZE_CHUNK = 2048  # texts per tokenizer call on a worker thread
TOKEN_CACHE_ENTRIES = 8
CPU_MAX_TOKENS = 2048  # on CPU larger batches were slower (MiniLM, SST-2: 8k tokens gave half the rows/s of 2k)
MIN_MAX_TOKENS, MAX_MAX_TOKENS = 4096, 262_144
GPU_MEMORY_SHARE = 0.25  # of the free GPU memory, for one batch's activations
PREFETCH = 3  # batches prepared ahead on the host
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_TOKEN_CACHE: collections.OrderedDict[Hashable, Tokenized] = collections.OrderedDict()
_TOKEN_LOCK = threading.Lock()
# Model types (besides *roberta*) whose position ids start at padding_idx + 1, as in RoBERTa.
_POSITIONS_AFTER_PADDING = frozenset(
    {"camembert", "data2vec-text", "ibert", "lilt", "longformer", "luke", "markuplm", "mpnet", "xmod"}
)


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def max_input_length(model: torch.nn.Module, tokenizer, requested: int | None = None) -> int:
    """The longest input (in tokens) the model accepts: ``requested`` if given, else the model's limit.

    RoBERTa-style models (positions start after ``padding_idx``) reserve ``pad_token_id + 1`` position
    slots, so their limit is smaller than ``max_position_embeddings``.
    """
    if requested is not None:
        return int(requested)
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    limit = int(limit) if limit else _DEFAULT_MAX_LENGTH
    model_type = str(getattr(config, "model_type", ""))
    if "roberta" in model_type or model_type in _POSITIONS_AFTER_PADDING:
        pad = getattr(config, "pad_token_id", None)
        limit -= (1 if pad is None else int(pad)) + 1
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if tokenizer_limit and tokenizer_limit < 1_000_000:
        limit = min(limit, int(tokenizer_limit))
    return min(limit, _DEFAULT_MAX_LENGTH) if limit > 100_000 else limit


class Tokenized:
    """Token ids of many texts, stored flat (one int64 array per field, plus row offsets and lengths), so that
    any set of rows pads into a batch with a few vectorised numpy operations.

    The attention mask is not stored: with right padding it is ``position < length``.
    """

    def __init__(self, fields: Mapping[str, Sequence[Sequence[int]]]) -> None:
        ids = fields["input_ids"]
        self.lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        self.offsets = np.zeros(len(ids), dtype=np.int64)
        np.cumsum(self.lengths[:-1], out=self.offsets[1:])
        total = int(self.lengths.sum())
        self.flat = {k: np.fromiter(itertools.chain.from_iterable(v), dtype=np.int64, count=total)
                     for k, v in fields.items() if k in ("input_ids", "token_type_ids")}

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


def cached_tokenize(tokenizer, texts: Sequence[str], max_length: int, key: Hashable | None) -> Tokenized:
    """``tokenize``, remembered under ``(key, max_length)`` for the process (a small LRU): members that share a
    tokenizer (two poolings of one backbone, fine-tunes of one checkpoint) tokenise the same data once."""
    if key is None:
        return tokenize(tokenizer, texts, max_length)
    full_key = (key, max_length)
    with _TOKEN_LOCK:
        hit = _TOKEN_CACHE.get(full_key)
        if hit is not None:
            _TOKEN_CACHE.move_to_end(full_key)
            return hit
    tokens = tokenize(tokenizer, texts, max_length)
    with _TOKEN_LOCK:
        _TOKEN_CACHE[full_key] = tokens
        while len(_TOKEN_CACHE) > TOKEN_CACHE_ENTRIES:
            _TOKEN_CACHE.popitem(last=False)
    return tokens


def pad_batch(encoded: Tokenized | Mapping[str, Sequence[Sequence[int]]], rows: Sequence[int], pad_id: int) -> Batch:
    """Right-pad the given rows to their longest length; returns CPU tensors."""
    return (encoded if isinstance(encoded, Tokenized) else Tokenized(encoded)).batch(rows, pad_id)


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


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``"auto"``: bfloat16 on GPUs that support it, else float32 (and always float32 on CPU)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {dtype!r}.")
    return DTYPES[dtype]


def auto_max_tokens(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> int:
    """Tokens per batch: a fixed budget on CPU; on a GPU, what a quarter of the free memory holds of the
    model's per-token activations (hidden states, attention projections, the feed-forward expansion)."""
    if device.type != "cuda":
        return CPU_MAX_TOKENS
    config = getattr(model, "config", None) or getattr(getattr(model, "backbone", None), "config", None)
    hidden = int(getattr(config, "hidden_size", None) or getattr(config, "n_embd", None) or 1024)
    intermediate = int(getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden)
    bytes_per_token = torch.finfo(dtype).bits // 8 * (8 * hidden + 2 * intermediate)
    free, _ = torch.cuda.mem_get_info(device)
    budget = int(GPU_MEMORY_SHARE * free / bytes_per_token)
    return int(min(max(budget, MIN_MAX_TOKENS), MAX_MAX_TOKENS)) // 1024 * 1024


def _working_model(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The model on ``device`` in ``dtype``. Casting floating weights is lossy, so a model whose weights are in
    another dtype is copied first: the caller's model keeps its (trainable, float32) weights."""
    current = next((p.dtype for p in model.parameters() if p.is_floating_point()), dtype)
    if current == dtype:
        return model.to(device).eval()
    return copy.deepcopy(model).to(device=device, dtype=dtype).eval()


def _host_batches(tokens: Tokenized, batches: list[list[int]], pad_id: int, pin: bool) -> Iterator[tuple[list[int], Batch]]:
    """Padded batches in order; with ``pin``, built on a worker thread ahead of use, in pinned memory, so that
    host work and copies overlap the GPU's work on the previous batches."""
    def build(rows: list[int]) -> tuple[list[int], Batch]:
        batch = tokens.batch(rows, pad_id)
        batch["_rows"] = torch.as_tensor(rows, dtype=torch.long)
        return rows, {k: v.pin_memory() for k, v in batch.items()} if pin else batch

    if not pin:
        yield from map(build, batches)
        return
    with ThreadPoolExecutor(1) as pool:
        pending = collections.deque(pool.submit(build, rows) for rows in batches[:PREFETCH])
        for ahead in batches[PREFETCH:] + [None] * min(PREFETCH, len(batches)):
            done = pending.popleft().result()
            if ahead is not None:
                pending.append(pool.submit(build, ahead))
            yield done


def _run_batch(model: torch.nn.Module, forward: Forward, batch: Batch, tokens: Tokenized, rows: list[int],
               pad_id: int, device: torch.device) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Forward one batch; on CUDA out-of-memory, split it in halves and retry (a single row that does not fit
    is an error that says what to change)."""
    on_device = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    index = on_device.pop("_rows")
    try:
        return [(index, forward(model, on_device))]
    except torch.cuda.OutOfMemoryError as err:
        del on_device
        torch.cuda.empty_cache()
        if len(rows) == 1:
            raise ResourceError(
                f"one row of {int(tokens.lengths[rows[0]])} tokens does not fit in GPU memory; lower max_length, "
                "use a smaller dtype (dtype='bfloat16'), or free GPU memory."
            ) from err
        half = len(rows) // 2
        logger.warning("GPU out of memory on a batch of %d rows; splitting it in two", len(rows))
        return [part for piece in (rows[:half], rows[half:]) for part in _run_batch(
            model, forward, {**tokens.batch(piece, pad_id), "_rows": torch.as_tensor(piece)}, tokens, piece,
            pad_id, device)]


@torch.inference_mode()
def run_model(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    forward: Forward,
    *,
    batch_size: int | None = None,
    max_tokens: int | None = None,
    max_length: int | None = None,
    device: torch.device | str | None = None,
    dtype: str | torch.dtype = "auto",
    tokens_key: Hashable | None = None,
    desc: str = "inference",
    show_progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Run ``forward`` over all texts in length-sorted, dynamically padded, token-budget batches.

    Host work (padding, pinning) runs a few batches ahead on a worker thread and copies are asynchronous, so
    it overlaps the GPU's work; outputs stay on the device until the end (no synchronisation per batch).

    Args:
        model: a Hugging Face model (or a module wrapping one); run in eval mode on ``device``.
        tokenizer: its tokenizer.
        texts: the inputs.
        forward: ``forward(model, batch) -> {name: tensor with one row per example}``.
        batch_size: at most this many rows per batch (default: no row limit, only the token budget).
        max_tokens: at most this many padded tokens per batch (default: ``auto_max_tokens``: from free GPU
            memory, or a fixed CPU budget). A batch that still runs out of GPU memory is split and retried.
        max_length: truncation length in tokens (default: the model's limit).
        device: default CUDA when present, else CPU.
        dtype: weights' dtype for the run: ``"auto"`` (bfloat16 on GPUs that support it, float32 on CPU),
            ``"float32"``, ``"bfloat16"`` or ``"float16"``; the caller's model is never cast in place.
        tokens_key: identifies (tokenizer, texts) so that the tokenisation is reused (``cached_tokenize``).
        desc / show_progress: the progress bar.

    Returns:
        ``{name: float32 CPU tensor}`` with rows in the order of ``texts``. With no texts, the tensors have
        zero rows (their other dimensions come from one probe forward pass on an empty string).

    Example:
        >>> out = run_model(model, tok, ["a", "bb"], lambda m, b: {"logits": m(**b).logits})  # doctest: +SKIP
    """
    device = torch.device(device) if device is not None else default_device()
    dtype = resolve_dtype(dtype, device)
    work = _working_model(model, device, dtype)
    probe = not texts
    limit = max_input_length(model, tokenizer, max_length)
    tokens = tokenize(tokenizer, [""], limit) if probe else cached_tokenize(tokenizer, texts, limit, tokens_key)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    budget = max_tokens or auto_max_tokens(work, device, dtype)
    batches = length_sorted_batches(tokens.lengths, batch_size, budget)
    results: dict[str, torch.Tensor] = {}
    with tqdm(total=len(texts), desc=desc, unit="ex", disable=not show_progress or probe, leave=False,
              delay=0.5) as bar:  # quick calls (a few texts to predict) show no bar
        for rows, batch in _host_batches(tokens, batches, pad_id, pin=device.type == "cuda"):
            for index, outputs in _run_batch(work, forward, batch, tokens, rows, pad_id, device):
                for name, value in outputs.items():
                    if name not in results:
                        results[name] = torch.empty((len(tokens), *value.shape[1:]), dtype=torch.float32,
                                                    device=device)
                    results[name].index_copy_(0, index.to(device, non_blocking=True), value.float())
            bar.update(len(rows))
    results = {name: value.cpu() for name, value in results.items()}  # the one synchronisation
    if probe:
        return {name: value[:0] for name, value in results.items()}
    return results


class TokenRows:
    """Training rows of tokenised text (+ optional label ids), padded per batch; a ``training.Rows``."""

    def __init__(self, tokenizer, texts: Sequence[str], max_length: int, labels: torch.Tensor | None = None) -> None:
        self.encoded = tokenize(tokenizer, texts, max_length)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.labels = labels

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per row (for length-grouped batching)."""
        return self.encoded.lengths

    def __len__(self) -> int:
        return len(self.encoded)

    def take(self, index: torch.Tensor) -> Batch:
        rows = index.tolist()
        if rows:
            batch = pad_batch(self.encoded, rows, self.pad_id)
        else:  # an empty slice of a global batch in a multi-process run still runs a forward pass
            batch = {k: torch.zeros((0, 1), dtype=torch.long) for k in (*self.encoded.flat, "attention_mask")}
        if self.labels is not None:
            batch["labels"] = self.labels[index]
        return batch
