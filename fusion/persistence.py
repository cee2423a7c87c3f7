"""Saving and loading whole ensembles: a self-describing folder of JSON, safetensors and skops files.

Layout::

    fusion_config.json     labels, members (by reference + sha256 of their weights), fuser, metrics,
                           versions, and the sha256 of every other file in the folder
    fuser.safetensors      the fuser's learned state
    members/<i>-<name>/    what each member learned (head.safetensors, estimator.skops, backbone/)
    report/                the evaluation report on the validation split (HTML, Markdown, JSON), if any
    README.md              model card, with the report
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import PersistenceError
from .fusers import Fuser
from .io import (
    atomic_directory,
    atomic_save_tensors,
    load_tensors,
    read_json,
    sha256_file,
    verify_checksum,
    write_json,
)
from .members.base import MEMBERS

if TYPE_CHECKING:
    from .ensemble import Ensemble

CONFIG_NAME = "fusion_config.json"
REPORT_DIR = "report"  # report.html / report.md / report.json of the validation split, when there was one
FORMAT = "fusion-ensemble"
FORMAT_VERSION = 1
_PACKAGES = ("fusion", "torch", "transformers", "datasets", "accelerate", "safetensors", "scikit-learn", "skops")


def library_versions() -> dict[str, str]:
    versions = {}
    for package in _PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _member_dir(index: int, name: str) -> str:
    return f"members/{index}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)[:60]}"


def save_ensemble(ensemble: Ensemble, directory: Path) -> Path:
    """Write ``ensemble`` to ``directory`` (replacing it only once everything is written)."""
    from .modelcard import render_model_card

    if not ensemble.fuser.is_fitted:
        raise PersistenceError("the ensemble is not fitted; call fit before save_pretrained.")
    ensemble._check_members_fitted()
    with atomic_directory(directory) as staging:
        members = []
        for index, member in enumerate(ensemble.members):
            folder = _member_dir(index, member.name)
            (staging / folder).mkdir(parents=True)
            member.save(staging / folder)
            members.append({**member.to_config(), "dir": folder})
        state = ensemble.fuser.state_dict()
        atomic_save_tensors(staging / "fuser.safetensors", state, {"fuser": ensemble.fuser.name})
        if ensemble.report_ is not None:
            ensemble.report_.save(staging / REPORT_DIR)
        config = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "labels": ensemble.labels,
            "text_column": ensemble.text_column, "label_column": ensemble.label_column,
            "fuser_data": ensemble.fuser_data, "fuser_data_used": ensemble.fuser_data_, "cv": ensemble.cv,
            "seed": ensemble.seed, "members": members,
            "fuser": {**ensemble.fuser.to_config(), "state_shapes": {k: list(v.shape) for k, v in state.items()}},
            "metrics": ensemble.metrics_, "versions": library_versions(),
            "files": {p.relative_to(staging).as_posix(): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()},
        }
        write_json(staging / CONFIG_NAME, config)
        (staging / "README.md").write_text(render_model_card(ensemble, config), encoding="utf-8")
    return directory


def _verify_files(directory: Path, files: dict[str, str]) -> None:
    for relative, sha in files.items():
        verify_checksum(directory / relative, sha, f"ensemble file {relative!r}")


def load_ensemble(cls: type[Ensemble], directory: Path, **options: Any) -> Ensemble:
    """Rebuild what ``save_ensemble`` wrote; see ``Ensemble.from_pretrained``."""
    config = read_json(directory / CONFIG_NAME, "ensemble config")
    if config.get("format") != FORMAT or config.get("format_version") != FORMAT_VERSION:
        raise PersistenceError(
            f"{directory / CONFIG_NAME} is not a fusion ensemble of format version {FORMAT_VERSION} "
            f"(found {config.get('format')!r} version {config.get('format_version')!r})."
        )
    _verify_files(directory, config["files"])
    members = [MEMBERS.get(m["kind"]).from_config(m, directory / m["dir"], **options) for m in config["members"]]
    fuser = Fuser.from_config(config["fuser"])
    shapes = {k: tuple(v) for k, v in config["fuser"]["state_shapes"].items()}
    fuser.load_state_dict(load_tensors(directory / "fuser.safetensors", "fuser state", expected_shapes=shapes))
    if fuser.n_members_ != len(members) or fuser.n_classes_ != len(config["labels"]):
        raise PersistenceError(
            f"fuser state is for {fuser.n_members_} members x {fuser.n_classes_} labels, but the config lists "
            f"{len(members)} members and {len(config['labels'])} labels; save the ensemble again."
        )
    ensemble = cls(members, fuser, labels=config["labels"], text_column=config["text_column"],
                   label_column=config["label_column"], cache_dir=options.get("cache_dir"),
                   fuser_data=config["fuser_data"], cv=config["cv"], seed=config["seed"])
    ensemble.fuser_data_, ensemble.metrics_ = config.get("fuser_data_used"), config.get("metrics")
    if (directory / REPORT_DIR / "report.json").is_file():  # verified above with every other file
        from .evaluation import Report

        ensemble.report_ = Report.load(directory / REPORT_DIR / "report.json")
    return ensemble
