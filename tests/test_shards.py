"""Sharded, resumable cache entries: shards are computed once, a stopped build resumes with the missing ones only,
a damaged shard is recomputed and never read, and the rows come back in the order of a single build."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fusion import Ensemble, HFClassifier, HFEncoder, LinearHead
from fusion.cache.shards import MANIFEST, ShardedEntry, shard_ranges
from fusion.cache.store import OutputCache
from fusion.engines import RowJob, ShardError
from fusion.engines.local import LocalEngine
from fusion.errors import ConfigError
from fusion.inputs import TextData

QUIET = {"show_progress": False}
KEY = ("member-fp", "data-fp", "outputs")


class Counting:
    """A row-wise job's function: logits from the rows' text lengths, counting the rows it ran on and failing on
    the rows listed in ``fail`` (``times`` times each)."""

    def __init__(self, fail: tuple[int, ...] = (), times: int = 10**9) -> None:
        self.calls: list[tuple[int, ...]] = []
        self.fail, self.times, self.failed = set(fail), times, 0

    def __call__(self, rows: TextData) -> dict[str, torch.Tensor]:
        starts = tuple(int(t.split()[0]) for t in rows.texts)
        if self.fail & set(starts) and self.failed < self.times:
            self.failed += 1
            raise RuntimeError(f"boom on {sorted(self.fail & set(starts))}")
        self.calls.append(starts)
        ids = torch.tensor(starts, dtype=torch.float32)
        return {"logits": torch.stack([ids, -ids], 1), "embeddings": ids[:, None].repeat(1, 3)}


def rows_data(n: int) -> TextData:
    return TextData([f"{i} word" + " x" * (i % 5) for i in range(n)])


def job(data: TextData, run, key=KEY) -> RowJob:
    return RowJob(key, data, run, "counting member")


def expected(n: int) -> dict[str, torch.Tensor]:
    ids = torch.arange(n, dtype=torch.float32)
    return {"logits": torch.stack([ids, -ids], 1), "embeddings": ids[:, None].repeat(1, 3)}


def shard_folder(cache: OutputCache) -> Path:
    return cache._shards_path(*KEY)


def test_shard_ranges_cover_the_rows_in_fixed_blocks():
    assert shard_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert shard_ranges(8, 4) == [(0, 4), (4, 8)]
    assert shard_ranges(0, 4) == [(0, 0)]
    with pytest.raises(ConfigError, match="shard_rows must be an integer >= 1; got 0"):
        shard_ranges(5, 0)
    with pytest.raises(ConfigError, match="shard_rows must be an integer >= 1"):
        OutputCache(memory_only=True, shard_rows=0)


def test_a_large_entry_is_written_as_shards_and_read_back_in_row_order(tmp_path):
    cache, run = OutputCache(tmp_path, shard_rows=4), Counting()
    out = cache.get_or_compute_rows(job(rows_data(10), run))
    torch.testing.assert_close(out, expected(10), rtol=0, atol=0)
    assert run.calls == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9)]  # each shard once, on exactly its rows
    assert cache.engine.computed == 3
    folder = shard_folder(cache)
    assert sorted(p.name for p in folder.iterdir()) == [
        MANIFEST, "rows-000000000-000000004.safetensors", "rows-000000004-000000008.safetensors",
        "rows-000000008-000000010.safetensors"]
    manifest = json.loads((folder / MANIFEST).read_text())
    assert (manifest["member"], manifest["data"], manifest["variant"]) == KEY
    assert manifest["rows"] == 10 and manifest["shard_rows"] == 4 and manifest["label"] == "counting member"
    assert [(s["start"], s["stop"]) for s in manifest["shards"]] == [(0, 4), (4, 8), (8, 10)]
    assert all(len(s["checksum"]) == 64 for s in manifest["shards"])
    # a second cache (another process) reads the entry from its shards and computes nothing
    again = Counting()
    fresh = OutputCache(tmp_path, shard_rows=4)
    torch.testing.assert_close(fresh.get_or_compute_rows(job(rows_data(10), again)), expected(10), rtol=0, atol=0)
    assert again.calls == [] and fresh.hits == 1 and fresh.misses == 0
    assert fresh.get(*KEY) is not None  # a plain lookup finds the sharded entry too
    assert fresh.seconds(*KEY) == pytest.approx(sum(s["seconds"] for s in manifest["shards"]))


def test_a_small_entry_stays_one_file_with_the_local_engine(tmp_path):
    cache, run = OutputCache(tmp_path, shard_rows=16), Counting()
    cache.get_or_compute_rows(job(rows_data(10), run))
    assert run.calls == [tuple(range(10))]
    assert cache._path(*KEY).is_file() and not shard_folder(cache).exists()


def test_a_failing_shard_stops_the_build_naming_the_member_and_rows_and_keeps_the_finished_shards(tmp_path):
    cache = OutputCache(tmp_path, shard_rows=4, engine=LocalEngine(retries=1))
    failing = Counting(fail=(8,))
    with pytest.raises(ShardError, match=r"counting member: computing its outputs on rows 8-10 of 10 failed 2 time"
                                         r"\(s\): RuntimeError\('boom on \[8\]'\)\. The 2 finished shard\(s\) of 3 "
                                         r"are kept") as caught:
        cache.get_or_compute_rows(job(rows_data(10), failing))
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert failing.failed == 2 and failing.calls == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert not (shard_folder(cache) / MANIFEST).exists()
    resumed, again = Counting(), OutputCache(tmp_path, shard_rows=4)
    out = again.get_or_compute_rows(job(rows_data(10), resumed))
    assert resumed.calls == [(8, 9)] and again.engine.computed == 1  # only the missing shard
    torch.testing.assert_close(out, expected(10), rtol=0, atol=0)


def test_a_shard_that_fails_once_is_retried(tmp_path, caplog):
    flaky = Counting(fail=(4,), times=1)
    with caplog.at_level(logging.WARNING, logger="fusion.engines"):
        out = OutputCache(tmp_path, shard_rows=4).get_or_compute_rows(job(rows_data(10), flaky))
    torch.testing.assert_close(out, expected(10), rtol=0, atol=0)
    assert flaky.failed == 1 and "rows 4-8 of 10 failed" in caplog.text and "retrying (1 of 2)" in caplog.text


def flip_a_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF  # inside the last tensor's data: the header still parses
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_a_damaged_shard_is_detected_recomputed_and_never_read(tmp_path, caplog, damage):
    OutputCache(tmp_path, shard_rows=4).get_or_compute_rows(job(rows_data(10), Counting()))
    shard = shard_folder(OutputCache(tmp_path)) / "rows-000000004-000000008.safetensors"
    if damage == "flipped":
        flip_a_byte(shard)
    else:
        shard.write_bytes(shard.read_bytes()[:40])
    again = Counting()
    with caplog.at_level(logging.WARNING, logger="fusion.cache"):
        out = OutputCache(tmp_path, shard_rows=4).get_or_compute_rows(job(rows_data(10), again))
    assert again.calls == [(4, 5, 6, 7)]
    torch.testing.assert_close(out, expected(10), rtol=0, atol=0)
    assert "rows-000000004-000000008.safetensors" in caplog.text
    assert ("damaged" if damage == "flipped" else "unreadable") in caplog.text


def test_a_shard_of_another_entry_or_range_is_not_read(tmp_path):
    entry = ShardedEntry(tmp_path / "e.shards", KEY, 10, 4)
    entry.write(0, expected(4), 0.1)
    other = ShardedEntry(tmp_path / "e.shards", ("member-fp", "other-data", "outputs"), 10, 4)
    assert other.missing() == [0, 1, 2] and not entry.path(0).exists()  # foreign: deleted, to be recomputed
    with pytest.raises(ValueError, match=r"rows 4-8 of 10 must hold 4 rows per output; got \{'logits': \(3, 2\)\}"):
        entry.write(1, {"logits": torch.zeros(3, 2)}, 0.1)


def test_two_builders_on_one_entry_leave_it_intact(tmp_path):
    def slow(rows: TextData) -> dict[str, torch.Tensor]:
        time.sleep(0.01)
        return Counting()(rows)

    results = []

    def build() -> None:
        results.append(OutputCache(tmp_path, shard_rows=3).get_or_compute_rows(job(rows_data(20), slow)))

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2
    for out in results:
        torch.testing.assert_close(out, expected(20), rtol=0, atol=0)
    torch.testing.assert_close(OutputCache(tmp_path, shard_rows=3).get(*KEY), expected(20), rtol=0, atol=0)


def test_a_killed_build_resumes_with_the_missing_shards_only(tmp_path):
    """A separate process builds an entry of 12 shards, slowly; it is killed once some shards are written, and the
    rerun computes exactly the shards that were not."""
    script = Path(__file__).with_name("_shard_build_script.py")
    process = subprocess.Popen([sys.executable, str(script), str(tmp_path), "0.3"], stderr=subprocess.PIPE)
    folder = OutputCache(tmp_path)._shards_path(*KEY)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(folder.glob("rows-*.safetensors"))) < 4:
        time.sleep(0.05)
    process.kill()
    process.wait()
    done = sorted(p.name for p in folder.glob("rows-*.safetensors"))
    assert 4 <= len(done) < 12, done
    assert not (folder / MANIFEST).exists()
    resumed = Counting()
    out = OutputCache(tmp_path, shard_rows=2).get_or_compute_rows(job(rows_data(24), resumed))
    torch.testing.assert_close(out, expected(24), rtol=0, atol=0)
    assert len(resumed.calls) == 12 - len(done)
    computed = {f"rows-{c[0]:09d}-{c[-1] + 1:09d}.safetensors" for c in resumed.calls}
    assert computed.isdisjoint(done) and len(computed | set(done)) == 12


def test_an_ensemble_over_sharded_outputs_predicts_as_over_one_file(bert_classifier_dir, bert_encoder_dir,
                                                                     toy_sentiment, tmp_path, one_torch_thread):
    """Real members: a classifier's outputs and an encoder's backbone pass, sharded (7 rows per shard) or not,
    give the same outputs row for row and the same fused predictions."""
    train = {k: v[:60] for k, v in toy_sentiment["train"].items()}
    validation = toy_sentiment["validation"]

    def members():
        return [HFClassifier(bert_classifier_dir, name="clf", **QUIET),
                HFEncoder(bert_encoder_dir, head=LinearHead(), name="enc", **QUIET)]

    fits = {}
    for name, shard_rows in (("one-file", 10_000), ("sharded", 7)):
        cache = OutputCache(tmp_path / name, shard_rows=shard_rows)
        ens = Ensemble(members(), fuser="mean", labels=["negative", "positive"], cache_dir=cache, cv=2).fit(train)
        fits[name] = (ens.predict_proba(validation), ens.member_outputs(TextData(validation["text"])))
    (one_proba, one_out), (sharded_proba, sharded_out) = fits["one-file"], fits["sharded"]
    torch.testing.assert_close(sharded_out.logits, one_out.logits, rtol=0, atol=1e-5)
    np.testing.assert_allclose(sharded_proba, one_proba, rtol=0, atol=1e-5)
    assert (sharded_proba.argmax(1) == one_proba.argmax(1)).all()
    folders = sorted(p.name.split("-")[0] for p in (tmp_path / "sharded").rglob("*.shards"))
    # the classifier and the backbone on the training rows (a prediction on 80 rows is a small call: memory only)
    assert folders == ["outputs", "pooled"]
    for manifest in (tmp_path / "sharded").rglob(MANIFEST):
        recorded = json.loads(manifest.read_text())
        assert recorded["shard_rows"] == 7 and len(recorded["shards"]) == -(-recorded["rows"] // 7)
    assert not list((tmp_path / "one-file").rglob("*.shards"))


def test_a_member_pickles_without_its_loaded_model_and_loads_it_again(bert_classifier_dir):
    import pickle

    member = HFClassifier(bert_classifier_dir, name="clf", **QUIET)
    rows = TextData(["good fine", "bad awful worse"])
    before = member.compute_rows(rows)["logits"]
    assert member._model is not None
    copy = pickle.loads(pickle.dumps(member))
    assert copy._model is None and len(pickle.dumps(member)) < 50_000  # the weights do not travel
    torch.testing.assert_close(copy.compute_rows(rows)["logits"], before, rtol=0, atol=0)


def test_cache_info_counts_a_sharded_entry_once_and_clear_removes_it_by_age(tmp_path):
    from fusion.cache.admin import cache_summary, clear_cache

    cache = OutputCache(tmp_path, shard_rows=4)
    cache.get_or_compute_rows(job(rows_data(10), Counting()))
    cache.get_or_compute_rows(job(rows_data(3), Counting(), key=("member-fp", "small-data", "outputs")))  # one file
    stopped = ShardedEntry(cache._shards_path("member-fp", "stopped-data", "outputs"),
                           ("member-fp", "stopped-data", "outputs"), 10, 4)
    stopped.write(0, expected(4), 0.1)  # a build that stopped after one shard: no manifest
    (row,) = cache_summary(tmp_path).members
    folder = shard_folder(cache)
    sizes = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert (row.label, row.entries, row.size) == ("counting member", 3, sizes)
    old = time.time() - 7200
    for path in stopped.folder.iterdir():
        os.utime(path, (old, old))
    result = clear_cache(tmp_path, older_than=3600)
    assert (result.removed, result.kept) == (1, 2) and not stopped.folder.exists() and folder.is_dir()
    assert clear_cache(tmp_path).removed == 4 + 1  # the sharded entry's 3 shards + manifest, and the one file
    assert not any(tmp_path.iterdir())
