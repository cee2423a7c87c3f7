"""The output cache on disk by default: where it lives, persistence across cache objects and processes,
memory-only caches, damaged files, tokenisations kept in it, and ``fusion cache info|clear``."""

from __future__ import annotations

import logging
import math
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import fusion.batching
import fusion.cache.store
from fusion.batching import cached_tokenize
from fusion.cache.admin import cache_summary, clear_cache, format_size, parse_duration
from fusion.cache.store import EntryCost, OutputCache, default_cache_dir, entry_name
from fusion.cli import main
from fusion.errors import ConfigError
from fusion.io import sha256_tensors

MEMBER, DATA = "a1" * 32, "d4" * 32  # fingerprints are hex sha256 digests
DAY = 86400.0
FUSION_DIR = str(Path(fusion.batching.__file__).parent)


class Compute:
    """A compute function that counts its calls."""

    def __init__(self, rows: int = 2) -> None:
        self.calls, self.rows = 0, rows

    def __call__(self) -> dict[str, torch.Tensor]:
        self.calls += 1
        return {"logits": torch.arange(3.0 * self.rows).view(self.rows, 3)}


def entry_files(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*.safetensors"))


def age(path: Path, days: float) -> None:
    """Make a file look last used ``days`` ago."""
    when = time.time() - days * DAY
    os.utime(path, (when, when))


# ---------------------------------------------------------------- where the cache lives


@pytest.mark.parametrize(("env", "expected"), [
    ({"FUSION_CACHE": "fc", "HF_HOME": "hf", "XDG_CACHE_HOME": "xdg"}, "fc"),
    ({"HF_HOME": "hf", "XDG_CACHE_HOME": "xdg"}, "hf/fusion"),
    ({"XDG_CACHE_HOME": "xdg"}, "xdg/huggingface/fusion"),
    ({}, "home/.cache/huggingface/fusion"),
    ({"FUSION_CACHE": "", "HF_HOME": "hf"}, "hf/fusion"),  # empty means unset
])
def test_cache_home_follows_fusion_cache_then_hf_home_then_xdg_then_home(monkeypatch, tmp_path, env, expected):
    for name in ("FUSION_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name, value in env.items():
        monkeypatch.setenv(name, str(tmp_path / value) if value else "")
    assert default_cache_dir() == tmp_path / expected
    assert OutputCache().directory == tmp_path / expected


def test_each_test_gets_its_own_empty_cache_home(_private_output_cache):
    assert default_cache_dir() == _private_output_cache and not list(_private_output_cache.iterdir())


# ---------------------------------------------------------------- persistence


def test_default_cache_persists_and_a_second_cache_object_reads_it_back(_private_output_cache):
    first = OutputCache()
    first.get_or_compute(MEMBER, DATA, Compute(), label="hf_encoder minilm-mean (package:x)")
    (path,) = entry_files(_private_output_cache)
    assert path == _private_output_cache / MEMBER[:24] / f"outputs-{DATA[:24]}.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["label"] == "hf_encoder minilm-mean (package:x)" and float(meta["seconds"]) >= 0
    compute, second = Compute(), OutputCache()  # as a new process would make it
    out = second.get_or_compute(MEMBER, DATA, compute)
    assert compute.calls == 0 and (second.hits, second.misses) == (1, 0)
    assert out["logits"].tolist() == Compute()()["logits"].tolist()
    assert second.seconds(MEMBER, DATA) == first.seconds(MEMBER, DATA)


class Clock:
    """A stand-in for the cache's ``time``: it only moves when a computation says it took ``seconds``."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def step(self, seconds: float, reuse: list | tuple = (),
             cache: OutputCache | None = None) -> Callable[[], dict[str, torch.Tensor]]:
        """A compute function that takes ``seconds`` of its own, after fetching ``reuse`` (key, compute) pairs."""
        def compute() -> dict[str, torch.Tensor]:
            for (member, data, variant), inner in reuse:
                cache.get_or_compute(member, data, inner, variant)
            self.now += seconds
            return Compute()()
        return compute


TOKENS, POOLED = ("t0" * 32, DATA, "tokens-max8"), ("b0" * 32, DATA, "pooled")
MEAN_HEAD, CLS_HEAD = (MEMBER, DATA, "outputs"), ("c1" * 32, DATA, "outputs")


def test_cost_keeps_own_seconds_apart_from_every_reused_entry_flattened(_private_output_cache, monkeypatch):
    """Two heads on one backbone pass (which reused a tokenisation): each lists both entries it shares, at their
    own seconds, so together they count the backbone and the tokenisation once; a second cache reads it back."""
    clock = Clock()
    monkeypatch.setattr(fusion.cache.store, "time", SimpleNamespace(perf_counter=clock.perf_counter))
    cache = OutputCache()
    backbone = clock.step(8.0, [(TOKENS, clock.step(1.0))], cache)
    cache.get_or_compute(*MEAN_HEAD[:2], clock.step(0.5, [(POOLED, backbone)], cache))  # all computed inside
    cache.get_or_compute(*CLS_HEAD[:2], clock.step(0.25, [(POOLED, backbone)], cache))  # the pass is cached
    shared = {entry_name(*POOLED): 8.0, entry_name(*TOKENS): 1.0}
    assert cache.cost(*POOLED) == EntryCost(8.0, {entry_name(*TOKENS): 1.0})
    assert cache.cost(*MEAN_HEAD) == EntryCost(0.5, shared) and cache.seconds(*MEAN_HEAD) == 9.5
    assert cache.cost(*CLS_HEAD) == EntryCost(0.25, shared) and cache.seconds(*CLS_HEAD) == 9.25
    assert EntryCost.joint([cache.cost(*MEAN_HEAD), cache.cost(*CLS_HEAD)]).total == 9.75  # not 18.75
    second = OutputCache()  # as a new process would make it
    assert second.cost(*MEAN_HEAD) is None and second.get(*MEAN_HEAD) is not None
    assert second.cost(*MEAN_HEAD) == EntryCost(0.5, shared) and second.seconds(*MEAN_HEAD) == 9.5


def test_an_entry_written_without_the_cost_split_shares_nothing(_private_output_cache):
    path = _private_output_cache / MEMBER[:24] / f"outputs-{DATA[:24]}.safetensors"
    path.parent.mkdir(parents=True)
    meta = {"member": MEMBER, "data": DATA, "variant": "outputs", "seconds": "2.5",
            "checksum": sha256_tensors(Compute()())}
    save_file(Compute()(), str(path), metadata=meta)
    cache = OutputCache()
    assert cache.get(MEMBER, DATA) is not None
    assert cache.cost(MEMBER, DATA) == EntryCost(2.5, {}) and cache.seconds(MEMBER, DATA) == 2.5


def test_memory_only_cache_writes_no_file_and_is_bounded(_private_output_cache):
    cache, compute = OutputCache(max_memory_entries=2, memory_only=True), Compute()
    assert cache.directory is None
    for data in ("one", "two", "three"):
        cache.get_or_compute(MEMBER, data, compute)
    assert not list(_private_output_cache.rglob("*")), "a memory-only cache wrote files"
    assert cache.get(MEMBER, "one") is None and cache.get(MEMBER, "three") is not None  # least recent dropped
    with pytest.raises(ConfigError, match="memory_only=True"):
        OutputCache(_private_output_cache, memory_only=True)


def test_memory_bound_drops_from_memory_but_the_file_stays(tmp_path):
    cache, compute = OutputCache(tmp_path, max_memory_entries=1), Compute()
    cache.get_or_compute(MEMBER, "one", compute)
    cache.get_or_compute(MEMBER, "two", compute)
    assert cache.get_or_compute(MEMBER, "one", compute) is not None and compute.calls == 2


def test_tokenisations_have_their_own_small_memory_pool():
    cache = OutputCache(memory_only=True, max_token_entries=1)
    cache.put(MEMBER, DATA, Compute()())
    for length in (8, 16):
        cache.put("tokenizer", DATA, {"lengths": torch.ones(2, dtype=torch.long)}, f"tokens-max{length}")
    assert cache.get(MEMBER, DATA) is not None, "tokenisations evicted member outputs"
    assert cache.get("tokenizer", DATA, "tokens-max8") is None and cache.get("tokenizer", DATA, "tokens-max16") is not None


def test_corrupted_file_in_the_default_cache_is_recomputed(_private_output_cache, caplog):
    OutputCache().put(MEMBER, DATA, Compute()())
    (path,) = entry_files(_private_output_cache)
    path.write_bytes(b"\x00" * 40)
    compute, cache = Compute(), OutputCache()
    with caplog.at_level(logging.WARNING, logger="fusion.cache.store"):
        cache.get_or_compute(MEMBER, DATA, compute)
    assert compute.calls == 1 and "unreadable" in caplog.text
    assert OutputCache().get(MEMBER, DATA) is not None, "the recomputed entry replaced the damaged file"


def data_region_start(path: Path) -> int:
    """Where a safetensors file's tensor bytes begin: after the u64 (little-endian) header size and the header."""
    return 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]


def flip_byte(path: Path) -> None:
    """Flip one byte inside the tensor data (a high byte of a float, so the stored value really changes)."""
    data = bytearray(path.read_bytes())
    data[data_region_start(path) + 3 * 4 + 3] ^= 0xFF  # the last byte of the 4th float32
    path.write_bytes(bytes(data))


def write_nan(path: Path) -> None:
    """Overwrite the first stored float32 with NaN."""
    data = bytearray(path.read_bytes())
    start = data_region_start(path)
    data[start:start + 4] = struct.pack("<f", math.nan)
    path.write_bytes(bytes(data))


def strip_checksum(path: Path) -> None:
    """Rewrite the file as an entry written before checksums: the same tensors and metadata, no checksum."""
    with safe_open(str(path), framework="pt") as handle:
        meta = {k: v for k, v in handle.metadata().items() if k != "checksum"}
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    save_file(tensors, str(path), metadata=meta)


def test_every_entry_file_records_the_checksum_of_its_tensors(_private_output_cache):
    OutputCache().put(MEMBER, DATA, Compute()(), label="member")
    (path,) = entry_files(_private_output_cache)
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["checksum"] == sha256_tensors(Compute()()) and meta["label"] == "member"


@pytest.mark.parametrize(("damage", "message"), [
    (flip_byte, "damaged"),
    (write_nan, "damaged"),
    (strip_checksum, "no checksum"),
])
def test_a_damaged_or_unverifiable_entry_is_recomputed_logged_and_overwritten(
        _private_output_cache, caplog, damage, message):
    first = Compute()
    OutputCache().get_or_compute(MEMBER, DATA, first, label="member")
    (path,) = entry_files(_private_output_cache)
    damage(path)
    with safe_open(str(path), framework="pt") as handle:  # still a readable file for the right entry
        assert handle.metadata()["member"] == MEMBER
        assert handle.get_tensor("logits").tolist() != Compute()()["logits"].tolist() or damage is strip_checksum
    compute, cache = Compute(), OutputCache()  # as a new process would make it
    with caplog.at_level(logging.WARNING, logger="fusion.cache.store"):
        out = cache.get_or_compute(MEMBER, DATA, compute, label="member")
    assert compute.calls == 1 and (cache.hits, cache.misses) == (0, 1)
    assert out["logits"].tolist() == Compute()()["logits"].tolist()
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert str(path) in record.getMessage() and message in record.getMessage()
    assert "recomputing" in record.getMessage()
    again, third = Compute(), OutputCache()  # the file was overwritten with the recomputed entry
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fusion.cache.store"):
        repaired = third.get_or_compute(MEMBER, DATA, again)
    assert again.calls == 0 and third.hits == 1 and not caplog.records
    assert repaired["logits"].tolist() == Compute()()["logits"].tolist()
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()["checksum"] == sha256_tensors(Compute()()) and handle.metadata()["label"] == "member"


def test_an_in_memory_hit_does_not_hash(_private_output_cache, monkeypatch):
    cache = OutputCache()
    cache.get_or_compute(MEMBER, DATA, Compute())  # hashed once, to write the file
    calls = []
    monkeypatch.setattr(fusion.cache.store, "sha256_tensors", lambda tensors: calls.append(1) or "")
    for _ in range(3):
        cache.get_or_compute(MEMBER, DATA, Compute())
    assert calls == [] and cache.hits == 3


def test_a_memory_only_cache_does_not_hash(monkeypatch):
    calls = []
    monkeypatch.setattr(fusion.cache.store, "sha256_tensors", lambda tensors: calls.append(1) or "")
    OutputCache(memory_only=True).get_or_compute(MEMBER, DATA, Compute())
    assert calls == []


def test_a_failed_write_keeps_the_entry_in_memory_and_the_run_going(monkeypatch, caplog):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("fusion.cache.store.atomic_save_tensors", full_disk)
    cache, compute = OutputCache(), Compute()
    with caplog.at_level(logging.WARNING, logger="fusion.cache.store"):
        cache.get_or_compute(MEMBER, DATA, compute)
    assert "could not write" in caplog.text and cache.get(MEMBER, DATA) is not None


def test_a_key_that_is_not_a_plain_fingerprint_stays_inside_the_cache(tmp_path):
    OutputCache(tmp_path).put("/some/path/../tokenizer", DATA, Compute()())
    (path,) = entry_files(tmp_path)
    assert path.parent.parent == tmp_path and len(path.parent.name) == 24
    assert OutputCache(tmp_path).get("/some/path/../tokenizer", DATA) is not None


def test_reading_an_entry_marks_it_as_used(_private_output_cache):
    OutputCache().put(MEMBER, DATA, Compute()())
    (path,) = entry_files(_private_output_cache)
    age(path, 40)
    OutputCache().get(MEMBER, DATA)
    assert time.time() - path.stat().st_mtime < 60


# ---------------------------------------------------------------- small prediction calls, bounded memory


def bookkeeping_sizes(cache: OutputCache) -> dict[str, int]:
    """The size of every container the cache object holds (its memory pools count their entries)."""
    sizes = {}
    for name, value in vars(cache).items():
        if isinstance(value, (dict, list, set, tuple)) or hasattr(value, "__len__"):
            sizes[name] = len(value)
    return sizes


def test_small_calls_write_no_file_and_memory_stays_bounded(tmp_path):
    cache = OutputCache(tmp_path, max_memory_entries=16, max_token_entries=2)
    for call in range(200):  # as 200 predictions of 8 texts: tokens, a backbone pass, two heads each
        data = f"{call:064x}"
        with cache.small_call(8):
            cache.get_or_compute("t0" * 32, data, Compute(8), "tokens-max8")
            cache.get_or_compute("b0" * 32, data, Compute(8), "pooled")
            cache.get_or_compute(MEMBER, data, Compute(8))
            cache.get_or_compute("c1" * 32, data, Compute(8))
    assert entry_files(tmp_path) == []
    assert bookkeeping_sizes(cache) == {"_memory": 16, "_token_memory": 2, "_fitted_memory": 0, "_frames": 0}
    assert cache.cost(MEMBER, f"{199:064x}") is not None and cache.cost(MEMBER, f"{0:064x}") is None
    assert cache.misses == 800


def test_a_large_call_writes_its_entries_and_a_small_calls_entry_is_written_once_a_large_call_uses_it(tmp_path):
    cache = OutputCache(tmp_path, small_call_rows=100)
    with cache.small_call(100):
        cache.get_or_compute(MEMBER, "large", Compute(100))
    with cache.small_call(99):
        cache.get_or_compute(MEMBER, "small", Compute(99))
        assert cache.get(MEMBER, "small") is not None
    assert [p.name.split("-")[1] for p in entry_files(tmp_path)] == [_file_name_part("large")]
    compute = Compute(99)
    assert cache.get_or_compute(MEMBER, "small", compute) is not None and compute.calls == 0  # e.g. an evaluation
    assert len(entry_files(tmp_path)) == 2 and OutputCache(tmp_path).get(MEMBER, "small") is not None
    assert OutputCache(tmp_path).seconds(MEMBER, "small") is None  # not until read
    second = OutputCache(tmp_path)
    assert second.get(MEMBER, "small") is not None and second.seconds(MEMBER, "small") >= 0


def _file_name_part(key: str) -> str:
    return fusion.cache.store._file_part(key) + ".safetensors"


def test_small_call_rows_must_be_a_count():
    with pytest.raises(ConfigError, match="small_call_rows"):
        OutputCache(memory_only=True, small_call_rows=-1)


def test_small_predictions_of_a_fitted_ensemble_write_no_file_and_keep_memory_bounded(bert_encoder_dir, tmp_path):
    from helpers import tfidf_member
    from tiny_models import make_toy_sentiment

    from fusion import Ensemble, HFEncoder, TrainConfig

    encoder = HFEncoder(bert_encoder_dir, show_progress=False, train_config=TrainConfig(max_epochs=2,
                                                                                        show_progress=False))
    cache = OutputCache(tmp_path, max_memory_entries=32, small_call_rows=50)
    ens = Ensemble([encoder, tfidf_member()], labels=["negative", "positive"], cache_dir=cache, cv=2)
    ens.fit(make_toy_sentiment(40, 0))
    written = entry_files(tmp_path)
    for call in range(50):  # 150 outputs entries and 50 tokenisations: past both memory bounds
        ens.predict_proba([f"call {call} text {i} was good" for i in range(8)])
    assert entry_files(tmp_path) == written
    assert bookkeeping_sizes(cache) == {"_memory": 32, "_token_memory": 8, "_fitted_memory": 0, "_frames": 0}
    ens.predict(make_toy_sentiment(50, 1)["text"])  # not a small call: tokens, backbone pass, two members
    assert len(entry_files(tmp_path)) == len(written) + 4


# ---------------------------------------------------------------- tokenisations in the cache


def test_tokenisations_are_stored_in_the_cache_and_reused_by_another_cache_object(
        bert_encoder_dir, monkeypatch, _private_output_cache):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bert_encoder_dir)
    calls, real = [], fusion.batching.tokenize
    monkeypatch.setattr(fusion.batching, "tokenize", lambda tok, texts, *a, **k: calls.append(len(texts)) or real(
        tok, texts, *a, **k))
    texts, key = ["good film", "bad plot and dull acting", "fine"], ("tok" * 8, DATA)
    first = cached_tokenize(tokenizer, texts, 16, key, OutputCache())
    second_cache = OutputCache()
    again = cached_tokenize(tokenizer, texts, 16, key, second_cache)
    assert calls == [len(texts)] and second_cache.hits == 1
    assert again.batch([0, 1, 2], 0)["input_ids"].tolist() == first.batch([0, 1, 2], 0)["input_ids"].tolist()
    (path,) = entry_files(_private_output_cache)
    assert path.name.startswith("tokens-max16-")
    assert cache_summary().members[0].label.startswith("tokenizer ")


def test_a_second_process_computes_nothing(_private_output_cache):
    script = (  # fusion/__init__ (transformers, scikit-learn: seconds) is skipped: only fusion.cache runs
        "import sys, types\n"
        f"sys.modules['fusion'] = package = types.ModuleType('fusion'); package.__path__ = [{FUSION_DIR!r}]\n"
        "import torch\n"
        "from fusion.cache.store import OutputCache\n"
        "cache = OutputCache()\n"
        f"cache.get_or_compute({MEMBER!r}, {DATA!r}, lambda: {{'logits': torch.ones(2, 3)}}, label='script member')\n"
        "print(cache.misses, cache.hits)\n"
    )
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
            for _ in range(2)]
    assert [run.returncode for run in runs] == [0, 0], runs[-1].stderr[-2000:]
    assert [run.stdout.split() for run in runs] == [["1", "0"], ["0", "1"]]
    assert len(entry_files(_private_output_cache)) == 1


# ---------------------------------------------------------------- fusion cache info / clear


def populate(directory: Path) -> dict[str, list[Path]]:
    """Two labelled members (one with two entries) and one entry without a label."""
    cache = OutputCache(directory)
    cache.put("aa" * 32, "d1" * 32, Compute(4)(), label="member A")
    cache.put("aa" * 32, "d2" * 32, Compute(50)(), "embeddings", label="member A")
    cache.put("bb" * 32, "d1" * 32, Compute(9)(), label="member B")
    OutputCache(directory).put("cc" * 32, "d1" * 32, Compute()())
    return {name: sorted((directory / (name * 12)).glob("*.safetensors")) for name in ("aa", "bb", "cc")}


def test_summary_has_one_row_per_member_with_label_entries_and_size(tmp_path):
    files = populate(tmp_path)
    age(files["bb"][0], 2)
    rows = {m.fingerprint: m for m in cache_summary(tmp_path).members}
    assert {f: (m.label, m.entries, m.size) for f, m in rows.items()} == {
        name * 12: (label, len(files[name]), sum(p.stat().st_size for p in files[name]))
        for name, label in (("aa", "member A"), ("bb", "member B"), ("cc", "unknown"))
    }
    assert [m.fingerprint for m in cache_summary(tmp_path).members][-1] == "bb" * 12  # least recently used last


def test_info_command_prints_the_home_rows_and_total(capsys):
    files = populate(default_cache_dir())
    total = sum(p.stat().st_size for group in files.values() for p in group)
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"cache: {default_cache_dir()}"
    row = next(line for line in out if line.startswith("member A"))
    assert row.split()[3:5] == ["2", format_size(sum(p.stat().st_size for p in files["aa"])).split()[0]]
    assert any(line.startswith("unknown") for line in out) and "seconds ago" in row
    assert out[-1].split()[1:] == ["4", *format_size(total).split()]


def test_info_on_an_empty_or_missing_cache(tmp_path, capsys):
    assert main(["cache", "info", "--cache-dir", str(tmp_path / "nothing-yet")]) == 0
    assert capsys.readouterr().out.splitlines() == [f"cache: {tmp_path / 'nothing-yet'}", "no entries"]


def test_clear_older_than_removes_only_entries_not_used_since(tmp_path, capsys):
    files = populate(tmp_path)
    old = [*files["aa"], files["cc"][0]]
    for path in old:
        age(path, 40)
    age(files["bb"][0], 10)
    freed = format_size(sum(p.stat().st_size for p in old))
    assert main(["cache", "clear", "--older-than", "30d", "--cache-dir", str(tmp_path)]) == 0
    assert entry_files(tmp_path) == files["bb"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bb" * 12], "emptied member folders are removed"
    assert capsys.readouterr().out == f"removed 3 files ({freed}) from {tmp_path}; kept 1 used within 30d\n"


def test_clear_removes_everything_and_reports_the_bytes(tmp_path):
    files = populate(tmp_path)
    total = sum(p.stat().st_size for group in files.values() for p in group)
    result = clear_cache(tmp_path)
    assert (result.removed, result.freed, result.kept) == (4, total, 0)
    assert tmp_path.is_dir() and not list(tmp_path.iterdir())
    assert clear_cache(tmp_path).removed == 0


def test_clear_leaves_other_files_and_fresh_staging_files_alone(tmp_path):
    populate(tmp_path)
    member = tmp_path / ("aa" * 12)
    stale, fresh = member / ".outputs-x.safetensors.tmp-1-abc", member / ".outputs-y.safetensors.tmp-2-def"
    notes = tmp_path / "notes.txt"
    for path in (stale, fresh, notes):
        path.write_text("x")
    age(stale, 1)
    clear_cache(tmp_path)
    assert not stale.exists() and fresh.exists() and notes.exists()


@pytest.mark.parametrize(("text", "seconds"), [("30d", 30 * DAY), ("12h", 43200), ("90m", 5400), ("45s", 45),
                                                ("1.5h", 5400), (" 2D ", 2 * DAY), ("0s", 0)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "3w", "-1d", "d", "30 days", "1e3s", "twelve hours"])
def test_bad_durations_say_what_is_accepted(text):
    with pytest.raises(ConfigError, match=r"is not a duration .*30d, 12h, 90m or 45s"):
        parse_duration(text)


@pytest.mark.parametrize(("argv", "code", "message"), [
    (["cache", "clear", "--older-than", "3 weeks"], 2, "error: '3 weeks' is not a duration"),
    (["cache", "info", "--cache-dir", "{file}"], 2, "is a file; point --cache-dir"),
    (["cache", "clear", "--cache-dir", "{file}"], 2, "is a file; point --cache-dir"),
    (["cache"], 2, "required"),
    (["cache", "info"], 0, ""),
    (["cache", "clear"], 0, ""),
])
def test_cache_command_exit_codes(tmp_path, capsys, argv, code, message):
    (tmp_path / "f").write_text("not a folder")
    assert main([arg.replace("{file}", str(tmp_path / "f")) for arg in argv]) == code
    assert message in capsys.readouterr().err
