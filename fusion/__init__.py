"""fusion: build, train, evaluate and ship ensembles of Hugging Face, PyTorch and scikit-learn models.

Example:
    >>> from fusion import Ensemble, HFEncoder, LinearFuser, SklearnMember
    >>> members = [HFEncoder("sentence-transformers/all-MiniLM-L6-v2"), SklearnMember(tfidf_logreg)]  # doctest: +SKIP
    >>> Ensemble(members, fuser=LinearFuser()).fit(train, validation).save_pretrained("out/ensemble")  # doctest: +SKIP
"""

from .cache.store import OutputCache
from .config import Component, Config, LoadOptions
from .ensemble import Ensemble, EnsembleConfig
from .ensemble.distill import distill
from .errors import (
    ChecksumError,
    ConfigError,
    DataError,
    FusionError,
    LabelMismatchError,
    MemberOutputError,
    NotFittedError,
    PersistenceError,
    ResourceError,
    UnknownNameError,
)
from .evaluation import Report, build_report
from .evaluation.evaluate import evaluate, permutation_importance
from .finetuning import finetune_classifier
from .fusers import (
    FUSERS,
    CaruanaFuser,
    CascadeFuser,
    FeatureFuser,
    Fuser,
    GatingFuser,
    LinearFuser,
    MeanFuser,
    MemberOutputs,
    PickFuser,
    StackingFuser,
    VoteFuser,
)
from .members import MEMBERS, HFClassifier, HFEncoder, Member, MergedModel, SklearnMember, TorchMember
from .members.heads import HEADS, CustomHead, Head, LinearHead, MLPHead
from .merging.api import merge
from .progress import set_progress, set_verbosity
from .train_config import TrainConfig

__version__ = "0.1.0"

__all__ = [
    "set_progress", "set_verbosity",
    "Ensemble", "EnsembleConfig", "OutputCache", "TrainConfig", "Config", "Component", "LoadOptions", "evaluate", "Report", "build_report", "permutation_importance",
    "Member", "MEMBERS", "HFClassifier", "HFEncoder", "SklearnMember", "TorchMember", "MergedModel", "merge",
    "finetune_classifier", "distill",
    "Head", "HEADS", "LinearHead", "MLPHead", "CustomHead",
    "Fuser", "FUSERS", "MemberOutputs", "MeanFuser", "VoteFuser", "LinearFuser", "StackingFuser", "PickFuser", "CaruanaFuser", "CascadeFuser", "GatingFuser",
    "FeatureFuser",
    "FusionError", "DataError", "LabelMismatchError", "MemberOutputError", "NotFittedError", "ConfigError",
    "UnknownNameError", "PersistenceError", "ChecksumError", "ResourceError",
]
