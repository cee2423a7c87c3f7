"""The ``fusion`` command, in process through ``fusion.cli.main`` (and once through the console script)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import write_csv

from fusion import Ensemble
from fusion.cli import main
from fusion.evaluation import Report

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
FAST_HEAD = "train_config: {max_epochs: 15, patience: 3}"


def run(*argv: str) -> tuple[int, str, str]:
    """``fusion ARGV`` in process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def built(tmp_path_factory, sentiment_dir, bert_encoder_dir, roberta_classifier_dir):
    """``fusion build`` on three tiny members (an encoder + head, a classifier whose labels are in the other
    order, TF-IDF) and two fusers; returns the output directory and what the command printed."""
    root = tmp_path_factory.mktemp("built")
    recipe = root / "recipe.yaml"
    recipe.write_text(f"""\
output: out
data:
  path: {sentiment_dir}
members:
  - kind: hf_encoder
    name: encoder
    model: {bert_encoder_dir}
    {FAST_HEAD}
  - kind: hf_classifier
    name: roberta
    model: {roberta_classifier_dir}
  - kind: sklearn
    name: tfidf
    pipeline: {{name: tfidf_logreg, params: {{C: 4.0}}}}
fusers: [mean, linear]
ensemble:
  cv: 2
  cache_dir: cache
""")
    code, out, err = run("build", recipe, "--quiet")
    assert code == 0, err
    return root / "out", out, err


def test_build_trains_saves_and_reports(built, sentiment_dir):
    out_dir, stdout, stderr = built
    for row in ("encoder", "roberta", "tfidf", "fuser: mean", "fuser: linear", "cross-validated log-loss on the train rows"):
        assert row in stdout
    assert stderr == ""  # --quiet: no progress bars, no step messages
    ensemble = Ensemble.from_pretrained(out_dir / "ensemble", show_progress=False)
    assert [m.name for m in ensemble.members] == ["encoder", "roberta", "tfidf"]
    best = stdout.split("\nkept ")[1].split(": lowest")[0]  # a fuser kind, or "member: NAME"
    assert ensemble.fuser_.kind == ("pick" if best.startswith("member: ") else best)
    assert list(ensemble.classes_) == ["negative", "positive"]
    assert ensemble.selection_["chosen"] == best
    assert (out_dir / "recipe.yaml").read_text().startswith("# resolved from")
    assert (out_dir.parent / "cache").is_dir()  # ensemble.cache_dir, relative to the recipe
    texts = ["good great fun", "awful dull mess"]
    assert ensemble.predict_proba(texts).shape == (2, 2)


def test_build_writes_the_report(built):
    import base64
    import re

    out_dir = built[0]
    assert {p.name for p in (out_dir / "report").iterdir()} >= {"report.html", "report.md", "report.json"}
    html = (out_dir / "report" / "report.html").read_text()
    for section in ("metrics", "reliability", "confusion", "weights", "disagreement", "cost", "tests", "per-class"):
        assert f'id="{section}"' in html, section
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) >= 5 and all(base64.b64decode(i).startswith(b"\x89PNG\r\n\x1a\n") for i in images)
    assert "<script" not in html and "https://" not in html
    # every fuser the build tried is in the report, and the saved ensemble carries the same report in its card
    fusers = {m.name for m in Ensemble.from_pretrained(out_dir / "ensemble", show_progress=False).report_.fusers}
    members = {name for name in fusers if name.startswith("member: ")}  # the best single member is a candidate too
    assert fusers - members == {"mean", "linear"} and len(members) == 1
    assert "| mean" in (out_dir / "ensemble" / "README.md").read_text()


def test_shipped_sst2_recipe_runs_on_tiny_models(tmp_path, sentiment_dir, bert_encoder_dir):
    code, out, err = run("build", RECIPES / "sst2_minilm.yaml", "--data", sentiment_dir, "--output", tmp_path / "out",
                         "--set", f"members.0.model={bert_encoder_dir}", "--set", f"members.1.model={bert_encoder_dir}",
                         "--set", "members.0.train_config={max_epochs: 10}", "--set", "members.1.train_config={max_epochs: 10}",
                         "--set", "ensemble.cache_dir=null", "--set", "ensemble.cv=2", "--limit", "120", "--quiet")
    assert code == 0, err
    for row in ("minilm-mean-linear", "minilm-cls-mlp", "tfidf-logreg", "fuser: mean", "fuser: vote", "fuser: linear",
                "fuser: stacking"):
        assert row in out
    assert "data: 120 train, 80 validation rows" in out
    assert (tmp_path / "out" / "ensemble" / "fusion_config.json").is_file()


def test_shipped_trec_recipe_is_multiclass_with_a_carved_validation(tmp_path, toy_topics, bert_encoder_dir):
    data = tmp_path / "topics"
    data.mkdir()
    write_csv(data / "train.csv", {**toy_topics["train"], "fine_label": ["x"] * len(toy_topics["train"]["text"])})
    (data / "labels.json").write_text(json.dumps({"0": "sports", "1": "politics", "2": "science"}))
    code, out, err = run("build", RECIPES / "trec_minilm.yaml", "--data", data, "--output", tmp_path / "out",
                         "--set", f"members.0.model={bert_encoder_dir}", "--set", "members.0.train_config={max_epochs: 10}",
                         "--set", "members.1.model=null", "--set", "ensemble.cache_dir=null", "--set", "ensemble.cv=2",
                         "--set", "fusers=[mean, stacking]", "--quiet")
    assert code == 2 and "members[1].model must be" in err  # null is not a model: the override is validated too
    code, out, err = run("build", RECIPES / "trec_minilm.yaml", "--data", data, "--output", tmp_path / "out",
                         "--set", f"members.0.model={bert_encoder_dir}", "--set", "members.0.train_config={max_epochs: 10}",
                         "--set", f"members.1.model={bert_encoder_dir}", "--set", "members.1.train_config={max_epochs: 10}",
                         "--set", "ensemble.cache_dir=null", "--set", "ensemble.cv=2", "--set", "fusers=[mean, stacking]",
                         "--quiet")
    assert code == 0, err
    assert "data: 216 train, 24 validation rows, validation carved from train (fraction 0.1)" in out
    config = json.loads((tmp_path / "out" / "ensemble" / "fusion_config.json").read_text())
    assert config["labels"] == ["sports", "politics", "science"]
    code, out, _ = run("predict", tmp_path / "out" / "ensemble", "--text", "the team won the match", "--quiet")
    assert code == 0 and out.split("\t")[0] in config["labels"]


def test_hub_classifiers_recipe_with_local_models(tmp_path, sentiment_dir, roberta_classifier_dir,
                                                  generic_label_classifier_dir, bert_classifier_dir):
    recipe = RECIPES / "hub_classifiers.yaml"
    code, out, _ = run("build", recipe, "--check")  # hub ids validate offline; they are fetched when the build starts
    assert code == 0 and "distilbert-sst2, textattack-bert-sst2, textattack-roberta-sst2" in out
    local = ["--set", f"members.0.model={roberta_classifier_dir}", "--set", "members.0.label_map=null",  # positive, negative
             "--set", f"members.1.model={generic_label_classifier_dir}",  # LABEL_0, LABEL_1 + the recipe's label_map
             "--set", f"members.2.model={bert_classifier_dir}", "--set", "members.2.label_map=null"]
    code, out, err = run("build", recipe, "--data", sentiment_dir, "--output", tmp_path / "out",
                         "--set", "ensemble.cache_dir=null", "--limit", "60", "--quiet", "--bundle-models", *local)
    assert code == 0, err
    assert "fuser: mean" in out and "fuser: linear" in out and "out-of-fold member outputs" in out
    saved = json.loads((tmp_path / "out" / "ensemble" / "fusion_config.json").read_text())
    assert [m["config"]["model"] for m in saved["members"]] == ["bundled:model"] * 3  # --bundle-models: copied in
    ensemble = Ensemble.from_pretrained(tmp_path / "out" / "ensemble", show_progress=False)
    assert [m.output_labels(None) for m in ensemble.members] == [["positive", "negative"], ["negative", "positive"],
                                                                ["negative", "positive"]]


def test_build_with_a_hub_id_that_cannot_be_found_fails_before_running(tmp_path, sentiment_dir):
    code, out, err = run("build", RECIPES / "hub_classifiers.yaml", "--data", sentiment_dir, "--output", tmp_path)
    assert code == 2 and "Traceback" not in err
    assert "hub_classifiers.yaml line 32: members[0].model: cannot find model" in err
    assert not (tmp_path / "ensemble").exists()


# --- predict -----------------------------------------------------------------------------------------------------


def test_predict_texts(built):
    code, out, _ = run("predict", built[0] / "ensemble", "--text", "good great fun", "--text", "awful dull mess", "--quiet")
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 2
    for line, text in zip(lines, ["good great fun", "awful dull mess"], strict=True):
        label, probability, echoed = line.split("\t")
        assert label in ("negative", "positive") and 0.5 <= float(probability) <= 1.0 and echoed == text


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".txt"])
def test_predict_file_writes_a_csv_with_probabilities(built, tmp_path, suffix):
    texts = ["good great fun", "awful dull mess", "a film, with \"quotes\""]
    source = tmp_path / f"input{suffix}"
    if suffix == ".csv":
        write_csv(source, {"id": [1, 2, 3], "review": texts})
    elif suffix == ".jsonl":
        source.write_text("".join(json.dumps({"review": t}) + "\n" for t in texts))
    else:
        source.write_text("\n".join(texts) + "\n")
    column = [] if suffix == ".txt" else ["--text-column", "review"]
    code, out, err = run("predict", built[0] / "ensemble", "--file", source, *column, "--out", tmp_path / "p.csv", "--quiet")
    assert code == 0, err
    with open(tmp_path / "p.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["text"] for r in rows] == texts
    assert list(rows[0]) == ["text", "label", "proba_negative", "proba_positive"]
    proba = np.array([[float(r["proba_negative"]), float(r["proba_positive"])] for r in rows])
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    assert [r["label"] for r in rows] == [["negative", "positive"][i] for i in proba.argmax(1)]
    assert not list(tmp_path.glob(".p.csv.*"))  # written atomically, no temporary left behind


def test_predict_file_with_a_missing_column(built, tmp_path):
    write_csv(tmp_path / "in.csv", {"review": ["good"]})
    code, _, err = run("predict", built[0] / "ensemble", "--file", tmp_path / "in.csv", "--quiet")
    assert code == 2 and "no column 'text'; it has columns ['review']" in err and "--text-column" in err


# --- evaluate / report ---------------------------------------------------------------------------------------------


def test_evaluate_prints_scores(built, sentiment_dir, tmp_path):
    code, out, err = run("evaluate", built[0] / "ensemble", "--data", sentiment_dir, "--out", tmp_path / "report", "--quiet")
    assert code == 0, err
    assert "validation split of" in out and "80 rows" in out
    for name in ("encoder", "roberta", "tfidf", "fuser:"):
        assert name in out
    code, _, err = run("evaluate", built[0] / "ensemble", "--data", sentiment_dir, "--split", "test", "--quiet")
    assert code == 2 and "no 'test' split; available splits: ['train', 'validation']" in err
    code, _, err = run("evaluate", built[0] / "ensemble", "--data", tmp_path / "nowhere", "--quiet")
    assert code == 2 and "--data: " in err and "does not exist" in err


def test_evaluate_writes_its_report_beside_the_ensemble_and_never_inside_it(built, sentiment_dir, tmp_path):
    shutil.copytree(built[0] / "ensemble", tmp_path / "ens")
    code, _, err = run("evaluate", tmp_path / "ens", "--data", sentiment_dir, "--quiet")
    assert code == 0, err
    written = tmp_path / "evaluation-validation"
    assert {p.name for p in written.iterdir()} == {"report.html", "report.md", "report.json"}
    assert Report.load(written).rows == 80
    code, _, err = run("evaluate", tmp_path / "ens", "--data", sentiment_dir, "--out", tmp_path / "ens" / "report")
    assert code == 2 and "lies inside the saved ensemble" in err and "checksummed" in err
    code, out, err = run("inspect", tmp_path / "ens")
    assert code == 0 and "MISMATCH" not in out, out + err  # the saved ensemble is untouched


def test_report_rerenders_beside_the_json_or_beside_the_ensemble(built, sentiment_dir, tmp_path):
    shutil.copytree(built[0] / "ensemble", tmp_path / "ens")
    run("evaluate", tmp_path / "ens", "--data", sentiment_dir, "--quiet")
    written = tmp_path / "evaluation-validation"
    (written / "report.html").unlink()
    code, _, err = run("report", written, "--quiet")
    assert code == 0, err
    assert (written / "report.html").is_file()
    code, _, err = run("report", tmp_path / "ens", "--quiet")  # the report saved with the ensemble stays as it is
    assert code == 0, err
    assert {p.name for p in (tmp_path / "report").iterdir()} == {"report.html", "report.md", "report.json"}
    assert Report.load(tmp_path / "report") == Report.load(tmp_path / "ens" / "report")


def test_report_without_a_report_json_is_a_clear_error(tmp_path):
    code, _, err = run("report", tmp_path)
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err
    assert "report.json" in err or "fusion.evaluation" in err


def test_report_rerenders_a_saved_report_json(tmp_path):
    from fusion import evaluation

    proba = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])
    report = evaluation.build_report({"a": proba}, {"mean": proba}, np.array([0, 1, 1, 1]), ["neg", "pos"], n_bootstrap=0)
    report.save(tmp_path / "report", formats=["json"])
    code, out, err = run("report", tmp_path, "--quiet")  # an output directory holding report/report.json
    assert code == 0, err
    assert {p.name for p in (tmp_path / "report").iterdir()} == {"report.html", "report.md", "report.json"}
    assert evaluation.Report.load(tmp_path / "report") == report and "report.html" in out


# --- inspect -------------------------------------------------------------------------------------------------------


def test_inspect_lists_members_and_verifies_checksums(built, roberta_classifier_dir):
    code, out, err = run("inspect", built[0] / "ensemble")
    assert code == 0, err
    for text in ("labels (2): negative, positive", "[0] encoder  kind=hf_encoder", "[1] roberta  kind=hf_classifier",
                 "[2] tfidf  kind=sklearn", f"model: {roberta_classifier_dir}", "weights model.safetensors sha256",
                 "fuser: ", "verified  fuser.safetensors", "all checksums verified"):
        assert text in out, text
    assert "MISMATCH" not in out


def test_inspect_detects_a_tampered_file(built, tmp_path):
    copy = tmp_path / "ens"
    shutil.copytree(built[0] / "ensemble", copy)
    head = next(copy.glob("members/0-*/state.safetensors"))
    data = bytearray(head.read_bytes())
    data[-1] ^= 0xFF
    head.write_bytes(bytes(data))
    code, out, err = run("inspect", copy)
    assert code == 2
    assert f"MISMATCH  {head.relative_to(copy).as_posix()}" in out
    assert err.startswith("error: 1 file(s) differ") and "Traceback" not in err


# --- exit codes, help, quiet ---------------------------------------------------------------------------------------


def test_recipe_errors_exit_2_without_traceback(tmp_path, sentiment_dir):
    (tmp_path / "r.yaml").write_text(f"data:\n  path: {sentiment_dir}\nmembers:\n  - kind: hf_encodr\n")
    code, out, err = run("build", tmp_path / "r.yaml")
    assert code == 2 and out == ""
    assert err.startswith(f"error: {tmp_path / 'r.yaml'} line 4: members[0].kind: unknown member kind 'hf_encodr'")
    assert "Traceback" not in err
    code, _, err = run("build", tmp_path / "missing.yaml")
    assert code == 2 and "does not exist" in err


def test_unexpected_errors_exit_1_with_traceback(monkeypatch, tmp_path):
    import fusion.cli

    def broken(args, console):
        raise RuntimeError("boom")

    monkeypatch.setattr(fusion.cli, "run_inspect", broken)
    code, _, err = run("inspect", tmp_path)
    assert code == 1 and "Traceback" in err and "RuntimeError: boom" in err


@pytest.mark.parametrize("command", ["build", "evaluate", "predict", "report", "inspect"])
def test_every_subcommand_has_help(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: fusion {command}") and "--quiet" in out


def test_usage_errors_exit_2(capsys):
    assert main([]) == 2
    assert main(["predict", "somewhere"]) == 2  # --text or --file is required
    assert "one of the arguments --text --file is required" in capsys.readouterr().err


def test_console_script_help():
    script = Path(sys.executable).parent / "fusion"
    if not script.exists():
        pytest.skip("the fusion console script is not installed (pip install -e .)")
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for command in ("build", "evaluate", "predict", "report", "inspect"):
        assert command in done.stdout
