"""The ensemble: fit clones of member and fuser specs (``ensemble``), cross-fit (``crossfit``), choose among
candidate fusers (``selection``), save and load (``persistence``, ``modelcard``), distil into one student
(``distill``)."""

from .ensemble import Ensemble, make_cache
from .persistence import EnsembleConfig

__all__ = ["Ensemble", "EnsembleConfig", "make_cache"]
