"""Saving and loading whole ensembles: a self-describing folder of JSON, safetensors and skops files.

Layout::

    fusion_config.json     the EnsembleConfig: labels, settings, each member's config and learned (non-tensor)
                           state, the fuser's config and tensor shapes, how the fuser was chosen, validation
                           metrics, library versions, the sha256 of every other file in the folder, and
                           ``checksum``: the sha256 of the config itself (canonical JSON without that key)
    fuser.safetensors      the fuser's learned tensors
    fuser/                 the fuser's other learned files, if any (a scikit-learn meta-learner: meta.skops)
    members/<i>-<name>/    what each member learned (state.safetensors, estimator.skops, backbone/), and with
                           bundle_models=True a copy of its model folder (model/; config: "model": "bundled:model")
    report/                the evaluation report on the validation split (HTML, Markdown, JSON), if any
    README.md              model card, with the report

``fusion inspect`` and the model card read the same ``EnsembleConfig`` that loading reads.

Trust: an edited ``fusion_config.json`` is refused (its checksum), and so is any file that loading would read
(``fuser.safetensors``, anything in ``fuser/`` or a member's folder) but that ``files`` does not list with its sha256. The
checksum catches edits and corruption, not a forger who recomputes it; against those, loading runs no code
from the folder (see ``LoadOptions``) and reads nothing outside it.

Saves and loads may race: a save stages the folder and swaps it in (``fusion.io.atomic_directory``); a load
reads the config once, loads everything (fine-tuned backbones included) and checks at the end that the config
on disk is still the one it started from, retrying otherwise, so it returns exactly one saved ensemble. A save
killed during its swap is repaired by the next save or load (``fusion.io.recover_directory``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Config, LoadOptions
from ..errors import ChecksumError, ConfigError, FusionError, PersistenceError, did_you_mean
from ..fusers import FUSERS, Fuser
from ..io import (
    atomic_directory,
    atomic_save_tensors,
    load_tensors,
    path_inside,
    recover_directory,
    sha256_file,
    verify_checksum,
    write_json,
)
from ..members.base import MEMBERS, Member

if TYPE_CHECKING:
    from .ensemble import Ensemble

logger = logging.getLogger(__name__)

CONFIG_NAME = "fusion_config.json"
REPORT_DIR = "report"  # report.html / report.md / report.json of the validation split, when there was one
FUSER_FILE = "fuser.safetensors"
FUSER_DIR = "fuser"  # what Fuser.save_files writes (a scikit-learn meta-learner's skops file)
FORMAT = "fusion-ensemble"
FORMAT_VERSION = 3  # 2: members saved as {kind, config, fitted, dir}; fuser as {kind, config, state_shapes}
#                     3: the config carries its own checksum; every file loading reads is listed in ``files``
CHECKSUM_KEY = "checksum"
BUNDLED_DIR = "model"  # a member folder's copy of its model folder (save_pretrained(bundle_models=True))
BUNDLED_REF = "bundled:" + BUNDLED_DIR  # the saved config's model reference to that copy
_LOAD_ATTEMPTS = 5  # loads retried when a save replaced the folder meanwhile
DISTRIBUTION = "fusion-ensembles"  # fusion's name on PyPI (`pip install fusion-ensembles`; it imports as `fusion`)
_PACKAGES = {"fusion": DISTRIBUTION, **{name: name for name in ("torch", "transformers", "datasets", "accelerate",
                                                               "safetensors", "scikit-learn", "skops")}}


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
        keys = ("kind", "config", "fitted", "dir")
        _check_entry(data, keys, "a member entry")
        if not (isinstance(data["kind"], str) and isinstance(data["config"], dict) and isinstance(data["fitted"], dict)
                and isinstance(data["dir"], str)):
            raise PersistenceError(f"a member entry of {CONFIG_NAME} needs kind and dir as strings, config and fitted "
                                   f"as objects: {data!r}.")
        return cls(*(data[k] for k in keys))

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
        keys = ("kind", "config", "state_shapes")
        _check_entry(data, keys, "the fuser entry")
        if not (isinstance(data["kind"], str) and isinstance(data["config"], dict)
                and isinstance(data["state_shapes"], dict)):
            raise PersistenceError(f"the fuser entry of {CONFIG_NAME} needs kind as a string, config and state_shapes "
                                   f"as objects: {data!r}.")
        return cls(*(data[k] for k in keys))


def _check_entry(data: Any, keys: tuple[str, ...], what: str) -> None:
    """A saved entry is a dict with exactly ``keys``: a missing or an unknown key is refused, naming it."""
    if not isinstance(data, dict):
        raise PersistenceError(f"{what} of {CONFIG_NAME} is not an object: {data!r}.")
    missing = [k for k in keys if k not in data]
    unknown = sorted(str(k) for k in data if k not in keys)
    if missing or unknown:
        problems = ([f"lacks {', '.join(missing)}"] if missing else []) + \
                   ([f"has unknown key(s) {unknown}"] if unknown else [])
        raise PersistenceError(f"{what} of {CONFIG_NAME} {' and '.join(problems)}; valid keys are: "
                               f"{', '.join(keys)}." + (did_you_mean(unknown[0], keys) if unknown else ""))


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
        if not all(isinstance(m, SavedMember) for m in self.members) or not isinstance(self.fuser, SavedFuser):
            raise ConfigError("members must be a list of member entries and fuser a fuser entry.")
        if not isinstance(self.files, dict) or not all(isinstance(v, str) for v in self.files.values()):
            raise ConfigError("files must map relative paths to sha256 strings.")

    def check_paths(self, directory: Path) -> None:
        """Refuse (PersistenceError naming the entry) any member ``dir`` or ``files`` key, or a file that loading
        reads by its fixed name, that is absolute, has a ``..`` component or leads outside ``directory``
        through a symlink. Nothing is read before this passes: a saved config may come from anyone."""
        for index, member in enumerate(self.members):
            path_inside(directory, member.dir, f"{CONFIG_NAME}: member [{index}] {member.name!r} dir")
        for relative in self.files:
            path_inside(directory, relative, f"{CONFIG_NAME}: files entry")
        for relative in (FUSER_FILE, FUSER_DIR, f"{REPORT_DIR}/report.json"):
            path_inside(directory, relative, "ensemble file")

    def unlisted(self, directory: Path) -> list[str]:
        """Files that loading reads (the fuser's, anything in ``fuser/`` or a member's folder) but ``files`` does
        not list."""
        folders = [FUSER_DIR] + [m.dir for m in self.members]
        reads = [FUSER_FILE] + [p.relative_to(directory).as_posix() for folder in folders
                                for p in sorted((directory / folder).rglob("*")) if p.is_file() or p.is_symlink()]
        return [r for r in reads if r not in self.files]

    def check_listed(self, directory: Path) -> None:
        """Refuse a file that loading reads that ``files`` does not list: its content would be trusted without a
        checksum (a corrupted head whose entry was deleted)."""
        unlisted = self.unlisted(directory)
        if unlisted:
            raise PersistenceError(
                f"{directory / CONFIG_NAME} does not list {', '.join(repr(u) for u in unlisted[:5])}"
                f"{' and more' if len(unlisted) > 5 else ''} in its checksummed files, but loading would read "
                f"{'them' if len(unlisted) > 1 else 'it'}; refused. Remove files added to the folder after it was "
                "saved, or save the ensemble again.")

    @classmethod
    def read(cls, directory: Path) -> EnsembleConfig:
        """Read and check ``directory/fusion_config.json`` (no weights are loaded)."""
        return cls.parse(read_config_bytes(directory), directory)

    @classmethod
    def parse(cls, raw: bytes, directory: Path) -> EnsembleConfig:
        """The config from the bytes of ``directory/fusion_config.json``: format, checksum, keys and paths
        checked; nothing else is read."""
        where = directory / CONFIG_NAME
        try:
            data = json.loads(raw.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise PersistenceError(f"ensemble config: {where} is not valid JSON ({err}); restore it or save the "
                                   "ensemble again.") from err
        if not isinstance(data, dict):
            raise PersistenceError(f"{where} is not a JSON object; is this a folder written by save_pretrained?")
        check_format(data.get("format"), data.get("format_version"), where)
        data = unseal(data, where)
        if "files" not in data:
            raise PersistenceError(f"{where} lacks the key 'files' (the sha256 of every saved file); without it "
                                   "nothing can be verified. Save the ensemble again.")
        try:
            config = cls.from_dict(data)
        except ConfigError as err:
            raise PersistenceError(f"{where}: {err}") from err
        config.check_paths(directory)
        return config


def read_config_bytes(directory: Path) -> bytes:
    """The bytes of ``directory/fusion_config.json``; a missing one is a PersistenceError that names hidden
    copies an interrupted save left (``recover_directory`` repairs those)."""
    try:
        return (directory / CONFIG_NAME).read_bytes()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        pass
    hidden = sorted(p.name for p in directory.parent.glob(f".{directory.name}.*")) if directory.parent.is_dir() else []
    note = (f" Beside it are {', '.join(hidden)}: copies an interrupted save left; a save or load by a user who "
            "may write there restores or removes them." if hidden else "")
    raise PersistenceError(f"ensemble config: {directory / CONFIG_NAME} is missing. Is this a folder written by "
                           f"save_pretrained?{note}")


def _canonical(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def seal(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with ``checksum``: the sha256 of its canonical JSON (sorted keys, no spaces, UTF-8)."""
    body = {k: v for k, v in data.items() if k != CHECKSUM_KEY}
    return {**body, CHECKSUM_KEY: hashlib.sha256(_canonical(body)).hexdigest()}


def unseal(data: dict[str, Any], where: Path | str) -> dict[str, Any]:
    """``data`` without its checksum, once the checksum matches; an edited config is a ChecksumError."""
    recorded = data.get(CHECKSUM_KEY)
    body = {k: v for k, v in data.items() if k != CHECKSUM_KEY}
    if not isinstance(recorded, str):
        raise PersistenceError(f"{where} has no {CHECKSUM_KEY!r}; it is incomplete or was rewritten by hand. "
                               "Save the ensemble again.")
    actual = hashlib.sha256(_canonical(body)).hexdigest()
    if actual != recorded:
        raise ChecksumError(f"{where} was changed after it was saved (its checksum is {recorded[:12]}…, its content "
                            f"hashes to {actual[:12]}…): an edit there changes what loads (a pooling, a label, a file "
                            "checksum) without a trace, so it is refused. Restore the original, or load the original "
                            "and save_pretrained again with your changes.")
    return body


def check_format(name: Any, version: Any, where: Path | str = CONFIG_NAME) -> None:
    """Refuse anything but this format version, saying what to do."""
    if name != FORMAT or version != FORMAT_VERSION:
        old = {1: " It was saved by fusion 0.1, before the component contract",
               2: " It was saved before the config carried its own checksum"}.get(version)
        old = (f"{old}; rebuild it (`fusion build` with the recipe.yaml saved beside it, or your script)."
               if old and name == FORMAT else "")
        raise PersistenceError(f"{where} is not a fusion ensemble of format version {FORMAT_VERSION} (found "
                               f"{name!r} version {version!r}).{old}")


def library_versions() -> dict[str, str]:
    versions = {}
    for package, distribution in _PACKAGES.items():
        try:
            versions[package] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _member_dir(index: int, name: str) -> str:
    return f"members/{index}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)[:60]}"


def _save_members(members: list[Member], staging: Path, bundle_models: bool) -> list[SavedMember]:
    saved = []
    for index, member in enumerate(members):
        folder = _member_dir(index, member.name)
        (staging / folder).mkdir(parents=True)
        fitted = {**member.save(staging / folder), "description": member.describe()}
        config = member.saved_config()
        if _bundle_model(member, staging / folder, bundle_models):
            config["model"] = BUNDLED_REF
        saved.append(SavedMember(member.kind, config, fitted, folder))
    return saved


def _bundled_copy(model_dir: Path) -> bool:
    """True if ``model_dir`` is the bundled model of a member of a saved ensemble (``<ensemble>/members/<i>-<name>/
    model``): saving an ensemble loaded from there bundles it again rather than naming that folder."""
    member_folder = model_dir.parent
    return (model_dir.name == BUNDLED_DIR and member_folder.parent.name == "members"
            and (member_folder.parent.parent / CONFIG_NAME).is_file())


def _bundle_model(member: Member, folder: Path, bundle_models: bool) -> bool:
    """Copy the model folder of this machine that ``member`` reads (its top-level files: weights, config,
    tokenizer) into ``folder/model`` when asked to, or when it was bundled already; True if copied."""
    from ..members.hf_model import HFMember

    model_dir = member.local_model_dir() if isinstance(member, HFMember) else None
    if model_dir is None or not (bundle_models or _bundled_copy(model_dir)):
        return False
    (folder / BUNDLED_DIR).mkdir()
    for path in sorted(model_dir.iterdir()):
        if path.is_file():  # what from_pretrained reads lies at the top level; links are copied as the file
            shutil.copyfile(path, folder / BUNDLED_DIR / path.name)
    return True


def ensemble_config(ensemble: Ensemble, members: list[SavedMember], fuser: SavedFuser) -> EnsembleConfig:
    """The config of a fitted ensemble (without the file checksums, added once every file is written)."""
    return EnsembleConfig(
        labels=list(ensemble.labels_), members=members, fuser=fuser, text_column=ensemble.text_column,
        label_column=ensemble.label_column, fuser_data=ensemble.fuser_data, fuser_data_used=ensemble.fuser_data_,
        cv=ensemble.cv, seed=ensemble.seed, member_fitting=dict(ensemble.member_fitting_),
        selection=ensemble.selection_, label_note=ensemble.label_note_, metrics=ensemble.metrics_,
        versions=library_versions())


def check_replaceable(directory: Path, overwrite: bool = False) -> None:
    """Refuse to replace a folder that holds something other than a saved ensemble (its contents would be lost),
    unless ``overwrite``; a missing or empty folder, or a saved ensemble, may be replaced."""
    if not directory.exists() or overwrite:
        return
    if not directory.is_dir():
        raise PersistenceError(f"{directory} is a file; save the ensemble to a folder (a new or empty one, or a "
                               "saved ensemble to replace).")
    if any(directory.iterdir()) and not (directory / CONFIG_NAME).is_file():
        raise PersistenceError(f"{directory} is not empty and is not a saved ensemble: saving there would delete "
                               "its contents. Choose a new or empty folder, or pass overwrite=True to replace it.")


def save_ensemble(ensemble: Ensemble, directory: Path, overwrite: bool = False,
                  card_data: dict[str, Any] | None = None, bundle_models: bool = False) -> Path:
    """Write ``ensemble`` to ``directory`` (replacing it only once everything is written); a folder that holds
    something else is refused unless ``overwrite``. With ``bundle_models``, members whose model is a folder of
    this machine get a copy of it inside (``members/<i>-<name>/model``) and name no path of this machine."""
    from .modelcard import check_card_data, render_model_card

    if ensemble.fuser_ is None or ensemble.members_ is None:
        raise PersistenceError("the ensemble is not fitted; call fit before save_pretrained.")
    check_replaceable(directory, overwrite)
    check_card_data(card_data)
    with atomic_directory(directory, marker=CONFIG_NAME) as staging:
        members = _save_members(ensemble.members_, staging, bundle_models)
        state = ensemble.fuser_.state_dict()
        atomic_save_tensors(staging / FUSER_FILE, state, {"fuser": ensemble.fuser_.kind})
        (staging / FUSER_DIR).mkdir()
        ensemble.fuser_.save_files(staging / FUSER_DIR)
        if not any((staging / FUSER_DIR).iterdir()):
            (staging / FUSER_DIR).rmdir()  # most fusers have only tensors
        fuser = SavedFuser(ensemble.fuser_.kind, ensemble.fuser_.config.to_dict(),
                           {k: list(v.shape) for k, v in state.items()})
        if ensemble.report_ is not None:
            ensemble.report_.save(staging / REPORT_DIR)
        files = {p.relative_to(staging).as_posix(): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()}
        config = dataclasses.replace(ensemble_config(ensemble, members, fuser), files=files)
        (staging / "README.md").write_text(render_model_card(config, ensemble.report_, card_data), encoding="utf-8")
        write_json(staging / CONFIG_NAME, seal(config.to_dict()))  # last: it marks the staged folder complete
    local = local_models(config)
    if local:
        logger.warning("%s names model folder(s) of this machine: %s; it loads only where they exist. Save with "
                       "bundle_models=True to copy them inside, or build those members from hub ids.",
                       directory, ", ".join(local))
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
        raise ConfigError(f"from_pretrained got unknown options {unknown}; valid: cache_dir, engine, {', '.join(valid)}."
                          + did_you_mean(unknown[0], valid))
    if "trust_remote_code" in options and not isinstance(options["trust_remote_code"], bool):
        raise ConfigError(f"from_pretrained(trust_remote_code=...) takes True or False; got "
                          f"{options['trust_remote_code']!r}.")
    if "trusted_types" in options:
        options = {**options, "trusted_types": tuple(options["trusted_types"] or ())}
    return LoadOptions(**options)


def _verify_files(directory: Path, files: dict[str, str]) -> None:
    for relative, sha in files.items():
        verify_checksum(path_inside(directory, relative, f"{CONFIG_NAME}: files entry"), sha,
                        f"ensemble file {relative!r}")


def _load_member(saved: SavedMember, directory: Path, options: LoadOptions) -> Member:
    folder = path_inside(directory, saved.dir, f"{CONFIG_NAME}: member {saved.name!r} dir")
    kind = MEMBERS.get(saved.kind_name)
    config = dict(saved.config)
    if config.get("model") == BUNDLED_REF:  # the model's files were saved with the member
        config["model"] = str(path_inside(directory, f"{saved.dir}/{BUNDLED_DIR}",
                                          f"{CONFIG_NAME}: member {saved.name!r} bundled model"))
    if "trust_remote_code" in {f.name for f in dataclasses.fields(kind.Config)}:
        # Only the loading call may allow a model's custom code: a saved config may come from anyone. Decided
        # before the member is built, since loading a saved backbone reads its model files.
        if config.get("trust_remote_code") is True and not options.trust_remote_code:
            logger.warning("member %r was saved with trust_remote_code=True; loading it with False, so the model's "
                           "custom code does not run. Pass from_pretrained(..., trust_remote_code=True) if you trust "
                           "this folder.", saved.name)
        config["trust_remote_code"] = options.trust_remote_code
    member = kind.load(config, saved.fitted, folder, options)
    if not options.show_progress and hasattr(member.config, "show_progress"):
        member.config = member.config.replace(show_progress=False)  # a setting: the fingerprint stays
    return member


def _load_fuser(saved: SavedFuser, directory: Path, sha256: str, n_members: int, n_labels: int,
                options: LoadOptions) -> Fuser:
    fuser = FUSERS.get(saved.kind_name).from_config({"kind": saved.kind_name, **saved.config}, options)
    fuser.load_files(path_inside(directory, FUSER_DIR, "ensemble file"), options)  # listed files, verified
    shapes = {k: tuple(v) for k, v in saved.state_shapes.items()}
    fuser.load_state_dict(load_tensors(directory / FUSER_FILE, "fuser state", sha256=sha256, expected_shapes=shapes))
    if fuser.n_members_ != n_members or fuser.n_classes_ != n_labels:
        raise PersistenceError(
            f"fuser state is for {fuser.n_members_} members x {fuser.n_classes_} labels, but the config lists "
            f"{n_members} members and {n_labels} labels; save the ensemble again."
        )
    return fuser


def load_ensemble(cls: type[Ensemble], directory: Path, options: LoadOptions,
                  cache_dir: str | os.PathLike | None = None) -> Ensemble:
    """Rebuild what ``save_ensemble`` wrote; see ``Ensemble.from_pretrained``.

    The result is exactly one saved ensemble even while another process saves over ``directory``: the load
    is repeated when the config on disk changed while it ran (see the module docstring)."""
    for attempt in range(_LOAD_ATTEMPTS):
        recover_directory(directory, CONFIG_NAME)  # what a killed save left beside it, if anything
        raw = read_config_bytes(directory)
        try:
            ensemble = _load_once(cls, directory, raw, options, cache_dir)
        except (FusionError, OSError):
            if _current_config(directory) == raw:
                raise  # the folder did not change: the error is the folder's
            ensemble = None
        if ensemble is not None and _current_config(directory) == raw:
            return ensemble
        logger.info("%s was replaced while it was loading; loading it again", directory)
        time.sleep(0.02 * 2 ** attempt)
    raise PersistenceError(f"{directory} was replaced by another save {_LOAD_ATTEMPTS} times while it was loading; "
                           "load it again once the save has finished.")


def _current_config(directory: Path) -> bytes | None:
    """The config's bytes now, or None while a save has the folder away (between its two renames)."""
    try:
        return read_config_bytes(directory)
    except (PersistenceError, OSError):
        return None


def _load_once(cls: type[Ensemble], directory: Path, raw: bytes, options: LoadOptions,
               cache_dir: str | os.PathLike | None) -> Ensemble:
    config = EnsembleConfig.parse(raw, directory)
    config.check_listed(directory)
    _verify_files(directory, config.files)
    members = [_load_member(m, directory, options) for m in config.members]
    fuser = _load_fuser(config.fuser, directory, config.files[FUSER_FILE], len(members), len(config.labels), options)
    ensemble = cls(members, fuser, labels=config.labels, text_column=config.text_column,
                   label_column=config.label_column, cache_dir=cache_dir, fuser_data=config.fuser_data,
                   cv=config.cv, seed=config.seed)
    ensemble._set_fitted(members, fuser, config.labels)
    ensemble.fuser_data_, ensemble.metrics_ = config.fuser_data_used, config.metrics
    ensemble.selection_, ensemble.label_note_ = config.selection, config.label_note
    ensemble.member_fitting_ = dict(config.member_fitting)
    if f"{REPORT_DIR}/report.json" in config.files:  # verified above with every other file
        from ..evaluation import Report

        ensemble.report_ = Report.load(directory / REPORT_DIR / "report.json")
    return ensemble


def resolve_saved(name: str | os.PathLike, revision: str | None = None) -> Path:
    """The local folder of a saved ensemble: ``name`` itself when it exists, else the snapshot of the hub
    repository ``name`` (``ORG/NAME``, at ``revision``), downloaded or found in the Hugging Face cache."""
    from ..members.hf_source import reference_kind

    path = Path(name).expanduser()
    text = os.fspath(name)
    if reference_kind(text) != "hub" or "/" not in text:
        if revision is not None:
            raise ConfigError(f"from_pretrained(revision={revision!r}) applies to hub repositories; {text!r} is a "
                              "local path.")
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(text, revision=revision))
    except Exception as err:  # offline without a cached copy, no such repository, no access
        raise PersistenceError(
            f"{text!r} is not a local folder, and the Hugging Face Hub could not provide it ({type(err).__name__}: "
            f"{err}). Check the path or the repository id, log in for a private repository (`hf auth login`), or "
            "download it while online (HF_HUB_OFFLINE=1 only uses what is already cached).") from err


def local_models(config: EnsembleConfig) -> list[str]:
    """Members whose model is a folder of this machine (not a hub id or an installed package, and not a
    fine-tuned backbone saved inside): a copy of the ensemble elsewhere cannot find those models."""
    from ..members.hf_source import reference_kind

    return [f"{m.name} ({m.config['model']})" for m in config.members if isinstance(m.config.get("model"), str)
            and m.config["model"] != BUNDLED_REF and reference_kind(m.config["model"]) == "local"
            and not m.fitted.get("finetuned")]


def push_ensemble(ensemble: Ensemble, repo_id: str, *, private: bool | None = None, token: str | None = None,
                  revision: str | None = None, commit_message: str | None = None,
                  card_data: dict[str, Any] | None = None, bundle_models: bool = False) -> str:
    """Save ``ensemble`` to a temporary folder and upload it to the hub repository ``repo_id`` (created if
    missing); returns the commit URL. Members whose model is a local folder are refused (they would not load
    anywhere else) unless ``bundle_models`` copies them in; fine-tuned backbones travel inside the ensemble."""
    import tempfile

    from huggingface_hub import HfApi

    from ..members.hf_source import reference_kind

    if reference_kind(repo_id) != "hub" or "/" not in repo_id:
        raise ConfigError(f"push_to_hub({repo_id!r}): a repository id is ORG/NAME (or USER/NAME).")
    with tempfile.TemporaryDirectory(prefix="fusion-push-") as tmp:
        folder = save_ensemble(ensemble, Path(tmp) / "ensemble", card_data=card_data, bundle_models=bundle_models)
        config = EnsembleConfig.read(folder)
        local = local_models(config)
        if local:
            raise PersistenceError(
                f"cannot push to {repo_id!r}: member(s) {', '.join(local)} use a model folder of this machine, which "
                "nobody who downloads the ensemble has. Pass bundle_models=True to upload a copy of them inside the "
                "ensemble, or upload those models to the hub and build the members from their hub ids "
                "(HFClassifier('ORG/NAME', revision=...)).")
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, revision=revision,
                                 commit_message=commit_message or f"Upload fusion ensemble ({config.fuser.kind_name} "
                                                                  f"of {len(config.members)} members)")
    return str(getattr(info, "commit_url", info))
