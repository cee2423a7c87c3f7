"""fusion is published as ``fusion-ensembles`` ("fusion" on PyPI is an unrelated web framework); it imports as
``fusion``, and the README and every model card say how to install it."""

from __future__ import annotations

import re
from pathlib import Path

from helpers import tfidf_member
from tiny_models import make_toy_sentiment

from fusion import Ensemble
from fusion.ensemble.persistence import DISTRIBUTION

REPO = Path(__file__).resolve().parent.parent


def test_the_distribution_is_not_the_taken_name_and_is_used_everywhere():
    pyproject = (REPO / "pyproject.toml").read_text()  # (tomllib is Python 3.11+; fusion supports 3.10)
    assert re.search(r'^\[project\]\nname = "([^"]+)"', pyproject, re.M)[1] == DISTRIBUTION == "fusion-ensembles"
    assert re.search(r'^\[project\.scripts\]\nfusion = "fusion\.cli:main"', pyproject, re.M)  # the command keeps its name
    assert f"pip install {DISTRIBUTION}" in (REPO / "README.md").read_text()


def test_the_model_card_says_how_to_install_fusion_and_records_its_version(tmp_path):
    ens = Ensemble([tfidf_member()], labels=["negative", "positive"], cache_dir="memory")
    directory = ens.fit(make_toy_sentiment(40, 0)).save_pretrained(tmp_path / "ens")
    card = (directory / "README.md").read_text()
    assert f"pip install {DISTRIBUTION}" in card and "imports as `fusion`" in card
    assert Ensemble.from_pretrained(directory, cache_dir="memory").predict(["good"])[0] in ("negative", "positive")
