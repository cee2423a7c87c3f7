"""The Ray engine: member inference as Ray Data batch inference writes the same shards as the local engine, bit for
bit; a failing shard is retried, then reported with the member, its rows and the original error, the finished
shards kept for the next build; ``--engine`` reaches the engine. Ray's start-up is tens of seconds on a busy
machine, so the tests that start it share one local instance (two CPUs) and are marked slow."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

import test_shards  # noqa: E402
from helpers import tfidf_member  # noqa: E402
from test_shards import Counting, expected, rows_data  # noqa: E402

from fusion import Ensemble, HFClassifier, HFEncoder, LinearHead  # noqa: E402
from fusion.cache.shards import MANIFEST, ShardedEntry  # noqa: E402
from fusion.cache.store import OutputCache  # noqa: E402
from fusion.cli import main  # noqa: E402
from fusion.engines import RowJob, ShardError, make_engine  # noqa: E402
from fusion.engines.local import LocalEngine  # noqa: E402
from fusion.engines.ray import RayEngine  # noqa: E402
from fusion.errors import ConfigError  # noqa: E402
from fusion.inputs import TextData  # noqa: E402

QUIET = {"show_progress": False}


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module. The jobs defined in test modules travel to the workers by value
    (``cloudpickle.register_pickle_by_value``): the workers could not import a test module by name."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    for module in (sys.modules[__name__], test_shards):
        ray.cloudpickle.register_pickle_by_value(module)
    yield
    for module in (sys.modules[__name__], test_shards):
        ray.cloudpickle.unregister_pickle_by_value(module)
    ray.shutdown()


def entries(directory: Path) -> dict[tuple[str, str, str], dict[str, torch.Tensor]]:
    """Every sharded entry under ``directory``, read back (every shard verified), by key."""
    found = {}
    for manifest in directory.rglob(MANIFEST):
        recorded = json.loads(manifest.read_text())
        key = (recorded["member"], recorded["data"], recorded["variant"])
        entry = ShardedEntry.existing(manifest.parent, key)
        assert entry is not None, manifest
        found[key] = entry.read()[0]
    return found


# --- without Ray running ----------------------------------------------------------------------------------------


def test_the_engine_is_chosen_by_name_and_checked():
    assert isinstance(make_engine("ray"), RayEngine) and not RayEngine.local
    assert repr(RayEngine(concurrency=3, retries=1)) == \
        "RayEngine(address=None, concurrency=3, num_gpus=None, num_cpus=1, retries=1)"
    with pytest.raises(ConfigError, match="concurrency must be an integer >= 1"):
        RayEngine(concurrency=0)
    with pytest.raises(ConfigError, match="num_gpus must be a number >= 0"):
        RayEngine(num_gpus=-1)
    with pytest.raises(ConfigError, match="retries must be an integer >= 0"):
        RayEngine(retries=-1)


def test_without_ray_installed_the_error_says_how_to_install_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(ConfigError, match=r'pip install "fusion-ensembles\[ray\]" \(i.e. fusion\[ray\]\)'):
        Ensemble([tfidf_member()], engine="ray")


def test_the_engine_is_where_outputs_are_computed_not_what_is_learnt(tmp_path):
    ens = Ensemble([tfidf_member()], cache_dir=tmp_path, engine="ray")
    assert ens.cache.engine.name == "ray" and ens.get_params()["engine"] == "ray"
    from sklearn.base import clone

    assert clone(ens).cache.engine.name == "ray"
    ens.set_params(engine="local")
    assert ens.cache.engine.name == "local" and ens.cache.directory == tmp_path
    given = OutputCache(tmp_path)
    Ensemble([tfidf_member()], cache_dir=given, engine=RayEngine(retries=0))
    assert given.engine.name == "ray" and given.engine.retries == 0  # a given cache gets the engine named
    Ensemble([tfidf_member()], cache_dir=given)
    assert given.engine.name == "ray"  # and keeps its own when none is named


class RecordingRay(RayEngine):
    """The Ray engine's settings, computing here (no Ray start): records the jobs it was given."""

    jobs: list[str] = []

    def build(self, job: RowJob, entry, show_progress: bool = True) -> None:
        RecordingRay.jobs.append(job.label)
        LocalEngine(self.retries).build(job, entry, show_progress)


def test_the_command_line_engine_reaches_the_cache(sentiment_dir, tmp_path, monkeypatch, capsys):
    from fusion.engines import ENGINES

    monkeypatch.setitem(ENGINES._items, "ray", RecordingRay)
    RecordingRay.jobs.clear()
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"output: out\ndata:\n  path: {sentiment_dir}\nmembers:\n  - kind: sklearn\n    name: tfidf\n"
                      "    pipeline: {name: tfidf_logreg}\nfusers: [mean]\nensemble: {cv: 2, cache_dir: cache}\n")
    assert main(["build", str(recipe), "--engine", "ray", "--quiet"]) == 0
    built = len(RecordingRay.jobs)
    assert built >= 2 and set(RecordingRay.jobs) == {"sklearn tfidf"}  # the folds' outputs, at least
    assert "engine: ray" in (tmp_path / "out" / "recipe.yaml").read_text()  # the recipe as it ran
    assert "engine" not in json.loads((tmp_path / "out" / "ensemble" / "fusion_config.json").read_text())
    assert main(["evaluate", str(tmp_path / "out" / "ensemble"), "--data", str(sentiment_dir), "--engine", "ray",
                 "--cache-dir", str(tmp_path / "other-cache"), "--quiet"]) == 0
    assert len(RecordingRay.jobs) == built + 1  # the saved member on the validation rows, in a new cache
    assert main(["build", str(recipe), "--engine", "spark", "--quiet"]) == 2
    assert "invalid choice: 'spark'" in capsys.readouterr().err


# --- on a local Ray instance --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ray_writes_the_shards_the_local_engine_writes_bit_for_bit(local_ray, bert_classifier_dir, bert_encoder_dir,
                                                                    toy_sentiment, tmp_path, one_torch_thread):
    """A classifier's outputs, an encoder's backbone pass and a TF-IDF member's outputs, 16 rows per shard: the Ray
    engine's entries equal the local engine's exactly, and so do the fused predictions. One actor per build: two
    would only contend for the two cores."""
    train = {k: v[:60] for k, v in toy_sentiment["train"].items()}
    validation = toy_sentiment["validation"]
    fits = {}
    for engine in ("local", "ray"):
        members = [HFClassifier(bert_classifier_dir, name="clf", **QUIET),
                   HFEncoder(bert_encoder_dir, head=LinearHead(), name="enc", **QUIET), tfidf_member()]
        cache = OutputCache(tmp_path / engine, shard_rows=16)
        ens = Ensemble(members, fuser="linear", labels=["negative", "positive"], cache_dir=cache, cv=2,
                       engine=RayEngine(concurrency=1) if engine == "ray" else engine)
        fits[engine] = (ens.fit(train), entries(tmp_path / engine))
    (local, local_entries), (remote, remote_entries) = fits["local"], fits["ray"]
    assert remote.cache.engine.name == "ray" and local.cache.engine.name == "local"
    # the classifier, the backbone pass and the fitted TF-IDF member, each on the training rows (out-of-fold outputs
    # are computed where each fold is fitted, not sharded)
    assert len(remote_entries) == 3 and set(remote_entries) == set(local_entries)
    for key, outputs in remote_entries.items():
        assert outputs.keys() == local_entries[key].keys()
        assert all(torch.equal(outputs[name], local_entries[key][name]) for name in outputs), key
    assert (remote.predict_proba(validation) == local.predict_proba(validation)).all()


class FailsOn:
    """A job failing on the shard holding row ``always`` every time, and on the one holding ``once`` the first time
    only (a marker file remembers it across workers)."""

    def __init__(self, always: int, once: int, marker: Path) -> None:
        self.always, self.once, self.marker, self.inner = always, once, marker, Counting()

    def __call__(self, rows: TextData) -> dict[str, torch.Tensor]:
        starts = {int(t.split()[0]) for t in rows.texts}
        if self.always in starts:
            raise ValueError(f"row {self.always} is cursed")
        if self.once in starts and not self.marker.exists():
            self.marker.touch()
            raise OSError("a flaky disk")
        return self.inner(rows)


@pytest.mark.slow
def test_a_failing_shard_is_retried_then_reported_with_the_finished_shards_kept(local_ray, tmp_path):
    data = rows_data(20)
    job = RowJob(("member-fp", "data-fp", "outputs"), data, FailsOn(5, 13, tmp_path / "flaked"), "counting member")
    cache = OutputCache(tmp_path / "cache", shard_rows=4, engine=RayEngine(retries=1))
    with pytest.raises(ShardError) as caught:
        cache.get_or_compute_rows(job)
    message = str(caught.value)
    assert message.startswith("counting member: computing its outputs on rows 4-8 of 20 failed 2 time(s): "
                              "ValueError: row 5 is cursed.")
    assert "The 4 finished shard(s) of 5 are kept" in message
    assert "row 5 is cursed" in str(caught.value.__cause__) and "Traceback" in str(caught.value.__cause__)
    assert (tmp_path / "flaked").exists()  # rows 12-16 failed once, and the retry wrote them
    folder = cache._shards_path(*job.key)
    assert sorted(p.name for p in folder.glob("rows-*")) == [
        f"rows-{a:09d}-{b:09d}.safetensors" for a, b in ((0, 4), (8, 12), (12, 16), (16, 20))]
    resumed = Counting()
    out = OutputCache(tmp_path / "cache", shard_rows=4).get_or_compute_rows(RowJob(job.key, data, resumed, job.label))
    assert resumed.calls == [(4, 5, 6, 7)]  # the local engine computes the missing shard only
    torch.testing.assert_close(out, expected(20), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="num_gpus=1 per actor, but the Ray cluster has 0 GPU"):
        RayEngine(num_gpus=1).resources(ray, 5)  # Ray would wait for a GPU without end
    assert RayEngine().resources(ray, 5) == (2, 0.0) and RayEngine().resources(ray, 1) == (1, 0.0)
