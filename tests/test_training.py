"""Tests of fusion.training: the one training loop (learning, determinism, early stopping, accumulation,
config validation, errors, Accelerate state hygiene, and 1 vs 2 processes giving the same weights)."""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState, is_initialized

from fusion.errors import ConfigError, DataError, FusionError
from fusion.training import Rows, TensorRows, TrainConfig, TrainingError, TrainResult, train

QUIET = {"show_progress": False}


def bce(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(model(batch["x"])[:, 0], batch["y"], reduction="none")


def mse(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return (model(batch["x"])[:, 0] - batch["y"]) ** 2


def logistic_data(n: int = 400, d: int = 5, seed: int = 1) -> TensorRows:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (torch.sigmoid(x @ torch.randn(d, generator=g)) > torch.rand(n, generator=g)).float()
    return TensorRows(x=x, y=y)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def fit_linear(
    config: TrainConfig, rows: TensorRows | None = None, **kwargs
) -> tuple[torch.nn.Module, TrainResult]:
    rows = rows or logistic_data()
    torch.manual_seed(0)
    model = torch.nn.Linear(rows.tensors["x"].shape[1], 1)
    return model, train(model, bce, rows, config, **kwargs)


# ---------------------------------------------------------------- learning


def test_logistic_regression_reaches_sklearn_loss():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    rows = logistic_data()
    x, y = rows.tensors["x"].numpy(), rows.tensors["y"].numpy()
    reference = log_loss(y, LogisticRegression(C=1e6, max_iter=1000).fit(x, y).predict_proba(x)[:, 1])
    config = TrainConfig(learning_rate=0.1, max_epochs=400, patience=None, **QUIET)
    model, result = fit_linear(config, rows)
    with torch.no_grad():
        final = bce(model, rows.tensors).mean().item()
    assert final == pytest.approx(reference, abs=1e-3)
    assert result.best_loss == pytest.approx(reference, abs=2e-3)  # train loss seen during the epoch
    assert result.history[0]["train_loss"] > result.best_loss + 0.1


@pytest.mark.parametrize("grad_accumulation", [1, 3])
def test_lbfgs_reaches_sklearns_optimum_in_a_few_epochs(grad_accumulation):
    from sklearn.linear_model import LogisticRegression

    rows = logistic_data()
    x, y = rows.tensors["x"].numpy(), rows.tensors["y"].numpy()
    reference = LogisticRegression(C=1e8, max_iter=1000, tol=1e-10).fit(x, y)
    config = TrainConfig(optimizer="lbfgs", learning_rate=1.0, patience=2, min_delta=1e-9,
                         grad_accumulation=grad_accumulation, **QUIET)
    model, result = fit_linear(config, rows)
    torch.testing.assert_close(model.weight[0].detach().double(), torch.from_numpy(reference.coef_[0]).double(),
                               atol=1e-3, rtol=0)
    assert model.bias.item() == pytest.approx(reference.intercept_[0], abs=1e-3)
    assert result.epochs_run < 10 and result.best_epoch <= result.epochs_run - 2  # converged, then patience
    with torch.no_grad():  # the monitored train loss is the loss at the kept weights
        assert bce(model, rows.tensors).mean().item() == pytest.approx(result.best_loss, abs=1e-6)


@pytest.mark.parametrize(("schedule", "warmup", "factors"), [
    ("constant", 0.0, [1] * 8),
    ("constant", 0.25, [0.5] + [1] * 7),
    ("linear", 0.0, [1, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8]),
    ("linear", 0.25, [0.5, 1, 1, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6]),
])
def test_learning_rate_schedule_per_step(schedule, warmup, factors):
    # loss = w for every row: a constant gradient, so each AdamW step moves w by exactly that step's rate.
    seen = []

    def loss(model, batch):
        seen.append(model.weight.item())
        return model(batch["x"])[:, 0]

    model = torch.nn.Linear(1, 1, bias=False)
    config = TrainConfig(learning_rate=0.01, max_epochs=2, batch_size=2, patience=None, lr_schedule=schedule,
                         warmup_fraction=warmup, **QUIET)
    train(model, loss, TensorRows(x=torch.ones(8, 1)), config)
    steps = -torch.diff(torch.tensor(seen[:8] + [model.weight.item()], dtype=torch.float64))
    torch.testing.assert_close(steps, 0.01 * torch.tensor(factors, dtype=torch.float64), atol=1e-6, rtol=0)


def test_linear_regression_recovers_weights_with_minibatches():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 3, generator=g)
    true_w, true_b = torch.tensor([1.5, -2.0, 0.5]), 0.7
    rows = TensorRows(x=x, y=x @ true_w + true_b + 0.01 * torch.randn(512, generator=g))
    model = torch.nn.Linear(3, 1)
    config = TrainConfig(
        learning_rate=0.05, max_epochs=300, batch_size=64, patience=20, min_delta=1e-7, **QUIET
    )
    train(model, mse, rows, config)
    assert torch.allclose(model.weight[0], true_w, atol=0.01)
    assert model.bias.item() == pytest.approx(true_b, abs=0.01)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (rows placed on the device once)")
@pytest.mark.parametrize(("optimizer", "precision"), [("lbfgs", "no"), ("adamw", "auto")])
def test_on_a_gpu_rows_move_once_and_training_reaches_the_optimum(monkeypatch, optimizer, precision):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    rows = logistic_data()
    x, y = rows.tensors["x"].numpy(), rows.tensors["y"].numpy()
    reference = log_loss(y, LogisticRegression(C=1e8, max_iter=1000).fit(x, y).predict_proba(x)[:, 1])
    gathered_on = set()
    take = TensorRows.take

    def recording_take(self, index):
        gathered_on.add(self.device.type)
        return take(self, index)

    monkeypatch.setattr(TensorRows, "take", recording_take)
    settings = {"learning_rate": 1.0} if optimizer == "lbfgs" else {"learning_rate": 0.05, "batch_size": 64}
    config = TrainConfig(optimizer=optimizer, mixed_precision=precision, max_epochs=100, patience=None,
                         **settings, **QUIET)
    model, _ = fit_linear(config, rows)
    assert gathered_on == {"cuda"}  # batches gathered on the GPU: rows were moved there once
    assert rows.device.type == "cpu" and next(model.parameters()).device.type == "cpu"  # caller's objects
    with torch.no_grad():
        assert bce(model, rows.tensors).mean().item() == pytest.approx(reference, abs=1e-4 if precision == "no" else 5e-3)


def test_returns_original_model_on_cpu_in_eval_mode_with_state_restored():
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Dropout(0.1), torch.nn.Linear(4, 1))
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight.clone()
    result = train(model, bce, logistic_data(), TrainConfig(max_epochs=3, mixed_precision="bf16", **QUIET))
    assert isinstance(result, TrainResult)
    assert not model.training and model[2].weight.device.type == "cpu"
    assert torch.equal(model[0].weight, frozen)
    assert model[2].weight.dtype == torch.float32
    # Nothing patched onto the caller's object (Accelerate's prepare() would set these three).
    assert not {"forward", "_original_forward", "_is_accelerate_prepared"} & set(model.__dict__)


def test_custom_rows_protocol():
    class Squares:
        def __len__(self) -> int:
            return 32

        def take(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
            x = index.float()[:, None] / 32
            return {"x": x, "y": 2 * x[:, 0]}

    assert isinstance(Squares(), Rows)
    model = torch.nn.Linear(1, 1)
    train(model, mse, Squares(), TrainConfig(learning_rate=0.05, max_epochs=300, patience=None, **QUIET))
    assert model.weight.item() == pytest.approx(2.0, abs=0.05)


# ---------------------------------------------------------------- determinism and batching


def test_same_seed_gives_identical_weights():
    config = TrainConfig(max_epochs=5, batch_size=32, seed=4, **QUIET)
    a, _ = fit_linear(config)
    b, _ = fit_linear(config)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_different_seed_with_minibatches_gives_different_weights():
    a, _ = fit_linear(TrainConfig(max_epochs=5, batch_size=32, seed=1, **QUIET))
    b, _ = fit_linear(TrainConfig(max_epochs=5, batch_size=32, seed=2, **QUIET))
    assert not torch.allclose(a.weight, b.weight, atol=1e-4)


@pytest.mark.parametrize(
    ("accumulated", "plain"),
    [
        ({"batch_size": 8, "grad_accumulation": 2}, {"batch_size": 16}),  # 100 rows: last step has 4 rows
        ({"batch_size": 5, "grad_accumulation": 3}, {"batch_size": 15}),
        ({"batch_size": None, "grad_accumulation": 4}, {"batch_size": None}),
    ],
)
def test_gradient_accumulation_equals_larger_batch(accumulated, plain):
    rows = logistic_data(n=100)
    a, _ = fit_linear(
        TrainConfig(max_epochs=4, patience=None, learning_rate=0.05, **accumulated, **QUIET), rows
    )
    b, _ = fit_linear(TrainConfig(max_epochs=4, patience=None, learning_rate=0.05, **plain, **QUIET), rows)
    assert torch.allclose(a.weight, b.weight, atol=1e-6) and torch.allclose(a.bias, b.bias, atol=1e-6)


def test_micro_batches_have_batch_size_rows():
    seen: list[int] = []

    def loss(model, batch):
        seen.append(len(batch["y"]))
        return bce(model, batch)

    train(
        torch.nn.Linear(5, 1),
        loss,
        logistic_data(n=50),
        TrainConfig(max_epochs=1, batch_size=8, grad_accumulation=3, **QUIET),
    )
    assert seen == [8, 8, 8, 8, 8, 8, 2]


class SequenceRows:
    """Variable-length token rows with ``lengths``, like ``fusion.batching.TokenRows``: label = whether token 1
    appears."""

    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.lengths = torch.randint(1, 40, (n,), generator=g).numpy()
        self.ids = [torch.randint(2, 20, (int(k),), generator=g) for k in self.lengths]
        for i in range(0, n, 2):
            self.ids[i][0] = 1
        self.y = torch.tensor([float(1 in row.tolist()) for row in self.ids])

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        rows = [self.ids[i] for i in index.tolist()]
        width = max(map(len, rows))
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        for k, row in enumerate(rows):
            ids[k, : len(row)] = row
        return {"ids": ids, "y": self.y[index], "index": index}


class Bag(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.out = torch.nn.Embedding(20, 8, padding_idx=0), torch.nn.Linear(8, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.embed(ids).max(1).values)[:, 0]


def test_token_budget_length_grouped_micro_batches_train_on_every_row_once_per_epoch():
    rows, shapes, seen = SequenceRows(300), [], []

    def loss(model, batch):
        shapes.append(tuple(batch["ids"].shape))
        seen.extend(batch["index"].tolist())
        return F.binary_cross_entropy_with_logits(model(batch["ids"]), batch["y"], reduction="none")

    config = TrainConfig(max_epochs=3, batch_size=32, max_tokens=400, learning_rate=0.05, patience=None, **QUIET)
    result = train(Bag(), loss, rows, config)
    assert sorted(seen) == sorted(list(range(300)) * 3)
    assert all(n * width <= max(400, width) and n <= 32 for n, width in shapes)
    padding = sum(n * w for n, w in shapes) / (3 * rows.lengths.sum())
    assert padding < 1.3  # length grouping: little padding (random batches of 32 pad ~1.9x here)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_length_grouping_is_seeded_and_shuffles_each_epoch():
    rows = SequenceRows(200)

    def orders(seed: int) -> list[list[int]]:
        batches: list[list[int]] = []

        def loss(model, batch):
            batches.append(batch["index"].tolist())
            return F.binary_cross_entropy_with_logits(model(batch["ids"]), batch["y"], reduction="none")

        train(Bag(), loss, rows, TrainConfig(max_epochs=2, batch_size=16, group_by_length=True, seed=seed,
                                             patience=None, **QUIET))
        return batches

    first = orders(0)
    assert first == orders(0) and first != orders(1)
    half = len(first) // 2
    assert first[:half] != first[half:]  # epoch 2 is not a replay of epoch 1
    widths = [max(rows.lengths[b]) - min(rows.lengths[b]) for b in first]
    assert sum(widths) / len(widths) < 5  # rows of a batch have similar lengths


def test_length_grouping_leaves_a_full_batch_whole():
    rows, steps = SequenceRows(90), []

    def loss(model, batch):
        steps.append(len(batch["index"]))
        return F.binary_cross_entropy_with_logits(model(batch["ids"]), batch["y"], reduction="none")

    train(Bag(), loss, rows, TrainConfig(max_epochs=2, group_by_length=True, patience=None, **QUIET))
    assert steps[:2] == [90, 90]  # one full-batch step per epoch (then the eval pass), not 50-row windows


def test_compile_trains_to_the_same_weights(monkeypatch):
    compiled = []
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compiled.append(model) or real_compile(model, **kw))
    x = torch.randn(64, 3)
    rows, config = TensorRows(x=x, y=(x[:, 0] > 0).float()), TrainConfig(max_epochs=5, patience=None, **QUIET)
    plain, fast = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
    fast.load_state_dict(plain.state_dict())
    train(plain, bce, rows, config)
    train(fast, bce, rows, dataclasses.replace(config, compile=True))
    assert len(compiled) == 1
    torch.testing.assert_close(fast.weight, plain.weight, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- early stopping


def drifting_rows() -> tuple[TensorRows, TensorRows]:
    """Train targets y = x, val targets y = 0.5 x: from w = 0 the val loss falls, then rises past w = 0.5."""
    x = torch.linspace(-1, 1, 64)[:, None]
    return TensorRows(x=x, y=x[:, 0]), TensorRows(x=x, y=0.5 * x[:, 0])


def test_early_stopping_keeps_best_epoch_weights():
    train_rows, val_rows = drifting_rows()
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    config = TrainConfig(learning_rate=0.05, max_epochs=100, patience=3, **QUIET)
    result = train(model, mse, train_rows, config, val_rows=val_rows)
    val_losses = [h["val_loss"] for h in result.history]
    assert result.epochs_run == result.best_epoch + 3 < 100
    assert result.best_epoch == 1 + val_losses.index(min(val_losses))
    assert val_losses[-1] > result.best_loss
    with torch.no_grad():
        assert mse(model, val_rows.tensors).mean().item() == pytest.approx(result.best_loss, rel=1e-6)
    assert model.weight.item() == pytest.approx(0.5, abs=0.05)


def test_patience_none_runs_all_epochs_and_monitors_train_loss():
    train_rows, _ = drifting_rows()
    model = torch.nn.Linear(1, 1)
    config = TrainConfig(learning_rate=0.05, max_epochs=12, patience=None, min_delta=0.0, **QUIET)
    result = train(model, mse, train_rows, config)
    train_losses = [h["train_loss"] for h in result.history]
    assert result.epochs_run == 12 and all(h["val_loss"] is None for h in result.history)
    assert result.best_loss == min(train_losses)
    assert result.best_epoch == 1 + train_losses.index(min(train_losses))


# ---------------------------------------------------------------- config


def test_config_round_trips_through_json():
    config = TrainConfig(
        learning_rate=0.01, batch_size=32, patience=None, max_grad_norm=1.0, mixed_precision="bf16"
    )
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert TrainConfig.from_dict({}) == TrainConfig()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"learning_rate": 0}, "learning_rate must be a finite number > 0"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"max_epochs": 0}, "max_epochs must be an integer >= 1"),
        ({"max_epochs": 2.5}, "max_epochs"),
        ({"batch_size": 0}, "batch_size must be None"),
        ({"batch_size": "16"}, "batch_size.*'16'"),
        ({"batch_size": True}, "batch_size"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"grad_accumulation": 0}, "grad_accumulation"),
        ({"patience": 0}, "patience"),
        ({"min_delta": -1}, "min_delta"),
        ({"max_grad_norm": 0}, "max_grad_norm"),
        (
            {"mixed_precision": "fp8"},
            r"mixed_precision must be one of \('auto', 'no', 'fp16', 'bf16'\); got 'fp8'",
        ),
        ({"seed": -1}, "seed"),
        ({"show_progress": "yes"}, "show_progress"),
        ({"max_tokens": 0}, "max_tokens must be None"),
        ({"group_by_length": 1}, "group_by_length must be True or False"),
        ({"compile": "yes"}, "compile must be True or False"),
        ({"lr_schedule": "cosine"}, r"lr_schedule must be one of \('constant', 'linear'\)"),
        ({"warmup_fraction": 1.0}, r"warmup_fraction must be a number in \[0, 1\)"),
        ({"optimizer": "lbfgs", "lr_schedule": "linear"}, r"\{'lr_schedule': 'linear'\}"),
        ({"optimizer": "sgd"}, r"optimizer must be one of \('adamw', 'lbfgs'\)"),
        ({"optimizer": "lbfgs", "batch_size": 32}, r"optimizer='lbfgs'.*\{'batch_size': 32\}.*optimizer='adamw'"),
        ({"optimizer": "lbfgs", "weight_decay": 0.1}, r"cannot use \{'weight_decay': 0.1\}"),
        ({"optimizer": "lbfgs", "max_grad_norm": 1.0, "mixed_precision": "fp16"},
         r"\{'max_grad_norm': 1.0, 'mixed_precision': 'fp16'\}"),
    ],
)
def test_bad_config_values_raise(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kwargs)
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_dict(kwargs)


@pytest.mark.parametrize(
    ("d", "match"),
    [
        ({"lr": 0.1}, r"unknown TrainConfig key\(s\) \['lr'\]; valid keys are: learning_rate, max_epochs"),
        ({"batch_sise": 4}, "Did you mean 'batch_size'"),
        ([("seed", 1)], "expects a dict; got list"),
    ],
)
def test_from_dict_rejects_unknown_keys(d, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_dict(d)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (
            lambda: TensorRows(x=torch.zeros(3, 2), y=torch.zeros(4)),
            DataError,
            r"same number of rows.*'x': 3.*'y': 4",
        ),
        (lambda: TensorRows(), DataError, "at least one tensor"),
        (lambda: TensorRows(x=[1, 2]), DataError, r"tensors with a row dimension.*\['x'\]"),
        (
            lambda: train(torch.nn.Linear(2, 1), bce, TensorRows(x=torch.zeros(0, 2)), TrainConfig(**QUIET)),
            DataError,
            "training: train_rows is empty",
        ),
        (
            lambda: train(
                torch.nn.Linear(5, 1),
                bce,
                logistic_data(),
                TrainConfig(**QUIET),
                val_rows=TensorRows(x=torch.zeros(0, 5)),
                desc="head",
            ),
            DataError,
            "head: val_rows is empty",
        ),
        (lambda: train(torch.nn.Linear(5, 1), bce, [1, 2], TrainConfig(**QUIET)), DataError, "take"),
        (
            lambda: train(
                torch.nn.Linear(5, 1), lambda m, b: bce(m, b).mean(), logistic_data(), TrainConfig(**QUIET)
            ),
            TrainingError,
            r"per-example losses of shape \[400\].*got \(\)",
        ),
        (
            lambda: train(
                torch.nn.Linear(5, 1).requires_grad_(False), bce, logistic_data(), TrainConfig(**QUIET)
            ),
            ConfigError,
            "no parameters with requires_grad=True",
        ),
    ],
)
def test_bad_input_raises(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_non_finite_loss_names_desc_epoch_and_learning_rate():
    rows = logistic_data()
    rows.tensors["x"][7, 0] = float("nan")
    with pytest.raises(
        TrainingError, match=r"my head: the loss became non-finite in epoch 1.*lower learning_rate"
    ):
        train(torch.nn.Linear(5, 1), bce, rows, TrainConfig(**QUIET), desc="my head")
    assert issubclass(TrainingError, FusionError)


# ---------------------------------------------------------------- Accelerate state, leaks, progress, logging


def test_many_calls_with_different_precisions_neither_fail_nor_leak():
    # A process's first AdamW imports torch._dynamo lazily; frames of that import (freed only by the cycle
    # collector) hold the first optimizer. So warm up first, then count.
    fit_linear(TrainConfig(max_epochs=1, **QUIET))
    gc.collect()
    gc.disable()  # everything must be freed by reference counting alone (prompt release of GPU memory)
    try:
        for i in range(12):
            config = TrainConfig(
                max_epochs=2, batch_size=64, mixed_precision=["no", "bf16", "fp16"][i % 3], **QUIET
            )
            fit_linear(config)
        alive = [o for o in gc.get_objects() if issubclass(type(o), (torch.optim.Optimizer, Accelerator))]
    finally:
        gc.enable()
    assert alive == []


def test_callers_accelerator_state_is_left_as_it_was():
    Accelerator(mixed_precision="bf16")
    fit_linear(TrainConfig(max_epochs=1, mixed_precision="no", **QUIET))
    assert AcceleratorState().mixed_precision == "bf16"
    Accelerator(mixed_precision="bf16")  # would raise if train() had left its own precision behind


@pytest.mark.parametrize("precision", ["no", "fp16", "bf16"])
def test_callers_accelerator_keeps_its_settings_during_and_after_training(precision):
    user = Accelerator(mixed_precision="bf16", gradient_accumulation_steps=4)
    seen = set()

    def loss(model, batch):
        seen.add((user.mixed_precision, user.gradient_accumulation_steps, user.native_amp))
        return bce(model, batch)

    config = TrainConfig(max_epochs=2, mixed_precision=precision, **QUIET)
    train(torch.nn.Linear(5, 1), loss, logistic_data(), config)
    assert seen == {("bf16", 4, True)}  # the process-wide state was never swapped for the run's own
    assert (user.mixed_precision, user.gradient_accumulation_steps) == ("bf16", 4)
    assert Accelerator().mixed_precision == "bf16"


def test_train_initialises_no_accelerator_state_so_any_precision_may_follow():
    during = []

    def loss(model, batch):
        during.append(is_initialized())
        return bce(model, batch)

    config = TrainConfig(max_epochs=1, mixed_precision="no", **QUIET)
    train(torch.nn.Linear(5, 1), loss, logistic_data(), config)
    assert set(during) == {False} and not is_initialized()
    assert Accelerator(mixed_precision="bf16").mixed_precision == "bf16"  # the caller's choice is still free
    fit_linear(TrainConfig(max_epochs=1, mixed_precision="fp16", **QUIET))  # and train() still runs after it


class Counting(torch.nn.Module):
    """Counts calls of its class's forward; records the output dtype (autocast) of its layer."""

    calls = 0

    def __init__(self) -> None:
        super().__init__()
        self.layer, self.dtypes = torch.nn.Linear(5, 1), []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        type(self).calls += 1
        out = self.layer(x)
        self.dtypes.append(out.dtype)
        return out


@pytest.mark.parametrize(("precision", "compile"),
                         [("no", False), ("bf16", False), ("fp16", False), ("bf16", True)])
def test_callers_model_object_is_never_patched(monkeypatch, precision, compile):
    monkeypatch.setattr(Counting, "calls", 0)
    model = Counting()
    before = {name: set(vars(m)) - {"dtypes"} for name, m in model.named_modules()}
    patched = []

    def loss(m, batch):
        patched.append(sorted(set(vars(model)) - before[""] - {"dtypes"}))
        patched.append(getattr(model.forward, "__func__", None) is not Counting.forward)
        return bce(m, batch)

    config = TrainConfig(max_epochs=2, batch_size=100, mixed_precision=precision, compile=compile, **QUIET)
    train(model, loss, logistic_data(), config)
    assert not any(patched)  # during training: no forward, _original_forward or _is_accelerate_prepared
    assert {name: set(vars(m)) - {"dtypes"} for name, m in model.named_modules()} == before
    assert "forward" not in vars(model) and model.forward.__func__ is Counting.forward
    assert Counting.calls >= 2 * 4  # the class's own forward ran: 4 micro-batches per epoch, 2 epochs
    expected = torch.bfloat16 if precision == "bf16" else torch.float32  # fp16 on CPU runs as fp32
    assert set(model.dtypes) == {expected}


def test_consecutive_runs_in_one_process_each_use_their_own_precision():
    model, rows = Counting(), logistic_data()
    for precision, dtype in [("no", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float32),
                             ("bf16", torch.bfloat16), ("auto", torch.float32)]:
        model.dtypes.clear()
        train(model, bce, rows, TrainConfig(max_epochs=1, mixed_precision=precision, **QUIET))
        assert set(model.dtypes) == {dtype}, precision


def test_fp16_gradient_scaler_unscales_before_clipping_and_matches_fp32(monkeypatch):
    # fp16 runs as fp32 on CPU; forcing fp16 autocast here exercises the GradScaler path a GPU run takes.
    import fusion.training

    config = TrainConfig(learning_rate=0.05, max_epochs=10, batch_size=64, patience=None, max_grad_norm=1.0,
                         **QUIET)
    plain, _ = fit_linear(config)
    scales, update = [], torch.amp.GradScaler.update

    def recording_update(self, *args):
        update(self, *args)
        scales.append(self.get_scale())

    monkeypatch.setattr(torch.amp.GradScaler, "update", recording_update)
    monkeypatch.setattr(fusion.training, "_autocast_dtype", lambda requested, device: torch.float16)
    half, _ = fit_linear(config)
    assert len(scales) == 10 * 7 and min(scales) > 1000  # one scaler update per optimizer step, loss scaled
    torch.testing.assert_close(half.weight, plain.weight, atol=1e-3, rtol=0)  # clipped unscaled gradients


def test_library_code_uses_no_accelerate_internals():
    package = Path(__file__).resolve().parents[1] / "fusion"
    internals = ("_shared_state", "_reset_state", "_is_accelerate_prepared", "_original_forward")
    found = [f"{path.name}: {name}" for path in package.rglob("*.py") for name in internals
             if name in path.read_text()]
    assert found == []


def test_training_the_same_model_twice_prepares_it_again():
    model = torch.nn.Sequential(torch.nn.Linear(5, 1))
    dtypes: list[torch.dtype] = []
    model[0].register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    rows = logistic_data()
    first = train(model, bce, rows, TrainConfig(max_epochs=2, mixed_precision="no", **QUIET))
    assert set(dtypes) == {torch.float32}
    dtypes.clear()
    second = train(model, bce, rows, TrainConfig(max_epochs=2, mixed_precision="bf16", **QUIET))
    assert set(dtypes) == {
        torch.bfloat16
    }  # autocast applied: prepare() did not skip an "already prepared" model
    assert second.history[0]["train_loss"] < first.history[0]["train_loss"]  # continued from trained weights


def test_progress_bar_only_when_asked(capsys):
    fit_linear(TrainConfig(max_epochs=2, show_progress=True), desc="bar-desc")
    captured = capsys.readouterr()
    assert "bar-desc" in captured.err and captured.out == ""
    fit_linear(TrainConfig(max_epochs=2, show_progress=False), desc="bar-desc")
    assert capsys.readouterr() == ("", "")


def test_logs_one_debug_record_per_epoch(caplog):
    with caplog.at_level(logging.DEBUG, logger="fusion.training"):
        _, result = fit_linear(TrainConfig(max_epochs=4, **QUIET), desc="logged")
    records = [r for r in caplog.records if r.name == "fusion.training" and "logged epoch" in r.getMessage()]
    assert len(records) == result.epochs_run == 4


# ---------------------------------------------------------------- processes


def test_warns_when_launched_distributed_but_accelerate_sees_one_process(monkeypatch, caplog):
    monkeypatch.setenv("WORLD_SIZE", "2")  # no LOCAL_RANK and no ACCELERATE_USE_CPU: Accelerate stays single
    with caplog.at_level(logging.WARNING, logger="fusion.training"):
        fit_linear(TrainConfig(max_epochs=1, **QUIET), desc="lonely")
    assert "lonely: WORLD_SIZE=2 but Accelerate sees one process" in caplog.text


def start_script(outdir: Path, processes: int) -> subprocess.Popen:
    """The script in ``processes`` processes, started (stdout and stderr go to files in ``outdir``)."""
    script = Path(__file__).with_name("_train_script.py")
    outdir.mkdir()
    # --standalone rendezvouses on a free port of its own choosing, so parallel runs cannot clash on 29500.
    launcher = (
        ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        if processes > 1
        else []
    )
    with open(outdir / "stdout", "w") as stdout, open(outdir / "stderr", "w") as stderr:
        return subprocess.Popen([sys.executable, *launcher, str(script), str(outdir)], stdout=stdout, stderr=stderr)


def script_results(process: subprocess.Popen, outdir: Path, processes: int) -> dict:
    """What the started script wrote, once it exited 0."""
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    assert process.returncode == 0, (outdir / "stderr").read_text()[-4000:]
    from safetensors.torch import load_file

    ranks = [json.loads((outdir / f"rank{r}.json").read_text()) for r in range(processes)]
    result = json.loads((outdir / "result.json").read_text())
    return {"weights": load_file(outdir / "weights.safetensors"), "ranks": ranks, "result": result}


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    # Both at once: much of each is single-threaded imports, which overlap on 2 cores.
    started = {n: start_script(tmp_path / name, n) for n, name in ((1, "one"), (2, "two"))}
    try:
        one, two = (script_results(started[n], tmp_path / name, n) for n, name in ((1, "one"), (2, "two")))
    finally:
        for process in started.values():
            process.kill()  # only the other one, if one failed: a finished process ignores it
            process.wait()
    assert [r["num_processes"] for r in two["ranks"]] == [2, 2] and one["ranks"][0]["num_processes"] == 1
    # Micro-batches of 15 rows split 8/7; the 1-row last micro-batch leaves rank 1 a 1-row dummy forward.
    assert two["ranks"][0]["rows_seen"][:5] == [8, 8, 8, 8, 1]
    assert two["ranks"][1]["rows_seen"][:5] == [7, 7, 7, 7, 1]
    assert one["ranks"][0]["rows_seen"][:5] == [15, 15, 15, 15, 1]
    one_fp32, two_fp32 = one["result"]["fp32"], two["result"]["fp32"]
    assert one_fp32["best_epoch"] == two_fp32["best_epoch"]
    assert one_fp32["epochs_run"] == two_fp32["epochs_run"] < 30  # stopped early, on both ranks
    for a, b in zip(one_fp32["history"], two_fp32["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-5)
    assert one["weights"].keys() == two["weights"].keys()
    for name, tensor in one["weights"].items():
        torch.testing.assert_close(tensor, two["weights"][name], atol=1e-5, rtol=0)
    # A second run with another precision in the same processes: DDP-wrapped, the callers' models untouched,
    # no AcceleratorState created, and close to the one-process bf16 run.
    assert [r["wrapped_as"] for r in two["ranks"]] == [["DistributedDataParallel"]] * 2
    assert one["ranks"][0]["wrapped_as"] == ["_Autocast"]
    assert all(r["attributes_unchanged"] and not r["accelerator_state"] for r in one["ranks"] + two["ranks"])
    for a, b in zip(one["result"]["bf16"]["history"], two["result"]["bf16"]["history"], strict=False):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=5e-3)  # bf16 rounding differs by slice
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=5e-3)


def test_seeding_leaves_the_callers_rng_state_alone():
    model, rows = torch.nn.Sequential(torch.nn.Linear(5, 1), torch.nn.Dropout(0.5)), logistic_data()
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    train(model, bce, rows, TrainConfig(max_epochs=2, seed=5, **QUIET))  # dropout draws random numbers
    assert torch.equal(torch.get_rng_state(), state)
