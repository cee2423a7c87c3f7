"""The one batched inference engine for Hugging Face members.

Texts are tokenised once without padding, sorted by length (longest first, so an out-of-memory error shows
up on the first batch), cut into batches padded only to their own longest row, run under
``torch.inference_mode``, and written back in the original order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
Forward = Callable[[torch.nn.Module, Batch], dict[str, torch.Tensor]]

_DEFAULT_MAX_LENGTH = 512
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


def tokenize(tokenizer, texts: Sequence[str], max_length: int) -> dict[str, list[list[int]]]:
    """Tokenise without padding, truncating to ``max_length`` tokens."""
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)
    return {k: list(v) for k, v in encoded.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def pad_batch(encoded: dict[str, list[list[int]]], rows: Sequence[int], pad_id: int) -> Batch:
    """Right-pad the given rows to their longest length; returns CPU tensors."""
    length = max(len(encoded["input_ids"][r]) for r in rows)
    batch: Batch = {}
    for key, values in encoded.items():
        fill = pad_id if key == "input_ids" else 0
        tensor = torch.full((len(rows), length), fill, dtype=torch.long)
        for i, r in enumerate(rows):
            tensor[i, : len(values[r])] = torch.tensor(values[r], dtype=torch.long)
        batch[key] = tensor
    if "attention_mask" not in batch:
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, r in enumerate(rows):
            mask[i, : len(encoded["input_ids"][r])] = 1
        batch["attention_mask"] = mask
    return batch


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Row indices grouped into batches of similar length, longest first."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def run_model(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    forward: Forward,
    *,
    batch_size: int = 64,
    max_length: int | None = None,
    device: torch.device | str | None = None,
    desc: str = "inference",
    show_progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Run ``forward`` over all texts in length-sorted, dynamically padded batches.

    Args:
        model: a Hugging Face model (moved to ``device``; put in eval mode).
        tokenizer: its tokenizer.
        texts: the inputs.
        forward: ``forward(model, batch) -> {name: tensor with one row per example}``.
        batch_size: rows per batch.
        max_length: truncation length in tokens (default: the model's limit).
        device: default CUDA when present, else CPU.
        desc / show_progress: the progress bar.

    Returns:
        ``{name: float32 CPU tensor}`` with rows in the order of ``texts``. With no texts, the tensors have
        zero rows (their other dimensions come from one probe forward pass on an empty string).

    Example:
        >>> out = run_model(model, tok, ["a", "bb"], lambda m, b: {"logits": m(**b).logits})  # doctest: +SKIP
    """
    device = torch.device(device) if device is not None else default_device()
    model.to(device).eval()
    probe = not texts
    encoded = tokenize(tokenizer, [""] if probe else texts, max_input_length(model, tokenizer, max_length))
    lengths = [len(ids) for ids in encoded["input_ids"]]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    results: dict[str, torch.Tensor] = {}
    with tqdm(total=len(texts), desc=desc, unit="ex", disable=not show_progress or probe, leave=False,
              delay=0.5) as bar:  # quick calls (a few texts to predict) show no bar
        for rows in length_sorted_batches(lengths, batch_size):
            batch = {k: v.to(device, non_blocking=True) for k, v in pad_batch(encoded, rows, pad_id).items()}
            for name, value in forward(model, batch).items():
                value = value.float().cpu()
                if name not in results:
                    results[name] = torch.empty((len(lengths), *value.shape[1:]), dtype=torch.float32)
                results[name][rows] = value
            bar.update(len(rows))
    if probe:
        return {name: value[:0] for name, value in results.items()}
    return results


class TokenRows:
    """Training rows of tokenised text (+ optional label ids), padded per batch; a ``training.Rows``."""

    def __init__(self, tokenizer, texts: Sequence[str], max_length: int, labels: torch.Tensor | None = None) -> None:
        self.encoded = tokenize(tokenizer, texts, max_length)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.labels = labels

    def __len__(self) -> int:
        return len(self.encoded["input_ids"])

    def take(self, index: torch.Tensor) -> Batch:
        rows = index.tolist()
        if rows:
            batch = pad_batch(self.encoded, rows, self.pad_id)
        else:  # an empty slice of a global batch in a multi-process run still runs a forward pass
            batch = {k: torch.zeros((0, 1), dtype=torch.long) for k in (*self.encoded, "attention_mask")}
        if self.labels is not None:
            batch["labels"] = self.labels[index]
        return batch
