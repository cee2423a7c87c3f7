"""Builds a sharded entry of 24 rows (2 per shard) slowly, so that ``tests/test_shards.py`` can kill it half way::

    python tests/_shard_build_script.py CACHE_DIR SECONDS_PER_SHARD
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from test_shards import KEY, Counting, rows_data  # noqa: E402

from fusion.cache.store import OutputCache  # noqa: E402
from fusion.engines import RowJob  # noqa: E402


def main(directory: str, seconds: float) -> None:
    count = Counting()

    def slow(rows):
        time.sleep(seconds)
        return count(rows)

    OutputCache(directory, shard_rows=2).get_or_compute_rows(RowJob(KEY, rows_data(24), slow, "counting member"))


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
