"""Engines: where the shards of a large cache entry are computed (see :mod:`fusion.cache.shards`).

- ``"local"``: this process, or, under ``accelerate launch`` / ``torchrun``, each process its share.
- ``"ray"``: Ray Data batch inference on a Ray cluster (the ``fusion[ray]`` extra).
"""

from . import local as _local  # noqa: F401  (registers "local")
from . import ray as _ray  # noqa: F401  (registers "ray"; imports Ray only when a build runs)
from .base import ENGINES, Engine, RowJob, ShardError, make_engine

__all__ = ["ENGINES", "Engine", "RowJob", "ShardError", "make_engine"]
