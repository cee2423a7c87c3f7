"""Weight-space fusion: merge methods that combine the parameters of fine-tunes of one checkpoint.

``MERGE_METHODS`` holds one registered component per method (``fusion/merging/methods/<method>.py``).
"""

from .base import MERGE_METHODS, MergeMethod, MergeMethodConfig, TensorContext
from .methods import LinearMerge

__all__ = ["MERGE_METHODS", "MergeMethod", "MergeMethodConfig", "TensorContext", "LinearMerge"]

from . import learned_soup  # noqa: E402,F401  (registers learned_soup)
