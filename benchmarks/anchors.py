"""The inference anchors: what a user writes without fusion, from the plainest to the best-case bound.

Each ``*_runner`` does its set-up (loading, and for the device-only anchor, building every batch on the
device) and returns a callable that is timed: raw texts in, one pooled embedding (or logits) per text out.
The length-sorted anchors cut their batches with ``fusion.batching.length_sorted_batches`` (index arithmetic
only), so they differ from fusion's engine in everything else: tokenising, padding, copies, dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from fusion.batching import length_sorted_batches

from .models import MAX_LENGTH

Runner = Callable[[], object]
Batch = dict[str, torch.Tensor]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the non-padding token states (sentence-transformers' pooling for MiniLM)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


def load_encoder(path: Path, device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, object]:
    """``AutoModel`` (eval mode, on ``device``, in ``dtype``) and its tokenizer."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(path, dtype=dtype).to(device).eval()
    return model, AutoTokenizer.from_pretrained(path)


def pipeline_runner(path: Path, texts: Sequence[str], device: torch.device, seed: int) -> Runner:
    """(a) ``pipeline("text-classification")``, batch 64, on a classifier whose head is randomly initialised."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline, set_seed

    set_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    classify = pipeline("text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(path),
                        device=device)
    return lambda: classify(list(texts), batch_size=64, truncation=True, max_length=MAX_LENGTH)


@torch.inference_mode()
def _embed(model: nn.Module, batch: Batch) -> torch.Tensor:
    return mean_pool(model(**batch).last_hidden_state, batch["attention_mask"])


def padded_runner(path: Path, texts: Sequence[str], device: torch.device) -> Runner:
    """(b) A plain loop: tokenise each batch of 64 padded to 128 tokens, fp32, embeddings back to the host."""
    model, tokenizer = load_encoder(path, device)

    def run() -> torch.Tensor:
        out = []
        for start in range(0, len(texts), 64):
            batch = tokenizer(list(texts[start : start + 64]), padding="max_length", truncation=True,
                              max_length=MAX_LENGTH, return_tensors="pt").to(device)
            out.append(_embed(model, batch).cpu())
        return torch.cat(out)

    return run


def sorted_runner(path: Path, texts: Sequence[str], device: torch.device, batch_size: int = 256) -> Runner:
    """(c) Tokenise all texts, sort by length, pad each batch of 256 on the host, fp32, results in input order."""
    model, tokenizer = load_encoder(path, device)

    def run() -> torch.Tensor:
        encoded = tokenizer(list(texts), truncation=True, max_length=MAX_LENGTH)
        ids, masks = encoded["input_ids"], encoded["attention_mask"]
        out = torch.empty((len(texts), model.config.hidden_size))
        for rows in length_sorted_batches([len(i) for i in ids], batch_size):
            batch = tokenizer.pad({"input_ids": [ids[r] for r in rows], "attention_mask": [masks[r] for r in rows]},
                                  return_tensors="pt").to(device)
            out[rows] = _embed(model, batch).float().cpu()
        return out

    return run


def device_only_runner(path: Path, texts: Sequence[str], device: torch.device, max_tokens: int) -> Runner:
    """(d) The bound: batches of up to ``max_tokens`` padded tokens built on the device before timing; bf16
    weights on CUDA (fp32 on CPU, where bf16 matmuls are not the fair comparison); outputs stay on the device."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, tokenizer = load_encoder(path, device, dtype)
    encoded = tokenizer(list(texts), truncation=True, max_length=MAX_LENGTH)
    ids, masks = encoded["input_ids"], encoded["attention_mask"]
    batches = [tokenizer.pad({"input_ids": [ids[r] for r in rows], "attention_mask": [masks[r] for r in rows]},
                             return_tensors="pt").to(device)
               for rows in length_sorted_batches([len(i) for i in ids], max_tokens=max_tokens)]
    return lambda: [_embed(model, batch) for batch in batches]
