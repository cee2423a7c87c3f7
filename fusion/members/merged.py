"""MergedModel: fine-tunes of one checkpoint merged in weight space (``fusion.merging``), run as a classifier.

A merge is a member like any other: its fingerprint follows the source checkpoints' files, the merge method and
its parameters, so its outputs are cached like any member's. The merge itself runs once per fingerprint: the
merged Hugging Face folder is written to the cache home (``<cache home>/merged/<fingerprint>/model``, next to
a ``merge.json`` that marks it complete and lists its files' sha256) and reused by later runs and processes;
inference is an :class:`~fusion.members.HFClassifier` on that folder. A saved ensemble keeps a copy of the merged
folder in the member's folder (``merged/``), so it loads without the source checkpoints and without merging again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..cache.store import MERGED_DIR, MERGED_MARKER, OutputCache, Outputs, default_cache_dir
from ..config import LoadOptions, coerced, digest, one_of, optional, setting
from ..errors import ConfigError, PersistenceError
from ..inputs import TextData
from ..io import atomic_directory, read_json, sha256_file, write_json
from ..merging.base import MERGE_METHODS, MergeMethod, MergeMethodConfig
from .base import MEMBERS, label_map_field
from .hf_classifier import HFClassifier
from .hf_model import HFInferenceConfig, HFInferenceMember, portable_reference
from .hf_source import HFSource, ModelRef, model_label, saved_reference

logger = logging.getLogger(__name__)

SAVED_DIR = "merged"  # in a saved ensemble's member folder: the merged model's files
MODEL_DIR = "model"  # in a cached merge's folder (<cache home>/merged/<fp>/, see fusion.cache.store): the HF folder
MERGED_DTYPES = ("float32", "bfloat16", "float16", "float64")


def method_config(value: Any) -> MergeMethodConfig:
    """A merge method's config from its kind name (``"ties"``), a dict with ``"kind"``, a ``MergeMethod`` or its
    config (the ``method`` field of :class:`MergedModel`).

    Example:
        >>> method_config({"kind": "linear", "weight": [1, 3]}).weight
        [1, 3]
    """
    if isinstance(value, MergeMethod):
        return value.config
    if isinstance(value, MergeMethodConfig):
        if not type(value).kind:
            raise ConfigError(f"MergeMethodConfig names no method; give one of {', '.join(MERGE_METHODS.names())} "
                              "(a name, or a method's own config such as LinearMerge.Config(...)).")
        return value
    if isinstance(value, str):
        return MERGE_METHODS.get(value).Config()
    if isinstance(value, Mapping):
        data = dict(value)
        kind = data.pop("kind", None)
        if not isinstance(kind, str):
            raise ConfigError(f"a merge method given as a dict needs 'kind' (one of {', '.join(MERGE_METHODS.names())})"
                              f"; got {dict(value)!r}.")
        return MERGE_METHODS.get(kind).Config.from_dict(data)
    raise ConfigError(f"method must be a merge method name ({', '.join(MERGE_METHODS.names())}), a dict with 'kind', "
                      f"a MergeMethod or its config; got {value!r} ({type(value).__name__}).")


def method_parameters(config: MergeMethodConfig) -> list[str]:
    """``"name value"`` for each parameter of a method's config that differs from its default (for descriptions).

    Example:
        >>> method_parameters(method_config({"kind": "linear", "normalize": False}))
        ['normalize False']
    """
    shown = []
    for f in dataclasses.fields(config):
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        value = getattr(config, f.name)
        if value != default:
            shown.append(f"{f.name} {value}")
    return shown


def _sources(models: Sequence[str], revisions: Sequence[str | None] | None) -> list[HFSource]:
    return [HFSource(model, revision) for model, revision in zip(models, revisions or [None] * len(models),
                                                                 strict=True)]


@MEMBERS.register("merged")
class MergedModel(HFInferenceMember):
    """Sequence classifiers fine-tuned from one checkpoint, merged into one by a merge method; frozen.

    Args:
        models: the fine-tuned checkpoints (model directories, hub ids or ``package:MODULE``), in the order the
            method's ``weight`` follows.
        method: the merge method: a name in ``fusion.merging.MERGE_METHODS`` (``"linear"``, ``"ties"``, ...), a dict
            ``{"kind": "ties", "density": 0.5}``, a ``MergeMethod`` or its config.
        base: the checkpoint the models were fine-tuned from (task-vector methods need it).
        head: which model's classification head to keep when their label sets differ (its index in ``models``,
            or its reference or name; recorded as the index); None merges the heads once aligned by label name.
        merged_dtype: the merged weights' dtype as saved (None: the models' own).
        revisions / base_revision: hub revisions of ``models`` (one per model) and of ``base``.
        label_map: renames the merged model's labels, as ``HFClassifier``'s.
        name / max_length / batch_size / max_tokens / dtype / device / trust_remote_code / show_progress: see
            ``HFInferenceConfig`` (``dtype`` is the inference dtype).

    Example:
        >>> member = MergedModel(["out/ft-a", "out/ft-b"], "ties", base="bert-base-uncased")  # doctest: +SKIP
        >>> member.describe()  # doctest: +SKIP
        'ties merge of 2 models'
    """

    @dataclass(frozen=True)
    class Config(HFInferenceConfig):
        models: list[ModelRef]
        method: MergeMethodConfig = coerced(method_config, "linear")
        base: ModelRef | None = None
        head: int | str | None = None
        merged_dtype: str | None = None
        # The models' files are covered by their sources' fingerprints, so where they lie does not count.
        revisions: list[str | None] | None = setting(None)
        base_revision: str | None = setting(None)
        label_map: Mapping[str | int, str] | None = label_map_field()

        constraints: ClassVar = {**HFInferenceConfig.constraints,
                                 "merged_dtype": (optional(one_of(*MERGED_DTYPES)), f"None or one of {MERGED_DTYPES}")}

        def __post_init__(self) -> None:
            models = self.models
            if isinstance(models, (str, os.PathLike)) or not isinstance(models, Sequence) or not models:
                raise ConfigError(f"MergedModel.models must be a non-empty list of model references (folders, hub "
                                  f"ids or package:MODULE); got {models!r}.")
            revisions = self.revisions
            if revisions is not None and (isinstance(revisions, str) or len(revisions) != len(models)):
                raise ConfigError(f"MergedModel.revisions must hold one revision (or None) per model: {len(models)} "
                                  f"models, got {revisions!r}.")
            pairs = [portable_reference(m, r) for m, r in zip(models, revisions or [None] * len(models), strict=True)]
            object.__setattr__(self, "models", [model for model, _ in pairs])
            kept = [revision for _, revision in pairs]
            object.__setattr__(self, "revisions", kept if any(r is not None for r in kept) else None)
            if self.head is not None:  # as an index: a head named by index or by name is one merge, one fingerprint
                from ..merging.heads import resolve_head

                object.__setattr__(self, "head", resolve_head(self.head, self.models))
            if self.base is not None:
                base, base_revision = portable_reference(self.base, self.base_revision)
                object.__setattr__(self, "base", base)
                object.__setattr__(self, "base_revision", base_revision)
            super().__post_init__()

        def validate(self) -> None:
            super().validate()
            self.merge_method().check_models(len(self.models), self.base is not None)

        def merge_method(self) -> MergeMethod:
            """The method component this config names (a merge method has no learned state)."""
            return MERGE_METHODS.get(self.method.kind)(self.method)

        def default_name(self) -> str:
            return f"{self.method.kind}-merge"

        def fingerprint_dict(self) -> dict[str, Any]:
            return {k: v for k, v in super().fingerprint_dict().items() if k not in ("models", "base")}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        c = self.config
        self.sources = _sources(c.models, c.revisions)
        self.base_source = HFSource(c.base, c.base_revision) if c.base is not None else None
        self._merge_fp: str | None = None
        self._folder: Path | None = None
        self._classifier: HFClassifier | None = None

    def _clone_into(self, twin: MergedModel) -> None:
        # the hashed checksums, the merged folder and the loaded model (frozen: safe to share)
        twin.sources, twin.base_source, twin._merge_fp = self.sources, self.base_source, self._merge_fp
        twin._folder, twin._classifier = self._folder, self._classifier

    # --- identity -------------------------------------------------------------------------------------------
    @property
    def merge_fingerprint(self) -> str:
        """The merged weights' identity: the sources' files, the method and its parameters, the head kept and the
        saved dtype (inference settings apart); the key of the merged folder in the cache home."""
        if self._merge_fp is None:
            c = self.config
            self._merge_fp = digest("merged model", [s.fingerprint for s in self.sources],
                                    self.base_source.fingerprint if self.base_source is not None else None,
                                    c.method.fingerprint, c.head, c.merged_dtype)
        return self._merge_fp

    def _unfitted_fingerprint(self) -> str:
        return digest(self.kind, self.config.fingerprint, self.merge_fingerprint)

    def describe(self) -> str:
        c = self.config
        parameters = method_parameters(c.method)
        text = f"{c.method.kind} merge of {len(c.models)} models" + (f" ({', '.join(parameters)})" if parameters else "")
        return text + (f" onto `{model_label(c.base)}`" if c.base is not None else "")

    # --- the merged model -----------------------------------------------------------------------------------
    def merged_dir(self) -> Path:
        """The merged model's Hugging Face folder: the copy saved with the ensemble this member was loaded from,
        else the cache home's, merged there on first use (once per fingerprint, for every process)."""
        if self._folder is None:
            self._folder = cached_merge(self.merge_fingerprint, self._merge_into, f"{self.kind} {self.name} "
                                        f"({self.describe()})")
        return self._folder

    def _merge_into(self, output: Path) -> None:
        from ..merging import merge as driver  # the streaming driver (imports the methods' modules)

        c = self.config
        revisions = [s.resolved_revision or s.revision for s in self.sources]  # the hub commits fingerprinted
        base_revision = (self.base_source.resolved_revision or self.base_source.revision) if self.base_source else None
        driver.merge_checkpoints(list(c.models), c.merge_method(), output, base=c.base,
                                 revisions=revisions if any(revisions) else None, base_revision=base_revision,
                                 head=c.head, dtype=c.merged_dtype, show_progress=c.show_progress)

    @property
    def classifier(self) -> HFClassifier:
        """The classifier that runs the merged model (built on first use, which merges if needed)."""
        if self._classifier is None:
            c = self.config
            self._classifier = HFClassifier(self.merged_dir(), label_map=c.label_map, name=self.name,
                                            **c.inference_settings())
        return self._classifier

    def output_labels(self, ensemble_labels: list[str] | None) -> list[str]:
        return self.classifier.output_labels(ensemble_labels)

    def compute(self, data: TextData, cache: OutputCache) -> Outputs:
        with cache.untimed():  # merging (once), like fitting, is not the inference cost the report measures
            self.merged_dir()
        return self.classifier.compute(data, cache)

    def torch_modules(self) -> list[torch.nn.Module]:
        return self._classifier.torch_modules() if self._classifier is not None else []

    def save_pretrained(self, directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the merged model as a plain Hugging Face folder (config, safetensors, tokenizer, the provenance
        file ``fusion_merge.json`` and a model card), loadable with ``AutoModelForSequenceClassification``
        without fusion. A folder that holds anything is refused unless ``overwrite``.

        Example:
            >>> merge(["out/ft-a", "out/ft-b"], "ties", base="bert-base-uncased").save_pretrained("out/merged")  # doctest: +SKIP
            PosixPath('out/merged')
        """
        directory = Path(directory)
        if directory.exists() and not overwrite and (not directory.is_dir() or any(directory.iterdir())):
            raise PersistenceError(f"{directory} exists and is not empty: saving the merged model there would "
                                   "replace it. Choose a new or empty folder, or pass overwrite=True.")
        source = self.merged_dir()
        with atomic_directory(directory) as staging:
            shutil.copytree(source, staging, dirs_exist_ok=True)
        return directory

    # --- saved with an ensemble -----------------------------------------------------------------------------
    def saved_config(self) -> dict[str, Any]:
        """The config with sources that are folders of this machine named ``folder:NAME``: the merged weights
        are saved with the member, so a saved ensemble needs no source and records no path of this machine."""
        data = super().saved_config()
        data["models"] = [saved_reference(m) for m in data["models"]]
        if data.get("base") is not None:
            data["base"] = saved_reference(data["base"])
        return data

    def fitted_state(self) -> dict[str, Any]:
        return {**super().fitted_state(), "merge_fingerprint": self.merge_fingerprint}

    def _save_files(self, directory: Path) -> None:
        shutil.copytree(self.merged_dir(), directory / SAVED_DIR)

    def _load_files(self, directory: Path, fitted: Mapping[str, Any], options: LoadOptions,
                    restored: Mapping[str, Any]) -> None:
        folder = directory / SAVED_DIR
        if not (folder / "config.json").is_file():
            raise PersistenceError(f"member {self.name!r}: the merged model saved with it ({folder}) is missing; "
                                   "restore the folder, or save the ensemble again.")
        self._folder, self._merge_fp = folder, fitted.get("merge_fingerprint")
        # Read the saved model now, within the load: a save replacing the folder later cannot change it.
        self.classifier.load_model()
        _ = self.classifier.source.tokenizer_fingerprint


def cached_merge(fingerprint: str, merge: Callable[[Path], Any], label: str | None = None) -> Path:
    """The merged folder of ``fingerprint`` in the cache home, running ``merge(output_folder)`` first when it is
    missing or damaged (a file that no longer matches the sha256 recorded when it was merged). The folder is
    staged and renamed into place, so other processes see it complete or not at all; ``label`` names it in
    ``fusion cache info``."""
    root = default_cache_dir() / MERGED_DIR / fingerprint[:24]
    if _intact(root, fingerprint):
        with contextlib.suppress(OSError):  # its last use, as the output cache's entries record theirs
            os.utime(root / MERGED_MARKER)
        return root / MODEL_DIR
    with atomic_directory(root, marker=MERGED_MARKER) as staging:
        merge(staging / MODEL_DIR)
        model = staging / MODEL_DIR
        files = {p.relative_to(model).as_posix(): sha256_file(p) for p in sorted(model.rglob("*")) if p.is_file()}
        # written last: it marks the folder complete
        write_json(staging / MERGED_MARKER, {"fingerprint": fingerprint, "label": label, "files": files})
    return root / MODEL_DIR


def _intact(root: Path, fingerprint: str) -> bool:
    """True when ``root`` holds the complete merge of ``fingerprint`` with every file as merged."""
    if not (root / MERGED_MARKER).is_file():
        return False
    try:
        marker = read_json(root / MERGED_MARKER, "cached merge")
        files = marker["files"]
        same = marker["fingerprint"] == fingerprint and all(
            sha256_file(root / MODEL_DIR / name) == sha for name, sha in files.items())
    except (PersistenceError, OSError, KeyError, TypeError) as err:
        logger.warning("cached merge %s is unreadable (%s); merging again", root, err)
        return False
    if not same:
        logger.warning("cached merge %s is damaged or belongs to another merge; merging again", root)
    return same
