"""fusion's side of the inference comparison: its engine (``run_model``) and a member from raw text to cached
outputs (``HFEncoder.embeddings``), both with the library's defaults (dtype "auto", automatic token budget)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from .anchors import Runner, load_encoder, mean_pool
from .models import MAX_LENGTH
from .timing import fresh_cache

OPTIONS = "dtype=auto, max_tokens=auto"


def engine_runner(path: Path, texts: Sequence[str], device: torch.device) -> tuple[Runner, str]:
    """fusion's engine on a plain ``AutoModel`` with mean pooling; returns the runner and its options."""
    from fusion.engine import run_model

    model, tokenizer = load_encoder(path, torch.device("cpu"))

    def forward(m: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"embeddings": mean_pool(m(**batch).last_hidden_state, batch["attention_mask"])}

    def run(rows: Sequence[str] = texts) -> dict[str, torch.Tensor]:
        return run_model(model, tokenizer, list(rows), forward, max_length=MAX_LENGTH, device=device,
                         desc="engine", show_progress=False)

    run(texts[:8])  # warm-up: moves the model to the device
    return run, OPTIONS


def member_runner(path: Path, texts: Sequence[str], device: torch.device) -> tuple[Runner, str]:
    """``HFEncoder(...).embeddings(as_text_data(texts), cache)``: raw text to cached outputs, with a fresh
    memory-only cache each time; the backbone is loaded before timing by a warm-up call on a few rows."""
    from fusion import HFEncoder
    from fusion.inputs import as_text_data

    member = HFEncoder(path, pooling="mean", max_length=MAX_LENGTH, device=str(device), show_progress=False)
    member.embeddings(as_text_data(list(texts[:8])), fresh_cache())
    return lambda: member.embeddings(as_text_data(list(texts)), fresh_cache()), OPTIONS
