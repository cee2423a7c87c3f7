"""The model-level merge driver (fusion.merging.merge): tensors against hand merges, heads aligned by label name,
refusals with their messages, sharded sources, vocabularies, the output folder, and streaming memory."""

from __future__ import annotations

import json
import logging
import shutil
import weakref
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import (
    make_bert_tokenizer,
    save_bert_classifier,
    save_generic_label_classifier,
    save_roberta_classifier,
)

from fusion.errors import ConfigError, LabelMismatchError
from fusion.io import sha256_file
from fusion.merging import MERGE_METHODS, LinearMerge, MergeMethod, TensorContext
from fusion.merging.base import BASE_REQUIRED
from fusion.merging.checkpoints import Checkpoint
from fusion.merging.merge import PROVENANCE_FILE, merge_checkpoints
from fusion.merging.writer import StreamingSafetensors
from fusion.progress import progress_disabled

HEAD = ("classifier.weight", "classifier.bias")
TEXTS = ["a great and moving film", "boring , awful plot", "the cast was fine"]


# --- helpers ---------------------------------------------------------------------------------------------------


def state(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def write_state(folder: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def finetune(source: Path, target: Path, seed: int, scale: float = 0.002) -> Path:
    """A copy of ``source`` with every float tensor moved by N(0, scale) noise: a "fine-tune" of it."""
    shutil.copytree(source, target)
    generator = torch.Generator().manual_seed(seed)
    write_state(target, {k: v + scale * torch.randn(v.shape, generator=generator) for k, v in state(source).items()})
    return target


def reverse_labels(source: Path, target: Path) -> Path:
    """The same model with its labels (and head rows) in the reverse order: it predicts exactly as ``source``."""
    shutil.copytree(source, target)
    tensors = state(source)
    for name in HEAD:
        tensors[name] = tensors[name].flip(0)
    write_state(target, tensors)
    labels = json.loads((source / "config.json").read_text())["id2label"]
    names = [labels[k] for k in sorted(labels, key=int)][::-1]
    edit_config(target, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    return target


def average(folders, weights=None) -> dict[str, torch.Tensor]:
    states = [state(f) for f in folders]
    weights = weights or [1.0] * len(states)
    return {k: sum(w * s[k] for w, s in zip(weights, states, strict=True)) / sum(weights) for k in states[0]}


def logits(model_or_folder, tokenizer_folder: Path) -> torch.Tensor:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = model_or_folder
    if isinstance(model_or_folder, Path):
        model = AutoModelForSequenceClassification.from_pretrained(str(model_or_folder))
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_folder))
    with torch.no_grad():
        return model.eval()(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits


def assert_state_equal(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], atol=1e-6) -> None:
    assert sorted(actual) == sorted(expected)
    for name in expected:
        assert actual[name].shape == expected[name].shape, name
        torch.testing.assert_close(actual[name], expected[name], atol=atol, rtol=0, msg=name)


class TaskArithmeticLike(MergeMethod):
    """A test-only task-vector method: base + sum_i w_i (t_i - base)."""

    kind = "task_arithmetic_like"
    base = BASE_REQUIRED

    def merge_tensor(self, tensors, base, context):
        weights = self.weights(len(tensors))
        return base + sum(w * (t - base) for w, t in zip(weights, tensors, strict=True))


class WholeModelLike(MergeMethod):
    """A test-only whole-model method: scales each model's delta by 1 / (its L1 norm over the whole model)."""

    kind = "whole_model_like"
    base = BASE_REQUIRED
    whole_model_pass = True
    passes = 0

    def model_statistics(self, deltas=None):
        totals = None
        for pass_ in range(2):  # two passes: the stream must be re-iterable
            totals, names = None, []
            for name, tensor_deltas in deltas:
                names.append(name)
                sums = [float(d.abs().sum()) for d in tensor_deltas]
                totals = sums if totals is None else [a + b for a, b in zip(totals, sums, strict=True)]
            type(self).passes = pass_ + 1
        return {"l1": totals, "names": names}

    def merge_tensor(self, tensors, base, context):
        l1 = context.statistics["l1"]
        return base + sum((t - base) / n for t, n in zip(tensors, l1, strict=True))


class TwoModelsOnly(LinearMerge):
    kind = "slerp_like"
    min_models = max_models = 2


# --- fixtures ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """A base classifier and three fine-tunes of it (labels negative, positive), plus an unrelated classifier."""
    root = tmp_path_factory.mktemp("family")
    base = save_bert_classifier(root / "base", ["negative", "positive"], seed=0)
    fts = [finetune(base, root / f"ft{i}", seed=10 + i) for i in range(3)]
    stranger = save_bert_classifier(root / "stranger", ["negative", "positive"], seed=7)
    return {"root": root, "base": base, "fts": fts, "stranger": stranger}


# --- tensors against hand merges -----------------------------------------------------------------------------------


def test_linear_merge_equals_the_hand_weighted_average_tensor_by_tensor(family, tmp_path):
    fts = family["fts"]
    result = merge_checkpoints(fts, LinearMerge(weight=[1.0, 2.0, 3.0]), tmp_path / "out", show_progress=False)
    merged = state(result.directory)
    assert_state_equal(merged, average(fts, [1.0, 2.0, 3.0]))
    assert all(t.dtype == torch.float32 for t in merged.values())
    assert result.labels == ["negative", "positive"]
    assert result.provenance["tensors"]["merged"] == len(merged)


def test_merged_folder_loads_with_plain_transformers_and_gives_the_hand_merge_logits(family, tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    fts = family["fts"][:2]
    result = merge_checkpoints(fts, LinearMerge(), tmp_path / "out", show_progress=False)
    by_hand = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(str(fts[0])))
    missing, unexpected = by_hand.load_state_dict(average(fts), strict=False)
    assert not unexpected and all("position_ids" in k or "token_type_ids" in k for k in missing)
    expected = logits(by_hand, fts[0])
    actual = logits(result.directory, result.directory)  # the merged folder's own tokenizer files
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(expected, logits(fts[0], fts[0]), atol=1e-4)  # the merge changed something
    config = json.loads((result.directory / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}


def test_non_float_buffers_are_copied_not_averaged_and_must_be_equal(family, tmp_path):
    models = []
    for i, ft in enumerate(family["fts"][:2]):
        folder = shutil.copytree(ft, tmp_path / f"m{i}")
        write_state(folder, {**state(ft), "bert.embeddings.position_ids": torch.arange(64).view(1, -1)})
        models.append(folder)
    result = merge_checkpoints(models, LinearMerge(), tmp_path / "out", show_progress=False)
    merged = state(result.directory)
    assert merged["bert.embeddings.position_ids"].dtype == torch.int64
    assert torch.equal(merged["bert.embeddings.position_ids"], torch.arange(64).view(1, -1))
    assert result.provenance["tensors"]["copied_buffers"] == ["bert.embeddings.position_ids"]

    write_state(models[1], {**state(models[1]), "bert.embeddings.position_ids": torch.arange(64).view(1, -1) + 1})
    with pytest.raises(ConfigError, match=r"buffer 'bert.embeddings.position_ids' \(torch.int64.*differs between "
                                          r"'m0' and 'm1'"):
        merge_checkpoints(models, LinearMerge(), tmp_path / "out2", show_progress=False)
    assert not (tmp_path / "out2").exists()


# --- heads -----------------------------------------------------------------------------------------------------------


def test_labels_in_another_order_are_aligned_by_name(family, tmp_path):
    a, b = family["fts"][:2]
    b_reversed = reverse_labels(b, tmp_path / "b_reversed")  # labels ["positive", "negative"], rows flipped
    result = merge_checkpoints([a, b_reversed], LinearMerge(), tmp_path / "out", show_progress=False)
    merged = state(result.directory)
    assert result.labels == ["negative", "positive"]
    assert_state_equal(merged, average([a, b]))  # the same as merging b in a's order
    positional = (state(a)["classifier.weight"] + state(b_reversed)["classifier.weight"]) / 2
    assert not torch.allclose(merged["classifier.weight"], positional, atol=1e-3)  # what ignoring names gives
    assert "reordered: 'b_reversed'" in result.provenance["heads"]


def test_different_label_sets_are_refused_with_a_message_and_merged_with_head(family, tmp_path):
    a = family["fts"][0]
    topics = finetune(save_bert_classifier(tmp_path / "topics_src", ["sports", "politics", "science"], seed=0),
                      tmp_path / "topics", seed=3)
    with pytest.raises(LabelMismatchError, match=r"different label sets \('ft0': \['negative', 'positive'\]; "
                                                 r"'topics': \['sports', 'politics', 'science'\]\).*head=<index or "
                                                 r"model name>"):
        merge_checkpoints([a, topics], LinearMerge(), tmp_path / "out", show_progress=False)
    for head in (1, "topics"):
        out = tmp_path / f"out-{head}"
        result = merge_checkpoints([a, topics], LinearMerge(), out, head=head, show_progress=False)
        merged, kept = state(out), state(topics)
        assert result.labels == ["sports", "politics", "science"]
        for name in HEAD:
            assert torch.equal(merged[name], kept[name])
        for name, tensor in state(a).items():
            if name not in HEAD:
                torch.testing.assert_close(merged[name], (tensor + kept[name]) / 2, atol=1e-6, rtol=0)
        assert result.provenance["head_kept_from"] == "topics"
        assert logits(out, out).shape == (len(TEXTS), 3)
    with pytest.raises(ConfigError, match="head='nope': no model is called that; the models are"):
        merge_checkpoints([a, topics], LinearMerge(), tmp_path / "out3", head="nope", show_progress=False)


def test_placeholder_label_names_are_not_aligned(tmp_path):
    a = save_generic_label_classifier(tmp_path / "g0", seed=0)
    b = save_generic_label_classifier(tmp_path / "g1", seed=1)
    with pytest.raises(LabelMismatchError, match=r"only have placeholder label names \['LABEL_0', 'LABEL_1'\].*"
                                                 "id2label"):
        merge_checkpoints([a, b], LinearMerge(), tmp_path / "out", show_progress=False)
    result = merge_checkpoints([a, b], LinearMerge(), tmp_path / "out", head=0, show_progress=False)
    assert result.labels == ["LABEL_0", "LABEL_1"]


# --- refusals --------------------------------------------------------------------------------------------------------


def test_a_different_architecture_is_refused(family, tmp_path):
    roberta = save_roberta_classifier(tmp_path / "roberta", ["negative", "positive"])
    with pytest.raises(ConfigError, match=r"cannot merge model 'roberta', a roberta \(RobertaForSequenceClassification"
                                          r"\) model, with 'ft0', a bert \(BertForSequenceClassification\) model"):
        merge_checkpoints([family["fts"][0], roberta], LinearMerge(), tmp_path / "out", show_progress=False)


def test_a_missing_tensor_is_refused(family, tmp_path):
    b = shutil.copytree(family["fts"][1], tmp_path / "b")
    write_state(b, {k: v for k, v in state(b).items() if k != "bert.pooler.dense.bias"})
    with pytest.raises(ConfigError, match=r"model 'b' has no tensor 'bert.pooler.dense.bias', which 'ft0' has"):
        merge_checkpoints([family["fts"][0], b], LinearMerge(), tmp_path / "out", show_progress=False)


def test_a_different_shape_is_refused_naming_the_tensor_and_both_sizes(family, tmp_path):
    b = shutil.copytree(family["fts"][1], tmp_path / "b")
    name = "bert.encoder.layer.0.intermediate.dense.weight"
    write_state(b, {**state(b), name: torch.zeros(48, 32)})
    with pytest.raises(ConfigError, match=rf"tensor '{name}': it has shape \(64, 32\) in 'ft0' but \(48, 32\) in 'b'"):
        merge_checkpoints([family["fts"][0], b], LinearMerge(), tmp_path / "out", show_progress=False)


def test_pickle_only_weights_are_refused_with_how_to_convert(family, tmp_path):
    b = tmp_path / "pickled"
    b.mkdir()
    shutil.copy(family["fts"][1] / "config.json", b / "config.json")
    (b / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ConfigError, match=r"model 'pickled' only has pickle weights \(pytorch_model.bin\); merging "
                                          r"reads safetensors only.*save_pretrained"):
        merge_checkpoints([family["fts"][0], b], LinearMerge(), tmp_path / "out", show_progress=False)


def test_model_count_and_base_are_checked_by_the_method_before_reading(family, tmp_path):
    with pytest.raises(ConfigError, match="merge method 'slerp_like' takes exactly 2 fine-tuned models; got 3"):
        merge_checkpoints(family["fts"], TwoModelsOnly(), tmp_path / "out", show_progress=False)
    with pytest.raises(ConfigError, match="merge method 'linear' does not use a base model"):
        merge_checkpoints(family["fts"], LinearMerge(), tmp_path / "out", base=family["base"], show_progress=False)
    with pytest.raises(ConfigError, match="weight has 2 values for 3 models"):
        merge_checkpoints(family["fts"], LinearMerge(weight=[1, 2]), tmp_path / "out", show_progress=False)
    with pytest.raises(ConfigError, match="give base=..."):
        merge_checkpoints(family["fts"], TaskArithmeticLike(), tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()


def test_an_existing_output_is_kept_unless_overwrite(family, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already exists; pass overwrite=True"):
        merge_checkpoints(family["fts"][:2], LinearMerge(), out, show_progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    merge_checkpoints(family["fts"][:2], LinearMerge(), out, overwrite=True, show_progress=False)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


# --- sources ---------------------------------------------------------------------------------------------------------


def test_sharded_safetensors_sources_merge_like_single_files(family, tmp_path):
    from transformers import AutoModelForSequenceClassification

    a, b = family["fts"][:2]
    sharded = tmp_path / "sharded"
    AutoModelForSequenceClassification.from_pretrained(str(a)).save_pretrained(sharded, max_shard_size="20KB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(a / name, sharded / name)
    assert (sharded / "model.safetensors.index.json").is_file() and len(list(sharded.glob("*.safetensors"))) > 2
    result = merge_checkpoints([sharded, b], LinearMerge(), tmp_path / "out", show_progress=False)
    assert_state_equal(state(result.directory), average([a, b]))
    assert len(result.provenance["models"][0]["weights_sha256"]) == len(list(sharded.glob("*.safetensors")))


def test_a_hub_snapshot_is_named_by_hub_id_and_revision_in_provenance_and_card(family, tmp_path):
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = Path(constants.HF_HUB_CACHE) / "models--fusion-test--tiny-ft"
    shutil.copytree(family["fts"][0], repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    result = merge_checkpoints(["fusion-test/tiny-ft", family["fts"][1]], LinearMerge(), tmp_path / "out",
                               show_progress=False)
    first, second = result.provenance["models"]
    assert first["hub_id"] == "fusion-test/tiny-ft" and first["revision"] == commit
    assert second == {"model": "ft1", "weights_sha256": {
        "model.safetensors": sha256_file(family["fts"][1] / "model.safetensors")}}
    card = (result.directory / "README.md").read_text()
    assert "base_model:\n- fusion-test/tiny-ft\n" in card and "base_model_relation: merge" in card
    snapshot = merge_checkpoints([repo / "snapshots" / commit, family["fts"][1]], LinearMerge(), tmp_path / "out2",
                                 show_progress=False)  # the cache's snapshot folder, given as a path
    assert snapshot.provenance["models"][0]["hub_id"] == "fusion-test/tiny-ft"
    assert snapshot.provenance["models"][0]["revision"] == commit
    assert "library_name: transformers" in card and "pipeline_tag: text-classification" in card
    assert "tags:\n- merge\n- fusion\n- linear\n" in card


def test_the_output_folder_holds_provenance_and_a_card_without_paths_of_this_machine(family, tmp_path):
    result = merge_checkpoints(family["fts"][:2], LinearMerge(weight=[1, 3]), tmp_path / "out", show_progress=False)
    folder = result.directory
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", PROVENANCE_FILE, "README.md"])
    provenance = json.loads((folder / PROVENANCE_FILE).read_text())
    assert provenance == json.loads(json.dumps(result.provenance))
    assert provenance["method"] == {"kind": "linear", "weight": [1, 3], "normalize": True}
    assert [m["model"] for m in provenance["models"]] == ["ft0", "ft1"]
    assert provenance["models"][0]["weights_sha256"] == {
        "model.safetensors": sha256_file(family["fts"][0] / "model.safetensors")}
    assert provenance["labels"] == ["negative", "positive"] and provenance["versions"]["fusion"]
    assert provenance["vocabulary"]["tokenizer_from"] == "ft0"
    for path in folder.iterdir():
        if path.suffix in (".json", ".md"):
            text = path.read_text()
            assert str(tmp_path) not in text and str(family["root"]) not in text, path.name
    assert (folder / "tokenizer.json").read_bytes() == (family["fts"][0] / "tokenizer.json").read_bytes()
    card = (folder / "README.md").read_text()
    assert "tags:\n- merge\n- fusion\n- linear\n" in card and "base_model:" not in card  # no hub ids here
    assert "`linear(weight=[1, 3], normalize=true)`" in card
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        assert handle.metadata() == {"format": "pt"}


def test_output_dtype(family, tmp_path):
    result = merge_checkpoints(family["fts"][:2], LinearMerge(), tmp_path / "out", dtype="bfloat16",
                               show_progress=False)
    merged = state(result.directory)
    assert all(t.dtype == torch.bfloat16 for t in merged.values())
    torch.testing.assert_close(merged["classifier.weight"], average(family["fts"][:2])["classifier.weight"].bfloat16())
    assert json.loads((result.directory / "config.json").read_text())["dtype"] == "bfloat16"
    assert logits(result.directory, result.directory).shape == (len(TEXTS), 2)
    with pytest.raises(ConfigError, match="dtype='int8': give one of float32, float16, bfloat16, float64"):
        merge_checkpoints(family["fts"][:2], LinearMerge(), tmp_path / "out2", dtype="int8")


# --- base models -----------------------------------------------------------------------------------------------------


def bare_encoder(classifier: Path, target: Path) -> Path:
    """``classifier``'s backbone saved as a bare BertModel: no head, names without the ``bert.`` prefix."""
    shutil.copytree(classifier, target)
    write_state(target, {k.removeprefix("bert."): v for k, v in state(classifier).items() if k not in HEAD})
    edit_config(target, architectures=["BertModel"])
    return target


def test_a_task_vector_method_reads_the_bare_encoder_base_under_its_own_names(family, tmp_path):
    base, fts = family["base"], family["fts"][:2]
    encoder = bare_encoder(base, tmp_path / "encoder")
    result = merge_checkpoints(fts, TaskArithmeticLike(weight=[0.5, 2.0]), tmp_path / "out", base=encoder,
                               show_progress=False)
    merged, base_state, a, b = state(result.directory), state(base), state(fts[0]), state(fts[1])
    for name in merged:
        stand_in = (a[name] + b[name]) / 2 if name in HEAD else base_state[name]  # the encoder has no head
        expected = stand_in + 0.5 * (a[name] - stand_in) + 2.0 * (b[name] - stand_in)
        torch.testing.assert_close(merged[name], expected, atol=1e-6, rtol=0, msg=name)
    assert result.provenance["tensors"]["not_in_base"] == sorted(HEAD)
    assert result.provenance["base"]["model"] == "encoder"


def test_a_base_that_is_not_an_ancestor_is_warned_about(family, tmp_path, caplog):
    fts = family["fts"][:2]
    with caplog.at_level(logging.WARNING, logger="fusion.merging"):
        ok = merge_checkpoints(fts, TaskArithmeticLike(), tmp_path / "ok", base=family["base"], show_progress=False)
    assert not [r for r in caplog.records if "does not look like" in r.getMessage()]
    ratios = ok.provenance["relative_distance_to_base"]
    assert set(ratios) == {"ft0", "ft1"} and all(0 < r < 0.2 for r in ratios.values())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fusion.merging"):
        far = merge_checkpoints(fts, TaskArithmeticLike(), tmp_path / "far", base=family["stranger"],
                                show_progress=False)
    warnings = [r.getMessage() for r in caplog.records if "does not look like" in r.getMessage()]
    assert len(warnings) == 1 and "base model 'stranger'" in warnings[0] and "'ft0': 1" in warnings[0]
    assert all(r > 1.0 for r in far.provenance["relative_distance_to_base"].values())


def test_a_whole_model_pass_streams_the_task_vectors_and_reaches_merge_tensor(family, tmp_path):
    base, fts = family["base"], family["fts"][:2]
    result = merge_checkpoints(fts, WholeModelLike(), tmp_path / "out", base=base, show_progress=False)
    assert WholeModelLike.passes == 2
    base_state, states = state(base), [state(f) for f in fts]
    l1 = [sum(float((s[k] - base_state[k]).abs().sum()) for k in base_state) for s in states]
    merged = state(result.directory)
    for name in merged:
        expected = base_state[name] + sum((s[name] - base_state[name]) / n for s, n in zip(states, l1, strict=True))
        torch.testing.assert_close(merged[name], expected, atol=1e-6, rtol=1e-5, msg=name)


# --- vocabularies ----------------------------------------------------------------------------------------------------


def with_added_token(source: Path, target: Path, token: str = "zzzword") -> Path:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(source))
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    tokenizer.add_tokens([token])
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def test_vocabularies_differing_by_added_tokens_merge_the_shared_rows(family, tmp_path):
    a, b = family["fts"][:2]
    b_more = with_added_token(b, tmp_path / "b_more")
    name = "bert.embeddings.word_embeddings.weight"
    assert state(b_more)[name].shape[0] == state(a)[name].shape[0] + 1
    for order in ([a, b_more], [b_more, a]):
        result = merge_checkpoints(order, LinearMerge(), tmp_path / f"out-{order[0].name}", show_progress=False)
        merged = state(result.directory)
        torch.testing.assert_close(merged[name], (state(a)[name] + state(b)[name]) / 2, atol=1e-6, rtol=0)
        assert json.loads((result.directory / "config.json").read_text())["vocab_size"] == 277
        assert result.provenance["vocabulary"]["tokenizer_from"] == "ft0"
        assert result.provenance["vocabulary"]["dropped_tokens"] == ["zzzword"]
        assert (result.directory / "tokenizer.json").read_bytes() == (a / "tokenizer.json").read_bytes()
        assert logits(result.directory, result.directory).shape == (len(TEXTS), 2)


def test_different_tokenizers_are_refused_naming_the_token(family, tmp_path):
    a, b = family["fts"][:2]
    other = shutil.copytree(b, tmp_path / "other")
    tokenizer = make_bert_tokenizer()
    vocab = tokenizer.get_vocab()
    vocab["good"], vocab["bad"] = vocab["bad"], vocab["good"]
    for path in other.glob("tokenizer*"):
        path.unlink()
    type(tokenizer)(vocab=vocab).save_pretrained(other)
    with pytest.raises(ConfigError, match=r"models 'ft0' and 'other': their tokenizers differ \(token '(good|bad)' "
                                          r"has id \d+ in 'ft0' but has id \d+ in 'other'\)"):
        merge_checkpoints([a, other], LinearMerge(), tmp_path / "out", show_progress=False)


# --- streaming and progress ------------------------------------------------------------------------------------------


def test_the_driver_holds_one_tensor_per_input_at_a_time(family, tmp_path, monkeypatch):
    alive, peak, reads = [0], [0], [0]
    original = Checkpoint.read

    def counting_read(self, name):
        tensor = original(self, name)
        alive[0] += 1
        reads[0] += 1
        peak[0] = max(peak[0], alive[0])
        weakref.finalize(tensor, lambda: alive.__setitem__(0, alive[0] - 1))
        return tensor

    written_alive, written_peak = [0], [0]
    original_write = StreamingSafetensors.write

    def counting_write(self, name, tensor):
        written_alive[0] += 1
        written_peak[0] = max(written_peak[0], written_alive[0])
        weakref.finalize(tensor, lambda: written_alive.__setitem__(0, written_alive[0] - 1))
        return original_write(self, name, tensor)

    monkeypatch.setattr(Checkpoint, "read", counting_read)
    monkeypatch.setattr(StreamingSafetensors, "write", counting_write)
    fts, base = family["fts"], family["base"]
    result = merge_checkpoints(fts, TaskArithmeticLike(), tmp_path / "out", base=base, show_progress=False)
    n_tensors = len(state(base))
    assert reads[0] == 4 * n_tensors  # every tensor of the 3 models and the base read once
    assert peak[0] <= 4  # never more than one tensor per input (3 models + base) alive at once
    assert written_peak[0] == 1  # each merged tensor is written and dropped: the merged model is never held
    assert result.provenance["tensors"]["merged"] == n_tensors
    peak[0] = 0
    merge_checkpoints(fts, WholeModelLike(), tmp_path / "out2", base=base, show_progress=False)
    assert peak[0] <= 4  # the whole-model pass streams too


def test_one_progress_bar_over_tensors_silenced_by_the_library_switch(family, tmp_path, capsys):
    merge_checkpoints(family["fts"][:2], LinearMerge(), tmp_path / "a", show_progress=True)
    assert "merge (linear)" in capsys.readouterr().err
    with progress_disabled():
        merge_checkpoints(family["fts"][:2], LinearMerge(), tmp_path / "b", show_progress=True)
    merge_checkpoints(family["fts"][:2], LinearMerge(), tmp_path / "c", show_progress=False)
    assert "merge (linear)" not in capsys.readouterr().err


def test_merge_tensor_gets_the_context(family, tmp_path):
    seen: dict[str, TensorContext] = {}

    class Recording(LinearMerge):
        def merge_tensor(self, tensors, base, context):
            seen[context.name] = context
            return super().merge_tensor(tensors, base, context)

    merge_checkpoints(family["fts"][:2], Recording(), tmp_path / "out", show_progress=False)
    assert seen["bert.embeddings.word_embeddings.weight"].is_embedding
    assert not seen["bert.embeddings.position_embeddings.weight"].is_embedding
    assert not seen["classifier.weight"].is_embedding and seen["classifier.weight"].seed is None


# --- other heads and architectures -------------------------------------------------------------------------------------


def test_roberta_heads_are_found_from_the_model_and_aligned_by_name(tmp_path):
    """RoBERTa's head is classifier.dense + classifier.out_proj: only out_proj has one row per label."""
    a = finetune(save_roberta_classifier(tmp_path / "src", ["negative", "positive"], seed=0), tmp_path / "a", seed=1)
    b = finetune(a, tmp_path / "b", seed=2)
    b_reversed = tmp_path / "b_reversed"
    shutil.copytree(b, b_reversed)
    tensors = state(b)
    for name in ("classifier.out_proj.weight", "classifier.out_proj.bias"):
        tensors[name] = tensors[name].flip(0)
    write_state(b_reversed, tensors)
    edit_config(b_reversed, id2label={0: "positive", 1: "negative"}, label2id={"positive": 0, "negative": 1})
    result = merge_checkpoints([a, b_reversed], LinearMerge(), tmp_path / "out", show_progress=False)
    assert_state_equal(state(result.directory), average([a, b]))
    torch.testing.assert_close(logits(result.directory, result.directory), logits(
        merge_checkpoints([a, b], LinearMerge(), tmp_path / "plain", show_progress=False).directory, a))


def test_a_base_classifier_with_the_labels_in_another_order_is_aligned_too(family, tmp_path):
    base, fts = family["base"], family["fts"][:2]
    expected = merge_checkpoints(fts, TaskArithmeticLike(), tmp_path / "expected", base=base, show_progress=False)
    reversed_base = reverse_labels(base, tmp_path / "reversed_base")
    result = merge_checkpoints(fts, TaskArithmeticLike(), tmp_path / "out", base=reversed_base, show_progress=False)
    assert_state_equal(state(result.directory), state(expected.directory))
    assert result.provenance["tensors"]["not_in_base"] == []


def test_a_model_without_classification_head_and_tied_embeddings(tmp_path):
    from tiny_models import _bert_config, _build_and_save
    from transformers import AutoModelForMaskedLM, BertForMaskedLM

    tokenizer = make_bert_tokenizer()
    source = _build_and_save(tmp_path / "mlm", BertForMaskedLM, _bert_config(tokenizer), tokenizer, 0)
    a, b = finetune(source, tmp_path / "a", seed=1), finetune(source, tmp_path / "b", seed=2)
    result = merge_checkpoints([a, b], LinearMerge(), tmp_path / "out", show_progress=False)
    merged = state(result.directory)
    assert result.labels is None and result.provenance["labels"] is None
    assert_state_equal(merged, average([a, b]))
    assert "cls.predictions.decoder.weight" not in merged  # tied: written once, as the sources hold it
    model = AutoModelForMaskedLM.from_pretrained(str(result.directory))
    torch.testing.assert_close(model.cls.predictions.decoder.weight.detach(),
                               merged["bert.embeddings.word_embeddings.weight"])
    card = (result.directory / "README.md").read_text()
    assert "pipeline_tag" not in card and "none (no classification head)" in card
    with pytest.raises(ConfigError, match="head=0: the models have no classification head to keep"):
        merge_checkpoints([a, b], LinearMerge(), tmp_path / "out2", head=0, show_progress=False)


def test_the_streaming_writer_reads_back_like_save_file(tmp_path):
    from safetensors import safe_open

    tensors = {"a.bf16": torch.randn(3, 4).bfloat16(), "b.int": torch.arange(6).view(2, 3), "c.bool": torch.tensor(
        [True, False, True]), "d.scalar": torch.tensor(2.5, dtype=torch.float64), "e.empty": torch.zeros(0, 5),
        "f.half": torch.randn(7).half()}
    layout = {name: (t.dtype, tuple(t.shape)) for name, t in tensors.items()}
    with StreamingSafetensors(tmp_path / "x.safetensors", layout, {"format": "pt"}) as out:
        for name, tensor in tensors.items():
            out.write(name, tensor)
    loaded = load_file(str(tmp_path / "x.safetensors"))
    assert sorted(loaded) == sorted(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name
    with safe_open(str(tmp_path / "x.safetensors"), "pt") as handle:
        assert handle.metadata() == {"format": "pt"}
    out = StreamingSafetensors(tmp_path / "y.safetensors", layout)
    with pytest.raises(ConfigError, match=r"tensor 'b.int' .* written where the layout expects 'a.bf16'"):
        out.write("b.int", tensors["b.int"])
    out = StreamingSafetensors(tmp_path / "z.safetensors", layout)
    out.write("a.bf16", tensors["a.bf16"])
    with pytest.raises(ConfigError, match="closed after 1 of 6 tensors"):
        out.close()


def test_tokenizer_files_that_differ_with_the_same_vocabulary_merge(family, tmp_path):
    a, b = family["fts"][:2]
    other = shutil.copytree(b, tmp_path / "other")
    config = json.loads((other / "tokenizer_config.json").read_text())
    (other / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 32}))
    result = merge_checkpoints([other, a], LinearMerge(), tmp_path / "out", show_progress=False)
    assert "the vocabularies are the same; the output uses 'other'" in result.provenance["vocabulary"]["note"]
    assert json.loads((result.directory / "tokenizer_config.json").read_text())["model_max_length"] == 32
    assert_state_equal(state(result.directory), average([a, b]))


def test_revisions_must_match_the_models(family, tmp_path):
    with pytest.raises(ConfigError, match=r"revisions: give one revision \(or None\) per model, a list of 2"):
        merge_checkpoints(family["fts"][:2], LinearMerge(), tmp_path / "out", revisions=["main"])
    with pytest.raises(ConfigError, match="is not a directory; pass a model directory or a hub id"):
        merge_checkpoints([family["fts"][0], tmp_path / "nowhere"], LinearMerge(), tmp_path / "out")


def test_bfloat16_sources_are_merged_in_float32_and_written_in_their_dtype(family, tmp_path):
    models = []
    for i, ft in enumerate(family["fts"][:2]):
        folder = shutil.copytree(ft, tmp_path / f"bf{i}")
        write_state(folder, {k: v.bfloat16() for k, v in state(ft).items()})
        models.append(folder)
    result = merge_checkpoints(models, LinearMerge(weight=[1, 2]), tmp_path / "out", show_progress=False)
    merged, a, b = state(result.directory), state(models[0]), state(models[1])
    for name, tensor in merged.items():
        assert tensor.dtype == torch.bfloat16, name
        expected = ((a[name].float() + 2 * b[name].float()) / 3).bfloat16()
        assert torch.equal(tensor, expected), name
    assert result.provenance["dtype"] == "bfloat16"


# --- every registered method through the driver ----------------------------------------------------------------


@pytest.mark.parametrize("kind", MERGE_METHODS.names())
def test_every_registered_method_merges_real_checkpoints_into_a_loadable_model(kind, family, tmp_path):
    """Each method (its defaults, the parameters it cannot default) through merge_checkpoints on tiny BERT
    fine-tunes of one base: a folder transformers loads, finite logits, the method recorded; methods over the
    whole model get their statistics from the streamed task vectors (ties with trim='model')."""
    from test_merge_methods import REQUIRED

    from fusion.merging.base import BASE_NEVER

    cls = MERGE_METHODS.get(kind)
    extra = {"trim": "model", "density": 0.5} if kind == "ties" else {}
    method = cls(**{**REQUIRED.get(kind, {}), **extra})
    models = family["fts"][:2]
    base = None if cls.base == BASE_NEVER else family["base"]
    result = merge_checkpoints(models, method, tmp_path / "out", base=base, show_progress=False)
    assert torch.isfinite(logits(result.directory, result.directory)).all()
    provenance = json.loads((result.directory / PROVENANCE_FILE).read_text())
    assert provenance["method"]["kind"] == kind
    merged = state(result.directory)
    assert sorted(merged) == sorted(state(family["base"]))
