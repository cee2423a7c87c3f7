"""The output cache: what each member said about each dataset, stored once on disk (``store``), and the
housekeeping behind ``fusion cache info|clear`` (``admin``)."""

from .admin import cache_summary, clear_cache
from .store import EntryCost, OutputCache, Outputs, default_cache_dir

__all__ = ["EntryCost", "OutputCache", "Outputs", "default_cache_dir", "cache_summary", "clear_cache"]
