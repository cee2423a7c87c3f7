"""Reproducible measurements of fusion against plain-transformers anchors (issue 4).

``python -m benchmarks.run`` runs every group in one process on the same SST-2 data and writes
``benchmarks/RESULTS.md``: inference anchors (pipeline, padded loop, length-sorted, device-only bound) against
fusion's engine and members, fine-tuning with ``Trainer`` against fusion's loop, refitting a fuser on cached
outputs against the first build, and the cost as members x examples grow. See ``python -m benchmarks.run -h``.
"""
