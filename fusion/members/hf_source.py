"""Where a Hugging Face member's files come from (local directory or hub id) and their checksums."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from functools import cached_property
from pathlib import Path
from typing import Any, NewType

from ..errors import ChecksumError, ConfigError
from ..io import sha256_file

logger = logging.getLogger(__name__)

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.h5", "*.msgpack")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt", "special_tokens_map.json",
    "spiece.model", "sentencepiece.bpe.model", "added_tokens.json",
)


PACKAGE_PREFIX = "package:"
SAVED_FOLDER_PREFIX = "folder:"  # a model folder of the machine that saved an ensemble, by name (no path)

ModelRef = NewType("ModelRef", str)
"""A model reference (a local directory, a hub id, or ``package:MODULE``): the type of every member config's
``model`` field, so a recipe knows to resolve it (relative to the recipe file) and check it exists."""


def model_ref(value: str | os.PathLike) -> ModelRef:
    """Coerce a path or string to a ``ModelRef`` (a string)."""
    return ModelRef(os.fspath(value))


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # NAME or ORG/NAME, as the hub spells them


def reference_kind(model: str) -> str:
    """What a model reference names: ``"package"`` (``package:MODULE``), ``"local"`` (a path of this machine:
    it exists, is absolute or starts with ``.`` or ``~``) or ``"hub"`` (a repository id)."""
    if model.startswith(PACKAGE_PREFIX):
        return "package"
    if Path(model).expanduser().exists() or model.startswith((".", "/", "~")) or not HUB_ID.fullmatch(model):
        return "local"
    return "hub"


def hub_reference(model: str) -> tuple[str, str] | None:
    """``(hub id, commit)`` when ``model`` is a snapshot folder of this machine's Hugging Face cache
    (``<HF_HUB_CACHE>/models--ORG--NAME/snapshots/<commit>``), else None."""
    from huggingface_hub import constants

    from ..io import hub_snapshot_repository

    if model.startswith(PACKAGE_PREFIX):
        return None
    path = Path(model).expanduser()
    if not path.is_dir():
        return None
    folder = path.resolve()
    repository = hub_snapshot_repository(folder)
    if repository is None or not repository.name.startswith("models--") \
            or repository.parent != Path(constants.HF_HUB_CACHE).expanduser().resolve():
        return None
    return repository.name.removeprefix("models--").replace("--", "/"), folder.name


def _refuse_package(model: str, module_name: str, why: str) -> ConfigError:
    return ConfigError(
        f"model {model!r}: refused to import module {module_name!r}: {why}. package: references must name a module "
        "of an installed distribution (pip install it; the demo model: pip install -e '.[demo]'); fusion never "
        "imports modules from the current folder or the ensemble's folder. Or give a model directory or hub id."
    )


def _editable_root(dist: Any) -> Path | None:
    """The project folder of an editable install, as its own metadata (direct_url.json) records it, else None."""
    import json
    from urllib.parse import unquote, urlparse

    try:
        info = json.loads(dist.read_text("direct_url.json") or "null")
    except (ValueError, OSError):
        return None
    if not isinstance(info, dict) or not (info.get("dir_info") or {}).get("editable"):
        return None
    url = urlparse(str(info.get("url", "")))
    return Path(unquote(url.path)).resolve() if url.scheme == "file" else None


def _installed_by(origin: Path, dist_names: list[str]) -> bool:
    """True if ``origin`` is a file one of these installed distributions installed (or lies in its editable
    project folder, per its metadata)."""
    import importlib.metadata

    for name in dist_names:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        for file in dist.files or ():
            if file.name == origin.name and Path(dist.locate_file(file)).resolve() == origin:
                return True
        root = _editable_root(dist)
        if root is not None and origin.is_relative_to(root):
            return True
    return False


def _in_site_packages(origin: Path) -> bool:
    """True if ``origin`` lies in this interpreter's site-packages (a virtual environment may sit in the
    current folder)."""
    import site
    import sysconfig

    paths = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")} | set(site.getsitepackages())
    return any(origin.is_relative_to(Path(p).resolve()) for p in paths if p)


def _editable_project_file(origin: Path, dist_names: list[str]) -> bool:
    """True if ``origin`` lies in the project folder of an editable install of one of these distributions."""
    import importlib.metadata

    for name in dist_names:
        try:
            root = _editable_root(importlib.metadata.distribution(name))
        except importlib.metadata.PackageNotFoundError:
            continue
        if root is not None and origin.is_relative_to(root):
            return True
    return False


def _check_installed_module(model: str, module_name: str) -> None:
    """Raise ConfigError unless ``module_name`` (and the top-level package it sits in) is located, without
    executing it, in the files of an installed distribution (never, say, in the current folder)."""
    import importlib.metadata
    import importlib.util

    parts = module_name.split(".")
    if not module_name or not all(part.isidentifier() for part in parts):
        raise _refuse_package(model, module_name, "not a module name")
    dist_names = importlib.metadata.packages_distributions().get(parts[0]) or []
    if not dist_names:
        raise _refuse_package(model, module_name, f"package {module_name!r} is not installed (no installed "
                              f"distribution provides {parts[0]!r})")
    # find_spec of a top-level name locates it without executing anything; a dotted name's spec imports only its
    # parents, each checked first.
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError) as err:
            raise _refuse_package(model, module_name, f"cannot locate {name!r} ({err})") from None
        if spec is None:
            raise _refuse_package(model, module_name, f"{name!r} is not installed")
        if not spec.has_location or not spec.origin:
            raise _refuse_package(model, module_name, f"{name!r} has no file of an installed distribution")
        origin = Path(spec.origin).resolve()
        if not _installed_by(origin, dist_names):
            where = " (it lies in the current folder)" if origin.is_relative_to(Path.cwd().resolve()) else ""
            raise _refuse_package(model, module_name, f"{name!r} would be imported from {origin}{where}, which is "
                                  f"not a file of the installed distribution {', '.join(dist_names)}")
        if (origin.is_relative_to(Path.cwd().resolve()) and not _in_site_packages(origin)
                and not _editable_project_file(origin, dist_names)):
            # a folder someone shipped (an ensemble) can carry its own .dist-info: the current folder never counts
            raise _refuse_package(model, module_name, f"{name!r} would be imported from {origin}, in the current "
                                  "folder; install the package (pip install) and run from another folder")


def package_model_dir(model: str) -> Path:
    """``package:MODULE`` -> ``MODULE.get_model_path()``: a model shipped inside an installed Python package.

    Only a module that an installed distribution provides is imported (checked before any of its code runs):
    a saved ensemble can name ``package:anything``, so this must never import a module from the current folder
    or from the ensemble's folder."""
    import importlib

    module_name = model[len(PACKAGE_PREFIX):].strip()
    _check_installed_module(model, module_name)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"model {model!r}: package {module_name!r} is not installed ({err}). Install it (the demo "
                          "model: pip install -e '.[demo]'), or give a model directory or hub id.") from None
    getter = getattr(module, "get_model_path", None)
    if not callable(getter):
        raise ConfigError(f"model {model!r}: package {module_name!r} has no get_model_path(); a package: model must "
                          "provide one that returns the model directory.")
    directory = Path(getter())
    if not directory.is_dir():
        raise ConfigError(f"model {model!r}: {module_name}.get_model_path() returned {directory}, which is not a "
                          "directory; reinstall the package.")
    return directory.resolve()


def model_label(model: str | os.PathLike) -> str:
    """How descriptions, reports and model cards name a model: a hub id or ``package:`` reference as written,
    a folder of this machine by its name only (a saved ensemble carries no path of the machine that saved it)."""
    model = str(model)
    return Path(model).name if reference_kind(model) == "local" else model


def saved_reference(model: str) -> str:
    """How a saved ensemble names a model it does not need to load (its weights are saved with it): a hub id or
    ``package:`` reference as it is, a folder of this machine as ``folder:NAME`` (no path of this machine)."""
    return f"{SAVED_FOLDER_PREFIX}{Path(model).name}" if reference_kind(model) == "local" else model


def model_short_name(model: str | os.PathLike) -> str:
    """A member's default name: the directory or hub name, or the module of a ``package:`` model."""
    model = str(model)
    return model[len(PACKAGE_PREFIX):].strip() if model.startswith(PACKAGE_PREFIX) else Path(model).name


class HFSource:
    """A model reference: a local directory, a hub id (+ revision) resolved through the local HF cache, or
    ``package:MODULE`` for a model shipped in an installed package (kept as written in saved configs, so a
    saved ensemble works wherever that package is installed).

    Example:
        >>> src = HFSource("path/to/model")  # doctest: +SKIP
        >>> src.weights_sha256  # {"model.safetensors": "9f86d0..."}  # doctest: +SKIP
    """

    def __init__(self, model: str | os.PathLike, revision: str | None = None) -> None:
        self.model = str(model)
        self.revision = revision

    @property
    def is_local(self) -> bool:
        return Path(self.model).is_dir()

    @property
    def is_package(self) -> bool:
        return self.model.startswith(PACKAGE_PREFIX)

    @cached_property
    def local_dir(self) -> Path:
        """The directory holding the files (a hub id is downloaded or found in the local cache)."""
        if self.is_local:
            return Path(self.model).resolve()
        if self.is_package:
            return package_model_dir(self.model)
        if self.model.startswith(SAVED_FOLDER_PREFIX):
            raise ConfigError(f"model {self.model!r} was a folder of the machine that saved this ensemble (its path is "
                              "not recorded); give that folder's path here.")
        if reference_kind(self.model) == "local":
            raise ConfigError(f"model {self.model!r} is not a directory; pass a model directory or a hub id.")
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(self.model, revision=self.revision))
        except Exception as err:
            raise ConfigError(
                f"cannot find model {self.model!r}: it is not a local directory, and the hub could not provide it "
                f"({type(err).__name__}: {err}). Check the path, or download it while online "
                "(HF_HUB_OFFLINE=1 only uses what is already cached)."
            ) from err

    @cached_property
    def resolved_revision(self) -> str | None:
        """The commit of a hub snapshot (its directory name), or None for a local directory or a package."""
        return None if self.is_local or self.is_package else self.local_dir.name

    @cached_property
    def weights_sha256(self) -> dict[str, str]:
        """sha256 of each weight file, by file name."""
        files = sorted({p for pattern in WEIGHT_PATTERNS for p in self.local_dir.glob(pattern)})
        if not files:
            raise ConfigError(f"model {self.model!r}: no weight files ({', '.join(WEIGHT_PATTERNS)}) in {self.local_dir}.")
        return {p.name: sha256_file(p) for p in files}

    @cached_property
    def fingerprint(self) -> str:
        """Hash of weights, config and tokenizer files: identical models share cache entries."""
        digest = hashlib.sha256()
        for name, sha in self.weights_sha256.items():
            digest.update(f"{name}={sha};".encode())
        for name in ("config.json", *TOKENIZER_FILES):
            path = self.local_dir / name
            if path.is_file():
                digest.update(f"{name}={sha256_file(path)};".encode())
        return digest.hexdigest()

    @cached_property
    def tokenizer_fingerprint(self) -> str:
        """Hash of the tokenizer files: models that tokenise alike share tokenised data in the engine."""
        digest = hashlib.sha256()
        for name in TOKENIZER_FILES:
            path = self.local_dir / name
            if path.is_file():
                digest.update(f"{name}={sha256_file(path)};".encode())
        return digest.hexdigest()

    def fitted_state(self) -> dict[str, Any]:
        """What a saved member records of its files: the resolved revision and each weight file's sha256."""
        return {"resolved_revision": self.resolved_revision, "weights_sha256": self.weights_sha256}

    def verify(self, recorded: dict[str, str], member: str) -> None:
        """Raise ChecksumError if the weight files differ from those recorded at save time."""
        current = self.weights_sha256
        if current != recorded:
            changed = sorted(set(current) ^ set(recorded) | {k for k in current if recorded.get(k) != current[k]})
            raise ChecksumError(
                f"member {member!r}: weight files of {self.model!r} differ from those the ensemble was saved with "
                f"(changed: {changed}). Restore that model version (revision={self.revision!r}), or pass "
                "verify_members=False to from_pretrained and refit, at your own risk."
            )
