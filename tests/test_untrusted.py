"""Loading or inspecting an ensemble someone else saved reads only files inside its folder and runs no code of theirs.

Each test edits ``fusion_config.json`` of a saved ensemble (the config holds the other files' checksums, so
an edited config is what an attacker would ship) and checks that ``from_pretrained`` and ``fusion inspect``
refuse it before reading anything outside the folder, or ignore what the saved config may not decide.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import shutil
import sys
from pathlib import Path

import pytest
from helpers import edit_saved_config, tfidf_member
from tiny_models import make_toy_sentiment

from fusion import ConfigError, Ensemble, FusionError, HFClassifier, MeanFuser, PersistenceError
from fusion.cli import main
from fusion.errors import ChecksumError
from fusion.io import sha256_file

LABELS = ["negative", "positive"]


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def saved_tfidf(tmp_path_factory, toy_sentiment) -> Path:
    directory = tmp_path_factory.mktemp("untrusted") / "tfidf"
    ens = Ensemble([tfidf_member()], fuser=MeanFuser(), labels=LABELS, cache_dir="memory")
    ens.fit(toy_sentiment["train"]).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def saved_hf(tmp_path_factory, toy_sentiment, bert_classifier_dir) -> Path:
    directory = tmp_path_factory.mktemp("untrusted") / "hf"
    ens = Ensemble([HFClassifier(bert_classifier_dir, show_progress=False)], fuser=MeanFuser(), labels=LABELS,
                   cache_dir="memory")
    ens.fit(toy_sentiment["train"]).save_pretrained(directory)
    return directory


def copy_of(saved: Path, tmp_path: Path) -> Path:
    target = tmp_path / "work" / "ens"
    shutil.copytree(saved, target, symlinks=True)
    return target


def edit_config(directory: Path, change) -> None:
    edit_saved_config(directory, change)


def outside_file(tmp_path: Path) -> tuple[Path, str]:
    """A file next to (not inside) the ensemble folder, and its sha256."""
    path = tmp_path / "work" / "secret.txt"
    path.write_text("not part of the ensemble\n")
    return path, sha256_file(path)


def assert_refused(directory: Path, secret_sha: str | None = None, match: str = "refused") -> None:
    """from_pretrained raises PersistenceError and inspect exits 2, neither showing the outside file's hash."""
    with pytest.raises(PersistenceError, match=match) as caught:
        Ensemble.from_pretrained(directory, cache_dir="memory")
    code, out, err = run("inspect", directory)
    assert code == 2, (out, err)
    assert "verified" not in out
    if secret_sha is not None:
        for text in (str(caught.value), out, err):
            assert secret_sha[:12] not in text and secret_sha[:16] not in text


# --- paths stay inside the folder ---------------------------------------------------------------------------------


def test_files_entry_leaving_the_folder_is_refused_before_it_is_read(saved_tfidf, tmp_path):
    directory = copy_of(saved_tfidf, tmp_path)
    secret, sha = outside_file(tmp_path)
    # a correct checksum of the outside file: today it would be "verified" and loading would succeed
    edit_config(directory, lambda c: c["files"].update({"../secret.txt": sha}))
    assert_refused(directory, sha, match=r"files entry: '\.\./secret\.txt' has a '\.\.' component")


def test_files_entry_pointing_at_a_system_file_is_refused(saved_tfidf, tmp_path):
    directory = copy_of(saved_tfidf, tmp_path)
    edit_config(directory, lambda c: c["files"].update({"../../etc/hostname": "0" * 64}))
    assert_refused(directory, match=r"'\.\./\.\./etc/hostname'")


def test_absolute_files_entry_is_refused(saved_tfidf, tmp_path):
    directory = copy_of(saved_tfidf, tmp_path)
    secret, sha = outside_file(tmp_path)
    edit_config(directory, lambda c: c["files"].update({str(secret): sha}))
    assert_refused(directory, sha, match="absolute path")


def test_symlink_inside_the_folder_pointing_outside_is_refused(saved_tfidf, tmp_path):
    directory = copy_of(saved_tfidf, tmp_path)
    config = json.loads((directory / "fusion_config.json").read_text())
    relative = next(k for k in config["files"] if k.startswith("members/"))
    outside = tmp_path / "work" / "moved"
    shutil.move(directory / relative, outside)  # same bytes, so the recorded checksum still matches
    (directory / relative).symlink_to(outside)
    assert_refused(directory, match="outside the folder")


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink"])
def test_member_dir_outside_the_folder_is_refused(saved_tfidf, tmp_path, where):
    directory = copy_of(saved_tfidf, tmp_path)
    config = json.loads((directory / "fusion_config.json").read_text())
    member_dir = config["members"][0]["dir"]
    outside = tmp_path / "work" / "outside"
    shutil.copytree(directory / member_dir, outside)  # a working member folder: today it would load from there
    if where == "symlink":
        shutil.rmtree(directory / member_dir)
        (directory / member_dir).symlink_to(outside, target_is_directory=True)
        value = member_dir
    else:
        value = "../outside" if where == "parent" else str(outside)
    edit_config(directory, lambda c: c["members"][0].update({"dir": value}))
    assert_refused(directory, match=r"member \[0\] 'tfidf' dir" if where != "symlink" else "outside the folder")


def test_paths_inside_the_folder_still_load(saved_tfidf, tmp_path):
    directory = copy_of(saved_tfidf, tmp_path)
    ens = Ensemble.from_pretrained(directory, cache_dir="memory")
    assert ens.predict(["a great film"])[0] in LABELS
    code, out, _ = run("inspect", directory)
    assert code == 0 and "all checksums verified." in out


# --- unknown keys -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("entry", "change"), [
    ("member", lambda c: c["members"][0].update({"run_this": "x"})),
    ("fuser", lambda c: c["fuser"].update({"run_this": "x"})),
    ("top", lambda c: c.update({"run_this": "x"})),
])
def test_unknown_key_in_a_saved_entry_is_refused(saved_tfidf, tmp_path, entry, change):
    directory = copy_of(saved_tfidf, tmp_path)
    edit_config(directory, change)
    with pytest.raises(PersistenceError, match="run_this") as caught:
        Ensemble.from_pretrained(directory, cache_dir="memory")
    if entry != "top":
        assert "valid keys are" in str(caught.value)
    code, _, err = run("inspect", directory)
    assert code == 2 and "run_this" in err


def test_unknown_key_in_a_member_config_is_refused(saved_tfidf, tmp_path):
    directory = copy_of(saved_tfidf, tmp_path)
    edit_config(directory, lambda c: c["members"][0]["config"].update({"run_this": "x"}))
    with pytest.raises(ConfigError, match=r"member 'tfidf'.*run_this"):
        Ensemble.from_pretrained(directory, cache_dir="memory")


# --- trust_remote_code --------------------------------------------------------------------------------------------


def test_saved_trust_remote_code_is_ignored_unless_the_call_asks(saved_hf, tmp_path, caplog):
    directory = copy_of(saved_hf, tmp_path)
    edit_config(directory, lambda c: c["members"][0]["config"].update({"trust_remote_code": True}))
    name = json.loads((directory / "fusion_config.json").read_text())["members"][0]["config"]["name"]
    with caplog.at_level(logging.WARNING, logger="fusion"):
        ens = Ensemble.from_pretrained(directory, cache_dir="memory")
    assert ens.members_[0].config.trust_remote_code is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "trust_remote_code" in r.getMessage()]
    assert warnings and name in warnings[0].getMessage()
    assert ens.predict(["a great film"])[0] in LABELS  # loads and runs without the remote code

    trusted = Ensemble.from_pretrained(directory, cache_dir="memory", trust_remote_code=True)
    assert trusted.members_[0].config.trust_remote_code is True

    code, out, _ = run("inspect", directory)
    assert code == 0
    assert "trust_remote_code: true (ignored unless the loading call passes trust_remote_code=True)" in out


def test_trust_remote_code_option_takes_a_bool(saved_hf):
    with pytest.raises(ConfigError, match="trust_remote_code"):
        Ensemble.from_pretrained(saved_hf, cache_dir="memory", trust_remote_code="yes")


def test_inspect_without_the_flag_does_not_mention_it(saved_hf):
    code, out, _ = run("inspect", saved_hf)
    assert code == 0 and "trust_remote_code" not in out


# --- saving never deletes what is not an ensemble ---------------------------------------------------------------


def test_saving_onto_a_folder_that_is_not_an_ensemble_is_refused_and_keeps_its_contents(tmp_path):
    ens = Ensemble([tfidf_member()], labels=["negative", "positive"]).fit(make_toy_sentiment(40, 0))
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(PersistenceError, match="not empty and is not a saved ensemble.*overwrite=True"):
        ens.save_pretrained(folder)
    assert (folder / "holiday.jpg").read_bytes() == b"precious"
    ens.save_pretrained(tmp_path / "empty")  # a new folder
    ens.save_pretrained(tmp_path / "empty")  # a saved ensemble is replaced
    ens.save_pretrained(folder, overwrite=True)
    assert not (folder / "holiday.jpg").exists() and (folder / "fusion_config.json").is_file()


def test_fusion_build_refuses_an_output_that_would_delete_files_before_training(tmp_path, sentiment_dir):
    (tmp_path / "out" / "ensemble").mkdir(parents=True)
    (tmp_path / "out" / "ensemble" / "notes.txt").write_text("mine")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"output: out\ndata:\n  path: {sentiment_dir}\nmembers:\n  - kind: sklearn\n"
                      "    pipeline: tfidf_logreg\n")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["build", str(recipe), "--quiet"])
    assert code == 2 and "not empty and is not a saved ensemble" in err.getvalue()
    assert "data:" not in out.getvalue()  # refused before any data was loaded or member trained
    assert (tmp_path / "out" / "ensemble" / "notes.txt").read_text() == "mine"


# --- fusion_config.json is checksummed; every file loading reads is listed ----------------------------------------


def test_an_edited_config_is_refused_by_its_checksum(saved_tfidf, tmp_path):
    directory = copy_of(saved_tfidf, tmp_path)
    before = Ensemble.from_pretrained(directory, cache_dir="memory").predict(["a great film", "a dull film"])
    # swapping the label names flips every prediction, and no other file changes: only the checksum can tell
    edit_saved_config(directory, lambda c: c.update(labels=c["labels"][::-1]), reseal=False)
    with pytest.raises(ChecksumError, match=r"fusion_config\.json was changed after it was saved.*save_pretrained"):
        Ensemble.from_pretrained(directory, cache_dir="memory")
    code, out, err = run("inspect", directory)
    assert code == 2 and "was changed after it was saved" in err
    edit_saved_config(directory, lambda c: c.update(labels=c["labels"][::-1]), reseal=False)  # back as saved
    assert list(Ensemble.from_pretrained(directory, cache_dir="memory").predict(["a great film", "a dull film"])) \
        == list(before)


def test_a_config_without_its_checksum_is_refused(saved_tfidf, tmp_path):
    directory = copy_of(saved_tfidf, tmp_path)
    edit_saved_config(directory, lambda c: c.pop("checksum"), reseal=False)
    with pytest.raises(PersistenceError, match="has no 'checksum'"):
        Ensemble.from_pretrained(directory, cache_dir="memory")


def test_a_member_file_missing_from_files_is_refused_even_with_a_valid_checksum(saved_tfidf, tmp_path):
    directory = copy_of(saved_tfidf, tmp_path)
    config = json.loads((directory / "fusion_config.json").read_text())
    relative = next(k for k in config["files"] if k.startswith("members/"))
    (directory / relative).write_bytes((directory / relative).read_bytes()[:-7] + b"garbage")  # a corrupted file
    edit_saved_config(directory, lambda c: c["files"].pop(relative))  # ...whose entry a forger removed
    with pytest.raises(PersistenceError, match=rf"does not list '{re.escape(relative)}'.*loading would read it"):
        Ensemble.from_pretrained(directory, cache_dir="memory")
    code, out, err = run("inspect", directory)
    assert code == 2 and f"UNLISTED  {relative}" in out and relative in err


def test_a_file_added_to_a_member_folder_is_refused(saved_tfidf, tmp_path):
    directory = copy_of(saved_tfidf, tmp_path)
    config = json.loads((directory / "fusion_config.json").read_text())
    (directory / config["members"][0]["dir"] / "extra.skops").write_bytes(b"not saved by fusion")
    with pytest.raises(PersistenceError, match=r"does not list .*extra\.skops"):
        Ensemble.from_pretrained(directory, cache_dir="memory")


def test_the_fuser_file_must_be_listed(saved_tfidf, tmp_path):
    directory = copy_of(saved_tfidf, tmp_path)
    edit_saved_config(directory, lambda c: c["files"].pop("fuser.safetensors"))
    with pytest.raises(PersistenceError, match=r"does not list 'fuser\.safetensors'"):
        Ensemble.from_pretrained(directory, cache_dir="memory")


# --- crafted folders: none of from_pretrained, inspect and predict runs anything -----------------------------------

EVIL_CODE = "from pathlib import Path\nPath({marker!r}).write_text('code ran')\n"


@pytest.fixture(scope="module")
def saved_mixed(tmp_path_factory, toy_sentiment, bert_encoder_dir, bert_classifier_dir) -> Path:
    """A fine-tuned encoder (its backbone saved in the folder), a scikit-learn member and a classifier."""
    from fusion import HFEncoder, TrainConfig

    directory = tmp_path_factory.mktemp("crafted") / "mixed"
    finetune = TrainConfig(learning_rate=1e-3, max_epochs=1, batch_size=32, patience=None, show_progress=False)
    members = [HFEncoder(bert_encoder_dir, finetune=True, train_config=finetune, name="ft", show_progress=False),
               tfidf_member(), HFClassifier(bert_classifier_dir, name="bert", show_progress=False)]
    ens = Ensemble(members, fuser=MeanFuser(), labels=LABELS, cache_dir="memory")
    ens.fit(toy_sentiment["train"], toy_sentiment["validation"]).save_pretrained(directory)
    return directory


def _relist(config: dict, directory: Path) -> None:
    """What a forger does after changing files: record every file's sha256 again."""
    config["files"] = {p.relative_to(directory).as_posix(): sha256_file(p) for p in sorted(directory.rglob("*"))
                       if p.is_file() and p.name not in ("fusion_config.json", "README.md")}


def _stacking_meta(directory: Path, marker: Path, tmp_path: Path) -> None:
    meta = {"sklearn": "sklearn.datasets.dump_svmlight_file", "params": {"X": [[1.0]], "y": [0], "f": str(marker)}}
    edit_saved_config(directory, lambda c: c["fuser"].update(kind="stacking", config={"meta": meta}))


def _remote_code(directory: Path, marker: Path, tmp_path: Path) -> None:
    backbone = directory / "members" / "0-ft" / "backbone"
    (backbone / "modeling_evil.py").write_text(EVIL_CODE.format(marker=str(marker)) + "from transformers import "
                                               "BertModel as EvilModel\n")
    model_config = json.loads((backbone / "config.json").read_text())
    model_config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel", "AutoConfig": "modeling_evil.EvilModel"}
    (backbone / "config.json").write_text(json.dumps(model_config))

    def change(c: dict) -> None:
        c["members"][0]["config"]["trust_remote_code"] = True
        _relist(c, directory)
    edit_saved_config(directory, change)


def _package_module(directory: Path, marker: Path, tmp_path: Path) -> None:
    (directory / "evil_pkg.py").write_text(EVIL_CODE.format(marker=str(marker)) + "def get_model_path():\n"
                                           "    return '.'\n")
    edit_saved_config(directory, lambda c: [m["config"].update(model="package:evil_pkg") for m in c["members"]
                                            if m["kind"] != "sklearn"])


def _outside_path(directory: Path, marker: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    shutil.copytree(directory / "members" / "1-tfidf", outside)
    (outside / "evil.py").write_text(EVIL_CODE.format(marker=str(marker)))
    edit_saved_config(directory, lambda c: c["members"][1].update(dir=str(outside)))


def _symlinked_member(directory: Path, marker: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    shutil.move(directory / "members" / "1-tfidf", outside)
    (directory / "members" / "1-tfidf").symlink_to(outside, target_is_directory=True)


def _edited_pooling(directory: Path, marker: Path, tmp_path: Path) -> None:
    edit_saved_config(directory, lambda c: c["members"][0]["config"].update(pooling="max"), reseal=False)


def _unknown_key(directory: Path, marker: Path, tmp_path: Path) -> None:
    edit_saved_config(directory, lambda c: c["members"][0].update(on_load=f"exec(open({str(marker)!r}))"))


# attack: (craft, what from_pretrained and `fusion predict` do: None = load and predict, or a message fragment)
ATTACKS = {
    "stacking-meta-callable": (_stacking_meta, "is not an allowed meta-learner"),
    "trust-remote-code-in-folder": (_remote_code, None),
    "package-module-in-folder": (_package_module, "package:evil_pkg"),
    "member-dir-outside": (_outside_path, "absolute path"),
    "member-dir-symlink-outside": (_symlinked_member, "outside the folder"),
    "edited-config": (_edited_pooling, "was changed after it was saved"),
    "unknown-key": (_unknown_key, "unknown key"),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_crafted_folder_runs_no_code(attack, saved_mixed, tmp_path, monkeypatch):
    craft, refused = ATTACKS[attack]
    directory = copy_of(saved_mixed, tmp_path)
    marker = tmp_path / "MARKER"
    craft(directory, marker, tmp_path)
    monkeypatch.chdir(directory)  # the folder's own modules are importable from the current folder...
    monkeypatch.syspath_prepend(str(directory))  # ...as when a script runs there
    sys.modules.pop("evil_pkg", None)

    if refused is None:
        ens = Ensemble.from_pretrained(directory, cache_dir="memory")
        assert ens.predict(["a great film"])[0] in LABELS
    else:
        with pytest.raises(FusionError, match=re.escape(refused)):
            Ensemble.from_pretrained(directory, cache_dir="memory")
    code, out, err = run("predict", directory, "--text", "a great film", "--quiet")
    assert code == (0 if refused is None else 2), (out, err)
    assert refused is None or refused in err
    code, out, err = run("inspect", directory)
    assert "Traceback" not in out + err
    assert code in (0, 2), (out, err)
    assert not marker.exists(), f"{attack}: code from the folder ran"
    sys.modules.pop("evil_pkg", None)
