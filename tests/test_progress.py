"""The library-wide progress switch (``fusion.set_progress`` / ``FUSION_DISABLE_PROGRESS_BARS``), what the
training bar says (its fold; no ETA to ``max_epochs`` when early stopping may end the run), and transformers'
own bars and load reports kept out of fusion's quiet output, restored afterwards."""

from __future__ import annotations

import contextlib
import io
import logging

import pytest
import torch
from tiny_models import make_toy_sentiment
from transformers.utils import logging as hf_logging

import fusion
from fusion import Ensemble, HFClassifier, HFEncoder, LinearHead, TrainConfig
from fusion.cli import main
from fusion.progress import ENV_DISABLE, describe, progress_enabled, stage
from fusion.training import TensorRows, train


@pytest.fixture(autouse=True)
def _switch_restored():
    """Each test starts from the environment's setting, and leaves it so."""
    fusion.progress._enabled = None
    yield
    fusion.progress._enabled = None


def _fit_linear(config: TrainConfig, desc: str = "probe") -> None:
    x = torch.randn(64, 3)
    y = (x[:, 0] > 0).float()

    def bce(model, batch):
        return torch.nn.functional.binary_cross_entropy_with_logits(model(batch["x"])[:, 0], batch["y"],
                                                                    reduction="none")
    train(torch.nn.Linear(3, 1), bce, TensorRows(x=x, y=y), config, desc=desc)


def test_a_fit_draws_its_bar_unless_progress_is_switched_off(capfd):
    _fit_linear(TrainConfig(max_epochs=3, show_progress=True))
    assert "probe" in capfd.readouterr().err  # the bar is there while progress is on
    fusion.set_progress(False)
    _fit_linear(TrainConfig(max_epochs=3, show_progress=True))
    assert capfd.readouterr().err == ""


def test_the_environment_variable_switches_progress_off(capfd, monkeypatch):
    monkeypatch.setenv(ENV_DISABLE, "1")
    assert not progress_enabled()
    _fit_linear(TrainConfig(max_epochs=3, show_progress=True))
    assert capfd.readouterr().err == ""
    fusion.set_progress(True)  # an explicit call wins over the environment
    assert progress_enabled()


def test_with_early_stopping_the_bar_counts_epochs_without_an_eta_to_max_epochs(capfd):
    _fit_linear(TrainConfig(max_epochs=40, patience=2, show_progress=True))
    err = capfd.readouterr().err
    assert "/40" not in err  # no "3/40 [.. <00:37]" promising 40 epochs
    assert "max=40 (early stopping, patience 2)" in err
    _fit_linear(TrainConfig(max_epochs=4, patience=None, show_progress=True))
    assert "/4" in capfd.readouterr().err  # without early stopping every epoch runs: a total is honest


def test_stage_names_the_fold_in_the_description():
    assert describe("ft head") == "ft head"
    with stage("fold 2/5"):
        assert describe("ft head") == "ft head (fold 2/5)"
    assert describe("ft head") == "ft head"


def test_cross_fitted_head_bars_name_their_fold(bert_encoder_dir, capfd):
    member = HFEncoder(bert_encoder_dir, head=LinearHead(), name="enc", show_progress=True,
                       train_config=TrainConfig(max_epochs=3, show_progress=True))
    Ensemble([member], labels=["negative", "positive"], cv=2).fit(make_toy_sentiment(40, 0))
    err = capfd.readouterr().err
    assert "enc head (fold 1/2)" in err and "enc head (fold 2/2)" in err
    assert "enc head (all training rows)" in err  # the member's own fit, apart from the folds


def test_set_verbosity_sets_fusions_logger():
    logger = logging.getLogger("fusion")
    before = logger.level
    try:
        fusion.set_verbosity(logging.WARNING)
        assert logger.getEffectiveLevel() == logging.WARNING
        assert not logging.getLogger("fusion.ensemble").isEnabledFor(logging.INFO)
    finally:
        logger.setLevel(before)


def test_progress_off_silences_transformers_loads_and_restores_them(bert_classifier_dir, capfd):
    HFClassifier(bert_classifier_dir, name="on").load_model()
    assert "Loading weights" in capfd.readouterr().err  # transformers draws it while fusion's progress is on
    fusion.set_progress(False)
    HFClassifier(bert_classifier_dir, name="off").load_model()
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # scoped: transformers' own setting is back


def test_predict_quiet_prints_no_loading_weights(bert_classifier_dir, tmp_path, capfd):
    member = HFClassifier(bert_classifier_dir, name="bert", show_progress=False)
    saved = Ensemble([member], labels=["negative", "positive"]).fit(make_toy_sentiment(40, 0)).save_pretrained(
        tmp_path / "ens")
    capfd.readouterr()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(["predict", str(saved), "--text", "a good film", "--quiet"]) == 0
    assert "Loading weights" not in err.getvalue() + capfd.readouterr().err
    assert "a good film" in out.getvalue()
    assert hf_logging.is_progress_bar_enabled()  # a quiet command leaves transformers as it found it
    assert progress_enabled()
