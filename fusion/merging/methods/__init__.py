"""One file per merge method; importing this package registers every method in ``MERGE_METHODS``."""

from .linear import LinearMerge

__all__ = ["LinearMerge"]
