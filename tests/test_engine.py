"""The inference engine: exact agreement with a plain per-example forward pass, order, every row written,
token budgets, dtypes, the tokenisation cache, parallel tokenisation and out-of-memory splitting."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from fusion import ResourceError
from fusion.batching import Tokenized, cached_tokenize, length_sorted_batches, tokenize
from fusion.cache.store import OutputCache
from fusion.engine import resolve_dtype, run_model

WORDS = ["good", "bad", "film", "plot", "great", "awful", "music", "acting", "fine", "dull"]
RNG = np.random.default_rng(0)
TEXTS = [" ".join(RNG.choice(WORDS, size=int(n))) for n in RNG.integers(1, 40, size=37)]


def cls_vector(model, batch):
    return {"h": model(**batch).last_hidden_state[:, 0], "mean": model(**batch).last_hidden_state.mean(1)[:, :3]}


@pytest.fixture(scope="module")
def encoder(bert_encoder_dir):
    return AutoModel.from_pretrained(bert_encoder_dir).eval(), AutoTokenizer.from_pretrained(bert_encoder_dir)


def per_example(model, tokenizer, texts, max_length=None):
    with torch.no_grad():
        return torch.cat([model(**tokenizer(t, return_tensors="pt", truncation=max_length is not None,
                                            max_length=max_length)).last_hidden_state[:, 0] for t in texts])


@pytest.mark.parametrize("limits", [{}, {"max_tokens": 40}, {"batch_size": 1}, {"batch_size": 5, "max_tokens": 64}])
def test_outputs_equal_a_plain_forward_pass_in_input_order(encoder, limits):
    model, tokenizer = encoder
    out = run_model(model, tokenizer, TEXTS, cls_vector, show_progress=False, **limits)
    assert out["h"].shape == (len(TEXTS), model.config.hidden_size) and out["h"].dtype == torch.float32
    torch.testing.assert_close(out["h"], per_example(model, tokenizer, TEXTS), atol=1e-5, rtol=1e-5)
    assert out["mean"].shape == (len(TEXTS), 3)  # several outputs, each with its own shape


def test_one_row_empty_input_and_truncation(encoder):
    model, tokenizer = encoder
    long_text = " ".join(["good"] * 600)
    one = run_model(model, tokenizer, [long_text], cls_vector, max_length=12, show_progress=False)["h"]
    torch.testing.assert_close(one, per_example(model, tokenizer, [long_text], 12), atol=1e-5, rtol=1e-5)
    assert tokenize(tokenizer, [long_text, "good"], 12).lengths.tolist() == [12, 3]
    default = tokenize(tokenizer, [long_text], model.config.max_position_embeddings).lengths[0]
    assert default == model.config.max_position_embeddings  # the model's limit when max_length is not given
    empty = run_model(model, tokenizer, [], cls_vector, show_progress=False)
    assert empty["h"].shape == (0, model.config.hidden_size) and empty["mean"].shape == (0, 3)


def test_padded_batches_equal_the_tokenizers_own_padding(encoder):
    _, tokenizer = encoder
    tokens = tokenize(tokenizer, TEXTS, 64)
    rows = [5, 0, 17, 3]
    expected = tokenizer([TEXTS[r] for r in rows], padding=True, return_tensors="pt")
    batch = tokens.batch(rows, tokenizer.pad_token_id)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert torch.equal(batch[key], expected[key]), key


def test_token_budget_batches_cover_every_row_once_longest_first():
    lengths = RNG.integers(1, 50, size=200)
    batches = length_sorted_batches(lengths, max_tokens=256)
    assert sorted(r for b in batches for r in b) == list(range(200))
    assert all(len(b) * lengths[b].max() <= 256 for b in batches)
    firsts = [lengths[b[0]] for b in batches]
    assert firsts == sorted(firsts, reverse=True)
    assert length_sorted_batches([300, 2, 2], max_tokens=100) == [[0], [1, 2]]  # a long row gets its own batch
    assert [len(b) for b in length_sorted_batches([3] * 10, batch_size=4, max_tokens=9)] == [3, 3, 3, 1]


def test_parallel_tokenisation_equals_one_call(encoder, monkeypatch):
    _, tokenizer = encoder
    monkeypatch.setattr("fusion.batching.TOKENIZE_CHUNK", 4)
    parallel, single = tokenize(tokenizer, TEXTS, 64, workers=3), tokenize(tokenizer, TEXTS, 64, workers=1)
    assert np.array_equal(parallel.lengths, single.lengths)
    assert all(np.array_equal(parallel.flat[k], single.flat[k]) for k in single.flat)


def test_tokenisation_is_cached_in_the_output_cache_per_key_and_max_length(encoder):
    _, tokenizer = encoder
    calls = []

    def counting(texts, **kwargs):
        calls.append(len(texts))
        return tokenizer(texts, **kwargs)

    counting.pad_token_id = tokenizer.pad_token_id
    key, cache = ("tokenizer", "data-fingerprint-for-this-test"), OutputCache(memory_only=True)
    first = cached_tokenize(counting, TEXTS, 64, key, cache)
    again = cached_tokenize(counting, TEXTS, 64, key, cache)
    assert calls == [len(TEXTS)] and (cache.misses, cache.hits) == (1, 1)
    assert np.array_equal(again.lengths, first.lengths)
    assert all(np.array_equal(again.flat[k], first.flat[k]) for k in first.flat)
    cached_tokenize(counting, TEXTS, 8, key, cache)  # another truncation is another entry
    cached_tokenize(counting, TEXTS, 64, None, cache)  # no key: never cached
    cached_tokenize(counting, TEXTS, 64, key)  # no cache: never cached
    assert calls == [len(TEXTS)] * 4


def test_run_model_tokenises_once_per_cache_and_gives_the_same_outputs(encoder, monkeypatch):
    import fusion.batching

    model, tokenizer = encoder
    calls, real = [], fusion.batching.tokenize
    monkeypatch.setattr(fusion.batching, "tokenize", lambda tok, texts, *a, **k: calls.append(len(texts)) or real(
        tok, texts, *a, **k))
    cache, key = OutputCache(memory_only=True), ("tokenizer", "data")
    first = run_model(model, tokenizer, TEXTS, cls_vector, tokens_key=key, cache=cache, show_progress=False)["h"]
    again = run_model(model, tokenizer, TEXTS, cls_vector, tokens_key=key, cache=cache, show_progress=False)["h"]
    assert calls == [len(TEXTS)]
    torch.testing.assert_close(again, first, atol=0, rtol=0)


def test_bfloat16_runs_a_copy_and_stays_close(encoder):
    model, tokenizer = encoder
    before = {k: v.clone() for k, v in model.state_dict().items()}
    exact = run_model(model, tokenizer, TEXTS, cls_vector, show_progress=False)["h"]
    low = run_model(model, tokenizer, TEXTS, cls_vector, dtype="bfloat16", show_progress=False)["h"]
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, exact, atol=0.1, rtol=0.05)  # bfloat16 keeps ~3 significant digits
    assert all(v.dtype == torch.float32 and torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    with pytest.raises(Exception, match=r"dtype must be 'auto' or one of \['bfloat16', 'float16', 'float32'\]"):
        resolve_dtype("int8", torch.device("cpu"))


def test_out_of_memory_splits_the_batch_and_a_single_row_is_a_clear_error(encoder, caplog):
    model, tokenizer = encoder

    def fits_two_rows(m, batch):
        if batch["input_ids"].shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return cls_vector(m, batch)

    with caplog.at_level(logging.WARNING, logger="fusion.engine"):
        out = run_model(model, tokenizer, TEXTS, fits_two_rows, batch_size=8, show_progress=False)["h"]
    torch.testing.assert_close(out, per_example(model, tokenizer, TEXTS), atol=1e-5, rtol=1e-5)
    assert "splitting it in two" in caplog.text

    def never_fits(m, batch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    with pytest.raises(ResourceError, match=r"one row of \d+ tokens does not fit in GPU memory; lower max_length"):
        run_model(model, tokenizer, TEXTS[:3], never_fits, show_progress=False)


def test_tokenized_handles_rows_without_tokens():
    tokens = Tokenized({"input_ids": [[], [7, 8], [9]]})
    batch = tokens.batch([0, 1, 2], pad_id=0)
    assert batch["input_ids"].tolist() == [[0, 0], [7, 8], [9, 0]]
    assert batch["attention_mask"].tolist() == [[0, 0], [1, 1], [1, 0]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the pinned, prefetched path)")
@pytest.mark.parametrize("limits", [{}, {"max_tokens": 40}])
def test_on_a_gpu_outputs_match_a_plain_forward_pass_within_half_precision(encoder, limits):
    model, tokenizer = encoder
    out = run_model(model, tokenizer, TEXTS, cls_vector, device="cuda", show_progress=False, **limits)["h"]
    assert out.device.type == "cpu" and out.dtype == torch.float32
    tolerance = {"atol": 0.1, "rtol": 0.05} if resolve_dtype("auto", torch.device("cuda")) != torch.float32 else {}
    torch.testing.assert_close(out, per_example(model.cpu(), tokenizer, TEXTS), **tolerance)
