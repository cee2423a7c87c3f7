"""Test session set-up: offline Hugging Face, a private HF_HOME, a private output cache, fresh Accelerate state
and seeds per test."""

import json
import os
import tempfile

# Must happen before any Hugging Face import (DESIGN.md, known traps).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="fusion-test-hf-home-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# Scripts launched in subprocesses (torchrun) set process-wide environment at import: never collect them.
collect_ignore_glob = ["_*.py"]


@pytest.fixture(autouse=True)
def _private_output_cache(tmp_path_factory, monkeypatch):
    """Point the default output cache (``FUSION_CACHE``) at an empty folder of its own for each test, so no test
    reads another's entries or the user's home (outside ``tmp_path``, which tests inspect themselves)."""
    directory = tmp_path_factory.mktemp("fusion-cache")
    monkeypatch.setenv("FUSION_CACHE", str(directory))
    return directory


@pytest.fixture(autouse=True)
def _one_thread_subprocesses(monkeypatch):
    """Processes a test starts (recipes, benchmarks, torchrun scripts, the CLI) use one OpenMP thread, as
    ``one_torch_thread`` does in-process: their tiny tensors gain nothing from a second thread, and on a busy
    2-core machine the two spin-wait on each other (the trec_fusers recipe took 104-126 s at load 3 instead of
    24-30 s). A value the caller set is kept; this process's own threads are untouched (torch read it already)."""
    if "OMP_NUM_THREADS" not in os.environ:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _fresh_state():
    """Reset Accelerate's process-wide singletons and torch's seed so tests cannot leak into each other."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    torch.manual_seed(0)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


# --- Tiny real Hugging Face models and toy data (tests/tiny_models.py), built once per session. ---


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors gain nothing from a second thread, and on a busy 2-core machine the two spin-wait on each
    other (a 0.5 s fuser fit then takes 10 s); float sums stay identical. The previous setting is restored.
    A module takes it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def bert_classifier_dir(tmp_path_factory):
    """A saved BERT classifier with labels ["negative", "positive"] and a WordPiece tokenizer."""
    from tiny_models import save_bert_classifier

    return save_bert_classifier(tmp_path_factory.mktemp("bert_classifier"), ["negative", "positive"])


@pytest.fixture(scope="session")
def roberta_classifier_dir(tmp_path_factory):
    """A saved RoBERTa classifier with labels in the OTHER order, ["positive", "negative"], and a BPE tokenizer."""
    from tiny_models import save_roberta_classifier

    return save_roberta_classifier(tmp_path_factory.mktemp("roberta_classifier"), ["positive", "negative"])


@pytest.fixture(scope="session")
def bert_encoder_dir(tmp_path_factory):
    """A saved bare BertModel (AutoModel) with a WordPiece tokenizer."""
    from tiny_models import save_bert_encoder

    return save_bert_encoder(tmp_path_factory.mktemp("bert_encoder"))


@pytest.fixture(scope="session")
def gpt2_encoder_dir(tmp_path_factory):
    """A saved GPT2Model whose tokenizer pads on the right with <|pad|> (id 1)."""
    from tiny_models import save_gpt2_encoder

    return save_gpt2_encoder(tmp_path_factory.mktemp("gpt2_encoder"))


@pytest.fixture(scope="session")
def generic_label_classifier_dir(tmp_path_factory):
    """A saved BERT classifier whose labels are only LABEL_0, LABEL_1."""
    from tiny_models import save_generic_label_classifier

    return save_generic_label_classifier(tmp_path_factory.mktemp("generic_label_classifier"))


@pytest.fixture(scope="session")
def toy_sentiment():
    """{"train": 240 rows, "validation": 80 rows} of {"text", "label"}; 0 = negative, 1 = positive."""
    from tiny_models import make_toy_sentiment

    return {"train": make_toy_sentiment(240, 0), "validation": make_toy_sentiment(80, 1)}


@pytest.fixture(scope="session")
def sentiment_dir(tmp_path_factory, toy_sentiment):
    """A dataset directory of the toy sentiment data: train.csv, validation.csv, labels.json."""
    from helpers import write_csv

    directory = tmp_path_factory.mktemp("sentiment")
    write_csv(directory / "train.csv", toy_sentiment["train"])
    write_csv(directory / "validation.csv", toy_sentiment["validation"])
    (directory / "labels.json").write_text(json.dumps({"0": "negative", "1": "positive"}))
    return directory


@pytest.fixture(scope="session")
def toy_topics():
    """{"train": 240 rows, "validation": 80 rows} of {"text", "label"}; 0 = sports, 1 = politics, 2 = science."""
    from tiny_models import make_toy_topics

    return {"train": make_toy_topics(240, 0), "validation": make_toy_topics(80, 1)}
