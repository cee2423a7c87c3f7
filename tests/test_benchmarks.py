"""Smoke test of ``python -m benchmarks.run``: every workload runs on tiny models and lands in RESULTS.md."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WORKLOADS = [
    "(a) transformers pipeline", "(b) loop padded to 128", "(c) length-sorted dynamic padding",
    "(d) pre-built on device", "fusion engine run_model", "fusion HFEncoder.embeddings",
    "(t1) Trainer default", "(t2) Trainer batch 128", "fusion loop: HFEncoder finetune defaults (batch 32",
    "fusion loop: HFEncoder finetune, batch 128", "first build: Ensemble.fit",
    "refit: ens.fuser = LinearFuser(); fit(train, validation)", "refit: ens.fuser = LinearFuser(); fit(train)",
    "Ensemble.fit(train): tiny encoders", "streaming: fusion merge_checkpoints(linear)",
    "naive: load_file every model", "naive: from_pretrained every model", "naive: every file read into memory",
]
NUMBER = re.compile(r"^-?\d+(\.\d+)?(e[-+]\d+)?$")


def _table_rows(text: str) -> list[list[str]]:
    """Cells of every markdown table body row (header rows are those followed by a ``|---`` line)."""
    lines = text.splitlines()
    body = [line for i, line in enumerate(lines) if line.startswith("| ")
            and not (i + 1 < len(lines) and lines[i + 1].startswith("|---"))]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in body]


MERGING_HEADING = "## Merging: streaming merge_checkpoints against loading every model"
SMOKE = {  # each smoke run's arguments after ``python -m``; ``{out}`` is its results file
    "run": ["benchmarks.run", "--device", "cpu", "--smoke", "--out", "{out}"],
    "merging": ["benchmarks.merging", "--smoke", "--out", "{out}"],
    "foundation": ["benchmarks.foundation", "--smoke", "--heading", "Smoke run", "--out", "{out}"],
}


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """The three smoke runs, started together when the first of their tests runs (each waits for its own):
    most of each is single-threaded imports and fresh worker processes, so on 2 cores they overlap well. Each
    has its own folder, HF_HOME, output cache and results file; the merging one starts from a results file
    that already holds its section."""
    runs = {}
    for name, args in SMOKE.items():
        folder = tmp_path_factory.mktemp(f"smoke-{name}")
        out = folder / ("FOUNDATION.md" if name == "foundation" else "RESULTS.md")
        if name == "merging":
            out.write_text(f"# fusion benchmarks\n\n{MERGING_HEADING}\n\nold numbers\n\n## Targets\n\nkept\n")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "HF_HOME": str(folder / "hf-home"), "TOKENIZERS_PARALLELISM": "false",
               "FUSION_CACHE": str(folder / "fusion-cache"),  # set here: the per-test autouse fixtures run later
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        with open(folder / "stdout", "w") as stdout, open(folder / "stderr", "w") as stderr:  # no pipe to fill
            process = subprocess.Popen([sys.executable, "-m", *(a.format(out=out) for a in args)], cwd=REPO,
                                       env=env, stdout=stdout, stderr=stderr)
        runs[name] = (process, out, folder)
    yield runs
    for process, _, _ in runs.values():
        if process.poll() is None:
            process.kill()
            process.wait()


def _finished(runs: dict, name: str) -> str:
    """The results file of smoke run ``name`` once it exited 0 (its stderr's end otherwise)."""
    process, out, folder = runs[name]
    try:
        process.wait(timeout=300)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    assert process.returncode == 0, (folder / "stderr").read_text()[-3000:]
    return out.read_text()


def test_smoke_run_writes_every_workload(smoke_runs):
    text = _finished(smoke_runs, "run")
    for header in ("# fusion benchmarks", "- date:", "- device: CPU", "torch 2", "transformers ", "accelerate ",
                   "fusion ", "- command: `python -m benchmarks.run --device cpu --smoke --out",
                   "CPU run: GPU targets not measurable here"):
        assert header in text
    rows = _table_rows(text)
    for workload in WORKLOADS:
        assert any(row[0].startswith(workload) for row in rows), f"no row for {workload!r}"
    merges = [row for row in rows if row[0].startswith(("streaming:", "naive:"))]
    numbers = [float(cell) for row in rows if row not in merges for cell in row[1:] if NUMBER.match(cell)]
    assert len(numbers) > 4 * len(WORKLOADS) and all(value > 0 for value in numbers)
    _check_merge_rows(merges, counts=[2])
    statuses = [row[-1] for row in rows if row[-1] in ("met", "not met", "n/a on CPU", "not run")]
    assert len(statuses) == 8 and "not run" not in statuses  # 3 inference, 2 fine-tuning, 2 refit, 1 scaling
    assert "fit(train) (fuser only); member outputs computed: 0 |" in text  # a refit runs no member
    assert text.count("(smoke stand-in for BERT-base)") >= 4  # the second encoder size ran (c), (d) and fusion


def _check_merge_rows(rows: list[list[str]], counts: list[int]) -> None:
    """Every way at every count: positive seconds and peak RSS, allocated memory >= 0, ratios to the streaming
    row of the same count (1 for that row)."""
    assert [(row[0].split(":")[0], int(row[1])) for row in rows] == \
        [(way, n) for n in counts for way in ("streaming", "naive", "naive", "naive")]
    for row in rows:
        _, _, size, seconds, time_ratio, rss, rss_ratio, anonymous, allocated, allocated_ratio, bound = row
        assert float(size) > 0 and float(seconds) > 0 and float(time_ratio) > 0 and float(rss) > float(allocated)
        assert float(anonymous) > 0 and float(allocated) >= 0 and float(bound) > float(size)
        if row[0].startswith("streaming"):
            assert time_ratio == rss_ratio == "1" and allocated_ratio in ("1", "n/a")


def test_smoke_merging_writes_its_section(smoke_runs):
    """``python -m benchmarks.merging --smoke``: its section, with every way, replaces an earlier one in the
    results file (the rest kept), and the ways' merged tensors were checked equal."""
    text = _finished(smoke_runs, "merging")
    assert text.count(MERGING_HEADING) == 1 and "old numbers" not in text and "## Targets\n\nkept" in text
    for line in ("- date:", "- machine: CPU", "- command: `python -m benchmarks.merging --smoke --out",
                 "**smoke run**"):
        assert line in text
    difference = re.search(r"merged tensors differ by at most (\S+) \(first repetition, every tensor compared\)", text)
    assert difference and float(difference.group(1)) < 1e-6
    _check_merge_rows(_table_rows(text), counts=[2])


def test_smoke_foundation_writes_both_parts(smoke_runs):
    """``python -m benchmarks.foundation --smoke``: both tables land in the results file with positive numbers."""
    text = _finished(smoke_runs, "foundation")
    for header in ("# fusion foundation benchmark", "## Smoke run", "- machine: ", "nproc ", "torch 2",
                   "transformers ", "- command: `HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false python -m "
                   "benchmarks.foundation --smoke", "**smoke run**"):
        assert header in text
    rows = {row[0]: row for row in _table_rows(text)}
    assert set(rows) >= {"predict_proba, outputs already cached", "predict_proba, new texts",
                         "fit(train, validation)", "fit + predict_proba(validation texts)"}
    assert all(float(cell) > 0 for row in rows.values() for cell in row[1:] if NUMBER.match(cell))
    phase = rows["fit + predict_proba(validation texts)"]  # workload, data rows, 3 timings, calls, rows, ...
    assert int(phase[5]) > 0 and int(phase[6]) >= int(phase[1])  # every data row went through the backbone


def test_foundation_section_is_replaced_not_repeated(tmp_path, monkeypatch):
    """Writing a section under an existing heading replaces it and keeps the other sections."""
    monkeypatch.syspath_prepend(str(REPO))
    from benchmarks.foundation import write_section

    out = tmp_path / "FOUNDATION.md"
    write_section(out, "## Before", ["## Before", "", "old"])
    write_section(out, "## After", ["## After", "", "after"])
    write_section(out, "## Before", ["## Before", "", "new"])
    text = out.read_text()
    assert text.count("## Before") == 1 and "new" in text and "old" not in text and "after" in text
    assert text.index("## Before") < text.index("## After")


def test_merge_table_ratios_are_to_streaming_at_the_same_count(monkeypatch):
    """Ratios divide by the streaming row of the same model count; allocated = peak anonymous - baseline; the
    bound is one checkpoint plus one largest tensor per model."""
    monkeypatch.syspath_prepend(str(REPO))
    from benchmarks.merging import Checkpoints, _row, merge_table

    checkpoints = Checkpoints([], [], "m", checkpoint_mib=400.0, largest_tensor_mib=90.0)

    def reading(seconds: float, rss: float, anonymous: float) -> dict:
        return {"seconds": seconds, "peak_rss_mib": rss, "peak_anonymous_mib": anonymous,
                "baseline_anonymous_mib": 300.0}

    rows = [_row("streaming", 2, [reading(s, 1000, 800) for s in (1.0, 2.0, 9.0)], checkpoints, 0.0),
            _row("naive-safetensors", 2, [reading(s, 1500, 1300) for s in (4.0, 5.0, 6.0)], checkpoints, 0.0),
            _row("streaming", 4, [reading(4.0, 2000, 1300)], checkpoints, 0.0),
            _row("naive-transformers", 4, [reading(3.0, 3000, 2300)], checkpoints, 0.0)]
    cells = _table_rows(merge_table(rows))
    # workload, models, checkpoint, median s, s ratio, peak RSS, RSS ratio, peak anon, allocated, ratio, bound
    assert cells[0][1:] == ["2", "400", "2", "1", "1000", "1", "800", "500", "1", "580"]
    assert cells[1][1:] == ["2", "400", "5", "2.5", "1500", "1.5", "1300", "1000", "2", "580"]
    assert cells[2][1:] == ["4", "400", "4", "1", "2000", "1", "1300", "1000", "1", "760"]
    assert cells[3][1:] == ["4", "400", "3", "0.75", "3000", "1.5", "2300", "2000", "2", "760"]
