"""Fusers: one small class per way of combining member outputs, registered by name in ``FUSERS``."""

from .base import FUSERS, Fuser, MemberOutputs, as_member_outputs
from .linear import LinearFuser
from .mean import MeanFuser
from .stacking import StackingFuser
from .vote import VoteFuser

__all__ = ["FUSERS", "Fuser", "MemberOutputs", "as_member_outputs", "LinearFuser", "MeanFuser", "StackingFuser",
           "VoteFuser"]
