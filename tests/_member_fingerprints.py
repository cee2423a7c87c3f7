"""Computes member fingerprints in a new process, for ``tests/test_member_conformance.py``::

    python tests/_member_fingerprints.py ROOT CLASSIFIER_DIR ENCODER_DIR

For every case of the conformance suite: the spec's fingerprint (from the same config), the fingerprint of the
spec fitted on the same rows here, and the fingerprint recomputed from the learned state of the member saved in
``ROOT/<case>`` (config.json, fitted.json and its files). Writes ``ROOT/fingerprints.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from test_member_conformance import CASES, Models, fit_clone

from fusion.config import LoadOptions
from fusion.members import MEMBERS, Member


def reloaded(case: str, directory: Path) -> Member:
    config = json.loads((directory / "config.json").read_text())
    fitted = json.loads((directory / "fitted.json").read_text())
    options = LoadOptions(objects={config["name"]: CASES[case].objects()})
    return MEMBERS.get(config["kind"]).load(config, fitted, directory, options)


def recomputed_fingerprint(member: Member) -> str:
    """The fingerprint from the config and the learned state, not the one recorded at save time."""
    if not member.trainable:
        return type(member)(member.config).fingerprint
    member._set_fitted_fingerprint(member.state_hash())
    return member.fingerprint


def main(root: Path, models: Models) -> None:
    torch.set_num_threads(1)  # as the test module: identical float sums
    result = {}
    for case in CASES:
        spec = CASES[case].make(models)
        result[case] = {"spec": spec.fingerprint, "refit": fit_clone(spec, case).fingerprint,
                        "reloaded": recomputed_fingerprint(reloaded(case, root / case))}
    (root / "fingerprints.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Models(Path(sys.argv[2]), Path(sys.argv[3])))
