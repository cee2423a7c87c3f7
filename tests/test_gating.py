"""GatingFuser: per-row routing recovered on synthetic data where each member is right on a known region, the
global-weights fallback with few rows, sharper routing with the entropy setting, and a saved gate that predicts
the same."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusion import GatingFuser, MeanFuser
from fusion.errors import MemberOutputError
from fusion.fusers import MemberOutputs


def regions(n: int = 600, seed: int = 0) -> tuple[MemberOutputs, torch.Tensor, torch.Tensor]:
    """Two members that are each right (and confident) on one half of the rows and confidently random on the
    other; the half is told by a 2-D embedding both members report (x[0] > 0: member 0's half)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    own = x[:, 0] > 0
    logits = torch.zeros(n, 2, 2)
    for member, mine in ((0, own), (1, ~own)):
        guess = torch.where(mine, labels, torch.randint(0, 2, (n,), generator=g))
        logits[torch.arange(n), member, guess] = 3.0  # p = 0.95 on its guess
    return MemberOutputs(logits, ["left", "right"], [x, x.clone()]), labels, own


def accuracy(proba: np.ndarray, labels: torch.Tensor) -> float:
    return float((proba.argmax(1) == labels.numpy()).mean())


def test_the_gate_recovers_which_member_is_right_where():
    train, labels, _ = regions(seed=0)
    test, test_labels, own = regions(seed=1)
    fuser = GatingFuser().fit(train, labels)
    weights = fuser.gate_weights(test)
    assert weights[own.numpy(), 0].mean() > 0.9 and weights[~own.numpy(), 1].mean() > 0.9  # routed by region
    mean = MeanFuser().fit(train, labels)
    assert accuracy(fuser.predict_proba(test), test_labels) > 0.95
    assert accuracy(mean.predict_proba(test), test_labels) < 0.85  # averaging cannot tell who is right
    assert fuser.member_weights() == pytest.approx([0.5, 0.5], abs=0.1) and int(fuser.global_) == 0


def test_few_rows_fall_back_to_global_weights():
    train, labels, _ = regions(n=60)
    fuser = GatingFuser(min_rows=100).fit(train, labels)
    weights = fuser.gate_weights(regions(seed=1)[0])
    assert int(fuser.global_) == 1 and np.allclose(weights, weights[0])  # the same weights for every row


def test_the_entropy_setting_sharpens_the_routing():
    train, labels, _ = regions(seed=0)
    test = regions(seed=1)[0]

    def mean_entropy(fuser: GatingFuser) -> float:
        w = fuser.gate_weights(test)
        return float(-(w * np.log(np.clip(w, 1e-12, 1))).sum(1).mean())

    assert mean_entropy(GatingFuser(entropy=0.5).fit(train, labels)) < mean_entropy(GatingFuser().fit(train, labels))


def test_a_saved_gate_predicts_the_same_and_checks_its_inputs():
    train, labels, _ = regions(seed=0)
    fuser = GatingFuser().fit(train, labels)
    again = GatingFuser().load_state_dict(fuser.state_dict())
    test = regions(seed=1)[0]
    np.testing.assert_array_equal(again.predict_proba(test), fuser.predict_proba(test))
    without_embeddings = MemberOutputs(test.logits, test.member_names)
    with pytest.raises(MemberOutputError, match="fitted on 8 features .* gets 4"):
        fuser.predict_proba(without_embeddings)
