"""Weight-space fusion: merge methods that combine the parameters of fine-tunes of one checkpoint.

``MERGE_METHODS`` holds one registered component per method (``fusion/merging/methods/<method>.py``).
"""

from .base import MERGE_METHODS, MergeMethod, MergeMethodConfig, TensorContext
from .learned_soup import LearnedSoupMerge
from .methods import (
    BreadcrumbsMerge,
    BreadcrumbsTiesMerge,
    DareLinearMerge,
    DareTiesMerge,
    LinearMerge,
    ModelStockMerge,
    SlerpMerge,
    TaskArithmeticMerge,
    TaskVectorMerge,
    TiesMerge,
)

__all__ = ["MERGE_METHODS", "MergeMethod", "MergeMethodConfig", "TensorContext", "LinearMerge", "TaskVectorMerge",
           "TaskArithmeticMerge", "TiesMerge", "DareLinearMerge", "DareTiesMerge", "BreadcrumbsMerge",
           "BreadcrumbsTiesMerge", "SlerpMerge", "ModelStockMerge", "LearnedSoupMerge"]
