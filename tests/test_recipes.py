"""Recipes run end to end on tiny settings (the real model and data are for `make demo`)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def write_split(path: Path, data: dict) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(zip(data["text"], data["label"], strict=True))


@pytest.mark.slow
def test_sst2_demo_runs_on_a_tiny_encoder(bert_encoder_dir, toy_sentiment, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_split(data / "train.csv", toy_sentiment["train"])
    write_split(data / "validation.csv", toy_sentiment["validation"])
    (data / "labels.json").write_text(json.dumps({"0": "negative", "1": "positive"}))
    done = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "sst2_demo.py"), "--data", str(data), "--model", str(bert_encoder_dir),
         "--out", str(tmp_path / "ens"), "--cache-dir", str(tmp_path / "cache"), "--quiet"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout
    for row in ("minilm-mean-linear", "minilm-cls-mlp", "tfidf-logreg", "fuser: mean", "fuser: vote",
                "fuser: linear", "fuser: stacking"):
        assert row in table
    assert "reloaded predictions identical: True" in table
    assert (tmp_path / "ens" / "fusion_config.json").is_file()
