"""The inference group: anchors (a)-(d) and fusion's engine and member, side by side on the same texts."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from . import anchors, fusion_runs
from .models import Encoder, non_embedding_parameters, real_tokens
from .results import Row
from .settings import Settings
from .timing import measure, release

ANCHORS = ("a", "b", "c", "d")
Factory = Callable[[], tuple[anchors.Runner, str]]


def _workloads(encoder: Encoder, texts: Sequence[str], settings: Settings,
               keys: Sequence[str]) -> list[tuple[str, str, Factory]]:
    """(key, label, factory) of each workload in ``keys``; a factory does the untimed set-up."""
    device, path = settings.device, encoder.path
    dtype = "bf16" if settings.on_cuda else "fp32 (CPU: bf16 matmul is not the fair comparison)"
    every = [
        ("a", "(a) transformers pipeline, batch 64",
         lambda: (anchors.pipeline_runner(path, texts, device, settings.seed), "")),
        ("b", "(b) loop padded to 128, fp32, batch 64",
         lambda: (anchors.padded_runner(path, texts, device), "")),
        ("c", "(c) length-sorted dynamic padding, fp32, batch 256",
         lambda: (anchors.sorted_runner(path, texts, device), "")),
        ("d", f"(d) pre-built on device, {dtype}, {settings.max_tokens}-token batches, device time only",
         lambda: (anchors.device_only_runner(path, texts, device, settings.max_tokens), "")),
        ("engine", "fusion engine run_model", lambda: fusion_runs.engine_runner(path, texts, device)),
        ("member", "fusion HFEncoder.embeddings, raw text to cached outputs",
         lambda: fusion_runs.member_runner(path, texts, device)),
    ]
    return [w for w in every if w[0] in keys]


def encoder_counts(encoder: Encoder, texts: Sequence[str]) -> tuple[int, int]:
    """(non-embedding parameters, real unpadded tokens of ``texts``)."""
    model, tokenizer = anchors.load_encoder(encoder.path, torch.device("cpu"))
    return non_embedding_parameters(model), real_tokens(tokenizer, texts)


def run(encoder: Encoder, texts: Sequence[str], settings: Settings, keys: Sequence[str]) -> list[Row]:
    """Time each workload ``settings.repeats`` times on ``texts``; useful FLOPs = 2 x params x real tokens."""
    params, tokens = encoder_counts(encoder, texts)
    rows = []
    for key, label, factory in _workloads(encoder, texts, settings, keys):
        print(f"  {encoder.label}: {label} ...", flush=True)
        runner, options = factory()
        timing = measure(runner, settings.repeats, settings.device)
        rows.append(Row("inference", key, f"{label} ({options})" if options else label, encoder.label,
                        len(texts), timing, units=len(texts), flops=2.0 * params * tokens))
        del runner
        release(settings.device)
    return rows
