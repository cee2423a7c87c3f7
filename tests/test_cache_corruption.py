"""A damaged cache never changes results: 24 corruptions (bit flips, sign flips, NaN) of stored member outputs,
each read by a fresh ensemble as a new process would, give exactly the probabilities of an undamaged run."""

from __future__ import annotations

import logging
import math
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from helpers import tfidf_member
from safetensors import safe_open

from fusion import Ensemble, HFClassifier, LinearFuser

LABELS = ["negative", "positive"]


def _float_offsets(path: Path, count: int) -> list[int]:
    """Byte offsets of ``count`` float32 values spread over the file's first float32 tensor."""
    header_size = struct.unpack("<Q", path.read_bytes()[:8])[0]
    with safe_open(str(path), framework="pt") as handle:
        import json

        header = json.loads(path.read_bytes()[8:8 + header_size])
        names = [k for k in handle.keys() if header[k]["dtype"] == "F32"]  # noqa: SIM118
    if not names:
        return []
    begin, end = header[names[0]]["data_offsets"]
    n = (end - begin) // 4
    return [8 + header_size + begin + 4 * (i * n // count) for i in range(count)]


def _bit(data: bytearray, at: int) -> None:
    data[at + 1] ^= 0x10  # a mantissa bit: a small change, the hardest to notice


def _sign(data: bytearray, at: int) -> None:
    data[at + 3] ^= 0x80


def _nan(data: bytearray, at: int) -> None:
    data[at:at + 4] = struct.pack("<f", math.nan)


@pytest.mark.slow
def test_no_corruption_of_cached_member_outputs_changes_fused_probabilities(
        tmp_path, toy_sentiment, bert_classifier_dir, caplog):
    cache = tmp_path / "cache"

    def run() -> np.ndarray:  # new member objects, as another process would build them
        members = [HFClassifier(bert_classifier_dir, name="bert", show_progress=False), tfidf_member()]
        ens = Ensemble(members, fuser=LinearFuser(), labels=LABELS, cache_dir=cache, cv=2)
        return ens.fit(toy_sentiment["train"], toy_sentiment["validation"]).predict_proba(
            toy_sentiment["validation"]["text"])

    reference = run()
    pristine = tmp_path / "pristine"
    shutil.copytree(cache, pristine)
    outputs = [p for p in sorted(pristine.rglob("*.safetensors")) if "-" in p.stem and not p.stem.startswith(
        ("tokens", "fitted"))]
    assert outputs, "no member output entries were cached"
    cases = [(path, damage, at) for path in outputs for damage in (_bit, _sign, _nan)
             for at in _float_offsets(path, 8)]
    cases = cases[:: max(1, len(cases) // 24)][:24]
    assert len(cases) == 24
    silent = 0
    for path, damage, at in cases:
        shutil.rmtree(cache)
        shutil.copytree(pristine, cache)
        target = cache / path.relative_to(pristine)
        data = bytearray(target.read_bytes())
        damage(data, at)
        target.write_bytes(bytes(data))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="fusion.cache.store"):
            proba = run()
        silent += not np.array_equal(proba, reference)
        assert any("damaged" in r.getMessage() for r in caplog.records), (path.name, damage.__name__)
    assert silent == 0
