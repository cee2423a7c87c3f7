"""What the ``fusion`` command tells a person at the command line points at things that exist for them: CLI
options and recipe keys (not Python calls), files and 1-based rows, and it never replaces a file unasked."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
from helpers import write_csv

from fusion.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["good fun film", "great lovely film", "awful dull film", "bad boring film"] * 3


def run(*argv: object) -> tuple[int, str, str]:
    """``fusion ARGV`` in process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def recipe(tmp_path: Path, labels: list, texts: list[str] = TEXTS, label_column: str = "label", extra: str = "") -> Path:
    """A TF-IDF-only recipe over a data folder holding train.csv and validation.csv."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    for split in ("train", "validation"):
        write_csv(data / f"{split}.csv", {"text": texts, label_column: labels})
    path = tmp_path / "recipe.yaml"
    path.write_text(f"output: {tmp_path / 'out'}\ndata:\n  path: {data}\n{extra}members:\n  - kind: sklearn\n"
                    "    name: tfidf\n    pipeline: {name: tfidf_logreg}\nfusers: [mean]\nensemble: {cv: 2}\n")
    return path


@pytest.mark.parametrize("argv", [["--quiet", "inspect", "x"], ["inspect", "x", "--quiet"], ["-q", "cache", "info"],
                                  ["cache", "info", "-q"]])
def test_quiet_is_accepted_before_and_after_the_subcommand(argv):
    args = build_parser().parse_args(argv)
    assert args.quiet is True and args.verbose is False


def test_verbose_before_the_subcommand_survives_the_subcommand_defaults():
    assert build_parser().parse_args(["--verbose", "inspect", "x"]).verbose is True
    assert build_parser().parse_args(["inspect", "x"]).quiet is False


def test_quiet_before_build_runs(tmp_path):
    code, out, err = run("--quiet", "build", recipe(tmp_path, ["pos", "pos", "neg", "neg"] * 3), "--check")
    assert code == 0, err
    assert "recipe is valid" in out


def test_build_help_names_only_files_that_exist(capsys):
    assert run("build", "--help")[0] == 0
    helptext = capsys.readouterr().out + run("build", "--help")[1]
    named = re.findall(r"fusion/[\w/]+\.py", helptext)
    assert named, helptext
    assert [p for p in named if not (ROOT / p).is_file()] == []


def test_missing_label_column_names_what_build_accepts(tmp_path):
    code, _, err = run("build", recipe(tmp_path, ["pos", "neg"] * 6, label_column="sentiment"), "--quiet")
    assert code == 2
    assert "no column 'label'" in err and "--set data.label_column=NAME" in err
    assert "--label-column NAME" in err.split("fusion evaluate:")[1]  # offered only for the command that has it


def test_unnamed_negative_ids_tell_a_recipe_user_how_to_name_them(tmp_path):
    code, _, err = run("build", recipe(tmp_path, [1, -1] * 6), "--quiet")
    assert code == 2
    assert "label ids must be >= 0" in err
    assert "`labels:` list under `data:` in the recipe" in err and "labels.json" in err


def test_named_ids_build(tmp_path):
    """The advice works: a `labels:` list under `data:` names the ids."""
    code, out, err = run("build", recipe(tmp_path, [1, 0] * 6, extra="  labels: [negative, positive]\n"), "--quiet")
    assert code == 0, err
    assert "negative" in (tmp_path / "out" / "ensemble" / "fusion_config.json").read_text()


def test_empty_text_in_a_data_file_names_the_file_and_the_1_based_row(tmp_path):
    texts = list(TEXTS)
    texts[2] = ""
    code, _, err = run("build", recipe(tmp_path, ["pos", "neg"] * 6, texts=texts), "--quiet")
    assert code == 2
    assert f"{tmp_path / 'data' / 'train.csv'}: column 'text' row 3 (counted from 1) is an empty text" in err


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("saved")
    code, _, err = run("build", recipe(root, ["pos", "pos", "neg", "neg"] * 3), "--quiet")
    assert code == 0, err
    return root / "out" / "ensemble"


def test_predict_file_rows_are_counted_from_1(saved, tmp_path):
    source = tmp_path / "in.csv"
    source.write_text('text\ngood\n""\n')
    code, _, err = run("predict", saved, "--file", source, "--out", tmp_path / "p.csv", "--quiet")
    assert code == 2
    assert f"{source}: column 'text' row 2 (counted from 1) is an empty text" in err


def test_predict_refuses_to_overwrite_out_unless_asked(saved, tmp_path):
    source, out = tmp_path / "in.csv", tmp_path / "p.csv"
    source.write_text("text\ngood fun\nawful dull\n")
    out.write_text("keep me\n")
    code, _, err = run("predict", saved, "--file", source, "--out", out, "--quiet")
    assert code == 2
    assert f"--out {out} already exists; give --overwrite" in err
    assert out.read_text() == "keep me\n"
    for flag in ("--overwrite", "--force"):
        code, stdout, err = run("predict", saved, "--file", source, "--out", out, flag, "--quiet")
        assert code == 0, err
        assert "wrote 2 predictions" in stdout
        assert out.read_text().startswith("text,label,proba_")


def test_a_set_typo_in_a_new_parent_key_is_reported_at_the_set_not_at_line_1(tmp_path):
    path = recipe(tmp_path, ["pos", "neg"] * 6)
    code, _, err = run("build", path, "--check", "--set", "ensembl.cv=3")
    assert code == 2
    assert f"error: {path} (--set ensembl.cv): unknown key 'ensembl'" in err
    assert "line 1" not in err


def test_a_set_index_out_of_range_names_the_recipe(tmp_path):
    path = recipe(tmp_path, ["pos", "neg"] * 6)
    code, _, err = run("build", path, "--check", "--set", "members.3.name=x")
    assert code == 2
    assert f"error: {path} (--set members.3.name): members is a list of 1 items" in err


def test_predict_text_values_are_counted_from_1(saved):
    code, _, err = run("predict", saved, "--text", "good fun", "--text", "", "--quiet")
    assert code == 2
    assert "--text: row 2 (counted from 1) is an empty text" in err


def test_the_build_table_keeps_its_columns_aligned_and_names_the_member_alone_candidate(capsys):
    from fusion.cli import _fused_name, _print_scores

    score = {"accuracy": 0.5, "log_loss": 0.7}
    rows = [("tfidf", score, None), (_fused_name("stacking"), score, None),
            (_fused_name("member: minilm-mean-linear-with-a-long-name"), score, None)]
    _print_scores(rows, best="fuser: stacking")
    lines = [line for line in capsys.readouterr().out.splitlines() if "0.5000" in line]
    assert [line.index("0.5000") for line in lines] == [lines[0].index("0.5000")] * 3  # one column for all
    assert lines[2].startswith("member: minilm-mean-linear-with-a-long-name ")  # not "fuser: member: ..."
    assert lines[1].rstrip().endswith("*")
