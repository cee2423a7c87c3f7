"""FeatureFuser: it learns from what the members' embeddings hold and their outputs miss, members without
embeddings contribute their log-probabilities, attention goes to the member that carries the signal, and a saved
head predicts the same."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusion import FeatureFuser, MeanFuser
from fusion.errors import ConfigError, MemberOutputError
from fusion.fusers import MemberOutputs


def embedded(n: int = 800, seed: int = 0) -> tuple[MemberOutputs, torch.Tensor]:
    """Member 0's 8-D embedding decides the label (its first two coordinates); its own logits and member 1's
    (embedding and logits) are noise; member 2 has no embedding and logits that are right 70% of the time."""
    g = torch.Generator().manual_seed(seed)
    signal, noise = torch.randn(n, 8, generator=g), torch.randn(n, 8, generator=g)
    labels = (signal[:, 0] + signal[:, 1] > 0).long()
    logits = torch.randn(n, 3, 2, generator=g)
    right = torch.rand(n, generator=g) < 0.7
    hint = torch.where(right, labels, 1 - labels)
    logits[:, 2] = 0.0
    logits[torch.arange(n), 2, hint] = 1.0
    return MemberOutputs(logits, ["a", "b", "c"], [signal, noise, None]), labels


def accuracy(fuser, outputs, labels) -> float:
    return float((fuser.predict(outputs) == labels.numpy()).mean())


@pytest.mark.parametrize("combine", ["concat", "attention"])
def test_it_learns_what_the_embeddings_hold_and_the_outputs_miss(combine):
    train, labels = embedded(seed=0)
    test, test_labels = embedded(seed=1)
    fuser = FeatureFuser(combine=combine).fit(train, labels)
    assert accuracy(fuser, test, test_labels) > 0.9
    assert accuracy(MeanFuser().fit(train, labels), test, test_labels) < 0.75  # outputs alone: at most member c's
    assert fuser.from_embedding_.tolist() == [1, 1, 0] and fuser.dims_.tolist() == [8, 8, 2]


def test_attention_goes_to_the_member_that_carries_the_signal():
    train, labels = embedded(seed=0)
    weights = FeatureFuser(combine="attention").fit(train, labels).member_weights()
    assert weights.sum() == pytest.approx(1.0, abs=1e-5) and weights.argmax() == 0
    assert FeatureFuser().fit(train, labels).member_weights() is None  # concat has no per-member weights


def test_members_without_embeddings_contribute_their_outputs():
    train, labels = embedded(seed=0)
    test, test_labels = embedded(seed=1)
    only_c = MemberOutputs(train.logits[:, 2:], ["c"], [None])
    fuser = FeatureFuser(hidden=0).fit(only_c, labels)
    assert 0.6 < accuracy(fuser, MemberOutputs(test.logits[:, 2:], ["c"], [None]), test_labels) < 0.8  # c's 70%


def test_a_saved_head_predicts_the_same_and_checks_its_inputs():
    train, labels = embedded(seed=0)
    test, _ = embedded(seed=1)
    fuser = FeatureFuser(combine="attention").fit(train, labels)
    again = FeatureFuser(combine="attention").load_state_dict(fuser.state_dict())
    np.testing.assert_array_equal(again.predict_proba(test), fuser.predict_proba(test))
    with pytest.raises(MemberOutputError, match=r"sizes \[8, 8, 2\].*got sizes \[2, 8, 2\]"):
        fuser.predict_proba(MemberOutputs(test.logits, test.member_names, [None, test.embeddings[1], None]))
    with pytest.raises(ConfigError, match="combine='attention' projects each member to hidden units"):
        FeatureFuser(combine="attention", hidden=0)
