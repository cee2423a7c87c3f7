"""Weight-space fusion: merge methods that combine the parameters of fine-tunes of one checkpoint.

``MERGE_METHODS`` holds one registered component per method (``fusion/merging/methods/<method>.py``).
"""

from .base import MERGE_METHODS, MergeMethod, MergeMethodConfig, TensorContext
from .methods import LinearMerge

__all__ = ["MERGE_METHODS", "MergeMethod", "MergeMethodConfig", "TensorContext", "LinearMerge"]
