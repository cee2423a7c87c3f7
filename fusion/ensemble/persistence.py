"""Saving and loading whole ensembles: a self-describing folder of JSON, safetensors and skops files.

Layout::

    fusion_config.json     the EnsembleConfig: labels, settings, each member's config and learned (non-tensor)
                           state, the fuser's config and tensor shapes, how the fuser was chosen, validation
                           metrics, library versions, and the sha256 of every other file in the folder
    fuser.safetensors      the fuser's learned state
    members/<i>-<name>/    what each member learned (state.safetensors, estimator.skops, backbone/)
    report/                the evaluation report on the validation split (HTML, Markdown, JSON), if any
    README.md              model card, with the report

``fusion inspect`` and the model card read the same ``EnsembleConfig`` that loading reads.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Config, LoadOptions
from ..errors import ConfigError, PersistenceError, did_you_mean
from ..fusers import FUSERS, Fuser
from ..io import (
    atomic_directory,
    atomic_save_tensors,
    load_tensors,
    read_json,
    sha256_file,
    verify_checksum,
    write_json,
)
from ..members.base import MEMBERS, Member

if TYPE_CHECKING:
    from .ensemble import Ensemble

CONFIG_NAME = "fusion_config.json"
REPORT_DIR = "report"  # report.html / report.md / report.json of the validation split, when there was one
FUSER_FILE = "fuser.safetensors"
FORMAT = "fusion-ensemble"
FORMAT_VERSION = 2  # 2: members saved as {kind, config, fitted, dir}; fuser as {kind, config, state_shapes}
_PACKAGES = ("fusion", "torch", "transformers", "datasets", "accelerate", "safetensors", "scikit-learn", "skops")


@dataclass(frozen=True)
class SavedMember(Config):
    """One member in ``fusion_config.json``: its kind and config, what it learned (non-tensor), its folder."""

    kind_name: str
    config: dict[str, Any]
    fitted: dict[str, Any]
    dir: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind_name, "config": self.config, "fitted": self.fitted, "dir": self.dir}

    @classmethod
    def from_dict(cls, data: Any, objects: Any = None) -> SavedMember:
        if not isinstance(data, dict) or not {"kind", "config", "fitted", "dir"} <= set(data):
            raise PersistenceError(f"a member entry of {CONFIG_NAME} lacks kind, config, fitted or dir: {data!r}.")
        return cls(data["kind"], data["config"], data["fitted"], data["dir"])

    @property
    def name(self) -> str:
        return str(self.config.get("name", ""))


@dataclass(frozen=True)
class SavedFuser(Config):
    """The fuser in ``fusion_config.json``: its kind, config and learned tensors' shapes."""

    kind_name: str
    config: dict[str, Any]
    state_shapes: dict[str, list[int]]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind_name, "config": self.config, "state_shapes": self.state_shapes}

    @classmethod
    def from_dict(cls, data: Any, objects: Any = None) -> SavedFuser:
        if not isinstance(data, dict) or not {"kind", "config", "state_shapes"} <= set(data):
            raise PersistenceError(f"the fuser entry of {CONFIG_NAME} lacks kind, config or state_shapes: {data!r}.")
        return cls(data["kind"], data["config"], data["state_shapes"])


@dataclass(frozen=True)
class EnsembleConfig(Config):
    """Exactly what ``fusion_config.json`` holds (see the module docstring)."""

    labels: list[str]
    members: list[SavedMember]
    fuser: SavedFuser
    text_column: str = "text"
    label_column: str = "label"
    fuser_data: str = "auto"
    fuser_data_used: str | None = None
    cv: int = 5
    seed: int = 0
    member_fitting: dict[str, str] = field(default_factory=dict)
    selection: dict[str, Any] | None = None
    label_note: str | None = None
    metrics: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def validate(self) -> None:
        check_format(self.format, self.format_version)

    @classmethod
    def read(cls, directory: Path) -> EnsembleConfig:
        """Read and check ``directory/fusion_config.json`` (no weights are loaded)."""
        data = read_json(directory / CONFIG_NAME, "ensemble config")
        if not isinstance(data, dict):
            raise PersistenceError(f"{directory / CONFIG_NAME} is not a JSON object.")
        check_format(data.get("format"), data.get("format_version"), directory / CONFIG_NAME)
        try:
            return cls.from_dict(data)
        except ConfigError as err:
            raise PersistenceError(f"{directory / CONFIG_NAME}: {err}") from err


def check_format(name: Any, version: Any, where: Path | str = CONFIG_NAME) -> None:
    """Refuse anything but this format version, saying what to do."""
    if name != FORMAT or version != FORMAT_VERSION:
        old = (" It was saved by fusion 0.1, before the component contract; rebuild it (`fusion build` with the "
               "recipe.yaml saved beside it, or your script)." if version == 1 else "")
        raise PersistenceError(f"{where} is not a fusion ensemble of format version {FORMAT_VERSION} (found "
                               f"{name!r} version {version!r}).{old}")


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


def _save_members(members: list[Member], staging: Path) -> list[SavedMember]:
    saved = []
    for index, member in enumerate(members):
        folder = _member_dir(index, member.name)
        (staging / folder).mkdir(parents=True)
        fitted = {**member.save(staging / folder), "description": member.describe()}
        saved.append(SavedMember(member.kind, member.config.to_dict(), fitted, folder))
    return saved


def ensemble_config(ensemble: Ensemble, members: list[SavedMember], fuser: SavedFuser) -> EnsembleConfig:
    """The config of a fitted ensemble (without the file checksums, added once every file is written)."""
    return EnsembleConfig(
        labels=list(ensemble.labels_), members=members, fuser=fuser, text_column=ensemble.text_column,
        label_column=ensemble.label_column, fuser_data=ensemble.fuser_data, fuser_data_used=ensemble.fuser_data_,
        cv=ensemble.cv, seed=ensemble.seed, member_fitting=dict(ensemble.member_fitting_),
        selection=ensemble.selection_, label_note=ensemble.label_note_, metrics=ensemble.metrics_,
        versions=library_versions())


def save_ensemble(ensemble: Ensemble, directory: Path) -> Path:
    """Write ``ensemble`` to ``directory`` (replacing it only once everything is written)."""
    from .modelcard import render_model_card

    if ensemble.fuser_ is None or ensemble.members_ is None:
        raise PersistenceError("the ensemble is not fitted; call fit before save_pretrained.")
    with atomic_directory(directory) as staging:
        members = _save_members(ensemble.members_, staging)
        state = ensemble.fuser_.state_dict()
        atomic_save_tensors(staging / FUSER_FILE, state, {"fuser": ensemble.fuser_.kind})
        fuser = SavedFuser(ensemble.fuser_.kind, ensemble.fuser_.config.to_dict(),
                           {k: list(v.shape) for k, v in state.items()})
        if ensemble.report_ is not None:
            ensemble.report_.save(staging / REPORT_DIR)
        files = {p.relative_to(staging).as_posix(): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()}
        config = dataclasses.replace(ensemble_config(ensemble, members, fuser), files=files)
        write_json(staging / CONFIG_NAME, config.to_dict())
        (staging / "README.md").write_text(render_model_card(config, ensemble.report_), encoding="utf-8")
    return directory


def load_options(options: dict[str, Any]) -> LoadOptions:
    """``from_pretrained`` keyword arguments as ``LoadOptions``; old or unknown names are a clear error."""
    valid = [f.name for f in dataclasses.fields(LoadOptions)]
    renamed = {"heads": "head", "modules": "module"}
    for old, field_name in renamed.items():
        if old in options:
            raise ConfigError(f"from_pretrained({old}=...) is now objects={{MEMBER: {{{field_name!r}: ...}}}}: pass "
                              f"objects={{name: {{{field_name!r}: value}} for name, value in {old}.items()}}.")
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"from_pretrained got unknown options {unknown}; valid: cache_dir, {', '.join(valid)}."
                          + did_you_mean(unknown[0], valid))
    if "trusted_types" in options:
        options = {**options, "trusted_types": tuple(options["trusted_types"] or ())}
    return LoadOptions(**options)


def _verify_files(directory: Path, files: dict[str, str]) -> None:
    for relative, sha in files.items():
        verify_checksum(directory / relative, sha, f"ensemble file {relative!r}")


def _load_member(saved: SavedMember, directory: Path, options: LoadOptions) -> Member:
    member = MEMBERS.get(saved.kind_name).load(saved.config, saved.fitted, directory / saved.dir, options)
    if not options.show_progress and hasattr(member.config, "show_progress"):
        member.config = member.config.replace(show_progress=False)  # a setting: the fingerprint stays
    return member


def _load_fuser(saved: SavedFuser, directory: Path, n_members: int, n_labels: int, options: LoadOptions) -> Fuser:
    fuser = FUSERS.get(saved.kind_name).from_config({"kind": saved.kind_name, **saved.config}, options)
    shapes = {k: tuple(v) for k, v in saved.state_shapes.items()}
    fuser.load_state_dict(load_tensors(directory / FUSER_FILE, "fuser state", expected_shapes=shapes))
    if fuser.n_members_ != n_members or fuser.n_classes_ != n_labels:
        raise PersistenceError(
            f"fuser state is for {fuser.n_members_} members x {fuser.n_classes_} labels, but the config lists "
            f"{n_members} members and {n_labels} labels; save the ensemble again."
        )
    return fuser


def load_ensemble(cls: type[Ensemble], directory: Path, options: LoadOptions,
                  cache_dir: str | os.PathLike | None = None) -> Ensemble:
    """Rebuild what ``save_ensemble`` wrote; see ``Ensemble.from_pretrained``."""
    config = EnsembleConfig.read(directory)
    _verify_files(directory, config.files)
    members = [_load_member(m, directory, options) for m in config.members]
    fuser = _load_fuser(config.fuser, directory, len(members), len(config.labels), options)
    ensemble = cls(members, fuser, labels=config.labels, text_column=config.text_column,
                   label_column=config.label_column, cache_dir=cache_dir, fuser_data=config.fuser_data,
                   cv=config.cv, seed=config.seed)
    ensemble._set_fitted(members, fuser, config.labels)
    ensemble.fuser_data_, ensemble.metrics_ = config.fuser_data_used, config.metrics
    ensemble.selection_, ensemble.label_note_ = config.selection, config.label_note
    ensemble.member_fitting_ = dict(config.member_fitting)
    if (directory / REPORT_DIR / "report.json").is_file():  # verified above with every other file
        from ..evaluation import Report

        ensemble.report_ = Report.load(directory / REPORT_DIR / "report.json")
    return ensemble
