"""Members: the models an ensemble combines, behind one small protocol (see ``base.Member``)."""

from .base import MEMBERS, Member, MemberConfig
from .hf_classifier import HFClassifier
from .hf_encoder import HFEncoder
from .hf_source import HFSource
from .merged import MergedModel
from .sklearn_member import SklearnMember
from .torch_member import TorchMember

__all__ = ["MEMBERS", "Member", "MemberConfig", "HFClassifier", "HFEncoder", "HFSource", "MergedModel", "SklearnMember",
           "TorchMember"]
