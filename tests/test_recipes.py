"""Recipes run end to end on tiny settings (the real model and data are for `make demo`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fusion.evaluation import Report

ROOT = Path(__file__).resolve().parents[1]


def run_recipe(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "recipes" / script), *args, "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_sst2_demo_runs_on_a_tiny_encoder(bert_encoder_dir, sentiment_dir, tmp_path):
    table = run_recipe("sst2_demo.py", "--data", str(sentiment_dir), "--model", str(bert_encoder_dir),
                       "--out", str(tmp_path / "ens"), "--cache-dir", str(tmp_path / "cache"))
    for row in ("minilm-mean-linear", "minilm-cls-mlp", "tfidf-logreg", "fuser: mean", "fuser: vote",
                "fuser: linear", "fuser: stacking"):
        assert row in table
    assert "reloaded predictions identical: True" in table
    assert (tmp_path / "ens" / "fusion_config.json").is_file()
    report = Report.load(tmp_path / "ens" / "report")
    kept = table.split("\nkept ")[1].split(" (by ")[0]
    assert [m.name for m in report.fusers][0] == kept  # the kept fuser first, then the other candidates
    names = [m.name for m in report.fusers]  # the four fusers and the best single member ("member: NAME")
    assert sorted(n for n in names if not n.startswith("member: ")) == ["linear", "mean", "stacking", "vote"]
    assert len(names) == 5
    assert "## Accuracy against inference cost" in (tmp_path / "ens" / "README.md").read_text()


@pytest.mark.slow
def test_finetune_then_fuse_runs_on_a_tiny_checkpoint(bert_encoder_dir, sentiment_dir):
    table = run_recipe("finetune_then_fuse.py", "--data", str(sentiment_dir), "--model", str(bert_encoder_dir),
                       "--members", "2", "--train-rows", "120", "--holdout-rows", "80", "--batch-size", "16")
    assert "120 rows to fine-tune on, 80 held out for the fusers, 80 validation rows" in table
    for row in ("finetune-0-lr5e-05-seed0", "finetune-1-lr0.0001-seed1", "fuser: linear", "fuser: stacking"):
        assert row in table


@pytest.mark.slow
def test_digits_recipe_runs_on_a_slice():
    table = run_recipe("digits_torch_heads.py", "--rows", "300", "--epochs", "3")
    assert "digits: 210 train, 90 validation images" in table
    for row in ("mlp", "cnn", "logreg", "fuser:linear", "fuser:stacking"):
        assert row in table


@pytest.mark.slow
def test_soups_vs_ensembles_runs_on_a_tiny_checkpoint(bert_encoder_dir, sentiment_dir, tmp_path):
    table = run_recipe("soups_vs_ensembles.py", "--data", str(sentiment_dir), "--model", str(bert_encoder_dir),
                       "--members", "2", "--train-rows", "120", "--holdout-rows", "80", "--batch-size", "16",
                       "--output", str(tmp_path / "soups"), "--cache-dir", str(tmp_path / "cache"))
    assert "120 rows to fine-tune on, 80 held out for the soups and fusers, 80 validation rows" in table
    for row in ("ft-seed0", "ft-seed1", "uniform-soup", "greedy-soup-", "ties-d0.5", "learned-soup-model",
                "fuser: stacking (fine-tunes)", "fuser: mean (all models)", "greedy soup: kept",
                "learned soup coefficients: all"):
        assert row in table
    report = Report.load(tmp_path / "soups" / "report")
    names = {m.name for m in report.members}
    assert {"ft-seed0", "ft-seed1", "uniform-soup", "ties-d0.5", "learned-soup-model"} <= names
    soup, single = report.full_seconds_per_1k("uniform-soup"), report.full_seconds_per_1k("ft-seed0")
    assert soup is not None and single is not None  # a merge costs one model's inference, measured


@pytest.mark.slow
def test_trec_fusers_recipe_runs_on_a_tiny_encoder(bert_encoder_dir, sentiment_dir, tmp_path):
    table = run_recipe("trec_fusers.py", "--data", str(sentiment_dir), "--model", str(bert_encoder_dir),
                       "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"))
    assert "1. default: kept " in table and "held-out accuracy" in table
    for row in ("fuser: mean", "fuser: vote", "fuser: linear", "fuser: stacking", "fuser: caruana", "fuser: gating",
                "fuser: feature", "fuser: cascade", "student: distilled"):
        assert row in table
    assert "3. cascade (members in cost order: tfidf-logreg" in table  # the cheapest member first
    assert "of the full ensemble's log-loss gain" in table and "predicting the 80 held-out rows" in table
    assert "4. prune(max_members=2): kept [" in table and "4. prune(max_seconds_per_1k=" in table
    assert "the same head on hard labels alone: 0." in table
