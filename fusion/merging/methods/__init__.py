"""One file per merge method; importing this package registers every method in ``MERGE_METHODS``."""

from .breadcrumbs import BreadcrumbsMerge, BreadcrumbsTiesMerge
from .dare import DareLinearMerge, DareTiesMerge
from .linear import LinearMerge
from .model_stock import ModelStockMerge
from .slerp import SlerpMerge
from .task_arithmetic import TaskArithmeticMerge
from .task_vectors import TaskVectorMerge
from .ties import TiesMerge

__all__ = ["LinearMerge", "TaskVectorMerge", "TaskArithmeticMerge", "TiesMerge", "DareLinearMerge", "DareTiesMerge",
           "BreadcrumbsMerge", "BreadcrumbsTiesMerge", "SlerpMerge", "ModelStockMerge"]
