"""Smoke test of ``python -m benchmarks.run``: every workload runs on tiny models and lands in RESULTS.md."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORKLOADS = [
    "(a) transformers pipeline", "(b) loop padded to 128", "(c) length-sorted dynamic padding",
    "(d) pre-built on device", "fusion engine run_model", "fusion HFEncoder.embeddings",
    "(t1) Trainer default", "(t2) Trainer batch 128", "fusion loop: HFEncoder finetune defaults (batch 32",
    "fusion loop: HFEncoder finetune, batch 128", "first build: Ensemble.fit",
    "refit: ens.fuser = LinearFuser(); fit(train, validation)", "refit: ens.fuser = LinearFuser(); fit(train)",
    "Ensemble.fit(train): tiny encoders",
]
NUMBER = re.compile(r"^-?\d+(\.\d+)?(e[-+]\d+)?$")


def _table_rows(text: str) -> list[list[str]]:
    """Cells of every markdown table body row (header rows are those followed by a ``|---`` line)."""
    lines = text.splitlines()
    body = [line for i, line in enumerate(lines) if line.startswith("| ")
            and not (i + 1 < len(lines) and lines[i + 1].startswith("|---"))]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in body]


def test_smoke_run_writes_every_workload(tmp_path):
    out = tmp_path / "RESULTS.md"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf-home"), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", "--device", "cpu", "--smoke", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    for header in ("# fusion benchmarks", "- date:", "- device: CPU", "torch 2", "transformers ", "accelerate ",
                   "fusion ", "- command: `python -m benchmarks.run --device cpu --smoke --out",
                   "CPU run: GPU targets not measurable here"):
        assert header in text
    rows = _table_rows(text)
    for workload in WORKLOADS:
        assert any(row[0].startswith(workload) for row in rows), f"no row for {workload!r}"
    numbers = [float(cell) for row in rows for cell in row[1:] if NUMBER.match(cell)]
    assert len(numbers) > 4 * len(WORKLOADS) and all(value > 0 for value in numbers)
    statuses = [row[-1] for row in rows if row[-1] in ("met", "not met", "n/a on CPU", "not run")]
    assert len(statuses) == 8 and "not run" not in statuses  # 3 inference, 2 fine-tuning, 2 refit, 1 scaling
    assert "fit(train) (fuser only); member outputs computed: 0 |" in text  # a refit runs no member
    assert text.count("(smoke stand-in for BERT-base)") >= 4  # the second encoder size ran (c), (d) and fusion


def test_smoke_foundation_writes_both_parts(tmp_path):
    """``python -m benchmarks.foundation --smoke``: both tables land in the results file with positive numbers."""
    out = tmp_path / "FOUNDATION.md"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf-home"), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-m", "benchmarks.foundation", "--smoke", "--heading", "Smoke run",
                           "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
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
