"""Unit tests of the small modules that need no model: labels, data, cache, io, registry, heads, metrics,
pooling and the engine's batching helpers."""

from __future__ import annotations

import json
import os
import re
import stat
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import sklearn.metrics
import torch
from safetensors.torch import save_file

from fusion.batching import Tokenized, TokenRows, length_sorted_batches
from fusion.cache.store import OutputCache
from fusion.engine import max_input_length
from fusion.errors import (
    ChecksumError,
    ConfigError,
    DataError,
    LabelMismatchError,
    PersistenceError,
    UnknownNameError,
)
from fusion.evaluation.metrics import accuracy, log_loss
from fusion.inputs import TextData, as_text_data
from fusion.io import (
    atomic_directory,
    atomic_save_tensors,
    atomic_write_text,
    load_tensors,
    read_json,
    sha256_file,
    sha256_tensors,
)
from fusion.labels import alignment, apply_label_map
from fusion.members.heads import HEADS, CustomHead, Head, LinearHead, MLPHead, head_config
from fusion.members.pooling import cls_pool, get_pooling, last_pool, mean_pool
from fusion.registry import Registry

# ---------------------------------------------------------------- labels


def test_alignment_reorders_member_columns_into_the_ensemble_order():
    index = alignment("m", ["pos", "neutral", "neg"], ["neg", "neutral", "pos"])
    assert index.tolist() == [2, 1, 0]
    scores = torch.tensor([[7, 2, 1]])  # in the member's order
    assert scores[:, index].tolist() == [[1, 2, 7]]


@pytest.mark.parametrize(
    ("member", "ensemble"),
    [(["POS", "NEG"], ["positive", "negative"]), (["a", "a"], ["a", "a"]), (["a", "b", "c"], ["a", "b"])],
)
def test_alignment_of_other_label_sets_names_both_sides_and_label_map(member, ensemble):
    with pytest.raises(LabelMismatchError, match="label_map") as info:
        alignment("judge", member, ensemble)
    message = str(info.value)
    assert "'judge'" in message and str(member) in message and str(ensemble) in message


def test_generic_label_names_need_a_label_map_and_the_message_shows_how():
    how = re.escape("label_map={'LABEL_0': '<name>', 'LABEL_1': '<name>'}")
    with pytest.raises(LabelMismatchError, match=how):
        apply_label_map("bert", ["LABEL_0", "LABEL_1"], None)


@pytest.mark.parametrize(
    "label_map",
    [{"0": "neg", "1": "pos"}, {0: "neg", 1: "pos"}, {"LABEL_0": "neg", "LABEL_1": "pos"}],
    ids=["json-string-ids", "int-ids", "names"],
)
def test_label_map_keys_are_ids_or_names(label_map):
    assert apply_label_map("bert", ["LABEL_0", "LABEL_1"], label_map) == ["neg", "pos"]


def test_label_map_digit_key_that_is_a_label_name_means_the_name():
    assert apply_label_map("m", ["1", "0"], {"0": "zero"}) == ["1", "zero"]


@pytest.mark.parametrize(
    ("label_map", "match"),
    [({"LABEL_7": "x"}, r"keys \['LABEL_7'\] are neither"), ({"5": "x"}, r"keys \[5\] are neither"),
     ({0: "pos", 1: "pos"}, "duplicate names")],
)
def test_bad_label_maps_are_refused(label_map, match):
    with pytest.raises(LabelMismatchError, match=match):
        apply_label_map("bert", ["LABEL_0", "LABEL_1"], label_map)


def test_names_that_are_not_placeholders_pass_unchanged():
    assert apply_label_map("m", ["neg", "pos"], None) == ["neg", "pos"]


# ---------------------------------------------------------------- data

NAMES = ["neg", "pos"]


def class_label_dataset(labels: list[int], names: list[str]) -> datasets.Dataset:
    label = datasets.ClassLabel(names=names)
    features = datasets.Features({"text": datasets.Value("string"), "label": label})
    texts = [f"t{i}" for i in range(len(labels))]
    return datasets.Dataset.from_dict({"text": texts, "label": labels}, features)


@pytest.mark.parametrize(
    "data",
    [
        datasets.Dataset.from_dict({"text": ["good", "bad"], "label": [1, 0]}),
        {"text": ["good", "bad"], "label": ["pos", "neg"]},
        {"review": ["good", "bad"], "y": [1, "neg"]},
    ],
    ids=["dataset", "dict-of-names", "dict-other-columns"],
)
def test_labelled_data_becomes_text_data(data):
    columns = {"text_column": "review", "label_column": "y"} if "review" in data else {}
    text_data = as_text_data(data, label_names=NAMES, **columns)
    assert text_data.texts == ["good", "bad"] and text_data.labels.tolist() == [1, 0]


@pytest.mark.parametrize(("data", "texts"), [(["a", "b"], ["a", "b"]), ("only one", ["only one"])])
def test_plain_texts_become_unlabelled_text_data(data, texts):
    text_data = as_text_data(data, label_names=NAMES)
    assert text_data.texts == texts and text_data.labels is None


def test_class_label_ids_are_mapped_by_name_not_position():
    data = class_label_dataset([0, 1, 0], ["pos", "neg"])
    assert as_text_data(data, label_names=["neg", "pos"]).labels.tolist() == [1, 0, 1]
    assert as_text_data(data, label_names=["pos", "neg"]).labels.tolist() == [0, 1, 0]


def test_missing_class_label_minus_one_is_refused_when_mapping_by_name():
    with pytest.raises(DataError, match="row 2 has label -1"):
        as_text_data(class_label_dataset([0, 1, -1], ["pos", "neg"]), label_names=["neg", "pos"])


@pytest.mark.parametrize(
    ("data", "options", "match"),
    [
        ({"txt": ["a"], "label": [0]}, {}, r"train: no column 'text'; .* columns \['txt', 'label'\]"),
        ({"text": ["a"], "y": [0]}, {"require_labels": True}, r"no column 'label'.*\['text', 'y'\]"),
        (["a"], {"require_labels": True}, "labels are required"),
        ({"text": [], "label": []}, {}, "no rows"),
        ([], {}, "no rows"),
        ({"text": ["a", "b", None], "label": [0, 1, 0]}, {}, r"column 'text' row 2 is NoneType"),
        ({"text": ["a", "b"], "label": [0, "maybe"]}, {}, r"row 1 has label 'maybe'.*\['neg', 'pos'\]"),
        ({"text": ["a", "b"], "label": [0, 2]}, {}, r"row 1 has label 2.*0\.\.1"),
        ({"text": ["a"], "label": [True]}, {}, "row 0 has label True"),
    ],
    ids=["no-text-column", "no-label-column", "list-without-labels", "empty-dict", "empty-list", "none-text",
         "unknown-label-name", "label-id-out-of-range", "bool-label"],
)
def test_bad_data_is_refused_with_the_place_and_the_fix(data, options, match):
    with pytest.raises(DataError, match=match):
        as_text_data(data, label_names=NAMES, where="train", **options)


def test_subset_of_a_subset_remembers_the_root_and_its_rows():
    root = TextData(["a", "b", "c", "d"], np.array([0, 1, 0, 1]))
    child = root.subset([3, 1, 2])
    grandchild = child.subset([0, 2])
    assert grandchild.texts == ["d", "c"] and grandchild.labels.tolist() == [1, 0]
    assert grandchild.parent is root and grandchild.index.tolist() == [3, 2]
    assert child.parent is root and child.index.tolist() == [3, 1, 2]


def test_fingerprints_follow_the_texts_and_labels():
    a, same = TextData(["ab", "c"]), TextData(["ab", "c"])
    assert a.fingerprint == same.fingerprint
    assert a.fingerprint != TextData(["a", "bc"]).fingerprint != TextData(["c", "ab"]).fingerprint
    labelled = TextData(["ab", "c"], np.array([0, 1]))
    assert labelled.fingerprint == a.fingerprint  # member outputs depend on the texts only
    assert labelled.label_fingerprint != TextData(["ab", "c"], np.array([1, 0])).label_fingerprint


# ---------------------------------------------------------------- cache


class Compute:
    """A compute function that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> dict[str, torch.Tensor]:
        self.calls += 1
        return {"logits": torch.arange(6.0).view(2, 3)}


def test_memory_cache_counts_hits_and_misses():
    cache, compute = OutputCache(), Compute()
    for _ in range(3):
        out = cache.get_or_compute("member", "data", compute)
    cache.get_or_compute("member", "data", compute, variant="train-oof")
    assert (compute.calls, cache.misses, cache.hits) == (2, 2, 2)
    assert out["logits"].tolist() == [[0, 1, 2], [3, 4, 5]]


def test_disk_cache_is_read_by_a_second_cache_object(tmp_path):
    OutputCache(tmp_path).get_or_compute("member", "data", Compute())
    compute, cache = Compute(), OutputCache(tmp_path)
    out = cache.get_or_compute("member", "data", compute)
    assert compute.calls == 0 and cache.hits == 1
    torch.testing.assert_close(out["logits"], Compute()()["logits"])


@pytest.mark.parametrize("damage", ["truncate", "garbage", "foreign-entry"])
def test_damaged_cache_file_is_recomputed_not_trusted(tmp_path, damage):
    OutputCache(tmp_path).put("member", "data", {"logits": torch.zeros(2, 3)})
    (path,) = tmp_path.rglob("*.safetensors")
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-5])
    elif damage == "garbage":
        path.write_bytes(b"not a safetensors file at all")
    else:  # a file for another (member, data) pair at this path
        foreign = {"member": "other", "data": "data", "variant": "outputs"}
        save_file({"logits": torch.ones(2, 3)}, path, metadata=foreign)
    compute, cache = Compute(), OutputCache(tmp_path)
    out = cache.get_or_compute("member", "data", compute)
    assert compute.calls == 1 and cache.misses == 1
    torch.testing.assert_close(out["logits"], Compute()()["logits"])
    repaired = OutputCache(tmp_path).get("member", "data")
    assert repaired["logits"].tolist() == out["logits"].tolist()


# ---------------------------------------------------------------- io


def names(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_atomic_directory_leaves_nothing_when_the_block_raises(tmp_path):
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "out") as staging:
        (staging / "half.json").write_text("{")
        raise RuntimeError("crash while writing")
    assert names(tmp_path) == []


def test_atomic_directory_replaces_an_existing_directory_only_on_success(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(target) as staging:
        (staging / "new.txt").write_text("new")
        raise RuntimeError("crash")
    assert names(tmp_path) == ["out"] and names(target) == ["old.txt"]
    with atomic_directory(target) as staging:
        (staging / "new.txt").write_text("new")
    assert names(tmp_path) == ["out"] and names(target) == ["new.txt"]


def test_atomic_file_leaves_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "report.md"
    atomic_write_text(target, "old")
    with pytest.raises(TypeError):
        atomic_write_text(target, None)  # fails inside the block, after the staging file exists
    assert names(tmp_path) == ["report.md"] and target.read_text() == "old"


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_atomic_writes_honour_the_umask_like_a_plain_open(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "ensemble") as staging:
            atomic_save_tensors(staging / "fuser.safetensors", {"w": torch.ones(2)})
        atomic_write_text(tmp_path / "report.md", "# report")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [tmp_path / "ensemble", tmp_path / "report.md",
                                                              tmp_path / "ensemble" / "fuser.safetensors"]}
    assert modes == {"ensemble": 0o755, "report.md": 0o644, "fuser.safetensors": 0o644}


def test_sha256_tensors_covers_names_dtypes_shapes_and_values():
    base = sha256_tensors({"w": torch.zeros(2, 3), "b": torch.ones(3)})
    assert base == sha256_tensors({"b": torch.ones(3), "w": torch.zeros(2, 3)})  # order does not matter
    others = [
        {"w": torch.zeros(3, 2), "b": torch.ones(3)},  # shape
        {"w": torch.zeros(2, 3, dtype=torch.float64), "b": torch.ones(3)},  # dtype
        {"v": torch.zeros(2, 3), "b": torch.ones(3)},  # name
        {"w": torch.zeros(2, 3), "b": torch.tensor([1.0, 1.0, 2.0])},  # values
    ]
    assert base not in {sha256_tensors(t) for t in others}


@pytest.mark.parametrize(("content", "match"), [(None, "is missing"), ("{oops", "is not valid JSON")])
def test_read_json_names_what_and_where(tmp_path, content, match):
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(PersistenceError, match=f"ensemble config: .*config.json {match}"):
        read_json(path, "ensemble config")


@pytest.fixture
def tensors_file(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"weight": torch.randn(3, 4), "bias": torch.zeros(3)}, path)
    return path


def test_load_tensors_checks_the_sha256(tensors_file):
    assert set(load_tensors(tensors_file, "head", sha256=sha256_file(tensors_file))) == {"weight", "bias"}
    with pytest.raises(ChecksumError, match=r"head: .*w\.safetensors has sha256"):
        load_tensors(tensors_file, "head", sha256="0" * 64)


@pytest.mark.parametrize(
    ("expected", "match"),
    [
        ({"weight": (3, 4), "bias": (3,), "scale": (3,)}, r"missing tensors \['scale'\]"),
        ({"weight": (3, 4)}, r"unexpected tensors \['bias'\]"),
        ({"weight": (4, 3), "bias": (3,)}, r"shape mismatch weight: file \(3, 4\) vs expected \(4, 3\)"),
    ],
    ids=["missing", "unexpected", "wrong-shape"],
)
def test_load_tensors_lists_every_name_that_does_not_match(tensors_file, expected, match):
    with pytest.raises(PersistenceError, match=match):
        load_tensors(tensors_file, "head", expected_shapes=expected)


@pytest.mark.parametrize("keep", [0, 5, 40, -1])
def test_truncated_or_missing_tensor_file_is_a_persistence_error(tensors_file, keep):
    tensors_file.write_bytes(tensors_file.read_bytes()[:keep])
    with pytest.raises(PersistenceError, match="not a readable safetensors file"):
        load_tensors(tensors_file, "head")
    tensors_file.unlink()
    with pytest.raises(PersistenceError, match="missing"):
        load_tensors(tensors_file, "head")


# ---------------------------------------------------------------- registry


def test_registry_refuses_a_duplicate_name_and_suggests_close_ones():
    things = Registry("thing")

    @things.register("alpha")
    class Alpha: ...

    assert things.get("alpha") is Alpha and Alpha.kind == "alpha" and "alpha" in things
    with pytest.raises(ConfigError, match="'alpha' is already registered by .*Alpha"):

        @things.register("alpha")
        class Other: ...

    with pytest.raises(UnknownNameError, match=r"unknown thing 'alpah'; registered things are: alpha\. Did"):
        things.get("alpah")


# ---------------------------------------------------------------- heads


@pytest.mark.parametrize(
    "head", [LinearHead(dropout=0.2), MLPHead(hidden=8, layers=2, dropout=0.0)], ids=["linear", "mlp"]
)
def test_heads_build_and_round_trip_through_their_config(head):
    head.build(5, 3)
    assert head(torch.zeros(4, 5)).shape == (4, 3)
    config = head.to_config()
    rebuilt = Head.from_head_config(head_config(json.loads(json.dumps(config)))).build(5, 3)
    assert type(rebuilt) is type(head) and rebuilt.to_config() == config
    shapes = {k: v.shape for k, v in head.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    assert not head.clone().is_built and head.clone().config == head.config


@pytest.mark.parametrize("name", HEADS.names())
def test_unbuilt_head_refuses_forward(name):
    arguments = {"module": torch.nn.Linear(5, 2)} if name == "custom" else {}
    with pytest.raises(ConfigError, match=r"not built yet: call build\(in_features, n_classes\)"):
        HEADS.get(name)(**arguments)(torch.zeros(2, 5))


def test_custom_head_trains_a_copy_and_needs_its_module():
    module = torch.nn.Linear(5, 2)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    head = CustomHead(module=module).build(5, 2)
    assert all(p is not q for p, q in zip(head.parameters(), module.parameters(), strict=True))
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    with pytest.raises(ConfigError, match="head 'custom' needs a module: pass the torch.nn.Module itself"):
        head_config("custom")


@pytest.mark.parametrize(
    "make", [lambda: LinearHead(dropout=1.0), lambda: MLPHead(hidden=0), lambda: MLPHead(layers=0)]
)
def test_heads_refuse_bad_hyper_parameters(make):
    with pytest.raises(ConfigError):
        make()


# ---------------------------------------------------------------- metrics


def test_metrics_agree_with_sklearn():
    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.ones(4), size=200)
    labels = rng.integers(0, 4, size=200)
    assert accuracy(proba, labels) == pytest.approx(sklearn.metrics.accuracy_score(labels, proba.argmax(1)))
    expected = sklearn.metrics.log_loss(labels, proba, labels=range(4))
    assert log_loss(proba, labels) == pytest.approx(expected, rel=1e-9)


def test_log_loss_of_a_certain_mistake_is_finite():
    assert log_loss(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(-np.log(1e-15))


# ---------------------------------------------------------------- pooling

HIDDEN = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[1.0, 0.0], [2.0, 0.0], [6.0, 3.0]]])
MASK = torch.tensor([[1, 1, 0], [1, 1, 1]])  # row 0 is right-padded


@pytest.mark.parametrize(
    ("name", "pool", "expected"),
    [("mean", mean_pool, [[2.0, 3.0], [3.0, 1.0]]), ("cls", cls_pool, [[1.0, 2.0], [1.0, 0.0]]),
     ("last", last_pool, [[3.0, 4.0], [6.0, 3.0]])],
)
def test_pooling_ignores_padding(name, pool, expected):
    assert get_pooling(name) is pool
    assert pool(HIDDEN, MASK).tolist() == expected


def test_unknown_pooling_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown pooling 'max'; choose one of \['cls', 'last', 'mean'\]"):
        get_pooling("max")


# ---------------------------------------------------------------- engine helpers


def test_length_sorted_batches_go_longest_first_and_keep_every_row_once():
    batches = length_sorted_batches([3, 5, 1, 5, 2], batch_size=2)
    assert batches == [[1, 3], [0, 4], [2]]
    assert length_sorted_batches([], 4) == []


def test_tokenized_batch_right_pads_and_builds_the_attention_mask():
    encoded = Tokenized({"input_ids": [[5, 6, 7], [8], [9, 10]], "token_type_ids": [[0, 0, 1], [0], [1, 1]]})
    batch = encoded.batch([2, 1], pad_id=1)
    assert batch["input_ids"].tolist() == [[9, 10], [8, 1]]
    assert batch["token_type_ids"].tolist() == [[1, 1], [0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1], [1, 0]]
    given = Tokenized({"input_ids": [[5], [6, 7]], "attention_mask": [[1], [1, 1]]}).batch([0, 1], pad_id=0)
    assert given["attention_mask"].tolist() == [[1, 0], [1, 1]]


def test_token_rows_view_a_subset_of_one_tokenisation():
    tokens = Tokenized({"input_ids": [[5, 6, 7], [8], [9, 10]]})
    rows = TokenRows(tokens, pad_id=0, labels=torch.tensor([1, 0]), rows=[2, 0])
    assert len(rows) == 2 and rows.lengths.tolist() == [2, 3]
    batch = rows.take(torch.tensor([1, 0]))
    assert batch["input_ids"].tolist() == [[5, 6, 7], [9, 10, 0]]
    assert batch["labels"].tolist() == [0, 1]
    assert rows.take(torch.tensor([], dtype=torch.long))["input_ids"].shape == (0, 1)


@pytest.mark.parametrize("fields", [{"input_ids": [[5, 6, 7], [8], [9, 10]], "token_type_ids": [[0, 0, 1], [0], [1, 1]]},
                                    {"input_ids": [[4], []]}, {"input_ids": []}])
def test_tokenized_round_trips_through_a_cache_file(tmp_path, fields):
    tokens = Tokenized(fields)
    OutputCache(tmp_path).put("tokenizer", "data", tokens.to_tensors(), "tokens-max8")
    back = Tokenized.from_tensors(OutputCache(tmp_path).get("tokenizer", "data", "tokens-max8"))
    assert back.lengths.tolist() == tokens.lengths.tolist() and back.offsets.tolist() == tokens.offsets.tolist()
    assert {k: v.tolist() for k, v in back.flat.items()} == {k: v.tolist() for k, v in tokens.flat.items()}
    if len(tokens):
        assert back.batch(range(len(tokens)), 0)["input_ids"].tolist() == tokens.batch(range(len(tokens)), 0)[
            "input_ids"].tolist()




NO_LIMIT = int(1e30)  # what transformers puts in model_max_length when the tokenizer declares none


def hf_model(model_type: str, positions: int | None = 514, pad: int | None = 1, **config) -> SimpleNamespace:
    config = {"model_type": model_type, "max_position_embeddings": positions, "pad_token_id": pad, **config}
    return SimpleNamespace(config=SimpleNamespace(**config))


@pytest.mark.parametrize(
    ("model", "tokenizer_limit", "requested", "expected"),
    [
        pytest.param(hf_model("roberta"), NO_LIMIT, None, 512, id="roberta"),
        pytest.param(hf_model("xlm-roberta"), None, None, 512, id="xlm-roberta"),
        pytest.param(hf_model("camembert"), None, None, 512, id="camembert"),
        pytest.param(hf_model("bert", 512, 0), 128, None, 128, id="tokenizer-limit"),
        pytest.param(hf_model("bert", 512, 0), 512, 64, 64, id="requested"),
        pytest.param(hf_model("gpt2", None, None, n_positions=1024), NO_LIMIT, None, 1024, id="n_positions"),
        pytest.param(hf_model("mystery", None, None), None, None, 512, id="default"),
        pytest.param(hf_model("roberta", 514, 0), None, None, 513, id="roberta-pad-0"),
        pytest.param(hf_model("mpnet"), NO_LIMIT, None, 512, id="mpnet"),
        pytest.param(hf_model("data2vec-text"), NO_LIMIT, None, 512, id="data2vec-text"),
    ],
)
def test_max_input_length(model, tokenizer_limit, requested, expected):
    tokenizer = SimpleNamespace(model_max_length=tokenizer_limit)
    assert max_input_length(model, tokenizer, requested) == expected
