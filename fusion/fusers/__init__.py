"""Fusers: one small component per way of combining member outputs, registered by kind in ``FUSERS``."""

from .base import (
    FUSERS,
    FixedWeightsFuser,
    Fuser,
    FuserConfig,
    MemberOutputs,
    as_member_outputs,
    check_weights,
    default_fusers,
)
from .caruana import CaruanaFuser
from .cascade import CascadeFuser
from .feature import FeatureFuser
from .gating import GatingFuser
from .linear import LinearFuser
from .mean import MeanFuser
from .pick import PickFuser
from .stacking import StackingFuser
from .vote import VoteFuser

__all__ = ["FUSERS", "Fuser", "FuserConfig", "FixedWeightsFuser", "MemberOutputs", "as_member_outputs",
           "check_weights", "default_fusers", "CaruanaFuser", "CascadeFuser", "FeatureFuser", "GatingFuser",
           "LinearFuser", "MeanFuser", "PickFuser", "StackingFuser",
           "VoteFuser"]
