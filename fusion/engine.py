"""The one batched inference engine for Hugging Face members.

Texts are tokenised once without padding (on several threads, and kept in the output cache for members
sharing a tokenizer and for later runs), sorted by length (longest first, so an out-of-memory error shows
up on the first batch), cut into batches under a token budget and padded only to their own longest row, run
under ``torch.inference_mode`` in bfloat16 on GPUs that support it, and written back in the original order.
On a GPU, padding and pinned copies run ahead of the model on a worker thread, and outputs stay on the GPU until
one copy at the end.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .batching import (
    Batch,
    Tokenized,
    cached_tokenize,
    length_sorted_batches,
    pad_token_id,
    prefetched,
    tokenize,
)
from .cache.store import OutputCache
from .errors import ConfigError, ResourceError
from .progress import describe, progress_enabled

logger = logging.getLogger(__name__)

Forward = Callable[[torch.nn.Module, Batch], dict[str, torch.Tensor]]

_DEFAULT_MAX_LENGTH = 512
CPU_MAX_TOKENS = 2048  # on CPU larger batches were slower (MiniLM, SST-2: 8k tokens gave half the rows/s of 2k)
MIN_MAX_TOKENS, MAX_MAX_TOKENS = 4096, 262_144
GPU_MEMORY_SHARE = 0.25  # of the free GPU memory, for one batch's activations
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Model types (besides *roberta*) whose position ids start at padding_idx + 1, as in RoBERTa.
_POSITIONS_AFTER_PADDING = frozenset(
    {"camembert", "data2vec-text", "ibert", "lilt", "longformer", "luke", "markuplm", "mpnet", "xmod"}
)


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_config(model: torch.nn.Module):
    """The Hugging Face config of ``model``, or of the ``backbone`` it wraps (a member's encoder + head)."""
    return getattr(model, "config", None) or getattr(getattr(model, "backbone", None), "config", None)


def max_input_length(model: torch.nn.Module, tokenizer, requested: int | None = None) -> int:
    """The longest input (in tokens) the model accepts: ``requested`` if given, else the model's limit.

    RoBERTa-style models (positions start after ``padding_idx``) reserve ``pad_token_id + 1`` position
    slots, so their limit is smaller than ``max_position_embeddings``.
    """
    if requested is not None:
        return int(requested)
    config = model_config(model)
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
    config = model_config(model)
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


def _host_batch(tokens: Tokenized, rows: list[int], pad_id: int) -> Batch:
    """The rows padded on the host, with their positions in the input (``_rows``) to write outputs back."""
    return {**tokens.batch(rows, pad_id), "_rows": torch.as_tensor(rows, dtype=torch.long)}


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
        return [part for piece in (rows[:half], rows[half:])
                for part in _run_batch(model, forward, _host_batch(tokens, piece, pad_id), tokens, piece, pad_id, device)]


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
    tokens_key: tuple[str, str] | None = None,
    cache: OutputCache | None = None,
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
        tokens_key: ``(tokenizer fingerprint, data fingerprint)``; with ``cache``, the tokenisation is kept
            there and reused (:func:`~fusion.batching.cached_tokenize`).
        cache: the :class:`~fusion.cache.OutputCache` that keeps the tokenisation (default: none kept).
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
    tokens = tokenize(tokenizer, [""], limit) if probe else cached_tokenize(tokenizer, texts, limit, tokens_key, cache)
    pad_id = pad_token_id(tokenizer)
    budget = max_tokens or auto_max_tokens(work, device, dtype)
    batches = length_sorted_batches(tokens.lengths, batch_size, budget)
    results: dict[str, torch.Tensor] = {}
    show = show_progress and progress_enabled() and not probe
    with tqdm(total=len(texts), desc=describe(desc), unit="ex", disable=not show, leave=False,
              delay=0.5) as bar:  # quick calls (a few texts to predict) show no bar
        host_batches = prefetched(lambda rows: _host_batch(tokens, rows, pad_id), batches, pin=device.type == "cuda")
        for rows, batch in host_batches:
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
