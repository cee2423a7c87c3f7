"""``fusion cache info`` and ``fusion cache clear``: the command-line side of :mod:`fusion.cache_admin`.

    fusion cache info [--cache-dir DIR]
    fusion cache clear [--older-than 30d] [--cache-dir DIR]

``DIR`` defaults to the cache home (:func:`fusion.cache.default_cache_dir`: ``$FUSION_CACHE``, else
``$HF_HOME/fusion``, else ``$XDG_CACHE_HOME/huggingface/fusion``, else ``~/.cache/huggingface/fusion``).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from .cache.admin import CacheSummary, cache_summary, clear_cache, format_age, format_size, parse_duration


def add_parser(subparsers: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register ``cache info`` and ``cache clear`` under the ``fusion`` command's ``subparsers``.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers`` returned.
        common: the parent parser holding ``--quiet`` / ``--verbose``.

    Returns:
        The ``cache`` parser.
    """
    cache = subparsers.add_parser("cache", help="show or clear the on-disk cache of member outputs",
                                  description="Member outputs and tokenisations are cached on disk across runs, "
                                              "one folder per member. `info` shows what is there; `clear` removes "
                                              "it (all, or what was not used recently).")
    actions = cache.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    info = actions.add_parser("info", parents=[common], help="entries, size and last use per member",
                              description="Print the cache folder, then one row per member: its label, entries, "
                                          "size and when it was last used; then the total.")
    info.set_defaults(run=run_info)
    clear = actions.add_parser("clear", parents=[common], help="remove cached entries",
                               description="Remove cached entries (all, or those not used within --older-than), "
                                           "then the member folders left empty. Safe while fusion runs elsewhere: "
                                           "a removed entry is computed again when needed.")
    clear.add_argument("--older-than", metavar="DURATION",
                       help="remove only entries not used for this long, e.g. 30d, 12h, 90m or 45s")
    clear.set_defaults(run=run_clear)
    for action in (info, clear):
        action.add_argument("--cache-dir", metavar="DIR", help="the cache folder (default: the cache home: "
                            "$FUSION_CACHE, else $HF_HOME/fusion, else ~/.cache/huggingface/fusion)")
    return cache


def _print_summary(summary: CacheSummary, now: float) -> None:
    """The per-member table and its total line."""
    width = max([len("member"), *(len(m.label) for m in summary.members)])
    print(f"{'member':<{width}}  {'folder':<24}  {'entries':>7}  {'size':>10}  last used")
    for m in summary.members:
        print(f"{m.label:<{width}}  {m.fingerprint:<24}  {m.entries:>7}  {format_size(m.size):>10}  "
              f"{format_age(now - m.last_used)}")
    print(f"{'total':<{width}}  {'':<24}  {summary.entries:>7}  {format_size(summary.size):>10}")


def run_info(args: argparse.Namespace, console: Any) -> int:
    """``fusion cache info``: where the cache is and what each member has in it."""
    summary = cache_summary(args.cache_dir)
    print(f"cache: {summary.directory}")
    if not summary.members:
        print("no entries")
        return 0
    _print_summary(summary, time.time())
    return 0


def run_clear(args: argparse.Namespace, console: Any) -> int:
    """``fusion cache clear [--older-than DURATION]``: remove entries and say what was freed."""
    older_than = parse_duration(args.older_than) if args.older_than is not None else None
    result = clear_cache(args.cache_dir, older_than)
    kept = f"; kept {result.kept} used within {args.older_than}" if older_than is not None else ""
    print(f"removed {result.removed} files ({format_size(result.freed)}) from {result.directory}{kept}")
    return 0
