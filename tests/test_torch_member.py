"""TorchMember: PyTorch modules on numeric inputs, trained, cross-fitted, saved and reloaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fusion import ConfigError, DataError, Ensemble, LinearFuser, TorchMember, TrainConfig
from fusion.cache.store import OutputCache
from fusion.inputs import as_text_data

CONFIG = TrainConfig(learning_rate=1e-2, max_epochs=30, batch_size=32, show_progress=False)


def blobs(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    centres = np.array([[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0]], dtype=np.float32)
    return {"x": centres[labels] + rng.normal(0, 0.7, (n, 4)).astype(np.float32), "label": labels}


def net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def test_torch_members_learn_fuse_and_reload(tmp_path):
    train, validation = blobs(300, 0), blobs(120, 1)
    members = [TorchMember(net(), name="a", train_config=CONFIG), TorchMember(nn.Linear(4, 3), name="b", train_config=CONFIG)]
    ens = Ensemble(members, fuser=LinearFuser(), labels=["r", "g", "b"], text_column="x", cv=3)
    ens.fit(train, validation)
    assert ens.fuser_data_ == "train"
    assert ens.metrics_["scores"]["a"]["accuracy"] > 0.85 and ens.metrics_["scores"]["fuser:linear"]["accuracy"] > 0.85
    ens.save_pretrained(tmp_path / "e")
    with pytest.raises(ConfigError, match=r'objects=\{"a": \{"module": module\}\}'):
        Ensemble.from_pretrained(tmp_path / "e")
    same = Ensemble.from_pretrained(tmp_path / "e", objects={"a": {"module": net()}, "b": {"module": nn.Linear(4, 3)}})
    assert np.array_equal(same.predict_proba(validation), ens.predict_proba(validation))


def test_fit_is_reproducible_and_does_not_depend_on_the_modules_initial_weights():
    data = as_text_data(blobs(200, 0), text_column="x", label_names=["r", "g", "b"])
    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)  # different initial weights in the module handed over
        member = TorchMember(net(), train_config=CONFIG).fit(data, ["r", "g", "b"], OutputCache())
        states.append(member.module_.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_texts_are_refused_with_a_clear_message():
    member = TorchMember(net(), name="pixels-only", train_config=CONFIG)
    with pytest.raises(DataError, match="'pixels-only' takes numeric inputs"):
        member.fit(as_text_data({"text": ["a", "b"], "label": [0, 1]}, label_names=["r", "g", "b"]), ["r", "g", "b"],
                   OutputCache())


def test_ragged_or_nan_features_are_refused():
    with pytest.raises(DataError, match="NaN or inf"):
        as_text_data({"x": np.array([[0.0, np.nan]]), "label": [0]}, text_column="x", label_names=["a"])
    with pytest.raises(DataError, match="different shapes"):
        as_text_data({"x": [[0.0, 1.0], [1.0]], "label": [0, 0]}, text_column="x", label_names=["a"])
