"""Fitting a member spec, or reusing its fit from an earlier run.

A member fitted on some rows is stored in the output cache (what ``Member.save`` writes, packed into one
entry under the spec's fingerprint and the labelled rows' fingerprint), so a second process that builds the
same ensemble over the same data trains nothing, and fine-tunes nothing, again. Memory-only caches skip this.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from ..cache.store import FITTED_VARIANT, OutputCache
from ..config import digest
from ..errors import FusionError
from ..inputs import TextData
from ..io import pack_directory, unpack_directory
from ..members.base import Member
from ..progress import stage

logger = logging.getLogger(__name__)

FITTED_JSON = "fitted.json"


def fitted_member(spec: Member, train: TextData, labels: list[str], cache: OutputCache) -> Member:
    """A clone of ``spec`` fitted on ``train``, restored from ``cache`` when this spec was fitted on these
    labelled rows before (in this process or an earlier one).

    Example:
        >>> member = fitted_member(SklearnMember(pipeline), train, ["neg", "pos"], OutputCache())  # doctest: +SKIP
    """
    if cache.directory is None:
        return _fit(spec, train, labels, cache)
    rows = digest(train.label_fingerprint, labels)
    packed = cache.get(spec.fingerprint, rows, FITTED_VARIANT)
    member = _restored(spec, packed) if packed is not None else None
    if member is None:
        member = _fit(spec, train, labels, cache)
        _store(member, spec.fingerprint, rows, cache)
    return member


def _fit(spec: Member, train: TextData, labels: list[str], cache: OutputCache) -> Member:
    with stage("all training rows"):  # its bars apart from the cross-fitting folds' ("fold 2/5")
        return spec.clone().fit(train, labels, cache)


def _restored(spec: Member, packed: dict) -> Member | None:
    """The spec's clone with the packed fit put back, or None (logged) if the entry cannot be used."""
    files = tempfile.TemporaryDirectory(prefix="fusion-fitted-")
    try:
        directory = unpack_directory(packed, files.name)
        fitted = json.loads((directory / FITTED_JSON).read_text())
        member = spec.clone().restore(fitted, directory)
    except (FusionError, OSError, ValueError, KeyError) as err:
        logger.warning("the cached fit of member %s cannot be used (%s); fitting it again", spec.name, err)
        files.cleanup()
        return None
    member._restored_files = files  # files read lazily (a fine-tuned backbone) live as long as the member
    logger.info("member %s: reused its fit from the cache", spec.name)
    return member


def _store(member: Member, spec_fingerprint: str, rows: str, cache: OutputCache) -> None:
    """Pack what ``member.save`` writes into one cache entry."""
    with tempfile.TemporaryDirectory(prefix="fusion-fitted-") as staging:
        directory = Path(staging)
        (directory / FITTED_JSON).write_text(json.dumps(member.save(directory)))
        cache.put(spec_fingerprint, rows, pack_directory(directory), FITTED_VARIANT,
                  label=f"{member.kind} {member.name} (fitted)")
