"""The merging group: time and peak memory of fusion's streaming merge against loading every model.

N BERT-base-sized sequence classifiers (``BertConfig()`` defaults: hidden 768, 12 layers, the BERT uncased
vocabulary; random weights) are built as "fine-tunes" of one shared random base (base + Gaussian noise each) and
saved with ``save_pretrained`` (fp32 safetensors). For N in 2, 4, 8 each way merges them with fusion's ``linear``
(the uniform average) in a fresh process of its own (:mod:`benchmarks.merge_worker`), repetitions interleaved:

* ``streaming``: ``fusion.merging.merge.merge_checkpoints``, one tensor of every model at a time;
* ``naive-safetensors``: every state dict with ``safetensors.torch.load_file``, averaged, ``save_file``;
* ``naive-transformers``: every model with ``AutoModelForSequenceClassification.from_pretrained``, the state
  dicts averaged into the first, ``save_pretrained``;
* ``naive-in-memory``: every file's bytes read and deserialised (``safetensors.torch.load``: no memory map, as
  from a stream), averaged, ``save_file``: the N models really in memory.

``load_file`` and transformers 5's ``from_pretrained`` memory-map the files, so their tensors are page cache
until touched; the last way shows what holding N models costs.

Every way computes each tensor with ``LinearMerge.merge_tensor``, so they differ only in how the checkpoints are
read and the result is written; the first repetition's outputs are compared tensor by tensor.

``python -m benchmarks.run`` runs this group with the others (``--skip merging`` leaves it out); run alone, it
writes its own section of ``benchmarks/RESULTS.md`` (replacing an earlier one) with the date, machine and
command above the table::

    python -m benchmarks.merging                                  # 2, 4, 8 BERT-base-sized models, 3 repeats
    python -m benchmarks.merging --smoke --out /tmp/RESULTS.md    # tiny models, seconds
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .environment import cpu_model, git_revision, package_version
from .merge_worker import has_driver
from .results import NA, Row, number, table
from .timing import Timing

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "RESULTS.md"
WAYS = ("streaming", "naive-safetensors", "naive-transformers", "naive-in-memory")
COUNTS, SMOKE_COUNTS = (2, 4, 8), (2,)
NOISE = 0.01  # standard deviation of each fine-tune's difference to the base
LABELS = ("negative", "positive")
HEADING = "Merging: streaming merge_checkpoints against loading every model"
TOKENIZER_TEXTS = ["a great film", "a dull film", "not bad at all", "the worst plot", "merging fine tunes"]
WORKLOADS = {
    "streaming": "streaming: fusion merge_checkpoints(linear)",
    "naive-safetensors": "naive: load_file every model, average, save_file",
    "naive-transformers": "naive: from_pretrained every model, average, save_pretrained",
    "naive-in-memory": "naive: every file read into memory (safetensors load of its bytes), average, save_file",
}


@dataclass(frozen=True)
class Checkpoints:
    """The saved fine-tunes and their sizes."""

    paths: list[Path]
    warm_up: list[Path]
    label: str
    checkpoint_mib: float
    largest_tensor_mib: float


@dataclass(frozen=True)
class MergeRow(Row):
    """One way at one model count: median seconds (``timing``) and medians of the memory readings (MiB)."""

    baseline_mib: float = 0.0
    peak_rss_mib: float = 0.0
    peak_anonymous_mib: float = 0.0
    checkpoint_mib: float = 0.0
    bound_mib: float = 0.0
    difference: float | None = None  # the largest difference between the ways' merged tensors at this count

    @property
    def anonymous_above_baseline(self) -> float:
        """Memory the merge allocated: peak anonymous memory over the process's after imports."""
        return self.peak_anonymous_mib - self.baseline_mib


# --- the checkpoints ---------------------------------------------------------------------------------------------


def _tokenizer(smoke: bool):
    if smoke:
        from .models import word_piece_tokenizer

        return word_piece_tokenizer(TOKENIZER_TEXTS, vocab_size=200)
    from transformers import AutoTokenizer

    from .models import minilm_path

    return AutoTokenizer.from_pretrained(minilm_path())  # BERT's uncased vocabulary, 30522 entries


def save_fine_tunes(directory: Path, count: int, smoke: bool, seed: int) -> tuple[list[Path], float]:
    """``count`` classifiers saved under ``directory``: one random base (BERT-base-sized, or hidden 32 with 2
    layers when ``smoke``) plus independent N(0, NOISE^2) noise on every parameter; their folders and the size of
    their largest tensor (MiB)."""
    import torch
    import transformers
    from transformers import BertConfig, BertForSequenceClassification

    transformers.logging.disable_progress_bar()
    tokenizer = _tokenizer(smoke)
    size = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64} if smoke \
        else {}
    config = BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, num_labels=len(LABELS),
                        id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)}, **size)
    paths = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        model = BertForSequenceClassification(config).eval()
        base = {name: tensor.clone() for name, tensor in model.state_dict().items()}
        for index in range(count):
            model.load_state_dict({name: tensor + NOISE * torch.randn_like(tensor) if tensor.is_floating_point()
                                   else tensor for name, tensor in base.items()})
            path = directory / f"fine-tune-{index}"
            model.save_pretrained(path)
            tokenizer.save_pretrained(path)
            if not (path / "model.safetensors").is_file():
                raise RuntimeError(f"save_pretrained wrote no single model.safetensors in {path}")
            paths.append(path)
    return paths, max(t.numel() * t.element_size() for t in base.values()) / 2**20


def build_checkpoints(directory: Path, count: int, smoke: bool, seed: int) -> Checkpoints:
    """``count`` fine-tunes to measure and two tiny ones for the workers' warm-up merge."""
    paths, largest = save_fine_tunes(directory / "models", count, smoke, seed)
    warm_up, _ = save_fine_tunes(directory / "warm-up", 2, True, seed + 1)
    label = "tiny BERT classifier (hidden 32, 2 layers; smoke)" if smoke else \
        "BERT-base-sized classifier (random init + noise)"
    return Checkpoints(paths, warm_up, label, (paths[0] / "model.safetensors").stat().st_size / 2**20, largest)


# --- measuring ---------------------------------------------------------------------------------------------------


def run_worker(way: str, models: Sequence[Path], output: Path, warm_up: Sequence[Path]) -> dict:
    """One merge in a fresh process (after an untimed one of the two tiny ``warm_up`` models); its JSON line."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-m", "benchmarks.merge_worker", way, "--output", str(output),
                           "--warm-up", *map(str, warm_up), *map(str, models)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{way} merge of {len(models)} models failed (exit {done.returncode}):\n"
                           f"{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    tensors: dict = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def largest_difference(first: Path, second: Path) -> float:
    """The largest absolute difference between two merged folders' tensors (they must hold the same names)."""
    a, b = _weights(first), _weights(second)
    if set(a) != set(b):
        raise RuntimeError(f"{first.name} and {second.name} hold different tensors: only in the first "
                           f"{sorted(set(a) - set(b))[:5]}, only in the second {sorted(set(b) - set(a))[:5]}")
    return max(float((a[name].float() - b[name].float()).abs().max()) if a[name].numel() else 0.0 for name in a)


def measure(checkpoints: Checkpoints, counts: Sequence[int], repeats: int, directory: Path,
            ways: Sequence[str] = WAYS, log=print) -> list[MergeRow]:
    """Every way at every count, ``repeats`` times, interleaved; rows of medians, each with the largest
    difference between the ways' merged tensors (first repetition) at its count."""
    rows = []
    for count in counts:
        models = checkpoints.paths[:count]
        readings: dict[str, list[dict]] = {way: [] for way in ways}
        for repeat in range(repeats):
            for way in ways:
                log(f"  merging: {way}, {count} models, repetition {repeat + 1}/{repeats} ...")
                output = directory / f"merged-{way}-{count}-{repeat}"
                readings[way].append(run_worker(way, models, output, checkpoints.warm_up))
                if repeat:
                    shutil.rmtree(output)
        firsts = [directory / f"merged-{way}-{count}-0" for way in ways]
        difference = max((largest_difference(firsts[0], other) for other in firsts[1:]), default=None)
        for folder in firsts:
            shutil.rmtree(folder)
        for way in ways:
            rows.append(_row(way, count, readings[way], checkpoints, difference))
    return rows


def _median(readings: Sequence[dict], key: str) -> float:
    return statistics.median(r[key] for r in readings)


def _row(way: str, count: int, readings: Sequence[dict], checkpoints: Checkpoints,
         difference: float | None) -> MergeRow:
    return MergeRow("merging", f"{way}-{count}", WORKLOADS[way], checkpoints.label, count,
                    Timing([r["seconds"] for r in readings], None), units=count, members=count,
                    baseline_mib=_median(readings, "baseline_anonymous_mib"),
                    peak_rss_mib=_median(readings, "peak_rss_mib"),
                    peak_anonymous_mib=_median(readings, "peak_anonymous_mib"),
                    checkpoint_mib=checkpoints.checkpoint_mib,
                    bound_mib=checkpoints.checkpoint_mib + count * checkpoints.largest_tensor_mib,
                    difference=difference)


# --- the table ---------------------------------------------------------------------------------------------------


def _versus(row: MergeRow, rows: Sequence[MergeRow], value) -> str:
    anchor = next((r for r in rows if r.key == f"streaming-{row.members}"), None)
    return NA if anchor is None or value(anchor) <= 0 else number(value(row) / value(anchor))


def merge_table(rows: Sequence[MergeRow]) -> str:
    """Seconds, peak RSS, peak anonymous memory above the imports, each with its ratio to streaming at the same
    model count, and the issue's bound (one output model plus one tensor per input)."""
    header = ["workload", "models", "checkpoint MiB", "median s", "s / streaming s", "peak RSS MiB",
              "peak RSS / streaming", "peak anonymous MiB", "allocated MiB (anonymous above imports)",
              "allocated / streaming", "bound: output + one largest tensor per input MiB"]
    lines = [[r.workload, str(r.members), number(r.checkpoint_mib), number(r.seconds),
              _versus(r, rows, lambda x: x.seconds), number(r.peak_rss_mib), _versus(r, rows, lambda x: x.peak_rss_mib),
              number(r.peak_anonymous_mib), number(r.anonymous_above_baseline),
              _versus(r, rows, lambda x: x.anonymous_above_baseline), number(r.bound_mib)] for r in rows]
    return table(header, lines)


def note(rows: Sequence[MergeRow]) -> str:
    """What the columns mean and how the checkpoints were made."""
    differences = [r.difference for r in rows if r.difference is not None]
    difference = max(differences, default=None)
    repeats = max((len(r.timing.seconds) for r in rows), default=0)
    checked = "" if difference is None else (f" The ways' merged tensors differ by at most {difference:.3g} "
                                             "(first repetition, every tensor compared).")
    first = rows[0] if rows else None
    model = f"{first.model}, {number(first.checkpoint_mib)} MiB of fp32 safetensors each" if first else "no rows"
    return (f"Checkpoints: {model}, one shared random base plus N(0, {NOISE}^2) noise per model, written just "
            "before (so they are in the page cache: disk reads are not measured). One fresh process per merge, "
            "which first merges two tiny models in every way, untimed (imports and first-call set-up are not "
            f"measured); median of {repeats} (ways interleaved); every way merges with fusion's `linear` (the "
            "uniform average)."
            f"{checked} Peak RSS is the kernel's high-water mark (VmHWM): it includes the checkpoint pages a "
            "process has memory-mapped (safetensors maps its files; the kernel can drop those pages), so it also "
            "grows with the bytes read. Allocated is the largest anonymous resident memory (RssAnon, sampled "
            "every millisecond) minus that after the imports: the tensors the merge holds. Ratios divide by the "
            "streaming row at the same model count; the bound is the issue's claim, one output model plus one "
            "copy of the largest tensor (the word embeddings) per input.")


# --- entry points ------------------------------------------------------------------------------------------------


def run(settings, directory: Path) -> list[Row]:
    """The group inside ``python -m benchmarks.run`` (its ``--merge-models`` counts and ``--repeats``)."""
    return list(run_all(settings.merge_models, settings.repeats, settings.smoke, settings.seed, directory))


def run_all(counts: Sequence[int], repeats: int, smoke: bool, seed: int, directory: Path,
            log=print) -> list[MergeRow]:
    """Build max(counts) checkpoints under ``directory`` and measure every way that this checkout has."""
    ways = WAYS if has_driver() else WAYS[1:]
    if "streaming" not in ways:
        log("  merging: fusion.merging.merge is not in this checkout; only the naive ways run")
    directory.mkdir(parents=True, exist_ok=True)
    checkpoints = build_checkpoints(directory, max(counts), smoke, seed)
    return measure(checkpoints, counts, repeats, directory, ways, log)


def _counts(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(",") if v.strip())
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def parser() -> argparse.ArgumentParser:
    """The ``python -m benchmarks.merging`` options."""
    cli = argparse.ArgumentParser(prog="python -m benchmarks.merging", description=__doc__.split("\n\n")[0])
    cli.add_argument("--models", type=_counts, help="model counts (default 2,4,8; 2 with --smoke)")
    cli.add_argument("--repeats", type=int, help="repetitions per way and count, median quoted (default 3; "
                     "1 is allowed only with --smoke)")
    cli.add_argument("--smoke", action="store_true", help="tiny models (hidden 32, 2 layers): seconds")
    cli.add_argument("--seed", type=int, default=0)
    cli.add_argument("--workdir", type=Path, help="where to write the checkpoints (default: a temporary folder; "
                     "8 BERT-base-sized ones take about 3.5 GB, plus the merged outputs)")
    cli.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results file whose merging section is written")
    return cli


def provenance(argv: Sequence[str], seconds: float, module: str = "benchmarks.merging") -> list[str]:
    """Date, machine, versions and command (``python -m module argv``) of a standalone run."""
    import torch

    import fusion

    return [f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"- machine: CPU {cpu_model()}, {os.cpu_count()} cores, {_memory_gib()} GiB RAM, torch threads "
            f"{torch.get_num_threads()} (default)",
            f"- versions: python {platform.python_version()}, torch {torch.__version__}, transformers "
            f"{package_version('transformers')}, safetensors {package_version('safetensors')}, fusion "
            f"{fusion.__version__} (git {git_revision('unknown revision')}; imported from "
            f"{Path(fusion.__file__).parent})",
            f"- command: `{shlex.join(['python', '-m', module, *argv])}`; total wall time "
            f"{seconds / 60:.1f} min",
            f"- load average (1 min) at the end: {os.getloadavg()[0]:.2f} (the machine may be shared with other "
            "work)"]


def _memory_gib() -> str:
    try:
        return f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f}"
    except (ValueError, OSError, AttributeError):
        return "?"


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print the section and write it into ``--out``."""
    import time

    from .foundation import write_section

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    repeats = args.repeats if args.repeats is not None else (1 if args.smoke else 3)
    if repeats < 1 or (repeats < 3 and not args.smoke):
        raise SystemExit("error: --repeats must be at least 3 (1 is allowed only with --smoke).")
    counts = args.models or (SMOKE_COUNTS if args.smoke else COUNTS)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fusion-merge-bench-", dir=args.workdir) as directory:
        rows = run_all(counts, repeats, args.smoke, args.seed, Path(directory))
    lines = [f"## {HEADING}", "", *provenance(argv, time.perf_counter() - start)]
    if args.smoke:
        lines.append("- **smoke run**: tiny models; numbers only prove the script runs")
    if not any(r.key.startswith("streaming") for r in rows):
        lines.append("- **fusion.merging.merge was not in the measured checkout: only the naive ways ran**")
    lines += ["", note(rows), "", merge_table(rows)]
    print("\n".join(lines))
    write_section(args.out, lines[0], lines, preamble="# fusion benchmarks\n")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
