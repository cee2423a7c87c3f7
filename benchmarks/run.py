"""Run every benchmark group in one process on the same data and write benchmarks/RESULTS.md.

Usage::

    python -m benchmarks.run --device cuda                      # the full runs (all SST-2 rows)
    python -m benchmarks.run --device cpu --rows 1000 --finetune-rows 512
    python -m benchmarks.run --device cpu --smoke --out /tmp/RESULTS.md   # tiny models, seconds
"""

from __future__ import annotations

import os

# Before any Hugging Face import: never reach the network, keep tokenizers' own threads quiet.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import logging  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from . import finetune, inference, merging, refit, scaling  # noqa: E402
from .data import Corpus, load_corpus, sample  # noqa: E402
from .models import Encoder, minilm_path, save_bert_base, save_tiny_encoder, word_piece_tokenizer  # noqa: E402
from .report import render  # noqa: E402
from .results import Row  # noqa: E402
from .settings import Settings, parser, resolve  # noqa: E402


def quiet() -> None:
    """Silence progress bars and chatter of the libraries (fusion's own logs stay at WARNING)."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def encoders(settings: Settings, corpus: Corpus, directory: Path) -> tuple[Encoder, Encoder]:
    """(small, large): MiniLM and a BERT-base-sized encoder, or in smoke mode two tiny config-built ones."""
    if settings.smoke:
        tokenizer = word_piece_tokenizer(corpus.train.texts[:2000], vocab_size=1000)
        small = save_tiny_encoder(directory / "tiny-32", tokenizer, settings.seed, hidden=32)
        large = save_tiny_encoder(directory / "tiny-64", tokenizer, settings.seed, hidden=64)
        return (Encoder("tiny-32 (smoke stand-in for MiniLM)", small),
                Encoder("tiny-64 (smoke stand-in for BERT-base)", large))
    large = save_bert_base(directory / "bert-base", minilm_path(), settings.seed)
    return Encoder("all-MiniLM-L6-v2", minilm_path()), Encoder("BERT-base-sized (random init)", large)


def run_groups(settings: Settings, corpus: Corpus, directory: Path) -> list[Row]:
    """Every group not skipped, in order; each prints its progress."""
    small, large = encoders(settings, corpus, directory)
    pool, rows = corpus.train + corpus.validation, []
    if "inference" not in settings.skip:
        print(f"inference ({settings.rows or len(pool)} rows)", flush=True)
        rows += inference.run(small, sample(pool, settings.rows, settings.seed).texts, settings,
                              ("a", "b", "c", "d", "engine", "member"))
        if "bert" not in settings.skip:
            rows += inference.run(large, sample(pool, settings.bert_rows, settings.seed).texts, settings,
                                  ("c", "d", "engine", "member"))
    validation = sample(corpus.validation, settings.val_rows, settings.seed)
    if "finetune" not in settings.skip:
        print("fine-tuning", flush=True)
        rows += finetune.run(small, corpus, sample(corpus.train, settings.finetune_rows, settings.seed),
                             validation, settings)
    if "refit" not in settings.skip:
        print("cache reuse", flush=True)
        rows += refit.run(small, corpus, sample(corpus.train, settings.refit_rows, settings.seed), validation,
                          settings)
    if "scaling" not in settings.skip:
        print("scaling", flush=True)
        rows += scaling.run(corpus, settings, directory / "scaling")
    if "merging" not in settings.skip:
        print("merging", flush=True)
        rows += merging.run(settings, directory / "merging")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, run, print the tables and write them to ``--out``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    settings = resolve(parser().parse_args(argv))
    if not settings.on_cuda:
        os.environ["ACCELERATE_USE_CPU"] = "1"  # fusion's loop and Trainer must not pick a GPU either
    quiet()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    if settings.on_cuda:
        torch.ones(8, 8, device=settings.device).matmul(torch.ones(8, 8, device=settings.device))  # CUDA init
    start, load_start = time.perf_counter(), os.getloadavg()[0]
    corpus = load_corpus(settings.data)
    with tempfile.TemporaryDirectory(prefix="fusion-bench-") as directory:
        rows = run_groups(settings, corpus, Path(directory))
    text = render(settings, rows, argv, time.perf_counter() - start, (load_start, os.getloadavg()[0]))
    print()
    print(text)
    settings.out.parent.mkdir(parents=True, exist_ok=True)
    settings.out.write_text(text, encoding="utf-8")
    print(f"written to {settings.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
