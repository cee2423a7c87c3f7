"""Issue 11, part 4: bad input ends in a FusionError that names the problem, the place and the fix.

One table: every case is fed through the Python API or the ``fusion`` command (argv, with tiny files built in
``tmp_path``) and names the error class and a fragment of its message. A CLI case must also exit non-zero with
the message on stderr and no traceback. A case whose ``error`` is None must succeed (input that used to be
refused or silently mangled). Add a row for every new kind of bad input: the list only grows.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import tfidf_member, write_csv

from fusion import ConfigError, DataError, Ensemble, FusionError, LinearFuser, PersistenceError
from fusion.cli import Console, build_parser, main
from fusion.ensemble.persistence import seal
from fusion.recipe import RecipeError, load_recipe

TRAIN = {"text": ["good", "bad", "great", "awful", "fine", "poor"] * 4, "label": ["pos", "neg"] * 12}
ROWS = {"text": ["good", "bad", "great", "awful", "fine", "poor"], "label": ["pos", "neg"] * 3}


@dataclass
class Ctx:
    """What a case may use: a private folder, a fitted ensemble and its saved copy."""

    tmp: Path
    fitted: Ensemble
    saved: Path

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return path

    def saved_with(self, edit: Callable[[dict], Any]) -> Path:
        """A copy of the saved ensemble whose fusion_config.json is ``edit(config)`` (or the edited dict), its
        checksum recomputed (as a forger would) so that the checks behind it are reached."""
        copy = self.tmp / "ensemble"
        shutil.copytree(self.saved, copy)
        config = json.loads((copy / "fusion_config.json").read_text())
        changed = edit(config)
        changed = config if changed is None else changed
        (copy / "fusion_config.json").write_text(json.dumps(seal(changed) if isinstance(changed, dict) else changed))
        return copy

    def recipe(self, text: str = "", *, train: str = "train.csv", output: str = "out",
               files: dict[str, str] | None = None) -> Path:
        """A recipe over one TF-IDF member (``text`` replaces it whole when given), beside ``files``."""
        for name, content in (files or {}).items():
            self.file(name, content)
        write_csv(self.tmp / "train.csv", ROWS)
        write_csv(self.tmp / "validation.csv", ROWS)
        text = text or (f"output: {output}\n"
                        f"data: {{train: {self.tmp / train}, validation: {self.tmp / 'validation.csv'}}}\n"
                        "members:\n  - {kind: sklearn, name: tfidf, pipeline: {name: tfidf_logreg}}\n"
                        "fusers: [mean]\nensemble: {cv: 2, cache_dir: memory}\n")
        return self.file("recipe.yaml", text)


@dataclass
class Case:
    id: str
    api: Callable[[Ctx], Any] | None = None  # a call that must raise
    cli: Callable[[Ctx], list[Any]] | None = None  # argv of `fusion`
    error: type[Exception] | None = None  # None: the input is valid and must be accepted
    match: str = ""  # a regular expression searched in the message (or, for a success, in stdout)
    seconds: float | None = None  # a bound on the time to refuse (resource exhaustion)
    xfail: str | None = None  # not fixed yet, and why


def bomb(levels: int = 9, width: int = 9) -> str:
    """An alias bomb: each level lists ``width`` aliases of the previous one (width**levels values)."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def without(key: str) -> Callable[[dict], None]:
    return lambda config: config.pop(key) and None


def fit(ensemble_kwargs: dict | None = None, train: Any = TRAIN, validation: Any = None) -> Callable[[Ctx], Any]:
    return lambda ctx: Ensemble([tfidf_member()], cache_dir="memory", **{"cv": 2, **(ensemble_kwargs or {})}).fit(
        train, validation)


SINGLE_CLASS = {"text": TRAIN["text"], "label": ["pos"] * 24}
SHORT_LABELS = {"text": TRAIN["text"], "label": TRAIN["label"][:20]}

CASES = [
    # --- saved configs: the generic Config.from_dict type check, wrapped with the file's name ---
    Case("saved-cv-string-api", api=lambda c: Ensemble.from_pretrained(c.saved_with(lambda d: d.update(cv="5"))),
         error=PersistenceError, match=r"fusion_config.json: EnsembleConfig.cv must be an integer; got '5'"),
    Case("saved-cv-string-cli", cli=lambda c: ["predict", c.saved_with(lambda d: d.update(cv="five")), "--text", "ok"],
         error=PersistenceError, match=r"EnsembleConfig.cv must be an integer; got 'five'"),
    Case("saved-config-list", cli=lambda c: ["inspect", c.saved_with(lambda d: [d])],
         error=PersistenceError, match="is not a JSON object"),
    Case("saved-config-list-api", api=lambda c: Ensemble.from_pretrained(c.saved_with(lambda d: [d])),
         error=PersistenceError, match="is not a JSON object"),
    Case("saved-config-no-members", cli=lambda c: ["predict", c.saved_with(without("members")),
                                                   "--text", "ok"],
         error=PersistenceError, match="EnsembleConfig lacks the required key 'members' \\(a list\\)"),
    Case("saved-config-no-files", api=lambda c: Ensemble.from_pretrained(c.saved_with(without("files"))),
         error=PersistenceError, match="lacks the key 'files'"),
    # --- constructor arguments ---
    Case("cv-string", api=fit({"cv": "5"}), error=ConfigError, match="cv must be an integer number of folds.*'5'"),
    Case("member-wrong-type", api=lambda c: Ensemble([tfidf_member(), "tfidf"]), error=ConfigError,
         match=r"members\[1\] is str \('tfidf'\), not a member; pass member objects such as HFClassifier"),
    Case("members-not-a-list", api=lambda c: Ensemble(tfidf_member()), error=ConfigError,
         match="members must be a list of members.*Wrap a single member in a list"),
    Case("fuser-wrong-type", api=lambda c: Ensemble([tfidf_member()], fuser=5), error=ConfigError,
         match=r"fuser is int \(5\); pass a Fuser \(e.g. LinearFuser\(\)\), a registered fuser kind"),
    Case("fuser-list-wrong-type", api=lambda c: Ensemble([tfidf_member()], fuser=["mean", object()]),
         error=ConfigError, match=r"fuser\[1\] is object"),
    Case("duplicate-label", api=fit({"labels": ["a", "a"]}), error=ConfigError, match="duplicate label 'a'"),
    # --- data given to the API ---
    Case("generator-of-texts", api=lambda c: c.fitted.predict(t for t in ["good", "bad"]), error=DataError,
         match="got generator; pass a list of texts.*read only once"),
    Case("2d-array-for-text-members", api=lambda c: c.fitted.predict(np.zeros((2, 3))), error=DataError,
         match=r"member \[0\] 'tfidf' reads texts, but the data is a numeric array of shape \(2, 3\)"),
    Case("2d-array-for-text-members-fit", api=fit(train={"text": np.zeros((24, 3)), "label": TRAIN["label"]}),
         error=DataError, match=r"train: member \[0\] 'tfidf' reads texts"),
    Case("single-class", api=fit(train=SINGLE_CLASS), error=DataError,
         match="train: all 24 rows have the label 'pos'; members learn from rows of at least 2 classes"),
    Case("fewer-rows-than-folds", api=fit({"cv": 5}, train={"text": ["good", "bad", "ok"], "label": ["p", "n", "p"]}),
         error=DataError, match="train: 3 rows, fewer than the cv=5 folds.*at least 5 rows.*smaller cv="),
    Case("fold-with-one-class", api=fit(train={"text": list("abcdef"), "label": ["x"] * 5 + ["y"]}),
         error=DataError, match="training rows of fold [01] hold a single class.*at least 2 rows"),
    Case("columns-of-different-lengths", api=fit(train=SHORT_LABELS), error=DataError,
         match="train: column 'text' has 24 rows but column 'label' has 20"),
    Case("validation-columns-of-different-lengths", api=fit(train=TRAIN, validation={"text": TRAIN["text"],
                                                                                    "label": ["pos"] * 5}),
         error=DataError, match="validation: column 'text' has 24 rows but column 'label' has 5"),
    Case("lone-surrogate", api=lambda c: c.fitted.predict(["fine", "bad \udcff"]), error=DataError,
         match=r"data: row 1 holds '\\udcff' at character 4, an unpaired surrogate"),
    Case("null-text-api", api=lambda c: c.fitted.predict({"text": ["good", None]}), error=DataError,
         match="column 'text' row 1 is NoneType"),
    Case("empty-text-api", api=lambda c: c.fitted.predict(["good", ""]), error=DataError,
         match="row 1 is an empty text"),
    # --- recipes ---
    Case("empty-train-file", cli=lambda c: ["build", c.recipe(train="empty.csv", files={"empty.csv": "text,label\n"})],
         error=DataError, match=r"empty.csv \(train\): no rows"),
    Case("output-is-a-file", cli=lambda c: ["build", c.recipe(output=str(c.file("taken", "x")))],
         error=ConfigError, match="output .*taken is a file, not a folder"),
    Case("python-tag", cli=lambda c: ["build", c.recipe("data: {path: x}\noutput: !!python/name:os.system\n")],
         error=RecipeError, match=r"recipe.yaml line 2: the tag 'tag:yaml.org,2002:python/name:os.system' is not "
                                  "allowed"),
    Case("python-tag-api", api=lambda c: load_recipe(c.recipe("a: !!python/object/apply:os.system [ls]\n")),
         error=RecipeError, match="line 1: the tag .*python/object/apply:os.system.* is not allowed"),
    Case("recursive-alias", cli=lambda c: ["build", c.recipe("a: &a [1, *a]\n")], error=RecipeError,
         match=r"line 1: a\[1\] is an alias that contains itself"),
    Case("alias-bomb", api=lambda c: load_recipe(c.recipe(bomb())), error=RecipeError,
         match="aliases repeat more than", seconds=1.0),
    Case("huge-recipe", api=lambda c: load_recipe(c.recipe("# " + "x" * (1 << 20) + "\n")), error=RecipeError,
         match="more than a recipe may hold"),
    # --- fusion predict ---
    Case("text-invalid-utf8", cli=lambda c: ["predict", c.saved, "--text", "good", "--text", b"\xff".decode(
        "utf-8", "surrogateescape")], error=DataError, match=r"--text: row 2 \(counted from 1\) holds '\\udcff'.*invalid UTF-8"),
    Case("file-null-text", cli=lambda c: ["predict", c.saved, "--file", c.file("in.jsonl", '{"text": "good"}\n'
                                                                               '{"text": null}\n'),
                                          "--out", c.tmp / "p.csv"],
         error=DataError, match=r"in.jsonl: column 'text' row 2 \(counted from 1\) is NoneType \(None\), not a string"),
    Case("file-number-text", cli=lambda c: ["predict", c.saved, "--file", c.file("in.jsonl", '{"text": 5}\n'),
                                            "--out", c.tmp / "p.csv"],
         error=DataError, match=r"row 1 \(counted from 1\) is int \(5\), not a string"),
    Case("file-list-text", cli=lambda c: ["predict", c.saved, "--file", c.file("in.json", '[{"text": ["x", "y"]}]'),
                                          "--out", c.tmp / "p.csv"],
         error=DataError, match=r"row 1 \(counted from 1\) is list \(\['x', 'y'\]\), not a string"),
    Case("file-empty-cell", cli=lambda c: ["predict", c.saved, "--file", c.file("in.csv", 'text\ngood\n""\n'),
                                           "--out", c.tmp / "p.csv"],
         error=DataError, match=r"in.csv: column 'text' row 2 \(counted from 1\) is an empty text"),
    Case("out-is-a-directory", cli=lambda c: ["predict", c.saved, "--file", c.file("in.csv", "text\ngood\n"),
                                              "--out", c.tmp],
         error=ConfigError, match="--out .* is a folder; give a file path"),
    Case("out-unwritable", cli=lambda c: ["predict", c.saved, "--file", c.file("in.csv", "text\ngood\n"),
                                          "--out", c.file("blocker", "x") / "p.csv"],
         error=ConfigError, match="blocker is a file, not a folder"),
    # --- accepted: input that used to be refused ---
    Case("csv-with-byte-order-mark", cli=lambda c: ["predict", c.saved, "--file",
                                                    c.file("bom.csv", b"\xef\xbb\xbftext\ngood\nbad\n"),
                                                    "--out", c.tmp / "p.csv"],
         match="wrote 2 predictions"),
]


@pytest.fixture(scope="module")
def fitted_and_saved(tmp_path_factory) -> tuple[Ensemble, Path]:
    ensemble = Ensemble([tfidf_member()], cv=2, cache_dir="memory").fit(TRAIN)
    return ensemble, ensemble.save_pretrained(tmp_path_factory.mktemp("saved") / "ensemble")


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=c.xfail, strict=True)]
                                               if c.xfail else []) for c in CASES])
def test_bad_input(case: Case, tmp_path, fitted_and_saved):
    assert issubclass(case.error or FusionError, FusionError)
    ctx = Ctx(tmp_path, *fitted_and_saved)
    if case.api is not None:
        start = time.perf_counter()
        with pytest.raises(case.error, match=case.match):
            case.api(ctx)
        if case.seconds is not None:
            assert time.perf_counter() - start < case.seconds
        return
    argv = [str(a) for a in case.cli(ctx)]
    code, out, err = _cli(argv)
    assert "Traceback" not in out + err
    if case.error is None:
        assert code == 0, err
        assert re.search(case.match, out), out
        return
    assert code != 0
    assert err.splitlines()[-1].startswith("error: ")
    assert re.search(case.match, err), err
    args = build_parser().parse_args(argv)  # the same run again, for the error's class
    with pytest.raises(case.error, match=case.match):
        args.run(args, Console(quiet=True))


def test_predict_file_keeps_every_row_of_a_bom_csv(tmp_path, fitted_and_saved):
    """The byte-order mark is dropped from the header, not read as part of the column name or the first text."""
    source = tmp_path / "bom.csv"
    source.write_bytes("\ufefftext\ngood\nbad\n".encode())
    code, _, err = _cli(["predict", str(fitted_and_saved[1]), "--file", str(source), "--out", str(tmp_path / "p.csv")])
    assert code == 0, err
    assert (tmp_path / "p.csv").read_text(encoding="utf-8").splitlines()[1].startswith("good,")


def test_linear_fuser_falls_back_when_lbfgs_diverges(caplog):
    """A step size that throws L-BFGS to NaN (it raised TrainingError before) ends in AdamW's finite fit."""
    torch.manual_seed(0)
    scores, labels = torch.randn(8, 2, 2) * 100, torch.tensor([0, 1] * 4)
    with caplog.at_level("WARNING", logger="fusion.fusers.linear"):
        fuser = LinearFuser(train_config={"learning_rate": 1e6}).fit(scores, labels)
    assert "L-BFGS diverged" in caplog.text
    proba = fuser.predict_proba(scores)
    assert np.isfinite(fuser.member_weights()).all() and np.isfinite(fuser.temperatures()).all()
    assert np.isfinite(proba).all() and np.allclose(proba.sum(1), 1.0)
    reference = LinearFuser().fit(scores, labels).predict_proba(scores)  # the default step converges
    assert np.abs(proba - reference).max() < 0.05
